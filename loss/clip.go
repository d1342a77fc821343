package loss

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// ClipLoss is OpenCLIP's ClipLoss across the ranks of a communicator.
//
// Rank r holds b rows of image features I_r and text features T_r (b×d,
// row-major); the global batch is the concatenation in rank order, N = W·b,
// and the positive pairs are (image i, text i). With S = Scale·I·Tᵀ (+Bias),
//
//	L = ( mean_i CE(S_i·, i) + mean_j CE(S_·j, j) ) / 2.
//
// What each rank gets is exactly what OpenCLIP's ClipLoss returns and
// back-propagates on that rank before DDP's averaging:
//
//	mode (W > 1)         loss on rank r           feature grads   scale grad
//	global               L                        G[r]            g_s
//	global_gwg           L                        W·G[r]          g_s
//	local_gwg            rank-local, mean = L     W·G[r]          rank-local, sum = W·g_s
//	local                rank-local, mean = L     direct paths    rank-local, sum = W·g_s
//
// where G is the gradient of L and g_s = dL/dScale. The local mode without
// gather_with_grad gives incomplete feature gradients, as in OpenCLIP; it is
// reproduced exactly and a warning is printed once. With W = 1 both options
// are ignored, as in OpenCLIP. The bias cancels inside softmax: it changes
// nothing and its gradient is 0 up to rounding.
//
// A ClipLoss owns its workspaces: after the first call with the largest
// batch, calls allocate nothing. It is not safe for concurrent use.
type ClipLoss[T blas.Float] struct {
	comm    mpi.Comm
	dim     int
	opt     ClipOptions
	threads int
	pool    *pool // the kernels' threads

	agree agreement
	impl  clipImpl[T]
	auto  *clipAuto[T] // with Auto: the choice per batch size
}

// clipImpl is one algorithm. run computes this rank's loss and, when dImg is
// not nil, the gradients; st describes the validated step.
type clipImpl[T blas.Float] interface {
	run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error)
}

// clipStep is the validated shape and mode of one call, identical on every
// rank.
type clipStep struct {
	rank, w, b, n, d int
	// local and gwg are the effective options: both false when W = 1.
	local, gwg bool
	backward   bool
}

// warnLocalOnce guards the warning about local_loss without gather_with_grad.
var warnLocalOnce sync.Once

// Warn prints a warning; programs may replace it (tests silence it).
var Warn = func(msg string) { fmt.Fprintln(os.Stderr, "clipmpi: warning:", msg) }

// NewClipLoss returns a ClipLoss over comm for features of dimension dim.
// With Auto the algorithm is chosen at the first call (see ResolveClip; the
// rates are measured then, once, unless opt.Rates gives them) and again
// whenever the batch size changes; rank 0 prints each choice through Info.
// It panics if comm is nil, dim < 1, opt.Tile < 0, opt.MemoryBudget < 0,
// opt.Threads < 0 or the algorithm is unknown.
func NewClipLoss[T blas.Float](comm mpi.Comm, dim int, opt ClipOptions) *ClipLoss[T] {
	if comm == nil {
		panic(errNilComm)
	}
	if dim < 1 {
		panic(errDim)
	}
	if opt.Tile < 0 {
		panic(errTile)
	}
	if opt.MemoryBudget < 0 {
		panic(errBudget)
	}
	threads := resolveThreads(opt.Threads)
	l := &ClipLoss[T]{comm: comm, dim: dim, opt: opt, threads: threads}
	l.pool = newOwnedPool(l, threads)
	l.agree = newAgreement(comm, dim, l.pool)
	if opt.Algorithm == Auto {
		l.auto = &clipAuto[T]{}
	} else {
		l.impl = newClipImpl[T](comm, opt, l.pool)
	}
	if opt.LocalLoss && !opt.GatherWithGrad && comm.Size() > 1 && comm.Rank() == 0 {
		warnLocalOnce.Do(func() {
			Warn("local_loss without gather_with_grad: feature gradients hold only the direct paths (OpenCLIP semantics); set GatherWithGrad for the full gradient")
		})
	}
	return l
}

// newClipImpl makes the options' algorithm, its kernels running on p; it
// panics if the algorithm is unknown.
func newClipImpl[T blas.Float](comm mpi.Comm, opt ClipOptions, p *pool) clipImpl[T] {
	k := kernels[T]{pool: p}
	switch opt.Algorithm {
	case Naive:
		return &naiveClip[T]{comm: comm, k: k}
	case Fused:
		if comm.Size() > 1 {
			// The one logit block, its text blocks and gradients moved
			// around the ring behind the GEMMs instead of by blocking
			// all-gather and reduce-scatter.
			return &ringClip[T]{comm: comm, keep: true, k: k}
		}
		return &blockClip[T]{comm: comm, k: k}
	case Tiled:
		return &blockClip[T]{comm: comm, tiled: true, tile: opt.Tile, k: k}
	case Ring:
		return &ringClip[T]{comm: comm, tile: opt.Tile, k: k}
	}
	panic(errAlgorithm)
}

// Options returns the options the loss was made with.
func (l *ClipLoss[T]) Options() ClipOptions { return l.opt }

// Threads returns the number of threads the loss's kernels run on
// (Options().Threads, or what 0 resolved to).
func (l *ClipLoss[T]) Threads() int { return l.threads }

// Forward returns this rank's loss for the local features img and txt
// (b×dim each, row-major). It is collective.
//
// It panics if len(img) != len(txt) or the length is not a multiple of dim.
// It returns an error, the same on every rank, if the ranks disagree on b,
// dim, the element type, the options or the logit parameters, if b = 0, if
// any rank's input is not finite, or, with Auto, if no algorithm fits the
// memory budget (ErrNoFit). A failed collective or transfer, which
// may reach only some ranks, goes to mpi.Fail: by default the job ends with
// the cause printed once; with a hook that returns (mpi.WithFailHook),
// Forward returns the *mpi.Failure and the caller must end the job.
func (l *ClipLoss[T]) Forward(img, txt []T, lg Logit) (float64, error) {
	st, err := l.check(img, txt, lg, false)
	if err != nil {
		return 0, err
	}
	impl, err := l.pick(st)
	if err != nil {
		return 0, err
	}
	r, err := impl.run(nil, nil, img, txt, lg, st)
	runtime.KeepAlive(l) // its cleanup stops the kernels' threads
	if err != nil {
		return 0, mpi.Fail(l.comm, err)
	}
	return r.Loss, nil
}

// ForwardBackward computes this rank's loss and writes the gradients of its
// image and text features into dImg and dTxt (same layout as img and txt),
// returning the loss and the scale and bias gradients. It is collective.
//
// It panics as Forward does, and if len(dImg) or len(dTxt) differs from
// len(img). Its errors are Forward's.
func (l *ClipLoss[T]) ForwardBackward(dImg, dTxt, img, txt []T, lg Logit) (Result, error) {
	if len(dImg) != len(img) || len(dTxt) != len(txt) {
		panic(errGradLen)
	}
	st, err := l.check(img, txt, lg, true)
	if err != nil {
		return Result{}, err
	}
	impl, err := l.pick(st)
	if err != nil {
		return Result{}, err
	}
	r, err := impl.run(dImg, dTxt, img, txt, lg, st)
	runtime.KeepAlive(l) // its cleanup stops the kernels' threads
	if err != nil {
		return Result{}, mpi.Fail(l.comm, err)
	}
	return r, nil
}

// check is the shared agreement check plus the effective mode: with W = 1
// OpenCLIP ignores both options.
func (l *ClipLoss[T]) check(img, txt []T, lg Logit, backward bool) (*clipStep, error) {
	st, err := check(&l.agree, img, txt, lg, l.opt.code(), backward)
	if err == nil && st.w > 1 {
		st.local, st.gwg = l.opt.LocalLoss, l.opt.GatherWithGrad
	}
	return st, err
}

// code identifies the options in the agreement vector.
func (o ClipOptions) code() float64 {
	return float64(o.Algorithm)*4 + b2f(o.LocalLoss)*2 + b2f(o.GatherWithGrad) + float64(o.Tile)*64
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
