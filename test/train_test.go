package test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/mpi"
)

// The training tests run twice: with W goroutine ranks under plain go test
// (TestTrain...), and with the ranks of mpirun (TestTrainMPI..., make
// test-train). Each compares a distributed run with a single-process one
// that every rank computes itself on mpi.Self().

// trainOnRanks runs fn on every rank of an in-process group of size w and
// fails the test if they do not finish within a minute (a hang).
func trainOnRanks(t *testing.T, w int, fn func(c mpi.Comm) error) []error {
	t.Helper()
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fn(c)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the ranks did not finish within a minute: a hang")
	}
	return errs
}

// needWorld skips a test that needs mpirun.
func needWorld(t *testing.T) mpi.Comm {
	t.Helper()
	if world == nil {
		t.Skip("needs several MPI processes: built with -tags mpi and started by mpirun (make test-train)")
	}
	return world
}

// equivalenceTol is the tolerance on weights and losses between W ranks
// with b rows each and one process with W·b rows, after a few AdamW steps:
// the two compute the same sums in another order, so float64 gradients
// differ by ~1e-16 relative; AdamW's update m/(sqrt(v)+eps) is scale-free
// and passes such differences on unamplified (≈ lr·1e-15 per step), and
// the losses are O(1). Measured (gonum and OpenBLAS): ≤ 2e-14; 1e-11
// leaves room for other BLAS blockings. float32 runs carry 6e-8 relative
// rounding through the same path; measured ≤ 2e-7 on weights of order 1:
// 1e-5.
func equivalenceTol(dtype string) float64 {
	if dtype == "float32" {
		return 1e-5
	}
	return 1e-11
}

type equivCase struct {
	w     int
	head  clip.HeadKind
	loss  string
	dtype string
	accum int
}

func (c equivCase) String() string {
	return fmt.Sprintf("w=%d/head=%v/loss=%s/accum=%d/%s", c.w, c.head, c.loss, c.accum, c.dtype)
}

var equivCases = []equivCase{
	{2, clip.Linear, "local_gwg", "float64", 1},
	{2, clip.MLP, "local_gwg", "float64", 1},
	{3, clip.MLP, "global_gwg", "float64", 1},
	{3, clip.Linear, "local_gwg", "float64", 2},
	{2, clip.MLP, "siglip", "float64", 1},
	{2, clip.MLP, "local_gwg", "float32", 2},
}

// equivalenceSpecs returns the distributed run of a case and its
// single-process twin: 4 epochs of one step each, so that every step's
// global batch is all rows in both runs (the order of rows within a batch
// changes nothing but rounding).
func equivalenceSpecs(c equivCase, w int) (dist, single TrainSpec) {
	const b = 6
	dist = TrainSpec{Cfg: TrainSmall(c.head, b/c.accum, 4), Loss: c.loss, Src: TrainSynthetic(w * b), Rows: w * b}
	dist.Cfg.AccumFreq = c.accum
	single = dist
	single.Cfg = TrainSmall(c.head, w*b, 4)
	return dist, single
}

func runSpec(comm mpi.Comm, dtype string, s TrainSpec) (*TrainResult, error) {
	if dtype == "float32" {
		return RunTrain[float32](comm, s)
	}
	return RunTrain[float64](comm, s)
}

// TestTrainEquivalence: W ranks with b rows each train exactly like one
// process with W·b rows (DDP semantics with gather_with_grad, and SigLIP),
// with and without GradCache accumulation.
func TestTrainEquivalence(t *testing.T) {
	for _, c := range equivCases {
		t.Run(c.String(), func(t *testing.T) {
			dist, single := equivalenceSpecs(c, c.w)
			want, err := runSpec(mpi.Self(), c.dtype, single)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]*TrainResult, c.w)
			errs := trainOnRanks(t, c.w, func(comm mpi.Comm) error {
				var err error
				got[comm.Rank()], err = runSpec(comm, c.dtype, dist)
				return err
			})
			for r, err := range errs {
				if err == nil {
					err = CompareTrain(got[r], want, equivalenceTol(c.dtype))
				}
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
			// The weights moved: the comparison is not of initial values.
			if d := MaxDiff(want.Params, mustInitial(t, single)); d < 1e-2 {
				t.Errorf("weights moved only %g in training", d)
			}
		})
	}
}

// mustInitial returns the initial weights of a spec's model.
func mustInitial(t *testing.T, s TrainSpec) []float64 {
	m := clip.NewModel[float64](s.Cfg.Model, s.Cfg.Seed)
	return append([]float64(nil), m.Params()...)
}

// globalModeTol is the tolerance, relative to the largest gradient, on the
// head gradients of W ranks against the single-process ones divided by W:
// the same float64 sums in another order (~1e-16 relative each), through
// a few GEMMs and the softmax. Measured ≤ 2e-16 (gonum and OpenBLAS);
// 1e-12 leaves room for other BLAS blockings, and is far below the
// (1 − 1/W) ≥ 1/2 relative difference of a gradient not divided by W.
const globalModeTol = 1e-12

// TestTrainGlobalModeGradients is the control of the equivalence test: in
// OpenCLIP's default global mode without gather_with_grad each rank
// back-propagates the global loss through its own rows' features only, so
// DDP's average of the head gradients is 1/W of the single-process ones,
// and differs from what gather_with_grad gives. (The logit scale is left
// out: every rank computes its whole gradient.)
func TestTrainGlobalModeGradients(t *testing.T) {
	const b = 6
	for _, w := range []int{2, 3} {
		t.Run(fmt.Sprintf("w=%d", w), func(t *testing.T) {
			single := TrainSpec{Cfg: TrainSmall(clip.MLP, w*b, 1), Loss: "global", Src: TrainSynthetic(w * b), Rows: w * b}
			want, layout, err := TrainGradients[float64](mpi.Self(), single)
			if err != nil {
				t.Fatal(err)
			}
			dist := single
			dist.Cfg.BatchSize = b
			got := map[string][][]float64{"global": make([][]float64, w), "global_gwg": make([][]float64, w)}
			for mode, g := range got {
				dist.Loss = mode
				errs := trainOnRanks(t, w, func(comm mpi.Comm) error {
					var err error
					g[comm.Rank()], _, err = TrainGradients[float64](comm, dist)
					return err
				})
				for r, err := range errs {
					if err != nil {
						t.Fatalf("%s: rank %d: %v", mode, r, err)
					}
				}
			}
			var heads []int // the elements of the heads' tensors
			for _, p := range layout {
				if p.Name != "logit_scale" {
					for i := range p.Size() {
						heads = append(heads, p.Offset+i)
					}
				}
			}
			scale := 0.0
			for _, i := range heads {
				scale = max(scale, math.Abs(want[i]))
			}
			for r := range w {
				var dGlobal, dGwg, dModes float64
				for _, i := range heads {
					dGlobal = max(dGlobal, math.Abs(got["global"][r][i]-want[i]/float64(w)))
					dGwg = max(dGwg, math.Abs(got["global_gwg"][r][i]-want[i]))
					dModes = max(dModes, math.Abs(got["global"][r][i]-got["global_gwg"][r][i]))
				}
				if dGlobal > globalModeTol*scale {
					t.Errorf("rank %d: global mode's head gradients differ from 1/%d of one process's by up to %.3g (largest gradient %.3g)", r, w, dGlobal, scale)
				}
				if dGwg > globalModeTol*scale {
					t.Errorf("rank %d: global_gwg's head gradients differ from one process's by up to %.3g (largest gradient %.3g)", r, dGwg, scale)
				}
				// The modes differ by (1 − 1/W)·want: at least half the
				// largest gradient (measured: exactly that).
				if dModes < 0.4*scale {
					t.Errorf("rank %d: global and global_gwg head gradients differ by only %.3g (largest gradient %.3g)", r, dModes, scale)
				}
			}
		})
	}
}

// accumTol: GradCache computes the same loss on the same features, and the
// heads' gradients as sums over micro-batches instead of one GEMM: float64
// rounding, as equivalenceTol (measured ≤ 1e-15).
const accumTol = 1e-11

// TestTrainAccumulation: a step accumulated over k micro-batches equals the
// full-batch step (gradients, then weights after several steps), on one
// rank and on W ranks.
func TestTrainAccumulation(t *testing.T) {
	for _, w := range []int{1, 2} {
		for _, k := range []int{2, 3, 6} {
			t.Run(fmt.Sprintf("w=%d/accum=%d", w, k), func(t *testing.T) {
				errs := trainOnRanks(t, w, func(comm mpi.Comm) error { return accumulation(comm, k) })
				for r, err := range errs {
					if err != nil {
						t.Errorf("rank %d: %v", r, err)
					}
				}
			})
		}
	}
}

// accumulation is collective: it compares accumulation over k micro-batches
// of 12/k rows per rank with one batch of 12, for 3 epochs of 2 steps.
func accumulation(comm mpi.Comm, k int) error {
	w := comm.Size()
	full := TrainSpec{Cfg: TrainSmall(clip.MLP, 12, 3), Loss: "local_gwg", Src: TrainSynthetic(24 * w), Rows: 24 * w}
	acc := full
	acc.Cfg.BatchSize, acc.Cfg.AccumFreq = 12/k, k
	a, err := RunTrain[float64](comm, acc)
	if err != nil {
		return err
	}
	f, err := RunTrain[float64](comm, full)
	if err != nil {
		return err
	}
	return CompareTrain(a, f, accumTol)
}

// TestTrainResume: a run that stops at step k, checkpoints, and continues
// in a fresh trainer loaded from the checkpoint gives exactly the losses
// and weights of the uninterrupted run, mid-epoch and at an epoch end.
func TestTrainResume(t *testing.T) {
	for _, at := range []int{4, 6} {
		t.Run(fmt.Sprintf("step=%d", at), func(t *testing.T) {
			dir := t.TempDir()
			errs := trainOnRanks(t, 2, func(comm mpi.Comm) error {
				return resume(comm, at, filepath.Join(dir, fmt.Sprintf("rank%d.ckpt", comm.Rank())))
			})
			for r, err := range errs {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
		})
	}
}

// resume is collective: 3 epochs of 3 steps (shuffled, accumulated over 2
// micro-batches, float32 as the program trains), interrupted at step at.
// Only rank 0's path is written and read.
func resume(comm mpi.Comm, at int, path string) error {
	w := comm.Size()
	s := TrainSpec{Cfg: TrainSmall(clip.MLP, 4, 3), Loss: "local_gwg", Src: TrainSynthetic(w*24 + 5), Rows: w*24 + 5}
	s.Cfg.AccumFreq = 2 // 8 rows a step: 3 steps of a rank's 24 or 25 rows
	whole, err := RunTrain[float32](comm, s)
	if err != nil {
		return err
	}
	s.ResumeAt, s.Checkpoint = at, path
	resumed, err := RunTrain[float32](comm, s)
	if err != nil {
		return err
	}
	if len(whole.Losses) != 9 {
		return fmt.Errorf("%d steps, want 9", len(whole.Losses))
	}
	// Exactly: the resumed run repeats the same operations on the same
	// values; any difference means state was lost.
	return CompareTrain(resumed, whole, 0)
}

// TestTrainDataErrors: every data error reaches every rank, with the same
// message naming the problem, and nothing hangs.
func TestTrainDataErrors(t *testing.T) {
	for _, c := range TrainDataCases(40) {
		t.Run(c.Name, func(t *testing.T) {
			path, err := c.Setup(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			errs := trainOnRanks(t, 2, func(comm mpi.Comm) error { return RunTrainData(comm, path, c.Batch) })
			checkDataErrors(t, errs, c.Want)
		})
	}
}

func checkDataErrors(t *testing.T, errs []error, want string) {
	t.Helper()
	for r, err := range errs {
		if !errors.Is(err, clip.ErrData) || !strings.Contains(err.Error(), want) {
			t.Errorf("rank %d: %v; want an ErrData error saying %q", r, err, want)
		}
	}
	if len(errs) == 2 && errs[0] != nil && errs[1] != nil && errs[0].Error() != errs[1].Error() {
		t.Errorf("ranks report different errors:\n  %v\n  %v", errs[0], errs[1])
	}
}

// TestTrainMPIEquivalence is TestTrainEquivalence on the ranks of mpirun.
func TestTrainMPIEquivalence(t *testing.T) {
	comm := needWorld(t)
	for _, c := range equivCases {
		c.w = comm.Size()
		t.Run(c.String(), func(t *testing.T) {
			dist, single := equivalenceSpecs(c, c.w)
			got, err := runSpec(comm, c.dtype, dist)
			if err != nil {
				t.Fatal(err)
			}
			want, err := runSpec(mpi.Self(), c.dtype, single)
			if err != nil {
				t.Fatal(err)
			}
			if err := CompareTrain(got, want, equivalenceTol(c.dtype)); err != nil {
				t.Errorf("rank %d: %v", comm.Rank(), err)
			}
		})
	}
}

// TestTrainMPIAccumulation is TestTrainAccumulation on the ranks of mpirun.
func TestTrainMPIAccumulation(t *testing.T) {
	comm := needWorld(t)
	for _, k := range []int{2, 3} {
		if err := accumulation(comm, k); err != nil {
			t.Errorf("accum=%d: rank %d: %v", k, comm.Rank(), err)
		}
	}
}

// TestTrainMPIResume is TestTrainResume on the ranks of mpirun: rank 0
// writes and reads the checkpoint, the others receive it.
func TestTrainMPIResume(t *testing.T) {
	comm := needWorld(t)
	for _, at := range []int{4, 6} {
		if err := resume(comm, at, filepath.Join(t.TempDir(), "x.ckpt")); err != nil {
			t.Errorf("step=%d: rank %d: %v", at, comm.Rank(), err)
		}
	}
}

// TestTrainMPIDataErrors is TestTrainDataErrors on the ranks of mpirun;
// each rank writes its own copy of the files.
func TestTrainMPIDataErrors(t *testing.T) {
	comm := needWorld(t)
	for _, c := range TrainDataCases(20 * comm.Size()) {
		t.Run(c.Name, func(t *testing.T) {
			path, err := c.Setup(t.TempDir())
			if err != nil {
				t.Fatal(err) // identical on every rank: all stop here
			}
			err = RunTrainData(comm, path, c.Batch)
			if !errors.Is(err, clip.ErrData) || !strings.Contains(err.Error(), c.Want) {
				t.Errorf("rank %d: %v; want an ErrData error saying %q", comm.Rank(), err, c.Want)
			}
		})
	}
}

// TestTrainMPICheckpointErrors: a corrupt checkpoint, which only rank 0
// reads, is an error on every rank.
func TestTrainMPICheckpointErrors(t *testing.T) {
	comm := needWorld(t)
	path := filepath.Join(t.TempDir(), "x.ckpt")
	s := TrainSpec{Cfg: TrainSmall(clip.Linear, 4, 1), Loss: "local_gwg", Src: TrainSynthetic(8 * comm.Size()), Rows: 8 * comm.Size()}
	l, _ := NewTrainLoss[float32](comm, 4, s.Loss)
	tr, err := clip.NewTrainer(comm, s.Cfg, l, s.Src)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Save(path); err != nil {
		t.Fatal(err)
	}
	if comm.Rank() == 0 {
		corrupt(t, path)
	}
	err = tr.Load(path)
	if !errors.Is(err, clip.ErrCheckpoint) || !strings.Contains(err.Error(), "rank 0:") || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("rank %d: %v; want rank 0's ErrCheckpoint saying corrupt", comm.Rank(), err)
	}
}

// corrupt flips one bit in the middle of a file. It reports a failure with
// t.Error, not t.Fatal, so that the caller's collective calls still run.
func corrupt(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err == nil {
		b[len(b)/2] ^= 0x10
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Error(err)
	}
}

// elasticAt is the step at which the elastic tests stop a run: mid-epoch
// (3 steps an epoch).
const elasticAt = 4

// elastic is one elastic resume: stopped after elasticAt steps on w ranks
// (in-process), continued on w2.
type elasticCase struct {
	w, w2, accum int
	dtype        string
}

func (c elasticCase) String() string {
	return fmt.Sprintf("w=%d→%d/accum=%d/%s", c.w, c.w2, c.accum, c.dtype)
}

// runElastic runs the case with in-process ranks and returns each resumed
// rank's result.
func runElastic(t *testing.T, c elasticCase) ([]*TrainResult, error) {
	path := filepath.Join(t.TempDir(), "x.ckpt")
	errs := trainOnRanks(t, c.w, func(comm mpi.Comm) error {
		var err error
		if c.dtype == "float32" {
			_, err = TrainUntil[float32](comm, ElasticSpec(c.w, c.accum), elasticAt, path)
		} else {
			_, err = TrainUntil[float64](comm, ElasticSpec(c.w, c.accum), elasticAt, path)
		}
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("before the resume, on %d ranks: rank %d: %v", c.w, r, err)
		}
	}
	got := make([]*TrainResult, c.w2)
	// The spec's batch size is replaced by the checkpoint's global batch
	// over w2 ranks: pass the w-rank spec.
	errs = trainOnRanks(t, c.w2, func(comm mpi.Comm) error {
		var err error
		if c.dtype == "float32" {
			got[comm.Rank()], err = ResumeTrain[float32](comm, ElasticSpec(c.w, c.accum), path)
		} else {
			got[comm.Rank()], err = ResumeTrain[float64](comm, ElasticSpec(c.w, c.accum), path)
		}
		return err
	})
	for _, err := range errs {
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// checkElastic compares a resumed run with the uninterrupted run of one
// process: the losses of the steps after the resume and the final weights,
// to the equivalence tolerances.
func checkElastic(got, whole *TrainResult, dtype string) error {
	want := &TrainResult{Losses: whole.Losses[elasticAt:], Params: whole.Params}
	if len(whole.Losses) != 9 {
		return fmt.Errorf("the uninterrupted run took %d steps, want 9", len(whole.Losses))
	}
	return CompareTrain(got, want, equivalenceTol(dtype))
}

// TestTrainElastic: a run stopped at a step on W in-process ranks and
// resumed from its checkpoint on W' ranks (1 to 4, the global batch of 12
// kept: batch size 12/W' per rank) takes the steps of the uninterrupted
// run of one process, to the tolerance of W ranks against one process.
func TestTrainElastic(t *testing.T) {
	var cases []elasticCase
	for _, w := range []int{1, 2, 3, 4} {
		for _, w2 := range []int{1, 2, 3, 4} {
			cases = append(cases, elasticCase{w, w2, 1, "float64"})
		}
	}
	cases = append(cases, elasticCase{2, 1, 1, "float32"}, elasticCase{1, 2, 1, "float32"},
		elasticCase{3, 2, 2, "float64"}, elasticCase{2, 3, 2, "float32"})
	whole := map[string]*TrainResult{}
	for _, dtype := range []string{"float32", "float64"} {
		res, err := runSpec(mpi.Self(), dtype, ElasticSpec(1, 1))
		if err != nil {
			t.Fatal(err)
		}
		whole[dtype] = res
	}
	for _, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			got, err := runElastic(t, c)
			if err != nil {
				t.Fatal(err)
			}
			for r, g := range got {
				if err := checkElastic(g, whole[c.dtype], c.dtype); err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
		})
	}
}

// TestTrainElasticIndivisible: resuming a checkpoint whose global batch
// (12) does not divide by the ranks (× accum freq) is an error, on every
// rank, that names both numbers.
func TestTrainElasticIndivisible(t *testing.T) {
	for _, c := range []struct {
		w2, accum int
		want      string
	}{
		{5, 1, "the checkpoint's global batch of 12 rows does not divide by 5 ranks"},
		{4, 2, "the checkpoint's global batch of 12 rows does not divide by 4 ranks × accum freq 2 = 8"},
	} {
		path := filepath.Join(t.TempDir(), "x.ckpt")
		errs := trainOnRanks(t, 2, func(comm mpi.Comm) error {
			_, err := TrainUntil[float64](comm, ElasticSpec(2, 1), elasticAt, path)
			return err
		})
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		errs = trainOnRanks(t, c.w2, func(comm mpi.Comm) error {
			s := ElasticSpec(2, 1)
			s.Cfg.AccumFreq = c.accum
			_, err := ResumeTrain[float64](comm, s, path)
			return err
		})
		for r, err := range errs {
			if !errors.Is(err, clip.ErrCheckpoint) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%d ranks, accum %d: rank %d: %v; want ErrCheckpoint saying %q", c.w2, c.accum, r, err, c.want)
			}
		}
	}
}

// TestTrainMPIElastic is the elastic resume across mpirun's W ranks and
// one process: a run of the W ranks stopped at a step and continued by
// rank 0 alone, and a run of rank 0 alone continued by the W ranks, each
// against the uninterrupted run of one process (float64 and float32).
func TestTrainMPIElastic(t *testing.T) {
	comm := needWorld(t)
	w := comm.Size()
	if 12%w != 0 {
		t.Skipf("the elastic runs have a global batch of 12, which %d ranks do not divide", w)
	}
	for _, dtype := range []string{"float64", "float32"} {
		whole, err := runSpec(mpi.Self(), dtype, ElasticSpec(1, 1))
		if err != nil {
			t.Fatal(err)
		}
		until := func(c mpi.Comm, path string) error {
			if dtype == "float32" {
				_, err := TrainUntil[float32](c, ElasticSpec(c.Size(), 1), elasticAt, path)
				return err
			}
			_, err := TrainUntil[float64](c, ElasticSpec(c.Size(), 1), elasticAt, path)
			return err
		}
		resume := func(c mpi.Comm, path string) (*TrainResult, error) {
			if dtype == "float32" {
				return ResumeTrain[float32](c, ElasticSpec(1, 1), path)
			}
			return ResumeTrain[float64](c, ElasticSpec(1, 1), path)
		}
		// W ranks, then rank 0 alone. Only rank 0 writes and reads the
		// checkpoint (its own temporary directory).
		path := filepath.Join(t.TempDir(), "x.ckpt")
		if err := until(comm, path); err != nil {
			t.Fatalf("%s: %d ranks until step %d: rank %d: %v", dtype, w, elasticAt, comm.Rank(), err)
		}
		if comm.Rank() == 0 {
			got, err := resume(mpi.Self(), path)
			if err == nil {
				err = checkElastic(got, whole, dtype)
			}
			if err != nil {
				t.Errorf("%s: %d ranks → 1: %v", dtype, w, err)
			} else {
				t.Logf("%s: %d ranks → 1 after step %d: losses %v, uninterrupted %v (largest difference %.3g)",
					dtype, w, elasticAt, got.Losses, whole.Losses[elasticAt:], MaxDiff(got.Losses, whole.Losses[elasticAt:]))
			}
		}
		// Rank 0 alone, then the W ranks (which wait in the first
		// collective of the resume until rank 0 has written it).
		path = filepath.Join(t.TempDir(), "y.ckpt")
		if comm.Rank() == 0 {
			if err := until(mpi.Self(), path); err != nil {
				t.Errorf("%s: one rank until step %d: %v", dtype, elasticAt, err)
			}
		}
		got, err := resume(comm, path)
		if err == nil {
			err = checkElastic(got, whole, dtype)
		}
		if err != nil {
			t.Errorf("%s: 1 → %d ranks: rank %d: %v", dtype, w, comm.Rank(), err)
		} else if comm.Rank() == 0 {
			t.Logf("%s: 1 → %d ranks after step %d: largest loss difference %.3g", dtype, w, elasticAt, MaxDiff(got.Losses, whole.Losses[elasticAt:]))
		}
	}
}
