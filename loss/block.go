package loss

import (
	"fmt"
	"math"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// defaultTile is the column tile width of the Tiled algorithm when the
// options leave it 0: wide enough for GEMM efficiency, narrow enough that a
// b×tile block of a few thousand rows stays in the tens of MiB.
const defaultTile = 1024

// blockClip is the one-block algorithm (Fused, and Tiled when tiled is set).
//
// Only the text features are gathered. Rank r computes X_r = I_r·T_allᵀ
// (b×N, or one b×tile column tile at a time), its row statistics locally and
// its share of the column statistics, completed by two all-reduces of
// N-vectors (MAX of the maxima, then SUM of the rescaled sums). Backward
// forms dS on the same rows and needs two GEMMs, dI_r = s·dS·T_all and the
// text partials dSᵀ·I_r, which a reduce-scatter sends to their owners.
// See DESIGN.md, "The one-block algorithm, verified".
type blockClip[T blas.Float] struct {
	comm  mpi.Comm
	tiled bool
	tile  int
	k     kernels[T]

	tall    []T // N×d gathered text features
	x       []T // b×N (Fused) or b×tile (Tiled) logits before scaling
	dt      []T // second gradient block, local without gather_with_grad
	partial []T // N×d text-gradient partials, reduce-scattered
	softmaxStats
}

// softmaxStats are the row and column statistics of one rank's logit rows,
// shared by the Fused, Tiled and Ring algorithms.
type softmaxStats struct {
	rowM, rowS []float64 // b: row max, then log-sum
	colM, colS []float64 // N: column max, then log-sum
	colX, colB []float64 // N: column direction's scale and bias gradient shares
	diag       []float64 // b: logit of each row's positive pair
	small, out []float64
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
func (s *softmaxStats) forward(comm mpi.Comm, st *clipStep, lossSum float64) (Result, error) {
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

// backward prepares the gradient accumulators and returns the per-entry
// coefficient c of dS (1/(2N) global, 1/(2b) local), the factor f the
// feature gradients are scaled by (the scale, times W in global mode with
// gather_with_grad), and whether the image and text directions need
// separate gradient blocks (local without gather_with_grad).
func (s *softmaxStats) backward(st *clipStep, scale float64) (c, f float64, split bool) {
	s.colX, s.colB = grow(s.colX, st.n), grow(s.colB, st.n)
	fill(s.colX, 0)
	fill(s.colB, 0)
	c = 1 / float64(2*st.n)
	if st.local {
		c = 1 / float64(2*st.b)
	}
	f = scale
	if st.gwg && !st.local {
		f *= float64(st.w)
	}
	return c, f, st.local && !st.gwg
}

// finish completes the loss and the scale and bias gradients (finishClip).
func (s *softmaxStats) finish(comm mpi.Comm, st *clipStep, lossSum, rowX, rowB float64) (Result, error) {
	return finishClip(comm, st, lossSum, rowX, rowB, s.colX, s.colB, &s.small, &s.out)
}

func (a *blockClip[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	b, n, d := st.b, st.n, st.d
	scale, bias := lg.Scale, 0.0
	if lg.HasBias {
		bias = lg.Bias
	}
	tile := n
	if a.tiled {
		tile = a.tile
		if tile == 0 {
			tile = defaultTile
		}
		tile = min(tile, n)
	}
	// With one rank the gathered text features are this rank's own, and
	// the text gradients need no reduce-scatter: no copies.
	tall := txt
	if st.w > 1 {
		a.tall = grow(a.tall, n*d)
		if err := mpi.Allgather(a.comm, a.tall, txt); err != nil {
			return Result{}, fmt.Errorf("loss: gathering text features: %w", err)
		}
		tall = a.tall
	}
	a.x = grow(a.x, b*tile)
	a.reset(b, n)
	diag0 := st.rank * b

	// Forward: row and column statistics tile by tile.
	for j0 := 0; j0 < n; j0 += tile {
		w := min(tile, n-j0)
		x, ld := a.tileBuf(a.x, j0, w, tile, n)
		blas.Gemm(blas.NoTrans, blas.Trans, b, w, d, 1, img, d, tall[j0*d:], d, 0, x, ld)
		stats(&a.k, x, ld, b, w, scale, bias, a.rowM, a.rowS, a.colM[j0:], a.colS[j0:])
		for i := max(0, j0-diag0); i < b && diag0+i < j0+w; i++ {
			a.diag[i] = scale*float64(x[i*ld+diag0+i-j0]) + bias
		}
	}
	lossSum, err := a.complete(a.comm, diag0)
	if err != nil {
		return Result{}, err
	}
	if !st.backward {
		return a.forward(a.comm, st, lossSum)
	}

	// Backward.
	c, f, split := a.backward(st, scale)
	if split {
		a.dt = grow(a.dt, b*tile)
	}
	partial := dTxt
	if st.w > 1 {
		a.partial = grow(a.partial, n*d)
		partial = a.partial
	}
	var rowX, rowB float64
	for j0 := 0; j0 < n; j0 += tile {
		w := min(tile, n-j0)
		x, ld := a.tileBuf(a.x, j0, w, tile, n)
		if a.tiled && tile < n {
			blas.Gemm(blas.NoTrans, blas.Trans, b, w, d, 1, img, d, tall[j0*d:], d, 0, x, ld)
		}
		var dt []T
		if split {
			dt, _ = a.tileBuf(a.dt, j0, w, tile, n)
		}
		sx, sb := grad(&a.k, x, dt, x, ld, b, w, j0, diag0, scale, bias, c, c,
			a.rowM, a.rowS, a.colM[j0:], a.colS[j0:], a.colX[j0:], a.colB[j0:])
		rowX += sx
		rowB += sb
		beta := T(1)
		if j0 == 0 {
			beta = 0
		}
		blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, w, T(f), x, ld, tall[j0*d:], d, beta, dImg, d)
		src := x
		if split {
			src = dt
		}
		blas.Gemm(blas.Trans, blas.NoTrans, w, d, b, T(f), src, ld, img, d, 0, partial[j0*d:], d)
	}
	if st.w > 1 {
		if err := mpi.ReduceScatter(a.comm, dTxt, partial); err != nil {
			return Result{}, fmt.Errorf("loss: sending text gradients home: %w", err)
		}
	}
	return a.finish(a.comm, st, lossSum, rowX, rowB)
}

// tileBuf returns the part of buf (b×N or b×tile) and the leading dimension
// for the column tile starting at j0 of width w: a column slice of the kept
// b×N block (Fused, or one tile covering all columns) or the whole reused
// b×tile block (Tiled).
func (a *blockClip[T]) tileBuf(buf []T, j0, w, tile, n int) ([]T, int) {
	if !a.tiled || tile == n {
		return buf[j0:], n
	}
	return buf, w
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
func finishClip(comm mpi.Comm, st *clipStep, lossSum, rowX, rowB float64, colX, colB []float64, small, out *[]float64) (Result, error) {
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
