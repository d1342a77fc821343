package loss

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
)

// faultCase is a loss, by name, and whether the call is ForwardBackward.
type faultCase struct {
	name     string
	newLoss  func(c mpi.Comm, d int) stepper[float32]
	backward bool
}

// call makes the case's one loss call on comm with rank r's rows of p.
func (fc faultCase) call(c mpi.Comm, p *problem, r int) error {
	l := fc.newLoss(c, p.d)
	bd := p.b * p.d
	img, txt := convert[float32](p.img[r*bd:(r+1)*bd]), convert[float32](p.txt[r*bd:(r+1)*bd])
	if fc.backward {
		_, err := l.ForwardBackward(make([]float32, bd), make([]float32, bd), img, txt, p.lg)
		return err
	}
	_, err := l.Forward(img, txt, p.lg)
	return err
}

func faultCases() []faultCase {
	var cases []faultCase
	for _, backward := range []bool{false, true} {
		for _, a := range Algorithms() {
			opt := ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: a, Tile: 3}
			cases = append(cases, faultCase{"clip/" + a.String(), func(c mpi.Comm, d int) stepper[float32] {
				return NewClipLoss[float32](c, d, opt)
			}, backward})
		}
		for _, m := range SigLipImpls() {
			opt := SigLipOptions{Impl: m, Tile: 3}
			cases = append(cases, faultCase{"siglip/" + m.String(), func(c mpi.Comm, d int) stepper[float32] {
				return NewSigLipLoss[float32](c, d, opt)
			}, backward})
		}
	}
	return cases
}

// runFault runs one call of the case on every rank of a group of w, rank
// bad failing its call number failAt (0: none), with a hook that records
// the failures and aborts the group as AbortJob does. It returns every
// rank's error, the failures the hook saw and the communicating calls of
// each rank; it fails the test if the ranks do not all return within
// 10 s.
func runFault(t *testing.T, fc faultCase, w, bad, failAt int) (errs []error, seen []*mpi.Failure, calls []int) {
	t.Helper()
	const b, d = 5, 4
	p := newProblem(3, w, b, d, 10)
	p.lg = Logit{Scale: 10, Bias: -2, HasBias: true}
	errs, calls = make([]error, w), make([]int, w)
	var mu sync.Mutex
	hook := func(c mpi.Comm, f *mpi.Failure) error {
		mu.Lock()
		seen = append(seen, f)
		mu.Unlock()
		c.Abort(1)
		return f
	}
	var wg sync.WaitGroup
	for r, g := range mpi.NewGroup(w) {
		fcomm := &mpitest.FaultComm{Comm: g}
		if r == bad {
			fcomm.FailAt = failAt
		}
		c := mpi.WithFailHook(fcomm, hook)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fc.call(c, p, r)
			calls[r] = fcomm.Calls
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("rank %d failing call %d: the ranks did not all return within 10 s", bad, failAt)
	}
	return errs, seen, calls
}

// TestFailureEndsEveryRank: a communication failure on one rank only, at
// each communicating call of a step in turn (the agreement, the
// collectives, each start of a ring transfer) and on each rank in turn,
// ends the call on every rank, for every loss: the failing rank hands it to
// mpi.Fail once and returns the *mpi.Failure, the others return
// mpi.ErrAborted; nobody hangs.
func TestFailureEndsEveryRank(t *testing.T) {
	for _, fc := range faultCases() {
		for _, w := range []int{2, 3} {
			name := fmt.Sprintf("%s/backward=%v/w=%d", fc.name, fc.backward, w)
			t.Run(name, func(t *testing.T) {
				errs, seen, calls := runFault(t, fc, w, 0, 0)
				t.Logf("%d communicating calls per rank, each failed in turn on each rank", calls[1])
				for r, err := range errs {
					if err != nil || len(seen) != 0 {
						t.Fatalf("without a fault, rank %d: %v (failures %v)", r, err, seen)
					}
				}
				for bad := range w {
					for k := 1; k <= calls[bad]; k++ {
						errs, seen, _ := runFault(t, fc, w, bad, k)
						var f *mpi.Failure
						if len(seen) != 1 || seen[0].Rank != bad || !errors.Is(seen[0], mpitest.ErrInjected) {
							t.Errorf("rank %d failing call %d of %d: Fail called with %v, want once with rank %d's injected error", bad, k, calls[bad], seen, bad)
						}
						for r, err := range errs {
							if r == bad && (!errors.As(err, &f) || f.Rank != bad) {
								t.Errorf("rank %d failing call %d: it returned %v, want its *mpi.Failure", bad, k, err)
							}
							if r != bad && !errors.Is(err, mpi.ErrAborted) {
								t.Errorf("rank %d failing call %d: rank %d returned %v, want mpi.ErrAborted", bad, k, r, err)
							}
						}
					}
				}
			})
		}
	}
}
