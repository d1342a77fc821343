package loss

import (
	"fmt"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// BenchmarkClipLoss times one forward+backward step per iteration on an
// in-process group of w ranks (each rank a goroutine, so ranks share the
// cores) and reports the per-rank GEMM rate the algorithm achieves.
func BenchmarkClipLoss(b *testing.B) {
	for _, sh := range []struct{ w, b, d int }{{1, 1024, 512}, {2, 512, 512}} {
		for _, algo := range Algorithms() {
			for _, mode := range []ClipOptions{{}, {LocalLoss: true, GatherWithGrad: true}} {
				name := fmt.Sprintf("algo=%s/mode=%s/w=%d/b=%d/d=%d/dtype=float32", algo, mode.Mode(), sh.w, sh.b, sh.d)
				b.Run(name, func(bb *testing.B) {
					benchClip[float32](bb, sh.w, sh.b, sh.d, mode, algo)
				})
			}
		}
	}
}

func benchClip[T blas.Float](b *testing.B, w, rows, d int, opt ClipOptions, algo Algorithm) {
	p := newProblem(1, w, rows, d, 1/0.07)
	opt.Algorithm = algo
	comms := mpi.NewGroup(w)
	losses := make([]*ClipLoss[T], w)
	type bufs struct{ img, txt, di, dt []T }
	bs := make([]bufs, w)
	for r := range comms {
		bd := rows * d
		bs[r] = bufs{convert[T](p.img[r*bd : (r+1)*bd]), convert[T](p.txt[r*bd : (r+1)*bd]), make([]T, bd), make([]T, bd)}
		losses[r] = NewClipLoss[T](comms[r], d, opt)
	}
	step := func() {
		var wg sync.WaitGroup
		for r := range comms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				x := bs[r]
				if _, err := losses[r].ForwardBackward(x.di, x.dt, x.img, x.txt, p.lg); err != nil {
					panic(err)
				}
			}()
		}
		wg.Wait()
	}
	step()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		step()
	}
	n := w * rows
	gemms := map[Algorithm]float64{Fused: 3, Tiled: 4, Ring: 4}[algo]
	if algo == Naive {
		gemms = 3 * float64(w) // N×N×d GEMMs in the global modes
		if opt.LocalLoss && w > 1 {
			gemms = 6
		}
	}
	flops := gemms * blas.GemmFlops(rows, n, d)
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
