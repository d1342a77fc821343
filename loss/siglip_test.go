package loss

import (
	"fmt"
	"math"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

func sigLoss[T blas.Float](p *problem, opt SigLipOptions) func(c mpi.Comm) stepper[T] {
	return func(c mpi.Comm) stepper[T] { return NewSigLipLoss[T](c, p.d, opt) }
}

// TestSigLipMethodsAgree checks that the four distribution methods give the
// same loss and gradients, with tiles that do and do not divide the blocks,
// at world sizes 1 to 8 (5 and 8 among them), and that the per-rank values
// add up as the golden README says: mean loss = the one-process loss, text
// gradients and the sum of scale gradients = W times the one-process ones.
func TestSigLipMethodsAgree(t *testing.T) {
	for _, sh := range []struct{ w, b, d int }{{1, 5, 3}, {2, 4, 8}, {3, 3, 5}, {4, 2, 3}, {5, 3, 4}, {8, 2, 5}} {
		p := newProblem(uint64(sh.w*31+sh.b), sh.w, sh.b, sh.d, 10)
		p.lg.Bias, p.lg.HasBias = -10, true
		ref := solveWith(t, p, sigLoss[float64](p, SigLipOptions{Impl: Gather}))
		one := solveWith(t, &problem{w: 1, b: p.w * p.b, d: p.d, img: p.img, txt: p.txt, lg: p.lg}, sigLoss[float64](p, SigLipOptions{}))
		w := float64(sh.w)
		var mean, gs, gb float64
		for r := range ref.loss {
			mean += ref.loss[r] / w
			gs += ref.gs[r]
			gb += ref.gb[r]
		}
		scaled := make([]float64, len(one.dTxt))
		for i, v := range one.dTxt {
			scaled[i] = w * v
		}
		for _, s := range []string{
			diff("mean loss", []float64{mean}, one.loss, 1e-13, 0),
			diff("sum of scale grads", []float64{gs}, []float64{w * one.gs[0]}, 1e-12, 0),
			diff("sum of bias grads", []float64{gb}, []float64{w * one.gb[0]}, 1e-12, 0),
			diff("text grads", ref.dTxt, scaled, 1e-12, 0),
		} {
			if s != "" {
				t.Errorf("w=%d: %s", sh.w, s)
			}
		}
		for _, m := range SigLipImpls() {
			for _, tile := range []int{0, 1, 2} {
				t.Run(fmt.Sprintf("w=%d/b=%d/impl=%s/tile=%d", sh.w, sh.b, m, tile), func(t *testing.T) {
					got := solveWith(t, p, sigLoss[float64](p, SigLipOptions{Impl: m, Tile: tile}))
					// 1e-12: the same float64 terms summed in another order.
					for _, s := range got.diff(ref, 1e-12, 0) {
						t.Error(s)
					}
					if s := diff("grad bias", got.gb, ref.gb, 1e-12, 0); s != "" {
						t.Error(s)
					}
				})
			}
		}
	}
}

// TestSigLipFiniteDifference checks the gradients against central
// differences: features against the sum over ranks of the losses (text
// features travel with gradient, so each rank's text gradient is the
// derivative of every rank's loss; the image gradient is that of its own),
// scale and bias against each rank's own loss.
func TestSigLipFiniteDifference(t *testing.T) {
	p := newProblem(17, 3, 2, 4, 5)
	p.lg.Bias, p.lg.HasBias = -2, true
	const h = 1e-5
	for _, m := range SigLipImpls() {
		t.Run("impl="+m.String(), func(t *testing.T) {
			mk := sigLoss[float64](p, SigLipOptions{Impl: m, Tile: 1})
			got := solveWith(t, p, mk)
			total := func() float64 {
				var s float64
				for _, v := range forwardWith(t, p, mk) {
					s += v
				}
				return s
			}
			for _, which := range []string{"image", "text"} {
				feat, grad := p.img, got.dImg
				if which == "text" {
					feat, grad = p.txt, got.dTxt
				}
				for _, k := range []int{0, 3, 11, len(feat) - 1} {
					orig := feat[k]
					feat[k] = orig + h
					lp := total()
					feat[k] = orig - h
					lm := total()
					feat[k] = orig
					fd := (lp - lm) / (2 * h)
					// Central differences: O(h²) truncation ≈ 1e-9 and ε·L/h ≈ 1e-10.
					if math.Abs(fd-grad[k]) > 1e-7*math.Max(1, math.Abs(fd)) {
						t.Errorf("d/d %s[%d]: analytic %.10g, finite difference %.10g", which, k, grad[k], fd)
					}
				}
			}
			for _, param := range []string{"scale", "bias"} {
				ptr, g := &p.lg.Scale, got.gs
				if param == "bias" {
					ptr, g = &p.lg.Bias, got.gb
				}
				orig := *ptr
				*ptr = orig + h
				lp := forwardWith(t, p, mk)
				*ptr = orig - h
				lm := forwardWith(t, p, mk)
				*ptr = orig
				for r := range lp {
					fd := (lp[r] - lm[r]) / (2 * h)
					if math.Abs(fd-g[r]) > 1e-7*math.Max(1, math.Abs(fd)) {
						t.Errorf("rank %d d/d %s: analytic %.10g, finite difference %.10g", r, param, g[r], fd)
					}
				}
			}
		})
	}
}

// TestSigLipStableForLargeLogits uses logits in the thousands (scale 100 on
// features of norm ~30): nothing may overflow, and the loss must equal the
// sum of the positive parts of the margins, which is exact there.
func TestSigLipStableForLargeLogits(t *testing.T) {
	p := newProblem(23, 2, 3, 4, 100)
	for i := range p.img {
		p.img[i] *= 30
		p.txt[i] *= 30
	}
	p.lg.Bias, p.lg.HasBias = -5, true
	got := solveWith(t, p, sigLoss[float64](p, SigLipOptions{}))
	for r := range got.loss {
		// softplus(u) = u + log1p(e^-u): for |u| > 40 the log1p term is below
		// 4e-18 of u, so the loss is Σ max(u, 0) / b to rounding.
		var want float64
		for i := r * p.b; i < (r+1)*p.b; i++ {
			for j := 0; j < p.w*p.b; j++ {
				var x float64
				for k := 0; k < p.d; k++ {
					x += p.img[i*p.d+k] * p.txt[j*p.d+k]
				}
				z := 100*x - 5
				y := -1.0
				if i == j {
					y = 1
				}
				want += math.Max(-y*z, 0) + math.Log1p(math.Exp(-math.Abs(z)))
			}
		}
		want /= float64(p.b)
		if math.IsInf(got.loss[r], 0) || math.IsNaN(got.loss[r]) || math.Abs(got.loss[r]-want) > 1e-12*want {
			t.Errorf("rank %d: loss %v, want %v", r, got.loss[r], want)
		}
	}
	for _, v := range append(got.dImg, got.dTxt...) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("non-finite gradient %v", v)
		}
	}
}

// TestSigLipFloat32MatchesFloat64 runs the float32 path against float64 at
// b=256, d=512, W=4 for every method.
func TestSigLipFloat32MatchesFloat64(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the b=256, d=512, W=4 comparison takes seconds with the pure-Go GEMM")
	}
	p := newProblem(5, 4, 256, 512, 10)
	p.lg.Bias, p.lg.HasBias = -10, true
	ref := solveWith(t, p, sigLoss[float64](p, SigLipOptions{Impl: Gather}))
	for _, m := range SigLipImpls() {
		t.Run("impl="+m.String(), func(t *testing.T) {
			got := solveWith(t, p, sigLoss[float32](p, SigLipOptions{Impl: m}))
			// Float32 logits (|z| ≤ 20, rounding ~2e-6) through σ and sums of
			// N = 1024 terms: 1e-5 of the largest value.
			for _, s := range got.diff(ref, 1e-5, 0) {
				t.Error(s)
			}
		})
	}
}

// TestSigLipNoAllocations checks that steady-state steps allocate nothing.
func TestSigLipNoAllocations(t *testing.T) {
	p := newProblem(9, 3, 4, 8, 10)
	p.lg.Bias, p.lg.HasBias = -10, true
	for _, m := range SigLipImpls() {
		t.Run("impl="+m.String(), func(t *testing.T) {
			if n := stepAllocs(p, sigLoss[float64](p, SigLipOptions{Impl: m, Tile: 3})); n != 0 {
				t.Errorf("%v allocations per step, want 0", n)
			}
		})
	}
}
