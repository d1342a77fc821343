package loss

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestNativeKernelsMatchGo compares the C float32 kernels with the generic
// Go kernels on tiles at vector-width edges, with the positive pair inside,
// at the border and outside the tile, with logits from saturated (scale 100
// on large features: exp underflows) to flat, in place and split.
func TestNativeKernelsMatchGo(t *testing.T) {
	if !nativeKernels {
		t.Skip("native kernels not compiled in (no cgo, or the purego tag): only the Go kernels exist")
	}
	rnd := rand.New(rand.NewPCG(4, 4))
	for _, sh := range []struct{ rows, cols, ld, diag0, j0 int }{
		{1, 1, 1, 0, 0}, {3, 7, 9, 2, 0}, {9, 17, 17, 5, 3}, {16, 33, 40, 40, 0}, {5, 64, 64, -3, 0}, {31, 8, 8, 0, 4},
	} {
		for _, sc := range []struct{ scale, bias, amp float64 }{{1, 0, 1}, {100, -2.5, 1}, {100, 0, 30}} {
			name := fmt.Sprintf("rows=%d/cols=%d/ld=%d/diag0=%d/scale=%g/amp=%g", sh.rows, sh.cols, sh.ld, sh.diag0, sc.scale, sc.amp)
			t.Run(name, func(t *testing.T) {
				x := make([]float32, (sh.rows-1)*sh.ld+sh.cols)
				for i := range x {
					x[i] = float32(sc.amp * (rnd.Float64()*2 - 1))
				}
				// Stats: two tiles in a row exercise the online rescaling.
				var want, got [4][]float64
				for i := range want {
					n := sh.rows
					if i >= 2 {
						n = sh.cols
					}
					want[i], got[i] = make([]float64, n), make([]float64, n)
				}
				fill(want[0], math.Inf(-1))
				fill(got[0], math.Inf(-1))
				var k kernelScratch
				for pass := 0; pass < 2; pass++ {
					statsTile(x, sh.ld, sh.rows, sh.cols, sc.scale, sc.bias+float64(pass), want[0], want[1], want[2], want[3])
					k.stats32(x, sh.ld, sh.rows, sh.cols, sc.scale, sc.bias+float64(pass), got[0], got[1], got[2], got[3])
				}
				for i, what := range []string{"row max", "row sum", "col max", "col sum"} {
					// Maxima are exact up to float32 rounding of the logit; sums
					// carry the float32 exp's error (< 2e-7) and argument rounding.
					if s := diff(what, got[i], want[i], 2e-6, 0); s != "" {
						t.Error(s)
					}
				}
				rowL, colL := make([]float64, sh.rows), make([]float64, sh.cols)
				for i := range rowL {
					rowL[i] = math.Log(want[1][i])
				}
				for j := range colL {
					colL[j] = math.Log(want[3][j])
				}
				for _, split := range []bool{false, true} {
					dw, dg := append([]float32(nil), x...), append([]float32(nil), x...) // dg aliases its x
					var tw, tg []float32
					if split {
						tw, tg = make([]float32, len(x)), make([]float32, len(x))
					}
					cxw, cbw := make([]float64, sh.cols), make([]float64, sh.cols)
					cxg, cbg := make([]float64, sh.cols), make([]float64, sh.cols)
					sxw, sbw := gradTile(dw, tw, x, sh.ld, sh.rows, sh.cols, sh.j0, sh.diag0, sc.scale, sc.bias, 0.25, 0.125,
						want[0], rowL, want[2], colL, cxw, cbw)
					sxg, sbg := k.grad32(dg, tg, dg, sh.ld, sh.rows, sh.cols, sh.j0, sh.diag0, sc.scale, sc.bias, 0.25, 0.125,
						want[0], rowL, want[2], colL, cxg, cbg)
					// Gradients are c·p - c·E with c ≤ 0.25: float32 exp and
					// output rounding, 1e-6 of the largest entry.
					for _, s := range []string{
						diff("dI", widen(dg), widen(dw), 1e-6, 0),
						diff("dT", widen(tg), widen(tw), 1e-6, 0),
						diff("col x-sums", cxg, cxw, 1e-5, 1e-9),
						diff("col sums", cbg, cbw, 1e-5, 1e-9),
						diff("row sums", []float64{sxg, sbg}, []float64{sxw, sbw}, 1e-5, 1e-9),
					} {
						if s != "" {
							t.Errorf("split=%v: %s", split, s)
						}
					}
				}
			})
		}
	}
}

func widen(s []float32) []float64 {
	d := make([]float64, len(s))
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

// TestNativeSigLipKernelMatchesGo compares the C float32 SigLIP kernel with
// the Go one, for flat and saturated logits (|z| in the thousands).
func TestNativeSigLipKernelMatchesGo(t *testing.T) {
	if !nativeKernels {
		t.Skip("native kernels not compiled in (no cgo, or the purego tag): only the Go kernel exists")
	}
	rnd := rand.New(rand.NewPCG(8, 8))
	for _, sh := range []struct{ rows, cols, ld, e0 int }{{1, 1, 1, 0}, {3, 7, 9, 0}, {9, 17, 17, -5}, {16, 33, 40, 100}} {
		for _, sc := range []struct{ scale, bias, amp float64 }{{10, -10, 1}, {100, -5, 30}} {
			t.Run(fmt.Sprintf("rows=%d/cols=%d/scale=%g/amp=%g", sh.rows, sh.cols, sc.scale, sc.amp), func(t *testing.T) {
				x := make([]float32, (sh.rows-1)*sh.ld+sh.cols)
				for i := range x {
					x[i] = float32(sc.amp * (rnd.Float64()*2 - 1))
				}
				for _, backward := range []bool{false, true} {
					dw, dg := append([]float32(nil), x...), append([]float32(nil), x...)
					lw, xw, bw := sigTileGo(dw, x, sh.ld, sh.rows, sh.cols, sh.e0, sc.scale, sc.bias, 0.25, backward)
					var k kernelScratch
					lg, xg, bg := k.sig32(dg, dg, sh.ld, sh.rows, sh.cols, sh.e0, sc.scale, sc.bias, 0.25, backward)
					// Float32 exp and log1p (relative error < 3e-7) and the
					// float32 rounding of the logit: 1e-6 relative.
					for _, s := range []string{
						diff("loss", []float64{lg}, []float64{lw}, 1e-6, 0),
						diff("Σ dz∘x", []float64{xg}, []float64{xw}, 1e-5, 1e-9),
						diff("Σ dz", []float64{bg}, []float64{bw}, 1e-5, 1e-9),
						diff("dz", widen(dg), widen(dw), 1e-6, 0),
					} {
						if s != "" {
							t.Errorf("backward=%v: %s", backward, s)
						}
					}
				}
			})
		}
	}
}
