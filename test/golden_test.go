package test

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

var printWorlds = flag.Bool("golden.worlds", false, "print the world sizes of the golden cases and exit (for the Makefile)")

// tiles are the Tiled algorithm's tile widths the golden cases run with: 1
// and 3 straddle rank blocks (b = 4, 7), 0 is the default.
var tiles = []int{0, 1, 3}

// caseRun is one way to compute a case: an algorithm (clip) or a
// distribution method (siglip), with its tile.
type caseRun struct {
	name   string
	run    func(comm mpi.Comm) ([]string, error)
	single func() ([]string, error)
}

// caseRuns lists the runs of a case: every ClipLoss algorithm (the tiled and
// ring ones also with tiles that straddle rank blocks), or the case's own
// SigLIP method and then every other one, which must give the same numbers.
func caseRuns(c *Case) []caseRun {
	var runs []caseRun
	if c.LossKind == "siglip" {
		runs = append(runs, caseRun{"impl=case", func(comm mpi.Comm) ([]string, error) { return RunSigLip(comm, c, 0, false) },
			func() ([]string, error) { return RunSigLipSingle(c) }})
		for _, m := range loss.SigLipImpls() {
			runs = append(runs, caseRun{"impl=" + m.String(), func(comm mpi.Comm) ([]string, error) { return RunSigLip(comm, c, m, true) },
				func() ([]string, error) { return nil, nil }})
			runs = append(runs, caseRun{"impl=" + m.String() + "/amp_bf16", func(comm mpi.Comm) ([]string, error) { return RunSigLipBF16(comm, c, m) },
				func() ([]string, error) { return nil, nil }})
		}
		return runs
	}
	for _, a := range loss.Algorithms() {
		runs = append(runs, caseRun{"algo=" + a.String() + "/amp_bf16", func(comm mpi.Comm) ([]string, error) { return RunClipBF16(comm, c, a) },
			func() ([]string, error) { return nil, nil }})
		ts := []int{0}
		if a == loss.Tiled || a == loss.Ring {
			ts = tiles
		}
		for _, tile := range ts {
			name := "algo=" + a.String()
			if tile != 0 {
				name = fmt.Sprintf("algo=%s/tile=%d", a, tile)
			}
			runs = append(runs, caseRun{name, func(comm mpi.Comm) ([]string, error) { return RunClip(comm, c, a, tile) },
				func() ([]string, error) { return RunClipSingle(c, a, tile) }})
		}
	}
	return runs
}

func loadCases(t *testing.T) []*Case {
	t.Helper()
	cases, err := LoadCases(GoldenDir())
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

// knownKind fails a case whose loss kind this harness does not run: a
// golden case that is not checked must not pass (DistillClipLoss's
// distill_* cases in ../shared/golden fail here until it is implemented;
// the repository's copy holds none).
func knownKind(t *testing.T, c *Case) {
	t.Helper()
	switch c.LossKind {
	case "clip", "siglip":
	default:
		t.Fatalf("%s: loss_kind %q: no implementation in this harness", c.TestName(), c.LossKind)
	}
}

// TestGoldenInProcess runs every golden case with W goroutine ranks of an
// in-process group, per algorithm, and the single_process outputs on one
// rank.
func TestGoldenInProcess(t *testing.T) {
	if *printWorlds {
		cases := loadCases(t)
		for _, w := range Worlds(cases) {
			fmt.Println(w)
		}
		os.Exit(0)
	}
	if world != nil {
		t.Skip("running under mpirun: TestGoldenMPI covers the cases")
	}
	for _, c := range loadCases(t) {
		t.Run(c.TestName(), func(t *testing.T) {
			knownKind(t, c)
			for _, run := range caseRuns(c) {
				t.Run(run.name, func(t *testing.T) {
					comms := mpi.NewGroup(c.WorldSize)
					bad := make([][]string, c.WorldSize)
					errs := make([]error, c.WorldSize)
					var wg sync.WaitGroup
					for r, comm := range comms {
						wg.Add(1)
						go func() {
							defer wg.Done()
							bad[r], errs[r] = run.run(comm)
						}()
					}
					wg.Wait()
					for r := range comms {
						if errs[r] != nil {
							t.Errorf("rank %d: %v", r, errs[r])
						}
						for _, s := range bad[r] {
							t.Errorf("rank %d: %s", r, s)
						}
					}
					bs, err := run.single()
					if err != nil {
						t.Errorf("single_process: %v", err)
					}
					for _, s := range bs {
						t.Errorf("single_process: %s", s)
					}
				})
			}
		})
	}
}

// TestGoldenMPI runs the golden cases whose world size is this mpirun's
// -np, one rank per process. Under plain go test it skips.
func TestGoldenMPI(t *testing.T) {
	if world == nil {
		t.Skip("not launched under mpirun with the mpi build tag: run `make test-golden`")
	}
	ran, other := 0, 0
	for _, c := range loadCases(t) {
		if c.WorldSize != world.Size() {
			other++ // `make test-golden` runs it under its own mpirun -np
			continue
		}
		ran++
		t.Run(c.TestName(), func(t *testing.T) {
			knownKind(t, c)
			for _, run := range caseRuns(c) {
				t.Run(run.name, func(t *testing.T) {
					bad, err := run.run(world)
					if err != nil {
						t.Fatalf("rank %d: %v", world.Rank(), err)
					}
					if len(bad) > 0 {
						t.Errorf("rank %d:\n%s", world.Rank(), strings.Join(bad, "\n"))
					}
				})
			}
		})
	}
	t.Logf("%d cases with world size %d; %d cases need other world sizes", ran, world.Size(), other)
	if ran == 0 {
		t.Errorf("no golden case has world size %d", world.Size())
	}
}
