package loss

import (
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

// exchange starts an Isendrecv on e's communicator (rank from's data into
// dst, src to rank to) and returns its slot. If it fails to start, nothing
// is in flight for it: it returns noXfer and the error.
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
		return noXfer, err
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
// transfer's result. wait(noXfer) returns nil.
func (e *exchanges) wait(i int) error {
	if i == noXfer {
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
	panels(e, tA, tB, m, n, k, lda, func(i0, mr, ai int) {
		blas.Gemm(tA, tB, mr, n, k, alpha, a[ai:], lda, b, ldb, beta, c[i0*ldc:], ldc)
	})
}

// panels runs an m×n×k GEMM as f(i0, mr, ai) over row panels of C: rows
// i0..i0+mr, whose op(A) rows begin at element ai of A; one panel when no
// exchange is in flight.
func panels(e *exchanges, tA, tB blas.Transpose, m, n, k, lda int, f func(i0, mr, ai int)) {
	if gemmHook != nil {
		gemmHook(tA, tB, m, n, k)
	}
	e.poll()
	rows := m
	if e.inFlight() && n > 0 && k > 0 {
		rows = max(minPanelRows, int(pollFlops/(2*float64(n)*float64(k))))
		rows = (rows + 31) / 32 * 32
	}
	for i0 := 0; i0 < m; i0 += rows {
		mr := min(rows, m-i0)
		// Row i of op(A) is row i of A (lda apart) or column i of A.
		ai := i0 * lda
		if tA == blas.Trans {
			ai = i0
		}
		f(i0, mr, ai)
		if i0+mr < m {
			e.poll()
		}
	}
	if rows < m {
		e.poll()
	}
}
