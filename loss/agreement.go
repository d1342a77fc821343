package loss

import (
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// agreement is the per-call check every loss runs before computing: local
// misuse panics, and everything a caller can act on is decided with one
// all-reduce, so that every rank returns the same error or none.
type agreement struct {
	comm mpi.Comm
	dim  int
	v    []float64 // see the layout below
	st   step
	pool *pool
	scan scanJob
}

func newAgreement(comm mpi.Comm, dim int, p *pool) agreement {
	return agreement{comm: comm, dim: dim, v: make([]float64, agreeFixed+comm.Size()), pool: p}
}

// scanJob checks a slice for NaN and ±Inf, chunk by chunk on the pool.
type scanJob struct {
	x32 []float32
	x64 []float64
	bad atomic.Bool
}

func (j *scanJob) block(i int) {
	lo := i * elemChunk
	var ok bool
	switch {
	case j.x32 != nil && nativeKernels && kernelISA > isaGo:
		ok = finite32(kernelISA, j.x32[lo:min(lo+elemChunk, len(j.x32))])
	case j.x32 != nil:
		ok = finite(j.x32[lo:min(lo+elemChunk, len(j.x32))])
	default:
		ok = finite(j.x64[lo:min(lo+elemChunk, len(j.x64))])
	}
	if !ok {
		j.bad.Store(true)
	}
}

// finite reports whether every element of x is neither NaN nor ±Inf, on
// the agreement's threads.
func (a *agreement) finite(x32 []float32, x64 []float64) bool {
	j := &a.scan
	j.x32, j.x64 = x32, x64
	j.bad.Store(false)
	a.pool.run(chunks(len(x32)+len(x64), elemChunk), j)
	j.x32, j.x64 = nil, nil
	return !j.bad.Load()
}

// finite reports whether every element of x is neither NaN nor ±Inf.
func finite[T blas.Float](x []T) bool {
	var acc T
	for _, v := range x {
		acc += v - v // NaN for NaN and ±Inf, 0 otherwise
	}
	return acc == 0
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

// check validates a call: it panics if len(img) != len(txt) or the length is
// not a multiple of the dimension; then it agrees with the other ranks on
// the batch size, dimension, element type, options (opts, a number that
// identifies them), logit scale and bias, and on finiteness. Its errors are
// the same on every rank, but for a failure of the all-reduce itself, which
// goes to mpi.Fail.
func check[T blas.Float](a *agreement, img, txt []T, lg Logit, opts float64, backward bool) (*step, error) {
	if len(img) != len(txt) {
		panic(errLenMatch)
	}
	if len(img)%a.dim != 0 {
		panic(errLenDim)
	}
	var zero T
	w, rank := a.comm.Size(), a.comm.Rank()
	b := len(img) / a.dim

	bad := 0.0
	isFinite := func(x []T) bool {
		if blas.Is32[T]() {
			return a.finite(blas.As32(x), nil)
		}
		return a.finite(nil, blas.As64(x))
	}
	if !isFinite(img) {
		bad += 1
	}
	if !isFinite(txt) {
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
	v := a.v
	for i := range v {
		v[i] = 0
	}
	pair := func(at int, x float64) { v[at], v[at+1] = x, -x }
	pair(agreeB, float64(b))
	pair(agreeD, float64(a.dim))
	pair(agreeSize, float64(unsafe.Sizeof(zero)))
	pair(agreeOpts, opts*2+b2f(lg.HasBias))
	pair(agreeScale, scale)
	pair(agreeBias, bias)
	v[agreeFixed+rank] = bad
	if err := a.comm.AllreduceF64(mpi.Max, v, v); err != nil {
		// The ranks did not agree: some may have the answer, this one
		// has none.
		return nil, mpi.Fail(a.comm, fmt.Errorf("loss: agreeing on shapes: %w", err))
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
		return nil, fmt.Errorf("%w on the loss options (local_loss, gather_with_grad, algorithm, tile, precision or logit bias)", ErrShapeMismatch)
	case v[agreeB] == 0:
		return nil, fmt.Errorf("%w: 0 rows per rank", ErrEmptyBatch)
	}
	if err := nonFinite(v[agreeFixed:]); err != nil {
		return nil, err
	}
	if differ(agreeScale) || differ(agreeBias) {
		return nil, fmt.Errorf("%w on the logit scale or bias (replicas must be identical)", ErrShapeMismatch)
	}
	a.st = step{rank: rank, w: w, b: b, n: w * b, d: a.dim, backward: backward, scale: lg.Scale, bias: bias}
	return &a.st, nil
}

// nonFinite returns ErrNonFinite for the first rank whose flags (bit 0:
// image features, 1: text features, 2: logit scale or bias) are set.
func nonFinite(flags []float64) error {
	for r, f := range flags {
		if f == 0 {
			continue
		}
		var what []string
		for bit, name := range []string{"image features", "text features", "logit scale or bias"} {
			if int(f)&(1<<bit) != 0 {
				what = append(what, name)
			}
		}
		return fmt.Errorf("%w: NaN or Inf in the %s on rank %d", ErrNonFinite, strings.Join(what, ", "), r)
	}
	return nil
}
