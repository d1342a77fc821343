package loss

import (
	"fmt"
	"math"
	"math/rand/v2"
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

// BenchmarkKernels times each elementwise kernel on one b×N tile of the
// fused algorithm's shape (b = 1024, N = 2048, float32), per kernel level
// and thread count, in ns per element.
func BenchmarkKernels(b *testing.B) {
	const rows, cols = 1024, 2048
	rnd := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, rows*cols)
	for i := range x {
		x[i] = float32(rnd.Float64()*2 - 1)
	}
	levels := []int{isaGo}
	if nativeKernels {
		for _, l := range nativeLevels() {
			if l <= isaMax {
				levels = append(levels, l)
			}
		}
	}
	for _, isa := range levels {
		for _, threads := range []int{1, 2} {
			k := kernels[float32]{pool: newPool(threads)}
			rowM, rowS := make([]float64, rows), make([]float64, rows)
			colM, colS, colX, colB := make([]float64, cols), make([]float64, cols), make([]float64, cols), make([]float64, cols)
			d := make([]float32, len(x))
			name := func(op string) string {
				return fmt.Sprintf("op=%s/isa=%s/threads=%d/rows=%d/cols=%d", op, isaNames[isa], threads, rows, cols)
			}
			perElem := func(bb *testing.B) {
				bb.ReportMetric(float64(bb.Elapsed().Nanoseconds())/float64(bb.N)/(rows*cols), "ns/elem")
			}
			b.Run(name("stats"), func(bb *testing.B) {
				setKernelISA(bb, isa)
				for range bb.N {
					fill(rowM, math.Inf(-1))
					fill(rowS, 0)
					stats(&k, x, cols, rows, cols, 14.3, 0, rowM, rowS, colM, colS)
				}
				perElem(bb)
			})
			for i := range rowS {
				rowS[i] = math.Log(rowS[i])
			}
			for j := range colS {
				colS[j] = math.Log(colS[j])
			}
			b.Run(name("grad"), func(bb *testing.B) {
				setKernelISA(bb, isa)
				for range bb.N {
					grad(&k, d, nil, x, cols, rows, cols, 0, 0, 14.3, 0, 1e-4, 1e-4, rowM, rowS, colM, colS, colX, colB)
				}
				perElem(bb)
			})
			b.Run(name("sig"), func(bb *testing.B) {
				setKernelISA(bb, isa)
				for range bb.N {
					sigTile(&k, d, x, cols, rows, cols, 0, 10, -10, 1e-3, true)
				}
				perElem(bb)
			})
			k.pool.close()
		}
	}
}
