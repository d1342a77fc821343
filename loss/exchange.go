package loss

import (
	"fmt"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// exchanges are the non-blocking transfers (Isendrecv) one loss call has in
// flight. They serve two purposes:
//
//   - Progress: under MPI a transfer advances only while the process is
//     inside an MPI call, and no thread polls in the background (see
//     mpi.World). gemm splits a GEMM into panels while transfers are in
//     flight and calls poll (Request.Test) between them, so that the
//     transfers advance while the GEMM computes. The ring methods also cut
//     each block transfer into pieces (chunking), so that the tiles of a
//     block start as soon as their piece is here and a gradient's pieces
//     leave as soon as theirs are done.
//   - Clean error paths: a call must never return while MPI may still read
//     or write one of its buffers; the next call would reuse them. Every
//     return after a failure goes through drain, which completes every
//     transfer still in flight first.
//
// A transfer keeps its slot, with its result, until wait collects it, even
// after poll has seen it complete: the mpi.Request itself may be reused by
// the Comm's next Isendrecv as soon as Test reports done.
type exchanges struct {
	comm mpi.Comm
	slot [mpi.MaxRequests]struct {
		req  mpi.Request // nil once complete
		err  error       // its result, once complete
		used bool        // started and not yet collected by wait
	}
}

// noExchange is the slot index of "no transfer"; wait and drop accept it.
const noExchange = -1

// exchange starts an Isendrecv on e's communicator (rank from's data into
// dst, src to rank to) and returns its slot. If it fails to start, nothing
// is in flight for it: it returns noExchange and the error.
func exchange[T blas.Float](e *exchanges, dst []T, from int, src []T, to int) (int, error) {
	i := 0
	for i < len(e.slot) && e.slot[i].used {
		i++
	}
	if i == len(e.slot) {
		panic("loss: more exchanges in flight than mpi.MaxRequests")
	}
	req, err := mpi.Isendrecv(e.comm, dst, from, src, to)
	if err != nil {
		// A Request that failed to start is complete (mpi.Comm).
		return noExchange, err
	}
	s := &e.slot[i]
	s.req, s.err, s.used = req, nil, true
	return i, nil
}

// poll advances every transfer in flight without blocking (mpi.Request.Test)
// and records the result of those that completed.
func (e *exchanges) poll() {
	for i := range e.slot {
		s := &e.slot[i]
		if s.req == nil {
			continue
		}
		if done, err := s.req.Test(); done {
			s.req, s.err = nil, err
		}
	}
}

// inFlight reports whether a transfer has not yet completed.
func (e *exchanges) inFlight() bool {
	for i := range e.slot {
		if e.slot[i].req != nil {
			return true
		}
	}
	return false
}

// wait completes the transfer in slot i, frees the slot and returns the
// transfer's result. wait(noExchange) returns nil.
func (e *exchanges) wait(i int) error {
	if i == noExchange {
		return nil
	}
	s := &e.slot[i]
	if s.req != nil {
		s.err = s.req.Wait()
	}
	err := s.err
	s.req, s.err, s.used = nil, nil, false
	return err
}

// drain completes every transfer in flight and frees every slot, then
// returns err. Every return of a loss call after a failure passes through
// it, so that no buffer of the call is left to MPI. It waits: the other
// ranks' matching transfers were started in the same step and complete
// while those ranks wait for theirs (every Wait and Test advances all of a
// rank's transfers, as MPI's progress engine does).
func (e *exchanges) drain(err error) error {
	for i := range e.slot {
		if e.slot[i].used {
			e.wait(i)
		}
	}
	return err
}

// pollFlops is the work between two polls while transfers are in flight: a
// few milliseconds of GEMM at tens of GFLOP/s. A TCP socket's buffers hold
// that long of a link's traffic, so the link stays busy between polls, and
// each panel is large enough that re-packing a GEMM operand per panel
// costs little. (A variable for tests.)
var pollFlops = 2e8

// minPanelRows is the shortest panel. Each panel's blas.Gemm call packs
// the GEMM's other operand anew, and on panels of a few hundred rows that
// packing is a visible share of the work: Fused at W = 2, b = 4096, d = 512
// in shared memory took 1327 ms a step with panels of 192 rows and 1232 ms
// with panels of 512 (medians of three alternations in one sitting). At
// b = 1024 the panels of pollFlops are longer than this anyway. (A
// variable for tests.)
var minPanelRows = 512

// gemmHook, when set (by tests), sees every GEMM gemm computes.
var gemmHook func(tA, tB blas.Transpose, m, n, k int)

// gemm computes C = alpha·op(A)·op(B) + beta·C (row-major, as blas.Gemm).
// While transfers are in flight it computes C in panels of rows of about
// pollFlops each (at least minPanelRows) and polls the transfers between
// panels.
func gemm[T blas.Float](e *exchanges, tA, tB blas.Transpose, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	if gemmHook != nil {
		gemmHook(tA, tB, m, n, k)
	}
	e.poll()
	rows := m
	if e.inFlight() && n > 0 && k > 0 {
		rows = max(minPanelRows, int(pollFlops/(2*float64(n)*float64(k))))
		rows = (rows + 31) / 32 * 32
	}
	if rows >= m {
		blas.Gemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	for i0 := 0; i0 < m; i0 += rows {
		mr := min(rows, m-i0)
		// Row i of op(A) is row i of A (lda apart) or column i of A.
		ai := i0 * lda
		if tA == blas.Trans {
			ai = i0
		}
		blas.Gemm(tA, tB, mr, n, k, alpha, a[ai:], lda, b, ldb, beta, c[i0*ldc:], ldc)
		if i0+mr < m {
			e.poll()
		}
	}
	e.poll()
}

// maxChunks is the most pieces the ring methods cut a block transfer into.
// A block's tiles are computed as its pieces arrive and its gradient's
// pieces leave as soon as their tiles are done, so that only one piece's
// transfer is left exposed at either end of a visit.
const maxChunks = 4

// ringTile is the default tile width of the ring methods for b rows: a
// quarter of the block (whole multiples of 32), so that a block travels in
// maxChunks pieces, and at most 1024.
func ringTile(b int) int {
	return min(1024, (b+4*32-1)/(4*32)*32)
}

// chunking cuts a block of b rows into tiles of t rows (the last may be
// shorter) and groups g consecutive tiles into each of n pieces, n at most
// maxChunks.
type chunking struct{ b, t, g, n int }

func newChunking(b, t int) chunking {
	tiles := (b + t - 1) / t
	g := (tiles + maxChunks - 1) / maxChunks
	return chunking{b: b, t: t, g: g, n: (tiles + g - 1) / g}
}

// rows returns the rows of piece i.
func (c chunking) rows(i int) (lo, hi int) {
	lo = i * c.g * c.t
	return lo, min(c.b, lo+c.g*c.t)
}

// piece returns the piece that holds row r.
func (c chunking) piece(r int) int { return r / (c.g * c.t) }

// starts reports whether row r is the first row of its piece.
func (c chunking) starts(r int) bool { return r%(c.g*c.t) == 0 }

// pieces are the exchange slots of a transfer cut into pieces.
type pieces [maxChunks]int

func nopieces() pieces {
	var p pieces
	for i := range p {
		p[i] = noExchange
	}
	return p
}

// shiftPiece starts the transfer of piece i of ch (rows of width d): those
// rows of src to rank to and, from rank from, into dst; tx[i] holds its
// slot. If it fails to start, it completes every transfer in flight
// (drain) and returns the error as "loss: <kind><what>: ...".
func shiftPiece[T blas.Float](e *exchanges, ch chunking, d int, tx *pieces, i int, dst []T, from int, src []T, to int, kind, what string) error {
	lo, hi := ch.rows(i)
	var err error
	if tx[i], err = exchange(e, rowsOf(dst, lo, hi, d), from, rowsOf(src, lo, hi, d), to); err != nil {
		return e.drain(fmt.Errorf("loss: %s%s: %w", kind, what, err))
	}
	return nil
}

// awaitPiece waits for the transfer tx[i] and clears the slot; a failure
// is returned as shiftPiece returns one.
func (e *exchanges) awaitPiece(tx *pieces, i int, kind, what string) error {
	err := e.wait(tx[i])
	tx[i] = noExchange
	if err != nil {
		return e.drain(fmt.Errorf("loss: %s%s: %w", kind, what, err))
	}
	return nil
}

// rowsOf returns rows lo..hi of a row-major block of width d.
func rowsOf[T any](x []T, lo, hi, d int) []T { return x[lo*d : hi*d] }
