package loss

import (
	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// ringClip is the one-block algorithm with the text features travelling
// around a ring instead of being gathered (after Inf-CL's ring, Wang et al.
// 2024, and ring attention): no rank ever holds more than two text blocks.
//
// Forward: rank r sends to r+1 and receives from r-1. At step k it holds
// text block q = r-k (mod W) and computes the logit tiles of I_r·T_qᵀ and
// their row and column statistics. The column statistics are completed by
// the same two all-reduces as Fused.
//
// Backward visits the blocks in the other direction, starting with the one
// forward ended with, so that it needs no transfer to begin and ends with
// the rank's own block: visit j (j = 0..W-1) works on block q = r+1+j, and
// text blocks travel to the left (r-1) for the left neighbour's next visit.
// The gradient of block q, dT_q = Σ over ranks of f·dSᵀ·I, is summed along
// the path q-1, q-2, ..., q (the ranks that visit q, in that order), one
// visit behind: rank r computes its contribution during visit j, adds the
// partial sum that rank r+1 sent during its visit j-1, and sends the sum on
// to the left, to be added during the next visit. The last visitor of
// block q is rank q itself, so the sum ends at home, with nothing left to
// send. Per rank and step, W-1 text blocks travel in forward and W-2 text
// blocks and W-1 partial sums in backward.
//
// Every transfer is cut into the same pieces as the block's tiles
// (chunking: up to maxChunks pieces of whole tiles). A piece of a text
// block is waited for just before its first tile and passed on at once; a
// piece of a partial sum leaves as soon as its last tile is done, and the
// piece it adds to arrived during the previous visit. So the transfers run
// behind the GEMMs (which poll them, see gemm), and only the first and the
// last piece of a block can be exposed.
//
// Flops: 4 GEMMs of 2·b·N·d (tiles are recomputed in backward), like Tiled;
// memory: O(b·tile + b·d) (ringBlocks).
type ringClip[T blas.Float] struct {
	comm mpi.Comm
	tile int
	// keep: Fused with W > 1. The logits of every block are kept from
	// forward (b×N) instead of recomputed tile by tile in backward: 3
	// GEMMs of 2·b·N·d instead of 4, in O(b·N + b·d) memory, with the
	// ring's transfers hidden behind them.
	keep bool
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
// caller's buffers: those of a SigLIP stream of W-1 hops (two text blocks,
// two partial sums and the partial sum received; one of each for W = 2;
// none for W = 1).
func ringBlocks(w int) int64 { return streamBlocks(w - 1) }

func (a *ringClip[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	b, n, d, w, r := st.b, st.n, st.d, st.w, st.rank
	bd := b * d
	scale, bias := lg.Scale, 0.0
	if lg.HasBias {
		bias = lg.Bias
	}
	tile := a.tile
	if tile == 0 || a.keep {
		tile = ringTile(b)
	}
	tile = min(tile, b)
	// xt returns the logit tile of global columns j0..j0+cw and its
	// leading dimension: a column slice of the kept b×N block, or the
	// reused b×tile one.
	xt := func(buf []T, j0, cw int) ([]T, int) {
		if a.keep {
			return buf[j0:], n
		}
		return buf, cw
	}
	xlen := b * tile
	if a.keep {
		xlen = b * n
	}
	ch := newChunking(b, tile)
	// Buffers (ringBlocks): a second text block only for W > 2 (with two
	// ranks the block received in forward is all backward needs).
	if w > 1 {
		a.tb[0] = grow(a.tb[0], bd)
	}
	if w > 2 {
		a.tb[1] = grow(a.tb[1], bd)
	}
	a.x = grow(a.x, xlen)
	a.reset(b, n)
	a.ex.comm = a.comm
	right, left := (r+1)%w, (r+w-1)%w
	diag0 := r * b
	shift := func(tx *pieces, i int, dst, src []T, from, to int, what string) error {
		return shiftPiece(&a.ex, ch, d, tx, i, dst, from, src, to, "ring shift of ", what)
	}
	await := func(tx *pieces, i int, what string) error { return a.ex.awaitPiece(tx, i, "ring shift of ", what) }

	// Forward: text blocks travel right, in pieces; statistics accumulate.
	// cur is the block computed on (the caller's txt first), in its pieces
	// arriving; each piece is passed on as soon as it is here, into
	// a.tb[nb] on the right neighbour.
	cur, nb := txt, 0
	in := nopieces()
	for k := 0; k < w; k++ {
		q := (r - k + w) % w
		next := nopieces()
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			if i := ch.piece(c0); ch.starts(c0) {
				if err := await(&in, i, "text features"); err != nil {
					return Result{}, err
				}
				if k < w-1 {
					if err := shift(&next, i, a.tb[nb], cur, left, right, "text features"); err != nil {
						return Result{}, err
					}
				}
			}
			j0 := q*b + c0
			x, ld := xt(a.x, j0, cw)
			gemm(&a.ex, blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, cur[c0*d:], d, 0, x, ld)
			stats(&a.k, x, ld, b, cw, scale, bias, a.rowM, a.rowS, a.colM[j0:], a.colS[j0:])
			for i := max(0, j0-diag0); i < b && diag0+i < j0+cw; i++ {
				a.diag[i] = scale*float64(x[i*ld+diag0+i-j0]) + bias
			}
		}
		if k < w-1 {
			cur, nb, in = a.tb[nb], 1-nb, next
		}
	}
	lossSum, err := a.complete(a.comm, diag0)
	if err != nil {
		return Result{}, err
	}
	if !st.backward {
		return a.forward(a.comm, st, lossSum)
	}

	// Backward: cur holds block r+1 (r itself when W = 1), all here.
	c, f, split := a.backward(st, scale)
	if split {
		a.dt = grow(a.dt, xlen)
	}
	if w > 1 {
		a.in = grow(a.in, bd)
		a.part[0] = grow(a.part[0], bd)
	}
	if w > 2 {
		a.part[1] = grow(a.part[1], bd)
	}
	var rowX, rowB float64
	part := nopieces() // the partial sums arriving in a.in, piece by piece
	for j := 0; j < w; j++ {
		q := (r + 1 + j) % w
		tq := cur
		if j == w-1 {
			tq = txt
		}
		acc := dTxt
		if j < w-1 {
			acc = a.part[j%2]
		}
		next, nextPart := nopieces(), nopieces()
		for c0 := 0; c0 < b; c0 += tile {
			cw := min(tile, b-c0)
			i := ch.piece(c0)
			if ch.starts(c0) {
				if err := await(&in, i, "text features"); err != nil {
					return Result{}, err
				}
				// The left neighbour visits this block next, unless it
				// is its own.
				if j < w-2 {
					if err := shift(&next, i, a.tb[nb], tq, right, left, "text features"); err != nil {
						return Result{}, err
					}
				}
			}
			j0 := q*b + c0
			x, ld := xt(a.x, j0, cw)
			if !a.keep {
				gemm(&a.ex, blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[c0*d:], d, 0, x, ld)
			}
			var dt []T
			if split {
				dt, _ = xt(a.dt, j0, cw)
			}
			sx, sb := grad(&a.k, x, dt, x, ld, b, cw, j0, diag0, scale, bias, c, c,
				a.rowM, a.rowS, a.colM[j0:], a.colS[j0:], a.colX[j0:], a.colB[j0:])
			rowX += sx
			rowB += sb
			src := x
			if split {
				src = dt
			}
			gemm(&a.ex, blas.Trans, blas.NoTrans, cw, d, b, T(f), src, ld, img, d, 0, acc[c0*d:], d)
			beta := T(1)
			if j == 0 && c0 == 0 {
				beta = 0
			}
			gemm(&a.ex, blas.NoTrans, blas.NoTrans, b, d, cw, T(f), x, ld, tq[c0*d:], d, beta, dImg, d)
			if lo, hi := ch.rows(i); c0+cw == hi && w > 1 {
				// The piece of block q's gradient is complete here: add
				// the ranks' before this one, and send it on to the left
				// (unless this rank is the block's own, the last).
				if j > 0 {
					if err := await(&part, i, "text gradients"); err != nil {
						return Result{}, err
					}
					addTo(&a.k, rowsOf(acc, lo, hi, d), rowsOf(a.in, lo, hi, d))
				}
				if j < w-1 {
					if err := shift(&nextPart, i, a.in, acc, right, left, "text gradients"); err != nil {
						return Result{}, err
					}
				}
			}
		}
		in, part = next, nextPart
		if j < w-2 {
			cur, nb = a.tb[nb], 1-nb
		}
	}
	return a.finish(a.comm, st, lossSum, rowX, rowB)
}
