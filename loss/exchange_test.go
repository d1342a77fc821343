package loss

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
)

// errWaitInjected is what trackComm's failing request reports.
var errWaitInjected = errors.New("injected failure of a transfer")

// trackComm counts the transfers of its rank that are in flight: started
// by Isendrecv and not yet completed by Wait or by Test reporting done. Its
// request number FailWait (counted from 1; 0: none) completes with
// errWaitInjected instead of its own result, as a transfer that failed
// would.
type trackComm struct {
	mpi.Comm
	FailWait         int
	started, pending int
}

type trackedRequest struct {
	c    *trackComm
	r    mpi.Request
	n    int // its number
	done bool
	err  error
}

func (q *trackedRequest) finish(err error) error {
	if !q.done {
		q.done = true
		q.c.pending--
		if q.n == q.c.FailWait {
			err = errWaitInjected
		}
		q.err = err
	}
	return q.err
}

func (q *trackedRequest) Wait() error {
	if q.done {
		return q.err
	}
	return q.finish(q.r.Wait())
}

func (q *trackedRequest) Test() (bool, error) {
	if q.done {
		return true, q.err
	}
	done, err := q.r.Test()
	if !done {
		return false, nil
	}
	return true, q.finish(err)
}

func (c *trackComm) track(r mpi.Request, err error) (mpi.Request, error) {
	if err != nil {
		return r, err
	}
	c.started++
	c.pending++
	return &trackedRequest{c: c, r: r, n: c.started}, nil
}

func (c *trackComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (mpi.Request, error) {
	return c.track(c.Comm.IsendrecvF32(dst, from, src, to))
}

func (c *trackComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (mpi.Request, error) {
	return c.track(c.Comm.IsendrecvF64(dst, from, src, to))
}

// runTracked runs one call of the case on every rank of a group of w; rank
// bad fails the start of its transfer number failStart, or the completion
// of its transfer number failWait (0: neither). The failure hook aborts
// the group, as AbortJob does. It returns every rank's error, the
// transfers each rank started, and how many were still in flight when
// the call returned; it fails the test if the ranks do not all return
// within 10 s.
func runTracked(t *testing.T, fc faultCase, w, bad, failStart, failWait int) (errs []error, started, pending []int) {
	t.Helper()
	const b, d = 5, 4
	p := newProblem(5, w, b, d, 10)
	p.lg = Logit{Scale: 10, Bias: -2, HasBias: true}
	errs, started, pending = make([]error, w), make([]int, w), make([]int, w)
	hook := func(c mpi.Comm, f *mpi.Failure) error {
		c.Abort(1)
		return f
	}
	var wg sync.WaitGroup
	for r, g := range mpi.NewGroup(w) {
		tc := &trackComm{Comm: g}
		fcomm := &mpitest.FaultComm{Comm: tc, OnlyIsendrecv: true}
		if r == bad {
			fcomm.FailAt, tc.FailWait = failStart, failWait
		}
		c := mpi.WithFailHook(fcomm, hook)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fc.call(c, p, r)
			started[r], pending[r] = tc.started, tc.pending
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("rank %d failing start %d / wait %d: the ranks did not all return within 10 s", bad, failStart, failWait)
	}
	return errs, started, pending
}

// TestNoTransferLeftInFlight: when the start of a ring transfer fails on
// one rank, or a transfer completes with an error, while other transfers
// of the call are in flight, the call completes them before it returns, on
// every rank: none of its buffers is left to the communicator (the next
// call would reuse them while MPI still reads or writes them). Each start
// and each completion of every rank is failed in turn, for every loss, at
// W = 2, 3, 4, forward and forward-backward.
func TestNoTransferLeftInFlight(t *testing.T) {
	for _, fc := range faultCases() {
		for _, w := range []int{2, 3, 4} {
			name := fmt.Sprintf("%s/backward=%v/w=%d", fc.name, fc.backward, w)
			t.Run(name, func(t *testing.T) {
				errs, started, pending := runTracked(t, fc, w, 0, 0, 0)
				for r, err := range errs {
					if err != nil || pending[r] != 0 {
						t.Fatalf("without a fault, rank %d: %v, %d transfers in flight at return", r, err, pending[r])
					}
				}
				if started[0] == 0 {
					t.Logf("no transfers")
					return
				}
				t.Logf("%d transfers per rank; the start and the completion of each failed in turn on each rank", started[0])
				for bad := range w {
					for k := 1; k <= started[bad]; k++ {
						for _, how := range []string{"start", "wait"} {
							fs, fw := k, 0
							if how == "wait" {
								fs, fw = 0, k
							}
							errs, _, pending := runTracked(t, fc, w, bad, fs, fw)
							want := error(mpitest.ErrInjected)
							if how == "wait" {
								want = errWaitInjected
							}
							if !errors.Is(errs[bad], want) {
								t.Errorf("rank %d failing the %s of transfer %d: it returned %v, want the injected error", bad, how, k, errs[bad])
							}
							for r := range w {
								if pending[r] != 0 {
									t.Errorf("rank %d failing the %s of transfer %d: rank %d returned (%v) with %d transfers in flight", bad, how, k, r, errs[r], pending[r])
								}
							}
						}
					}
				}
			})
		}
	}
}

// pendingRequest never completes; it counts the Test calls it gets.
type pendingRequest struct{ tests int }

func (q *pendingRequest) Wait() error         { return nil }
func (q *pendingRequest) Test() (bool, error) { q.tests++; return false, nil }

// TestGemmPanels: with a transfer in flight, gemm computes C in panels of
// rows with a poll between them, and the result is blas.Gemm's, for every
// transposition and a row count that the panels do not divide.
func TestGemmPanels(t *testing.T) {
	defer func(f float64, r int) { pollFlops, minPanelRows = f, r }(pollFlops, minPanelRows)
	const m, n, k = 100, 7, 5
	pollFlops, minPanelRows = 2*32*n*k, 32 // panels of 32 rows: 4 of them for 100
	rnd := newProblem(1, 1, m, k, 1)
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			ta, tb, lda, ldb := blasT(tA), blasT(tB), k, n
			if tA {
				lda = m
			}
			if tB {
				ldb = k
			}
			a, b := rnd.img[:m*k], rnd.txt[:k*n]
			want := make([]float64, m*n)
			got := make([]float64, m*n)
			for i := range got {
				want[i], got[i] = float64(i%5), float64(i%5)
			}
			blasGemm(ta, tb, m, n, k, 1.5, a, lda, b, ldb, 0.5, want, n)
			q := &pendingRequest{}
			e := &exchanges{}
			e.slot[0].req, e.slot[0].used = q, true
			gemm(e, ta, tb, m, n, k, 1.5, a, lda, b, ldb, 0.5, got, n)
			if s := diff(fmt.Sprintf("tA=%v tB=%v", tA, tB), got, want, 1e-14, 0); s != "" {
				t.Error(s)
			}
			// One poll before, three between the four panels, one after.
			if q.tests != 5 {
				t.Errorf("tA=%v tB=%v: %d polls, want 5", tA, tB, q.tests)
			}
		}
	}
}

func blasGemm(tA, tB blas.Transpose, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	blas.Gemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}
