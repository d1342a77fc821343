package clip

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
)

// trainSession is a short run that makes every kind of collective call the
// package makes: LoadShard, NewTrainer, Save, Load, two steps, Loss and
// Evaluate.
func trainSession(c mpi.Comm, l Loss[float32], dir string) error {
	cfg := testConfig(Linear, false)
	cfg.BatchSize = 4
	src := NewSynthetic(SyntheticConfig{Latent: 3, ImageDim: cfg.Model.ImageDim, TextDim: cfg.Model.TextDim, Noise: 0.3, Seed: 9}, 0, 40)
	train, err := LoadShard(c, src, 0, 30)
	if err != nil {
		return err
	}
	val, err := LoadShard(c, src, 30, 40)
	if err != nil {
		return err
	}
	tr, err := NewTrainer(c, cfg, l, Range(src, 0, 30))
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "ckpt")
	if err := tr.Save(path); err != nil {
		return err
	}
	if err := tr.Load(path); err != nil {
		return err
	}
	for range 2 {
		if _, err := tr.Step(); err != nil {
			return err
		}
	}
	n := train.Rows
	if _, err := tr.Loss(toT[float32](train.Image[:n*cfg.Model.ImageDim]), toT[float32](train.Text[:n*cfg.Model.TextDim])); err != nil {
		return err
	}
	_, err = tr.Evaluate(val)
	return err
}

// runSessionFault runs trainSession on a group of w ranks, rank bad failing
// its communicating call number failAt (0: none), with a hook that records
// the failures and aborts the group. It returns every rank's error, the
// failures and each rank's count of calls.
func runSessionFault(t *testing.T, w int, algo loss.Algorithm, bad, failAt int) (errs []error, seen []*mpi.Failure, calls []int) {
	t.Helper()
	calls = make([]int, w)
	var mu sync.Mutex
	hook := func(c mpi.Comm, f *mpi.Failure) error {
		mu.Lock()
		seen = append(seen, f)
		mu.Unlock()
		c.Abort(1)
		return f
	}
	dir := t.TempDir()
	var fcs []*mpitest.FaultComm
	for _, g := range mpi.NewGroup(w) {
		fc := &mpitest.FaultComm{Comm: g}
		if g.Rank() == bad {
			fc.FailAt = failAt
		}
		fcs = append(fcs, fc)
	}
	errs = onRanksWithin(t, w, 10*time.Second, func(g mpi.Comm) error {
		c := mpi.WithFailHook(fcs[g.Rank()], hook)
		l := loss.NewClipLoss[float32](c, testConfig(Linear, false).Model.EmbedDim, loss.ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: algo})
		err := trainSession(c, l, dir)
		calls[g.Rank()] = fcs[g.Rank()].Calls
		return err
	})
	return errs, seen, calls
}

// TestFailureEndsTraining: a collective that fails on one rank only, at
// each communicating call of a short training run in turn and on each rank
// in turn, ends the run on every rank within 10 s: the failing rank hands
// it to mpi.Fail once and returns its *mpi.Failure, every other rank
// returns mpi.ErrAborted.
func TestFailureEndsTraining(t *testing.T) {
	for _, algo := range []loss.Algorithm{loss.Fused, loss.Ring} {
		for _, w := range []int{2, 3} {
			t.Run(fmt.Sprintf("%v/w=%d", algo, w), func(t *testing.T) {
				errs, seen, calls := runSessionFault(t, w, algo, 0, 0)
				for r, err := range errs {
					if err != nil || len(seen) != 0 {
						t.Fatalf("without a fault, rank %d: %v (failures %v)", r, err, seen)
					}
				}
				t.Logf("%d communicating calls per rank, each failed in turn on each rank", calls[0])
				for bad := range w {
					for k := 1; k <= calls[bad]; k++ {
						errs, seen, _ := runSessionFault(t, w, algo, bad, k)
						if len(seen) != 1 || seen[0].Rank != bad || !errors.Is(seen[0], mpitest.ErrInjected) {
							t.Errorf("rank %d failing call %d of %d: Fail called with %v, want once with rank %d's injected error", bad, k, calls[bad], seen, bad)
						}
						for r, err := range errs {
							var f *mpi.Failure
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
