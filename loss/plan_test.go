package loss

import (
	"fmt"
	"maps"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// TestPlanFlops checks the GEMM counts the algorithms are designed around:
// OpenCLIP's local loss does 6 GEMMs of 2·b·N·d, Fused 3, Tiled and Ring 4.
func TestPlanFlops(t *testing.T) {
	const w, b, d = 4, 64, 32
	unit := blas.GemmFlops(b, w*b, d)
	for _, tc := range []struct {
		opt  ClipOptions
		want float64
	}{
		{ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Naive}, 6},
		{ClipOptions{LocalLoss: true, Algorithm: Naive}, 4},
		{ClipOptions{Algorithm: Naive}, 3 * w}, // N×N×d, three times
		{ClipOptions{Algorithm: Fused}, 3},
		{ClipOptions{Algorithm: Tiled, Tile: 50}, 4},
		{ClipOptions{Algorithm: Tiled, Tile: 1000}, 3}, // one tile: nothing recomputed
		{ClipOptions{Algorithm: Ring, Tile: 48}, 4},
	} {
		if got := tc.opt.Plan(w, b, d, 4).Flops() / unit; got != tc.want {
			t.Errorf("%s/%s tile %d: %g GEMMs of 2bNd, want %g", tc.opt.Mode(), tc.opt.Algorithm, tc.opt.Tile, got, tc.want)
		}
	}
	// Tiled and Ring memory does not grow with b·N.
	big := ClipOptions{Algorithm: Tiled}.Plan(2, 16384, 512, 4).WorkspaceBytes
	if big > 400<<20 {
		t.Errorf("tiled workspace at b=16384, W=2, d=512: %d MiB, want under 400", big>>20)
	}
	if naive := (ClipOptions{Algorithm: Naive}).Plan(2, 16384, 512, 4).WorkspaceBytes; naive < 8<<30 {
		t.Errorf("naive global workspace at N=32768: %d MiB, want the N×N matrices (> 8 GiB)", naive>>20)
	}
}

// countingComm records the feature transfers (float32) of one rank as
// Plan lists them.
type countingComm struct {
	mpi.Comm
	got map[Transfer]int
}

func (c *countingComm) add(kind string, n int) { c.got[Transfer{Kind: kind, Bytes: 4 * int64(n)}]++ }

func (c *countingComm) AllgatherF32(dst, src []float32) error {
	c.add("allgather", len(src))
	return c.Comm.AllgatherF32(dst, src)
}

func (c *countingComm) ReduceScatterF32(dst, src []float32) error {
	c.add("reduce_scatter", len(dst))
	return c.Comm.ReduceScatterF32(dst, src)
}

func (c *countingComm) AllreduceF32(op mpi.Op, dst, src []float32) error {
	c.add("allreduce", len(src))
	return c.Comm.AllreduceF32(op, dst, src)
}

func (c *countingComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (mpi.Request, error) {
	c.add("shift", len(src))
	return c.Comm.IsendrecvF32(dst, from, src, to)
}

// TestPlanIsExecution: the GEMMs and transfers Plan records from an
// algorithm's schedule are those a ForwardBackward step executes (every
// BLAS call, seen by gemmHook, and every float32 transfer on each rank's
// communicator), for every ClipLoss algorithm and mode and every SigLIP
// method, in both precisions (amp_bf16's features travel as bf16 pairs),
// W = 1..4, with tiles that do and do not divide the blocks; and
// no step has more exchanges in flight than mpi.MaxRequests.
func TestPlanIsExecution(t *testing.T) {
	var mu sync.Mutex
	gemms := map[GemmShape]int{}
	gemmHook = func(tA, tB blas.Transpose, m, n, k int) {
		mu.Lock()
		gemms[GemmShape{TransA: tA == blas.Trans, TransB: tB == blas.Trans, M: m, N: n, K: k, Count: 0}]++
		mu.Unlock()
	}
	defer func() { gemmHook = nil }()
	const d = 3
	type loss struct {
		name string
		plan func(w, b int) Plan
		mk   func(c mpi.Comm) stepper[float32]
	}
	var losses []loss
	for _, pr := range []struct {
		p    Precision
		sums bool
	}{{FP32, false}, {AMPBF16, false}, {AMPBF16, true}} {
		prec := fmt.Sprintf("%s/sums_bf16=%v", pr.p, pr.sums)
		for _, m := range []string{"global", "global_gwg", "local", "local_gwg"} {
			for _, a := range Algorithms() {
				for _, tile := range []int{0, 2, 4} {
					o, _ := ParseMode(m)
					o.Algorithm, o.Tile, o.Precision, o.SumsBF16 = a, tile, pr.p, pr.sums
					losses = append(losses, loss{fmt.Sprintf("clip/%s/%s/%s/tile=%d", prec, m, a, tile),
						func(w, b int) Plan { return o.Plan(w, b, d, 4) },
						func(c mpi.Comm) stepper[float32] { return NewClipLoss[float32](c, d, o) }})
				}
			}
		}
		for _, m := range SigLipImpls() {
			for _, tile := range []int{0, 2, 4} {
				o := SigLipOptions{Impl: m, Tile: tile, Precision: pr.p, SumsBF16: pr.sums}
				losses = append(losses, loss{fmt.Sprintf("siglip/%s/%s/tile=%d", prec, m, tile),
					func(w, b int) Plan { return o.Plan(w, b, d, 4) },
					func(c mpi.Comm) stepper[float32] { return NewSigLipLoss[float32](c, d, o) }})
			}
		}
	}
	for _, w := range []int{1, 2, 3, 4} {
		for _, b := range []int{5, 6} {
			p := newProblem(3, w, b, d, 10)
			for _, l := range losses {
				plan := l.plan(w, b)
				if plan.MaxInFlight > mpi.MaxRequests {
					t.Errorf("%s w=%d b=%d: %d exchanges in flight, mpi.MaxRequests is %d", l.name, w, b, plan.MaxInFlight, mpi.MaxRequests)
				}
				clear(gemms)
				comms := make([]*countingComm, w)
				solveWith(t, p, func(c mpi.Comm) stepper[float32] {
					cc := &countingComm{Comm: c, got: map[Transfer]int{}}
					comms[c.Rank()] = cc
					return l.mk(cc)
				})
				want := map[GemmShape]int{}
				for _, g := range plan.Gemms {
					c := g.Count
					g.Count = 0
					want[g] += w * c
				}
				if !maps.Equal(gemms, want) {
					t.Errorf("%s w=%d b=%d: GEMMs executed by %d ranks %v, Plan's times W %v", l.name, w, b, w, gemms, want)
				}
				wantT := map[Transfer]int{}
				for _, x := range plan.Transfers {
					c := x.Count
					x.Count = 0
					wantT[x] += c
				}
				for r, cc := range comms {
					if !maps.Equal(cc.got, wantT) {
						t.Errorf("%s w=%d b=%d: rank %d transferred %v, Plan says %v", l.name, w, b, r, cc.got, wantT)
					}
				}
			}
		}
	}
}
