package loss

import (
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
	core[T]
	opt    ClipOptions
	algo   Algorithm      // the algorithm in use (Auto before its first choice)
	scheds [Auto]schedule // the schedules made so far, by algorithm
}

// warnLocalOnce guards the warning about local_loss without gather_with_grad.
var warnLocalOnce sync.Once

// NewClipLoss returns a ClipLoss over comm for features of dimension dim.
// With Auto the algorithm is chosen at the first call (see ResolveClip; the
// rates are measured then, once, unless opt.Rates gives them) and again
// whenever the batch size changes; rank 0 prints each choice through Info.
// It panics if comm is nil, dim < 1, opt.Tile < 0, opt.MemoryBudget < 0,
// opt.Threads < 0 or the algorithm is unknown.
func NewClipLoss[T blas.Float](comm mpi.Comm, dim int, opt ClipOptions) *ClipLoss[T] {
	if opt.Algorithm < 0 || opt.Algorithm > Auto {
		panic(errAlgorithm)
	}
	l := &ClipLoss[T]{opt: opt, algo: opt.Algorithm}
	initCore(&l.core, l, comm, dim, opt.Tile, opt.MemoryBudget, opt.Threads, opt.Precision, opt.SumsBF16, opt.Algorithm == Auto)
	if opt.LocalLoss && !opt.GatherWithGrad && comm.Size() > 1 && comm.Rank() == 0 {
		warnLocalOnce.Do(func() {
			Warn("local_loss without gather_with_grad: feature gradients hold only the direct paths (OpenCLIP semantics); set GatherWithGrad for the full gradient")
		})
	}
	return l
}

// Options returns the options the loss was made with.
func (l *ClipLoss[T]) Options() ClipOptions { return l.opt }

// Algorithm returns the algorithm that computes the loss: the options'
// one, or with Auto the one chosen at the last call (Auto before the
// first call).
func (l *ClipLoss[T]) Algorithm() Algorithm { return l.algo }

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
	r, err := l.call(l, nil, nil, img, txt, lg, l.opt.code(), false, l.mode)
	return r.Loss, err
}

// ForwardBackward computes this rank's loss and writes the gradients of its
// image and text features into dImg and dTxt (same layout as img and txt),
// returning the loss and the scale and bias gradients. It is collective.
//
// It panics as Forward does, and if len(dImg) or len(dTxt) differs from
// len(img). Its errors are Forward's.
func (l *ClipLoss[T]) ForwardBackward(dImg, dTxt, img, txt []T, lg Logit) (Result, error) {
	return l.call(l, dImg, dTxt, img, txt, lg, l.opt.code(), true, l.mode)
}

// mode sets the effective options: with W = 1 OpenCLIP ignores both.
func (l *ClipLoss[T]) mode(st *step) {
	if st.w > 1 {
		st.local, st.gwg = l.opt.LocalLoss, l.opt.GatherWithGrad
	}
}

// schedule returns the algorithm's schedule, choosing it with Auto when
// the batch size is new.
func (l *ClipLoss[T]) schedule(st *step) (schedule, error) {
	if l.auto != nil && l.auto.b != st.b {
		err := l.choose(st, l.opt.Rates, l.opt.MemoryBudget, func(in autoInputs) (Choice, error) {
			a, ch, err := l.opt.Choose(st.w, st.b, st.d, elemSize[T](), in.rates, in.budget)
			if err == nil {
				l.algo = a
			}
			return ch, err
		})
		if err != nil {
			return nil, err
		}
	}
	if l.scheds[l.algo] == nil {
		o := l.opt
		o.Algorithm = l.algo
		l.scheds[l.algo] = clipSchedule(o, st.w)
	}
	return l.scheds[l.algo], nil
}

// code identifies the options in the agreement vector.
func (o ClipOptions) code() float64 {
	return float64(o.Algorithm)*4 + b2f(o.LocalLoss)*2 + b2f(o.GatherWithGrad) + float64(o.Tile)*64 + float64(o.Precision)*0x1p52 + b2f(o.SumsBF16)*0x1p51
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
