package loss

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
)

// setKernelISA makes the float32 kernels run at level isa until the test
// ends. The caller must have checked isa ≤ isaMax.
func setKernelISA(t testing.TB, isa int) {
	old := kernelISA
	kernelISA = isa
	t.Cleanup(func() { kernelISA = old })
}

// nativeLevels returns the C kernel levels of this architecture: the
// baseline, and on amd64 AVX2 and AVX-512.
func nativeLevels() []int {
	if runtime.GOARCH == "amd64" {
		return []int{isaC, isaAVX2, isaAVX512}
	}
	return []int{isaC}
}

// forEachNativeLevel runs fn in a subtest per C kernel level, skipping (and
// saying why) the levels this build or CPU lacks.
func forEachNativeLevel(t *testing.T, fn func(t *testing.T)) {
	for _, isa := range nativeLevels() {
		t.Run("isa="+isaNames[isa], func(t *testing.T) {
			switch {
			case !nativeKernels:
				t.Skipf("C kernels not compiled in (no cgo, the purego tag, or %s): only the Go kernels exist", runtime.GOARCH)
			case isa > isaMax:
				t.Skipf("this CPU lacks %s (best level here: %s)", isaNames[isa], isaNames[isaMax])
			}
			setKernelISA(t, isa)
			fn(t)
		})
	}
}

// kernelShapes are tiles at vector-width edges and block edges (several
// row blocks, a last block short of rows, rows not a multiple of 4), with
// the positive pair inside, at the border and outside the tile; the last
// is wider than statsCacheBytes allows for one pass (the statistics then
// take the maxima of the whole tile first).
var kernelShapes = []struct{ rows, cols, ld, diag0, j0 int }{
	{1, 1, 1, 0, 0}, {3, 7, 9, 2, 0}, {9, 17, 17, 5, 3}, {16, 33, 40, 40, 0}, {5, 64, 64, -3, 0},
	{31, 8, 8, 0, 4}, {70, 19, 21, 3, 0}, {133, 100, 100, 60, 40}, {40, 3100, 3104, 7, 0},
}

// kernelScales are logits from flat to saturated (scale 100 on large x:
// exp underflows), and a negative scale (the largest logit at the smallest x).
var kernelScales = []struct{ scale, bias, amp float64 }{{1, 0, 1}, {100, -2.5, 1}, {100, 0, 30}, {-3, 1, 1}}

func randTile(rnd *rand.Rand, rows, cols, ld int, amp float64) []float32 {
	x := make([]float32, (rows-1)*ld+cols)
	for i := range x {
		x[i] = float32(amp * (rnd.Float64()*2 - 1))
	}
	return x
}

// TestKernelsMatchGo compares each C float32 kernel level (AVX-512, AVX2
// and baseline on amd64; NEON on arm64) with the Go kernels, through the
// threaded dispatch: statistics over two tiles (the online rescaling),
// gradients in place and split, with several threads.
func TestKernelsMatchGo(t *testing.T) {
	forEachNativeLevel(t, func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(4, 4))
		for _, sh := range kernelShapes {
			for _, sc := range kernelScales {
				name := fmt.Sprintf("rows=%d/cols=%d/ld=%d/diag0=%d/scale=%g/amp=%g", sh.rows, sh.cols, sh.ld, sh.diag0, sc.scale, sc.amp)
				t.Run(name, func(t *testing.T) {
					x := randTile(rnd, sh.rows, sh.cols, sh.ld, sc.amp)
					checkKernels(t, x, sh.rows, sh.cols, sh.ld, sh.diag0, sh.j0, sc.scale, sc.bias)
				})
			}
		}
	})
}

// statsOf runs stats over x twice (the second pass with the bias raised by
// 1, exercising the online rescaling) at the current level and returns row
// max, row sum, column max, column sum.
func statsOf(k *kernels[float32], x []float32, ld, rows, cols int, scale, bias float64) [4][]float64 {
	var s [4][]float64
	for i := range s {
		n := rows
		if i >= 2 {
			n = cols
		}
		s[i] = make([]float64, n)
	}
	fill(s[0], math.Inf(-1))
	for pass := 0; pass < 2; pass++ {
		stats(k, x, ld, rows, cols, scale, bias+float64(pass), s[0], s[1], s[2], s[3])
	}
	return s
}

func checkKernels(t *testing.T, x []float32, rows, cols, ld, diag0, j0 int, scale, bias float64) {
	t.Helper()
	native := kernels[float32]{pool: newPool(3)}
	defer native.pool.close()
	var ref kernels[float32] // the Go kernels, one thread
	isa := kernelISA
	run := func(k *kernels[float32], fn func()) {
		if k == &ref {
			kernelISA = isaGo
			defer func() { kernelISA = isa }()
		}
		fn()
	}
	var want, got [4][]float64
	run(&ref, func() { want = statsOf(&ref, x, ld, rows, cols, scale, bias) })
	run(&native, func() { got = statsOf(&native, x, ld, rows, cols, scale, bias) })
	for i, what := range []string{"row max", "row sum", "col max", "col sum"} {
		// Maxima are exact (the same float32 x, the same float64 logit);
		// sums carry the float32 exponential's error (1e-7) and the float32
		// rounding of its argument (up to 1e-7·|arg| at the terms that count).
		if s := diff(what, got[i], want[i], 2e-6, 0); s != "" {
			t.Error(s)
		}
	}
	rowL, colL := make([]float64, rows), make([]float64, cols)
	for i := range rowL {
		rowL[i] = math.Log(want[1][i])
	}
	for j := range colL {
		colL[j] = math.Log(want[3][j])
	}
	for _, split := range []bool{false, true} {
		for _, inPlace := range []bool{false, true} {
			dw, dg := make([]float32, len(x)), make([]float32, len(x))
			xg := x
			if inPlace {
				dg = append([]float32(nil), x...)
				xg = dg
			}
			var tw, tg []float32
			if split {
				tw, tg = make([]float32, len(x)), make([]float32, len(x))
			}
			cxw, cbw := make([]float64, cols), make([]float64, cols)
			cxg, cbg := make([]float64, cols), make([]float64, cols)
			var sxw, sbw, sxg, sbg float64
			run(&ref, func() {
				sxw, sbw = grad(&ref, dw, tw, x, ld, rows, cols, j0, diag0, scale, bias, 0.25, 0.125, want[0], rowL, want[2], colL, cxw, cbw)
			})
			run(&native, func() {
				sxg, sbg = grad(&native, dg, tg, xg, ld, rows, cols, j0, diag0, scale, bias, 0.25, 0.125, want[0], rowL, want[2], colL, cxg, cbg)
			})
			// Gradients are c·p - c·E with c ≤ 0.25: float32 exponential and
			// output rounding, 1e-6 of the largest entry.
			for _, s := range []string{
				diff("dI", tileOf(dg, rows, cols, ld), tileOf(dw, rows, cols, ld), 1e-6, 0),
				diff("dT", tileOf(tg, rows, cols, ld), tileOf(tw, rows, cols, ld), 1e-6, 0),
				diff("col x-sums", cxg, cxw, 1e-5, 1e-9),
				diff("col sums", cbg, cbw, 1e-5, 1e-9),
				diff("row sums", []float64{sxg, sbg}, []float64{sxw, sbw}, 1e-5, 1e-9),
			} {
				if s != "" {
					t.Errorf("split=%v in-place=%v: %s", split, inPlace, s)
				}
			}
		}
	}
}

// tileOf returns the rows×cols tile of s (leading dimension ld) in
// float64, row by row; nil for a nil s.
func tileOf(s []float32, rows, cols, ld int) []float64 {
	if s == nil {
		return nil
	}
	var d []float64
	for i := 0; i < rows; i++ {
		d = append(d, widen(s[i*ld:i*ld+cols])...)
	}
	return d
}

func widen(s []float32) []float64 {
	d := make([]float64, len(s))
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

// TestSigLipKernelsMatchGo compares each C float32 SigLIP kernel level with
// the Go kernel, for flat and saturated logits (|z| in the thousands).
func TestSigLipKernelsMatchGo(t *testing.T) {
	forEachNativeLevel(t, func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(8, 8))
		for _, sh := range []struct{ rows, cols, ld, e0 int }{{1, 1, 1, 0}, {3, 7, 9, 0}, {9, 17, 17, -5}, {16, 33, 40, 100}, {77, 50, 50, 10}} {
			for _, sc := range []struct{ scale, bias, amp float64 }{{10, -10, 1}, {100, -5, 30}, {-2, 0, 1}} {
				t.Run(fmt.Sprintf("rows=%d/cols=%d/scale=%g/amp=%g", sh.rows, sh.cols, sc.scale, sc.amp), func(t *testing.T) {
					x := randTile(rnd, sh.rows, sh.cols, sh.ld, sc.amp)
					native := kernels[float32]{pool: newPool(3)}
					defer native.pool.close()
					var ref kernels[float32]
					isa := kernelISA
					for _, backward := range []bool{false, true} {
						for _, inPlace := range []bool{true, false} {
							dw, dg := append([]float32(nil), x...), append([]float32(nil), x...)
							xg := dg
							if !inPlace {
								xg = x
							}
							kernelISA = isaGo
							lw, xw, bw := sigTile(&ref, dw, dw, sh.ld, sh.rows, sh.cols, sh.e0, sc.scale, sc.bias, 0.25, backward)
							kernelISA = isa
							lg, xgs, bg := sigTile(&native, dg, xg, sh.ld, sh.rows, sh.cols, sh.e0, sc.scale, sc.bias, 0.25, backward)
							// Float32 exponential and log2(1+v) (relative error
							// < 3e-7) and the float32 rounding of the logit:
							// 1e-6 relative.
							for _, s := range []string{
								diff("loss", []float64{lg}, []float64{lw}, 1e-6, 0),
								diff("Σ dz∘x", []float64{xgs}, []float64{xw}, 1e-5, 1e-9),
								diff("Σ dz", []float64{bg}, []float64{bw}, 1e-5, 1e-9),
								diff("dz", tileOf(dg, sh.rows, sh.cols, sh.ld), tileOf(dw, sh.rows, sh.cols, sh.ld), 1e-6, 0),
							} {
								if s != "" {
									t.Errorf("backward=%v in-place=%v: %s", backward, inPlace, s)
								}
							}
						}
					}
				})
			}
		}
	})
}

// TestKernelsThreadInvariant checks that every kernel gives the same bits
// with 1, 2, 3 and 7 threads, at every kernel level and in both element
// types, on tiles of several row blocks.
func TestKernelsThreadInvariant(t *testing.T) {
	levels := []int{isaGo}
	if nativeKernels {
		for _, l := range nativeLevels() {
			if l <= isaMax {
				levels = append(levels, l)
			}
		}
	}
	for _, isa := range levels {
		t.Run("isa="+isaNames[isa], func(t *testing.T) {
			setKernelISA(t, isa)
			t.Run("dtype=float32", func(t *testing.T) { checkThreadInvariant[float32](t) })
			t.Run("dtype=float64", func(t *testing.T) { checkThreadInvariant[float64](t) })
		})
	}
}

func checkThreadInvariant[T blas.Float](t *testing.T) {
	// 8 blocks of 32 rows, the last of 6; then a tile too wide for the
	// one-pass statistics.
	for _, sh := range []struct{ rows, cols, ld int }{{230, 75, 80}, {70, 3100, 3100}} {
		t.Run(fmt.Sprintf("rows=%d/cols=%d", sh.rows, sh.cols), func(t *testing.T) {
			checkThreadInvariantShape[T](t, sh.rows, sh.cols, sh.ld)
		})
	}
}

func checkThreadInvariantShape[T blas.Float](t *testing.T, rows, cols, ld int) {
	rnd := rand.New(rand.NewPCG(5, 5))
	x := make([]T, rows*ld)
	for i := range x {
		x[i] = T(rnd.Float64()*2 - 1)
	}
	outputs := func(threads int) []float64 {
		k := kernels[T]{pool: newPool(threads)}
		defer k.pool.close()
		var out []float64
		s := [4][]float64{make([]float64, rows), make([]float64, rows), make([]float64, cols), make([]float64, cols)}
		fill(s[0], math.Inf(-1))
		stats(&k, x, ld, rows, cols, 7, 0.5, s[0], s[1], s[2], s[3])
		stats(&k, x, ld, rows, cols, 7, 1.5, s[0], s[1], s[2], s[3])
		for _, v := range s {
			out = append(out, v...)
		}
		d, dt := make([]T, len(x)), make([]T, len(x))
		cx, cb := make([]float64, cols), make([]float64, cols)
		sx, sb := grad(&k, d, dt, x, ld, rows, cols, 10, 20, 7, 0.5, 0.3, 0.2, s[0], s[1], s[2], s[3], cx, cb)
		out = append(append(append(out, sx, sb), cx...), cb...)
		for i := range d {
			out = append(out, float64(d[i]), float64(dt[i]))
		}
		l, gx, gb := sigTile(&k, d, x, ld, rows, cols, 3, 7, -2, 0.01, true)
		out = append(out, l, gx, gb)
		for _, v := range d {
			out = append(out, float64(v))
		}
		m, ls := make([]float64, rows), make([]float64, rows)
		rowStats(&k, x, ld, rows, cols, 7, 0.5, m, ls)
		y := append([]T(nil), x...)
		sx, sb = rowGrad(&k, y, ld, rows, cols, 5, 7, 0.5, 0.1, m, ls)
		out = append(append(append(out, m...), ls...), sx, sb)
		for _, v := range y {
			out = append(out, float64(v))
		}
		return out
	}
	want := outputs(1)
	for _, threads := range []int{2, 3, 7} {
		got := outputs(threads)
		for i := range want {
			if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
				t.Errorf("threads=%d: output %d is %v, with 1 thread %v", threads, i, got[i], want[i])
				break
			}
		}
	}
}

// TestRowBlocks checks the partition: at least blockRows rows per block
// (one block below that), at most maxBlocks blocks, covering the rows.
func TestRowBlocks(t *testing.T) {
	for _, rows := range []int{1, 31, 32, 33, 64, 1000, 2048, 2049, 100000} {
		n, size := rowBlocks(rows)
		if n < 1 || n > maxBlocks || (n > 1 && size < blockRows) || n*size < rows || (n-1)*size >= rows {
			t.Errorf("rows=%d: %d blocks of %d", rows, n, size)
		}
	}
}
