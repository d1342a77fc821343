package loss

import (
	"fmt"
	"math"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
)

// relErr returns max|got - want| / max|want|.
func relErr(got, want []float64) float64 {
	var e float64
	for i := range want {
		e = math.Max(e, math.Abs(got[i]-want[i]))
	}
	return e / maxAbs(want)
}

// scaleErrs returns the relative errors of loss, scale gradient, image and
// text gradients.
func scaleErrs(got, want *outputs) [4]float64 {
	return [4]float64{relErr(got.loss, want.loss), relErr(got.gs, want.gs), relErr(got.dImg, want.dImg), relErr(got.dTxt, want.dTxt)}
}

// skipAtScale skips a test at N = 32768 where it would take too long.
func skipAtScale(t *testing.T) {
	t.Helper()
	switch {
	case testing.Short():
		t.Skip("-short: N = 32768 takes a minute or more on 2 cores")
	case raceEnabled:
		t.Skip("race detector: N = 32768 needs several GiB and would take many minutes under it")
	case blas.Backend() == "gonum":
		t.Skip("pure-Go GEMM: N = 32768 takes several minutes; this test runs with -tags openblas (make unit)")
	}
}

// TestFloat32AtScale compares the float32 fast path with float64 at
// N = 32768 and logit scale 100 (W = 4 in-process ranks of 8192 rows,
// d = 32, local_gwg; SigLIP with bias -10): the dI GEMM then sums 32768
// terms in float32 and exp(s - max) spans e^-200. Every algorithm runs at
// N = 32768 except naive, whose two b×N logit blocks per rank would take
// 8 GiB in float32: it runs at N = 8192. The float64 references are
// Tiled and SigLIP's Gather (memory O(b·tile + N·d)).
//
// Measured (OpenBLAS, the AVX-512 kernels), max|float32 - float64| over
// max|float64| per output, all below 1e-4: see the package doc.
func TestFloat32AtScale(t *testing.T) {
	skipAtScale(t)
	// Per output, the largest relative error allowed (issue 11: fix the
	// accumulation rather than widen this).
	const tol = 1e-4
	check := func(t *testing.T, name string, got, want *outputs) {
		e := scaleErrs(got, want)
		t.Logf("%s: relative error loss %.2g, scale grad %.2g, image grads %.2g, text grads %.2g", name, e[0], e[1], e[2], e[3])
		for i, what := range []string{"loss", "scale grad", "image grads", "text grads"} {
			if !(e[i] <= tol) {
				t.Errorf("%s: %s relative error %.3g > %g", name, what, e[i], tol)
			}
		}
	}
	mode := ClipOptions{LocalLoss: true, GatherWithGrad: true}
	for _, sz := range []struct {
		b     int
		algos []Algorithm
	}{{8192, []Algorithm{Fused, Tiled, Ring}}, {2048, []Algorithm{Naive}}} {
		p := newProblem(101, 4, sz.b, 32, 100)
		ref := mode
		ref.Algorithm = Tiled
		want := solve[float64](t, p, ref)
		for _, algo := range sz.algos {
			opt := mode
			opt.Algorithm = algo
			name := fmt.Sprintf("N=%d/algo=%s", 4*sz.b, algo)
			t.Run(name, func(t *testing.T) { check(t, name, solve[float32](t, p, opt), want) })
		}
	}
	p := newProblem(103, 4, 8192, 32, 100)
	p.lg.Bias, p.lg.HasBias = -10, true
	want := solveWith(t, p, sigLoss[float64](p, SigLipOptions{Impl: Gather}))
	for _, impl := range SigLipImpls() {
		name := "N=32768/siglip=" + impl.String()
		t.Run(name, func(t *testing.T) {
			check(t, name, solveWith(t, p, sigLoss[float32](p, SigLipOptions{Impl: impl})), want)
		})
	}
}
