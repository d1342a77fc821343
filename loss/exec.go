package loss

import (
	"fmt"
	"math"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// exec is the engine that computes: the GEMMs on the BLAS (polling the
// exchanges in flight between panels), the kernels on the loss's pool,
// the transfers and collectives on its communicator. It owns the
// workspaces and the float64 statistics, so a loss allocates nothing after
// its first call with the largest batch.
type exec[T blas.Float] struct {
	comm mpi.Comm
	k    kernels[T]
	ex   exchanges
	ws   [nbuf][]T
	st   *step
	softmaxStats
	rows [4][]float64 // Naive's row statistics: m and l per logit block

	// The rank's sums: loss terms and the row direction's Σ dS∘x and
	// Σ dS (ClipLoss), or SigLIP's loss, Σ dz∘x and Σ dz.
	lossSum, sumX, sumB float64
	res                 Result
}

// start binds a call's buffers and step; run the schedule next.
func (x *exec[T]) start(dImg, dTxt, img, txt []T, st *step) {
	x.ws[bImg], x.ws[bTxt], x.ws[bDImg], x.ws[bDTxt] = img, txt, dImg, dTxt
	x.st, x.ex.comm = st, x.comm
	x.lossSum, x.sumX, x.sumB, x.res = 0, 0, 0, Result{}
}

// finish drops the caller's buffers, completes what may still be in
// flight after a failure, and returns the result or the error.
func (x *exec[T]) finish(err error) (Result, error) {
	x.ws[bImg], x.ws[bTxt], x.ws[bDImg], x.ws[bDTxt] = nil, nil, nil, nil
	if err != nil {
		return Result{}, x.ex.drain(err)
	}
	return x.res, nil
}

func (x *exec[T]) at(r ref) []T { return x.ws[r.id][r.off:] }

func (x *exec[T]) span(r ref, n int) []T { return x.ws[r.id][r.off : r.off+n] }

func (x *exec[T]) buffer(id buf, n int) {
	x.st.sizes(id, n, func(id buf, w int) { x.ws[id] = grow(x.ws[id], w) })
}

// wire returns the n elements at r as they are stored and travel: in
// AMPBF16, features as their bf16 numbers in pairs.
func (x *exec[T]) wire(r ref, n int) []T {
	if !x.st.bf16(r.id) {
		return x.span(r, n)
	}
	f := x.st.feat(r)
	return x.span(ref{f.id, f.off / 2}, x.st.words(r.id, n))
}

func (x *exec[T]) gemm(g gemmOp) {
	tA, tB := blasT(g.tA), blasT(g.tB)
	if !x.st.half {
		gemm(&x.ex, tA, tB, g.m, g.n, g.k, T(g.alpha), x.at(g.a), g.lda, x.at(g.b), g.ldb, T(g.beta), x.at(g.c), g.ldc)
		return
	}
	a, lda := x.bf16(g.a, g.lda)
	b, ldb := x.bf16(g.b, g.ldb)
	c := blas.As32(x.at(g.c))
	panels(&x.ex, tA, tB, g.m, g.n, g.k, lda, func(i0, mr, ai int) {
		blas.GemmBF16(tA, tB, mr, g.n, g.k, float32(g.alpha), a[ai:], lda, b, ldb, float32(g.beta), c[i0*g.ldc:], g.ldc)
	})
}

// bf16 returns the bf16 operand at r and its leading dimension: features
// (rows dh apart), or the bf16 copy its kernel wrote of a gradient tile.
func (x *exec[T]) bf16(r ref, ld int) ([]blas.BF16, int) {
	if feature(r.id) {
		f := x.st.feat(r)
		return asBF16(x.ws[f.id])[f.off:], x.st.dh()
	}
	return x.half(r), ld
}

// half returns the bf16 copy of the gradient tile at r (nil for no ref
// or outside AMPBF16).
func (x *exec[T]) half(r ref) []blas.BF16 {
	h, ok := x.st.shadow(r.id)
	if !r.valid() || !ok {
		return nil
	}
	return asBF16(x.ws[h])[r.off:]
}

func blasT(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

func (x *exec[T]) kernel(o kernOp) {
	st, k := x.st, &x.k
	switch o.op {
	case kStats:
		x.stats(o)
	case kGrad:
		var dt []T
		if o.y.valid() {
			dt = x.at(o.y)
		}
		k.hd, k.hdt = x.half(o.x), x.half(o.y)
		sx, sb := grad(k, x.at(o.x), dt, x.at(o.x), o.ld, o.rows, o.cols, o.at, st.rank*st.b, st.scale, st.bias, x.c, x.c,
			x.rowM, x.rowS, x.colM[o.at:], x.colS[o.at:], x.colX[o.at:], x.colB[o.at:])
		x.sumX += sx
		x.sumB += sb
	case kSig:
		x.c, k.hd = 1/float64(st.b), x.half(o.x)
		ls, sx, sb := sigTile(k, x.at(o.x), x.at(o.x), o.ld, o.rows, o.cols, o.at, st.scale, st.bias, x.c, st.backward)
		x.lossSum += ls
		x.sumX += sx
		x.sumB += sb
	case kRowStats:
		m, l := x.naiveRows(o)
		rowStats(k, x.at(o.x), o.ld, o.rows, o.cols, st.scale, st.bias, m, l)
		x.lossSum += rowLoss(x.at(o.x), o.ld, o.rows, o.at, st.scale, st.bias, m, l)
	case kRowGrad:
		m, l := x.naiveRows(o)
		sx, sb := rowGrad(k, x.at(o.x), o.ld, o.rows, o.cols, o.at, st.scale, st.bias, x.c, m, l)
		x.sumX += sx
		x.sumB += sb
	case kTranspose, kAddTranspose:
		transpose(k, x.at(o.x), x.at(o.y), o.rows, o.op == kAddTranspose)
	case kAdd:
		if st.bf16(o.y.id) { // a sum that travelled in bf16 (rows dh apart)
			f, dst, dh := st.feat(o.y), x.at(o.x), st.dh()
			h := asBF16(x.ws[f.id])[f.off:]
			for i := range o.rows {
				for j, v := range h[i*dh : i*dh+o.cols] {
					dst[i*o.cols+j] += T(v.Float32())
				}
			}
			break
		}
		addTo(k, x.span(o.x, o.rows*o.cols), x.span(o.y, o.rows*o.cols))
	case kCopy:
		copy(x.wire(o.x, o.rows*o.cols), x.wire(o.y, o.rows*o.cols))
	case kZero:
		clear(x.wire(o.x, o.rows*o.cols))
	case kRound:
		roundRows(k, asBF16(x.ws[o.x.id]), st.dh(), x.at(o.y), o.cols, o.rows, o.cols)
	}
	// Naive's gradient blocks are complete after the row gradients (local)
	// or the transposed sum (global): the GEMMs read them in bf16.
	if st.half && (o.op == kRowGrad && st.local || o.op == kAddTranspose) {
		roundRows(k, x.half(o.x), o.ld, x.at(o.x), o.ld, o.rows, o.cols)
	}
}

// stats is kStats: the tile's statistics and the logits of the positive
// pairs among its columns.
func (x *exec[T]) stats(o kernOp) {
	st := x.st
	t := x.at(o.x)
	stats(&x.k, t, o.ld, o.rows, o.cols, st.scale, st.bias, x.rowM, x.rowS, x.colM[o.at:], x.colS[o.at:])
	diag0 := st.rank * st.b
	for i := max(0, o.at-diag0); i < o.rows && diag0+i < o.at+o.cols; i++ {
		x.diag[i] = st.scale*float64(t[i*o.ld+diag0+i-o.at]) + st.bias
	}
}

// naiveRows returns Naive's row statistics for the kernel's logit block.
func (x *exec[T]) naiveRows(o kernOp) (m, l []float64) {
	i := 2 * o.which
	x.rows[i], x.rows[i+1] = grow(x.rows[i], o.rows), grow(x.rows[i+1], o.rows)
	x.c = 1 / float64(2*o.rows)
	return x.rows[i], x.rows[i+1]
}

func (x *exec[T]) softmax(rows, cols int) { x.reset(rows, cols) }

func (x *exec[T]) collective(c collOp) error {
	var err error
	switch c.op {
	case cAllgather:
		err = mpi.Allgather(x.comm, x.wire(c.dst, c.n*x.st.w), x.wire(c.src, c.n))
	case cReduceScatter:
		err = mpi.ReduceScatter(x.comm, x.span(c.dst, c.n), x.span(c.src, c.n*x.st.w))
	case cAllreduce:
		// Reduce's broadcast of bf16 features adds zeros to one rank's
		// numbers, taken in pairs as float32: exact for every pair of
		// finite bf16 numbers (a -0 pair may come back +0), subnormal
		// patterns included, as MPI adds without flushing them.
		err = mpi.Allreduce(x.comm, mpi.Sum, x.wire(c.dst, c.n), x.wire(c.src, c.n))
	}
	if err != nil {
		return fmt.Errorf("loss: %s: %w", c.what, err)
	}
	return nil
}

func (x *exec[T]) reduce(s stat) error {
	st := x.st
	var err error
	switch s {
	case sColumns:
		x.lossSum, err = x.complete(x.comm, st.rank*st.b)
	case sForward:
		x.res, err = x.forward(x.comm, st, x.lossSum)
	case sPrepare:
		x.c = x.prepare(st)
	case sFinish:
		x.res, err = finishClip(x.comm, st, x.lossSum, x.sumX, x.sumB, x.colX, x.colB, &x.small, &x.out)
	case sRows:
		// Naive's loss is c = 1/(2·rows) times its sum, SigLIP's a
		// mean over the rank's rows (c = 1/b).
		x.res = Result{Loss: x.lossSum * x.c, GradScale: x.sumX, GradBias: x.sumB}
	}
	return err
}

func (x *exec[T]) post(t xfer) (int, error) {
	if h, ok := x.st.sumShadow(t.src.id); ok { // SumsBF16: the sum leaves in bf16
		d, dh := x.st.d, x.st.dh()
		roundRows(&x.k, asBF16(x.ws[h])[t.src.off/d*dh:], dh, x.at(t.src), d, t.n/d, d)
		t.src.id = h
	}
	i, err := exchange(&x.ex, x.wire(t.dst, t.n), t.from, x.wire(t.src, t.n), t.to)
	if err != nil {
		return noXfer, fmt.Errorf("loss: %s: %w", t.what, err)
	}
	return i, nil
}

func (x *exec[T]) wait(h int, what string) error {
	if err := x.ex.wait(h); err != nil {
		return fmt.Errorf("loss: %s: %w", what, err)
	}
	return nil
}

// softmaxStats are the row and column statistics of one rank's logit
// rows (ClipLoss but Naive).
type softmaxStats struct {
	rowM, rowS []float64 // b: row max, then log-sum
	colM, colS []float64 // N: column max, then log-sum
	colX, colB []float64 // N: column direction's scale and bias gradient shares
	diag       []float64 // b: logit of each row's positive pair
	small, out []float64
	c          float64 // the coefficient of dS: 1/(2N) global, 1/(2b) local
}

// reset sizes the statistics for b rows and n columns and empties the row
// statistics (column ones are overwritten tile by tile).
func (s *softmaxStats) reset(b, n int) {
	s.rowM, s.rowS = grow(s.rowM, b), grow(s.rowS, b)
	s.colM, s.colS = grow(s.colM, n), grow(s.colS, n)
	s.diag = grow(s.diag, b)
	fill(s.rowM, math.Inf(-1))
	fill(s.rowS, 0)
}

// complete finishes the statistics once every tile has been seen: columns
// across ranks, rows to log-sums. It returns this rank's own positive pairs'
// loss terms, both directions: Σ_i -logp_row(i, i') - logp_col(i, i').
func (s *softmaxStats) complete(comm mpi.Comm, diag0 int) (float64, error) {
	if err := completeColumns(comm, s.colM, s.colS, &s.small); err != nil {
		return 0, err
	}
	var lossSum float64
	for i := range s.rowS {
		s.rowS[i] = math.Log(s.rowS[i])
		c := diag0 + i
		lossSum -= (s.diag[i] - s.rowM[i]) - s.rowS[i]
		lossSum -= (s.diag[i] - s.colM[c]) - s.colS[c]
	}
	return lossSum, nil
}

// forward returns a forward-only call's loss: local modes need no
// communication, global ones one scalar all-reduce.
func (s *softmaxStats) forward(comm mpi.Comm, st *step, lossSum float64) (Result, error) {
	if st.local {
		return Result{Loss: lossSum / float64(2*st.b)}, nil
	}
	s.small = grow(s.small, 1)
	s.small[0] = lossSum
	if err := comm.AllreduceF64(mpi.Sum, s.small, s.small); err != nil {
		return Result{}, fmt.Errorf("loss: reducing the loss: %w", err)
	}
	return Result{Loss: s.small[0] / float64(2*st.n)}, nil
}

// prepare empties the column gradient accumulators and returns the
// coefficient of dS: 1/(2N) global, 1/(2b) local.
func (s *softmaxStats) prepare(st *step) float64 {
	s.colX, s.colB = grow(s.colX, st.n), grow(s.colB, st.n)
	fill(s.colX, 0)
	fill(s.colB, 0)
	if st.local {
		return 1 / float64(2*st.b)
	}
	return 1 / float64(2*st.n)
}

// completeColumns turns each rank's column maxima and sums (over its rows)
// into global log-sum-exp statistics: colM = max over all rows, colS = log of
// the sum over all rows of exp(s - colM).
func completeColumns(comm mpi.Comm, colM, colS []float64, scratch *[]float64) error {
	n := len(colM)
	*scratch = grow(*scratch, n)
	m := *scratch
	if err := comm.AllreduceF64(mpi.Max, m, colM); err != nil {
		return fmt.Errorf("loss: reducing column maxima: %w", err)
	}
	for j := range colS {
		colS[j] *= math.Exp(colM[j] - m[j])
	}
	copy(colM, m)
	if err := comm.AllreduceF64(mpi.Sum, colS, colS); err != nil {
		return fmt.Errorf("loss: reducing column sums: %w", err)
	}
	for j := range colS {
		colS[j] = math.Log(colS[j])
	}
	return nil
}

// finishClip completes the loss and the scale and bias gradients.
//
// Global modes: every rank sums its own pairs' loss terms and its share of
// Σ dS∘x and Σ dS; one all-reduce of three scalars gives the global values.
// Local modes: the image direction of rank r's loss lies in its rows (rowX,
// rowB); the text direction lies in column block r of every rank's rows, so
// each rank sums colX, colB per column block and a reduce-scatter of the
// 2W-vector hands rank r its block's totals.
func finishClip(comm mpi.Comm, st *step, lossSum, rowX, rowB float64, colX, colB []float64, small, out *[]float64) (Result, error) {
	if !st.local {
		var cx, cb float64
		for j := range colX {
			cx += colX[j]
			cb += colB[j]
		}
		*small = grow(*small, 3)
		v := *small
		v[0], v[1], v[2] = lossSum, rowX+cx, rowB+cb
		if err := comm.AllreduceF64(mpi.Sum, v, v); err != nil {
			return Result{}, fmt.Errorf("loss: reducing loss and scale gradient: %w", err)
		}
		return Result{Loss: v[0] / float64(2*st.n), GradScale: v[1], GradBias: v[2]}, nil
	}
	*small = grow(*small, 2*st.w)
	*out = grow(*out, 2)
	v, o := *small, *out
	for q := 0; q < st.w; q++ {
		var cx, cb float64
		for j := q * st.b; j < (q+1)*st.b; j++ {
			cx += colX[j]
			cb += colB[j]
		}
		v[2*q], v[2*q+1] = cx, cb
	}
	if err := comm.ReduceScatterF64(o, v); err != nil {
		return Result{}, fmt.Errorf("loss: reducing the scale gradient: %w", err)
	}
	return Result{Loss: lossSum / float64(2*st.b), GradScale: rowX + o[0], GradBias: rowB + o[1]}, nil
}
