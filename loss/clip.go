package loss

import (
	"fmt"
	"math"
	"os"
	"sync"
	"unsafe"

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
	comm mpi.Comm
	dim  int
	opt  ClipOptions

	agree []float64 // agreement vector, see check
	st    clipStep
	impl  clipImpl[T]
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
// It panics if comm is nil, dim < 1, opt.Tile < 0 or the algorithm is
// unknown.
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
	l := &ClipLoss[T]{comm: comm, dim: dim, opt: opt, agree: make([]float64, agreeFixed+comm.Size())}
	switch opt.Algorithm {
	case Naive:
		l.impl = &naiveClip[T]{comm: comm}
	case Fused, Tiled:
		l.impl = &blockClip[T]{comm: comm, tiled: opt.Algorithm == Tiled, tile: opt.Tile}
	case Ring:
		l.impl = &ringClip[T]{comm: comm, tile: opt.Tile}
	default:
		panic(errAlgorithm)
	}
	if opt.LocalLoss && !opt.GatherWithGrad && comm.Size() > 1 && comm.Rank() == 0 {
		warnLocalOnce.Do(func() {
			Warn("local_loss without gather_with_grad: feature gradients hold only the direct paths (OpenCLIP semantics); set GatherWithGrad for the full gradient")
		})
	}
	return l
}

// Options returns the options the loss was made with.
func (l *ClipLoss[T]) Options() ClipOptions { return l.opt }

// Forward returns this rank's loss for the local features img and txt
// (b×dim each, row-major). It is collective.
//
// It panics if len(img) != len(txt) or the length is not a multiple of dim.
// It returns an error, the same on every rank, if the ranks disagree on b,
// dim, the element type, the options or the logit parameters, if b = 0, or
// if any rank's input is not finite.
func (l *ClipLoss[T]) Forward(img, txt []T, lg Logit) (float64, error) {
	st, err := l.check(nil, nil, img, txt, lg)
	if err != nil {
		return 0, err
	}
	r, err := l.impl.run(nil, nil, img, txt, lg, st)
	return r.Loss, err
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
	st, err := l.check(dImg, dTxt, img, txt, lg)
	if err != nil {
		return Result{}, err
	}
	return l.impl.run(dImg, dTxt, img, txt, lg, st)
}

// Layout of the agreement vector: pairs (x, -x) reduced with MAX give the
// maximum and the minimum over ranks of x in one all-reduce; then one
// non-finite flag per rank.
const (
	agreeB = 2 * iota
	agreeD
	agreeSize
	agreeOpts
	agreeScale
	agreeBias
	agreeFixed
)

// check validates the call locally (panics) and then agrees with the other
// ranks on shapes, options and finiteness with one all-reduce, so that every
// rank returns the same error or none.
func (l *ClipLoss[T]) check(dImg, dTxt, img, txt []T, lg Logit) (*clipStep, error) {
	if len(img) != len(txt) {
		panic(errLenMatch)
	}
	if len(img)%l.dim != 0 {
		panic(errLenDim)
	}
	var zero T
	w, rank := l.comm.Size(), l.comm.Rank()
	b := len(img) / l.dim

	bad := 0.0
	if !finite(img) {
		bad += 1
	}
	if !finite(txt) {
		bad += 2
	}
	scale, bias := lg.Scale, 0.0
	if lg.HasBias {
		bias = lg.Bias
	}
	if math.IsNaN(scale) || math.IsInf(scale, 0) || math.IsNaN(bias) || math.IsInf(bias, 0) {
		bad += 4
		scale, bias = 0, 0
	}
	opts := float64(l.opt.Algorithm)*8 + b2f(l.opt.LocalLoss)*4 + b2f(l.opt.GatherWithGrad)*2 + b2f(lg.HasBias)
	v := l.agree
	for i := range v {
		v[i] = 0
	}
	pair := func(at int, x float64) { v[at], v[at+1] = x, -x }
	pair(agreeB, float64(b))
	pair(agreeD, float64(l.dim))
	pair(agreeSize, float64(unsafe.Sizeof(zero)))
	pair(agreeOpts, opts+float64(l.opt.Tile)*64)
	pair(agreeScale, scale)
	pair(agreeBias, bias)
	v[agreeFixed+rank] = bad
	if err := l.comm.AllreduceF64(mpi.Max, v, v); err != nil {
		return nil, fmt.Errorf("loss: agreeing on shapes: %w", err)
	}
	differ := func(at int) bool { return v[at] != -v[at+1] }
	switch {
	case differ(agreeB):
		return nil, fmt.Errorf("%w on the batch size: rows per rank range from %d to %d", ErrShapeMismatch, int(-v[agreeB+1]), int(v[agreeB]))
	case differ(agreeD):
		return nil, fmt.Errorf("%w on the feature dimension: it ranges from %d to %d", ErrShapeMismatch, int(-v[agreeD+1]), int(v[agreeD]))
	case differ(agreeSize):
		return nil, fmt.Errorf("%w on the element type: float32 on some ranks, float64 on others", ErrShapeMismatch)
	case differ(agreeOpts):
		return nil, fmt.Errorf("%w on the loss options (local_loss, gather_with_grad, algorithm, tile or logit bias)", ErrShapeMismatch)
	case v[agreeB] == 0:
		return nil, fmt.Errorf("%w: 0 rows per rank", ErrEmptyBatch)
	}
	for r := 0; r < w; r++ {
		if f := int(v[agreeFixed+r]); f != 0 {
			what := ""
			for bit, name := range []string{"image features", "text features", "logit scale or bias"} {
				if f&(1<<bit) != 0 {
					if what != "" {
						what += ", "
					}
					what += name
				}
			}
			return nil, fmt.Errorf("%w: NaN or Inf in the %s on rank %d", ErrNonFinite, what, r)
		}
	}
	if differ(agreeScale) || differ(agreeBias) {
		return nil, fmt.Errorf("%w on the logit scale or bias (replicas must be identical)", ErrShapeMismatch)
	}
	l.st = clipStep{rank: rank, w: w, b: b, n: w * b, d: l.dim, backward: dImg != nil}
	if w > 1 {
		l.st.local, l.st.gwg = l.opt.LocalLoss, l.opt.GatherWithGrad
	}
	return &l.st, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// finite reports whether every element of x is neither NaN nor ±Inf.
func finite[T blas.Float](x []T) bool {
	var acc T
	for _, v := range x {
		acc += v - v // NaN for NaN and ±Inf, 0 otherwise
	}
	return acc == 0
}
