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
// Forward: rank r sends to r+1 and receives from r-1. At step k it holds
// text block q = r-k (mod W), passes it on with a non-blocking send/receive
// and, meanwhile, computes the logit tiles of I_r·T_qᵀ and their row and
// column statistics. The column statistics are completed by the same two
// all-reduces as Fused.
//
// Backward visits the blocks in the other direction, starting with the one
// forward ended with, so that it needs no transfer to begin and ends with
// the rank's own block: visit j (j = 0..W-1) works on block q = r+1+j, and
// text blocks travel to the left (r-1), each sent at the start of a visit
// for the left neighbour's next one. The gradient of block q,
// dT_q = Σ over ranks of f·dSᵀ·I, is summed along the path
// q-1, q-2, ..., q (the ranks that visit q, in that order), one step
// behind: rank r computes its contribution C_q during visit j, adds the
// partial sum P_q that rank r+1 sent at the end of its visit j-1 (it
// travelled during visit j), and sends C_q + P_q to the left at the end of
// visit j, to travel during the next visit. The last visitor of block q is
// rank q itself, so the sum ends at home, with nothing left to send. Every
// transfer has a whole visit (GEMMs, polled between panels, see exchanges)
// to hide behind; per rank and step, W-1 text blocks travel in forward and
// W-2 text blocks and W-1 partial sums in backward.
//
// Flops: 4 GEMMs of 2·b·N·d (tiles are recomputed in backward), like Tiled;
// memory: O(b·tile + b·d) (ringBlocks).
type ringClip[T blas.Float] struct {
	comm mpi.Comm
	tile int
	k    kernels[T]
	ex   exchanges

	// tb are the text blocks travelling (the one computed on and the one
	// being received); part are the backward's partial sums of a text
	// gradient (one travels while the next is computed), in the one
	// received.
	tb    [2][]T
	part  [2][]T
	in    []T
	x, dt []T // b×tile logits / gradients
	softmaxStats
}

// ringBlocks is the number of b×d blocks a ring step holds beyond the
// caller's buffers: with W > 2 two text blocks, two partial sums and the
// partial sum received; with W = 2 one of each; none with W = 1.
func ringBlocks(w int) int64 {
	switch {
	case w > 2:
		return 5
	case w == 2:
		return 3
	}
	return 0
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
	// Buffers (ringBlocks): a second text block only for W > 2 (with two
	// ranks the block received in forward is all backward needs).
	if w > 1 {
		a.tb[0] = grow(a.tb[0], bd)
	}
	if w > 2 {
		a.tb[1] = grow(a.tb[1], bd)
	}
	a.x = grow(a.x, b*tile)
	a.reset(b, n)
	a.ex.comm = a.comm
	right, left := (r+1)%w, (r+w-1)%w
	diag0 := r * b

	// Forward: text blocks travel right, statistics accumulate. cur is the
	// block computed on (the caller's txt first), a.tb[nb] the buffer the
	// next one arrives in.
	cur, nb := txt, 0
	for k := 0; k < w; k++ {
		q := (r - k + w) % w
		x := noExchange
		if k < w-1 {
			var err error
			if x, err = exchange(&a.ex, a.tb[nb], left, cur, right); err != nil {
				return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text features: %w", err))
			}
		}
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			j0 := q*b + c0
			gemm(&a.ex, blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, cur[c0*d:], d, 0, a.x, cw)
			stats(&a.k, a.x, cw, b, cw, scale, bias, a.rowM, a.rowS, a.colM[j0:], a.colS[j0:])
			for i := max(0, j0-diag0); i < b && diag0+i < j0+cw; i++ {
				a.diag[i] = scale*float64(a.x[i*cw+diag0+i-j0]) + bias
			}
		}
		if err := a.ex.wait(x); err != nil {
			return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text features: %w", err))
		}
		if k < w-1 {
			cur, nb = a.tb[nb], 1-nb
		}
	}
	lossSum, err := a.complete(a.comm, diag0)
	if err != nil {
		return Result{}, err
	}
	if !st.backward {
		return a.forward(a.comm, st, lossSum)
	}

	// Backward: cur holds block r+1 (r itself when W = 1).
	c, f, split := a.backward(st, scale)
	if split {
		a.dt = grow(a.dt, b*tile)
	}
	if w > 1 {
		a.in = grow(a.in, bd)
		a.part[0] = grow(a.part[0], bd)
	}
	if w > 2 {
		a.part[1] = grow(a.part[1], bd)
	}
	var rowX, rowB float64
	px := noExchange // the partial sum sent at the end of the last visit
	for j := 0; j < w; j++ {
		q := (r + 1 + j) % w
		tq := cur
		if j == w-1 {
			tq = txt
		}
		// The left neighbour visits this block next, unless it is its own.
		tx := noExchange
		if j < w-2 {
			var err error
			if tx, err = exchange(&a.ex, a.tb[nb], right, tq, left); err != nil {
				return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text features: %w", err))
			}
		}
		acc := dTxt
		if j < w-1 {
			acc = a.part[j%2]
		}
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			j0 := q*b + c0
			gemm(&a.ex, blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[c0*d:], d, 0, a.x, cw)
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
			gemm(&a.ex, blas.Trans, blas.NoTrans, cw, d, b, T(f), src, cw, img, d, 0, acc[c0*d:], d)
			beta := T(1)
			if j == 0 && c0 == 0 {
				beta = 0
			}
			gemm(&a.ex, blas.NoTrans, blas.NoTrans, b, d, cw, T(f), a.x, cw, tq[c0*d:], d, beta, dImg, d)
		}
		if err := a.ex.wait(tx); err != nil {
			return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text features: %w", err))
		}
		if j < w-2 {
			cur, nb = a.tb[nb], 1-nb
		}
		if j > 0 {
			// The partial sum of block q from the ranks before this one.
			if err := a.ex.wait(px); err != nil {
				return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text gradients: %w", err))
			}
			addTo(&a.k, acc, a.in)
		}
		px = noExchange
		if j < w-1 {
			if px, err = exchange(&a.ex, a.in, right, acc, left); err != nil {
				return Result{}, a.ex.drain(fmt.Errorf("loss: ring shift of text gradients: %w", err))
			}
		}
	}
	return a.finish(a.comm, st, lossSum, rowX, rowB)
}
