package loss

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// threadCounts are the thread counts whose results must agree bit for bit.
var threadCounts = []int{1, 2, 3, 7}

// sameBits reports the first output of got that differs in any bit from
// want, or "".
func (o *outputs) sameBits(want *outputs) string {
	for _, f := range []struct {
		what      string
		got, want []float64
	}{{"loss", o.loss, want.loss}, {"grad scale", o.gs, want.gs}, {"grad bias", o.gb, want.gb},
		{"grad image", o.dImg, want.dImg}, {"grad text", o.dTxt, want.dTxt}} {
		for i := range f.want {
			if math.Float64bits(f.got[i]) != math.Float64bits(f.want[i]) {
				return fmt.Sprintf("%s[%d] = %.17g, want %.17g", f.what, i, f.got[i], f.want[i])
			}
		}
	}
	return ""
}

// TestThreadsBitIdentical checks that every algorithm of both losses gives
// the same bits with 1, 2, 3 and 7 threads, in both element types, on
// in-process ranks, with blocks of more rows than one kernel block and tiles
// that do not divide them.
func TestThreadsBitIdentical(t *testing.T) {
	p := newProblem(41, 3, 70, 24, 30)
	p.lg.Bias, p.lg.HasBias = -3, true
	t.Run("dtype=float32", func(t *testing.T) { checkThreadsBitIdentical[float32](t, p, FP32) })
	t.Run("dtype=float32/amp_bf16", func(t *testing.T) { checkThreadsBitIdentical[float32](t, p, AMPBF16) })
	t.Run("dtype=float64", func(t *testing.T) { checkThreadsBitIdentical[float64](t, p, FP32) })
}

func checkThreadsBitIdentical[T blas.Float](t *testing.T, p *problem, prec Precision) {
	for _, m := range modes {
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm, opt.Precision = algo, prec
			if algo == Tiled || algo == Ring {
				opt.Tile = 50
			}
			t.Run(fmt.Sprintf("mode=%s/algo=%s", m.Mode(), algo), func(t *testing.T) {
				var want *outputs
				for _, threads := range threadCounts {
					o := opt
					o.Threads = threads
					got := solve[T](t, p, o)
					if want == nil {
						want = got
					} else if s := got.sameBits(want); s != "" {
						t.Errorf("threads=%d differs from threads=1: %s", threads, s)
					}
				}
			})
		}
	}
	for _, impl := range SigLipImpls() {
		t.Run("siglip="+impl.String(), func(t *testing.T) {
			var want *outputs
			for _, threads := range threadCounts {
				got := solveWith(t, p, sigLoss[T](p, SigLipOptions{Impl: impl, Tile: 50, Threads: threads, Precision: prec}))
				if want == nil {
					want = got
				} else if s := got.sameBits(want); s != "" {
					t.Errorf("threads=%d differs from threads=1: %s", threads, s)
				}
			}
		})
	}
}

// TestNoAllocationsThreaded checks that steady-state steps allocate nothing
// with 3 threads on blocks of several kernel blocks, for every algorithm
// and mode and every SigLIP method.
func TestNoAllocationsThreaded(t *testing.T) {
	// With OpenBLAS, d = 512 makes the finiteness scans several chunks
	// long. gonum's GEMM goes parallel (and allocates) from 4 blocks of
	// 64×64 in C: there, d = 64, and the naive algorithm runs on one rank
	// (its N×N logits would be 2×2 blocks with two ranks of 40 rows).
	p := newProblem(9, 2, 40, 512, 10)
	single := newProblem(9, 1, 40, 512, 10)
	if blas.Backend() == "gonum" {
		t.Log("pure-Go GEMM: d = 64, naive on one rank, so that gonum's GEMM stays serial")
		p, single = newProblem(9, 2, 40, 64, 10), newProblem(9, 1, 40, 64, 10)
	}
	for _, m := range modes {
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm, opt.Tile, opt.Threads = algo, 50, 3
			q := p
			if algo == Naive {
				q = single
			}
			t.Run(fmt.Sprintf("mode=%s/algo=%s", m.Mode(), algo), func(t *testing.T) {
				if n := stepAllocs(q, func(c mpi.Comm) stepper[float64] { return NewClipLoss[float64](c, q.d, opt) }); n != 0 {
					t.Errorf("%v allocations per step, want 0", n)
				}
			})
		}
	}
	p.lg.Bias, p.lg.HasBias = -10, true
	for _, impl := range SigLipImpls() {
		t.Run("siglip="+impl.String(), func(t *testing.T) {
			if n := stepAllocs(p, sigLoss[float64](p, SigLipOptions{Impl: impl, Tile: 50, Threads: 3})); n != 0 {
				t.Errorf("%v allocations per step, want 0", n)
			}
		})
	}
}

// TestThreadsOption checks the option's resolution and misuse.
func TestThreadsOption(t *testing.T) {
	c := mpi.Self()
	if got := NewClipLoss[float32](c, 4, ClipOptions{}).Threads(); got != blas.Threads() {
		t.Errorf("Threads 0 resolved to %d, want blas.Threads() = %d", got, blas.Threads())
	}
	if got := NewSigLipLoss[float32](c, 4, SigLipOptions{Threads: 5}).Threads(); got != 5 {
		t.Errorf("SigLIP Threads 5 resolved to %d", got)
	}
	for name, fn := range map[string]func(){
		"clip":   func() { NewClipLoss[float64](c, 3, ClipOptions{Threads: -1}) },
		"siglip": func() { NewSigLipLoss[float64](c, 3, SigLipOptions{Threads: -1}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != errThreads {
					t.Errorf("recovered %v, want %q", r, errThreads)
				}
			}()
			fn()
		})
	}
}

// TestThreadsDoNotAgree: ranks may use different thread counts (the
// results are the same bits), so the agreement check ignores the option.
func TestThreadsDoNotAgree(t *testing.T) {
	p := newProblem(3, 3, 40, 8, 10)
	want := solve[float64](t, p, ClipOptions{Threads: 1})
	got := solveWith(t, p, func(c mpi.Comm) stepper[float64] {
		return NewClipLoss[float64](c, p.d, ClipOptions{Threads: 1 + 2*c.Rank()})
	})
	if s := got.sameBits(want); s != "" {
		t.Errorf("ranks with 1, 3 and 5 threads: %s", s)
	}
}

// TestPool checks that a run covers every block once, on up to the
// pool's threads, and that a pool's helpers exit once its owner is
// garbage.
func TestPool(t *testing.T) {
	p := newPool(4)
	defer p.close()
	for _, n := range []int{0, 1, 3, 4, 100} {
		var c countJob
		c.seen = make([]int, n)
		p.run(n, &c)
		for i, v := range c.seen {
			if v != 1 {
				t.Errorf("n=%d: block %d ran %d times", n, i, v)
			}
		}
	}
	// Many short runs: late helpers must neither run a block of a later
	// run nor hold a run up.
	for r := 0; r < 3000; r++ {
		n := 1 + r%9
		c := countJob{seen: make([]int, n)}
		p.run(n, &c)
		for i, v := range c.seen {
			if v != 1 {
				t.Fatalf("run %d of %d blocks: block %d ran %d times", r, n, i, v)
			}
		}
	}
	var q *pool
	func() {
		owner := new([16]int)
		q = newOwnedPool(owner, 5)
		q.run(10, &countJob{seen: make([]int, 10)})
	}()
	if n := q.live.Load(); n != 4 {
		t.Errorf("%d helpers after a run of a pool of 5 threads, want 4", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for q.live.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d helpers still running 10 s after the owner became garbage", q.live.Load())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// countJob counts how often each block runs.
type countJob struct {
	mu   sync.Mutex
	seen []int
}

func (c *countJob) block(i int) {
	c.mu.Lock()
	c.seen[i]++
	c.mu.Unlock()
}
