package loss

import (
	"fmt"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// defaultRingTile bounds the width of the logit tile the Ring algorithm
// computes at once, so that memory is O(b·tile) even when b is large.
const defaultRingTile = 1024

// ringClip is the one-block algorithm with the text features travelling
// around a ring instead of being gathered (after Inf-CL's ring, Wang et al.
// 2024, and ring attention): no rank ever holds more than two text blocks.
//
// Rank r sends to r+1 and receives from r-1. In forward, at step k it holds
// text block q = r-k (mod W), passes it on with a non-blocking send/receive
// and, meanwhile, computes the logit tiles of I_r·T_qᵀ and their row and
// column statistics. The column statistics are completed by the same two
// all-reduces as Fused. In backward the block travels again, now followed by
// its accumulator A_q = Σ (dS tile)ᵀ·I over the ranks visited; after W steps
// the accumulator arrives at rank q complete: that is dT_q. Each step sends
// the accumulator while the step's last image-gradient GEMM runs.
//
// Flops: 4 GEMMs of 2·b·N·d (tiles are recomputed in backward), like Tiled;
// memory: O(b·tile + b·d).
type ringClip[T blas.Float] struct {
	comm mpi.Comm
	tile int
	k    kernels[T]

	// bufs hold two packed blocks [A (b×d) | T (b×d)]: the one being
	// computed on and the one being received.
	bufs  [2][]T
	x, dt []T // b×tile logits / gradients
	softmaxStats
}

func (a *ringClip[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	b, n, d, w, r := st.b, st.n, st.d, st.w, st.rank
	bd := b * d
	scale, bias := lg.Scale, 0.0
	if lg.HasBias {
		bias = lg.Bias
	}
	tile := a.tile
	if tile == 0 {
		tile = defaultRingTile
	}
	tile = min(tile, b)
	for i := range a.bufs {
		a.bufs[i] = grow(a.bufs[i], 2*bd)
	}
	a.x = grow(a.x, b*tile)
	a.reset(b, n)
	right, left := (r+1)%w, (r+w-1)%w
	diag0 := r * b

	// Forward: text blocks travel, statistics accumulate.
	cur, next := a.bufs[0], a.bufs[1]
	copy(cur[bd:], txt)
	for k := 0; k < w; k++ {
		q := (r - k + w) % w
		var req mpi.Request
		if k < w-1 {
			var err error
			if req, err = mpi.Isendrecv(a.comm, next[bd:], left, cur[bd:], right); err != nil {
				return Result{}, fmt.Errorf("loss: ring shift of text features: %w", err)
			}
		}
		tq := cur[bd:]
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			j0 := q*b + c0
			blas.Gemm(blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[c0*d:], d, 0, a.x, cw)
			stats(&a.k, a.x, cw, b, cw, scale, bias, a.rowM, a.rowS, a.colM[j0:], a.colS[j0:])
			for i := max(0, j0-diag0); i < b && diag0+i < j0+cw; i++ {
				a.diag[i] = scale*float64(a.x[i*cw+diag0+i-j0]) + bias
			}
		}
		if req != nil {
			if err := req.Wait(); err != nil {
				return Result{}, fmt.Errorf("loss: ring shift of text features: %w", err)
			}
			cur, next = next, cur
		}
	}
	lossSum, err := a.complete(a.comm, diag0)
	if err != nil {
		return Result{}, err
	}
	if !st.backward {
		return a.forward(a.comm, st, lossSum)
	}

	// Backward: the block starts again from its owner, with an empty
	// accumulator, and travels W steps, the last one carrying only the
	// finished accumulator home.
	c, f, split := a.backward(st, scale)
	if split {
		a.dt = grow(a.dt, b*tile)
	}
	var rowX, rowB float64
	cur, next = a.bufs[0], a.bufs[1]
	copy(cur[bd:], txt)
	for k := 0; k < w; k++ {
		q := (r - k + w) % w
		acc, tq := cur[:bd], cur[bd:]
		accBeta := T(1)
		if k == 0 {
			accBeta = 0
		}
		var req mpi.Request
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			j0 := q*b + c0
			blas.Gemm(blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[c0*d:], d, 0, a.x, cw)
			var dt []T
			if split {
				dt = a.dt
			}
			sx, sb := grad(&a.k, a.x, dt, a.x, cw, b, cw, j0, diag0, scale, bias, c, c,
				a.rowM, a.rowS, a.colM[j0:], a.colS[j0:], a.colX[j0:], a.colB[j0:])
			rowX += sx
			rowB += sb
			src := a.x
			if split {
				src = dt
			}
			blas.Gemm(blas.Trans, blas.NoTrans, cw, d, b, T(f), src, cw, img, d, accBeta, acc[c0*d:], d)
			if c0+cw == b {
				// The accumulator is complete for this rank: send it on
				// (with the text block, except on the last step, where the
				// accumulator goes home straight into dTxt) while the last
				// image-gradient GEMM runs.
				var err error
				switch {
				case w == 1:
					copy(dTxt, acc)
				case k < w-1:
					req, err = mpi.Isendrecv(a.comm, next, left, cur, right)
				default:
					req, err = mpi.Isendrecv(a.comm, dTxt, left, acc, right)
				}
				if err != nil {
					return Result{}, fmt.Errorf("loss: ring shift of text gradients: %w", err)
				}
			}
			beta := T(1)
			if k == 0 && c0 == 0 {
				beta = 0
			}
			blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, cw, T(f), a.x, cw, tq[c0*d:], d, beta, dImg, d)
		}
		if req != nil {
			if err := req.Wait(); err != nil {
				return Result{}, fmt.Errorf("loss: ring shift of text gradients: %w", err)
			}
			cur, next = next, cur
		}
	}
	return a.finish(a.comm, st, lossSum, rowX, rowB)
}
