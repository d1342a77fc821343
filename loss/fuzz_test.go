package loss

import (
	"math"
	"math/rand/v2"
	"testing"
)

// sigRef is SigLipLoss computed from its definition in float64 over the
// whole batch, as every rank should report it (see SigLipLoss): rank r's
// loss −(1/b) Σ_{i on r} Σ_j log σ(y_ij·z_ij), its image gradient, the
// text gradient of its rows summed over every rank's loss, and its scale
// and bias gradients. It shares no code with the package.
func sigRef(p *problem) *outputs {
	n, d, b := p.w*p.b, p.d, p.b
	bias := 0.0
	if p.lg.HasBias {
		bias = p.lg.Bias
	}
	out := &outputs{loss: make([]float64, p.w), gs: make([]float64, p.w), gb: make([]float64, p.w),
		dImg: make([]float64, n*d), dTxt: make([]float64, n*d)}
	logSigmoid := func(x float64) float64 {
		if x > 0 {
			return -math.Log1p(math.Exp(-x))
		}
		return x - math.Log1p(math.Exp(x))
	}
	for i := range n {
		r := i / b
		for j := range n {
			dot := 0.0
			for k := range d {
				dot += p.img[i*d+k] * p.txt[j*d+k]
			}
			y := -1.0
			if i == j {
				y = 1
			}
			z := p.lg.Scale*dot + bias
			out.loss[r] -= logSigmoid(y*z) / float64(b)
			// d/dz of −log σ(y·z)/b is −y·σ(−y·z)/b.
			g := -y / (1 + math.Exp(y*z)) / float64(b)
			out.gs[r] += g * dot
			out.gb[r] += g
			for k := range d {
				out.dImg[i*d+k] += g * p.lg.Scale * p.txt[j*d+k]
				out.dTxt[j*d+k] += g * p.lg.Scale * p.img[i*d+k]
			}
		}
	}
	return out
}

// fuzzProblem draws a problem from the fuzzer's numbers: W in 1..4, b in
// 1..6, d in 1..8 rows of norm mag (0 to 4; 1 at most for float32), logit
// scale in [0, 100], bias in [−20, 20].
func fuzzProblem(seed uint64, shape uint32, scale, bias, mag float64, hasBias, f32 bool) *problem {
	fold := func(x, lo, hi float64) float64 {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return lo
		}
		return lo + math.Mod(math.Abs(x), hi-lo)
	}
	w, b, d := 1+int(shape%4), 1+int(shape>>2%6), 1+int(shape>>5%8)
	mag = fold(mag, 0, 4)
	if f32 {
		mag = fold(mag, 0, 1)
	}
	rnd := rand.New(rand.NewPCG(seed, 11))
	n := w * b
	p := &problem{w: w, b: b, d: d, img: make([]float64, n*d), txt: make([]float64, n*d),
		lg: Logit{Scale: fold(scale, 0, 100), Bias: fold(bias, 0, 40) - 20, HasBias: hasBias}}
	for i := range n {
		for k := range d {
			z := rnd.NormFloat64()
			p.img[i*d+k] = z + 0.5*rnd.NormFloat64()
			p.txt[i*d+k] = z + 0.5*rnd.NormFloat64()
		}
		normalize(p.img[i*d : (i+1)*d])
		normalize(p.txt[i*d : (i+1)*d])
		for k := range d {
			p.img[i*d+k] *= mag
			p.txt[i*d+k] *= mag
		}
	}
	return p
}

// FuzzLoss: ClipLoss (every algorithm and mode, tiles 0 to 3) and
// SigLipLoss (every method) on random shapes, logit scales up to 100,
// biases and inputs, on W in-process ranks, give finite losses and
// gradients equal to the float64 references: the naive algorithm
// (OpenCLIP's computation as written) for ClipLoss, SigLIP's definition
// (sigRef) for SigLipLoss. Tolerances, relative to the largest reference
// value: 1e-9 in float64 (the same sums in another order), 5e-4 in float32
// (features of norm ≤ 1, logits up to 120 rounded to float32); plus, for
// gradients that cancel to about 0, 1e-13 (float64) or 1e-5 (float32)
// times (1 + scale)·(1 + the largest feature value).
func FuzzLoss(f *testing.F) {
	f.Fuzz(func(t *testing.T, seed uint64, shape uint32, sel uint16, scale, bias, mag float64) {
		f32, hasBias := sel&1 != 0, sel&2 != 0
		p := fuzzProblem(seed, shape, scale, bias, mag, hasBias, f32)
		tile := int(shape >> 8 % 4)
		var got, want *outputs
		var which string
		if kind := int(sel >> 2 % 8); kind < 4 {
			algo := Algorithms()[kind]
			mode := modes[sel>>5%4]
			opt := ClipOptions{LocalLoss: mode.LocalLoss, GatherWithGrad: mode.GatherWithGrad, Algorithm: algo, Tile: tile}
			ref := opt
			ref.Algorithm, ref.Tile = Naive, 0
			which = "clip " + mode.Mode() + " " + algo.String()
			want = solve[float64](t, p, ref)
			if f32 {
				got = solve[float32](t, p, opt)
			} else {
				got = solve[float64](t, p, opt)
			}
		} else {
			opt := SigLipOptions{Impl: SigLipImpls()[kind-4], Tile: tile}
			which = "siglip " + opt.Impl.String()
			want = sigRef(p)
			if f32 {
				got = solveWith(t, p, sigLoss[float32](p, opt))
			} else {
				got = solveWith(t, p, sigLoss[float64](p, opt))
			}
			if s := diff("grad bias", got.gb, want.gb, 1e-9, 1e-9); s != "" && !f32 {
				t.Errorf("%s: %s", which, s)
			}
		}
		for _, v := range [][]float64{got.loss, got.gs, got.gb, got.dImg, got.dTxt} {
			for _, x := range v {
				if math.IsNaN(x) || math.IsInf(x, 0) {
					t.Fatalf("%s w=%d b=%d d=%d scale %g bias %g: non-finite output", which, p.w, p.b, p.d, p.lg.Scale, p.lg.Bias)
				}
			}
		}
		// Gradients may cancel to ~0 from terms of size scale·|x|, so the
		// absolute part of the tolerance scales with those terms.
		terms := (1 + p.lg.Scale) * (1 + max(maxAbs(p.img), maxAbs(p.txt)))
		rel, abs := 1e-9, 1e-13*terms
		if f32 {
			rel, abs = 5e-4, 1e-5*terms
		}
		for _, s := range got.diff(want, rel, abs) {
			t.Errorf("%s w=%d b=%d d=%d tile %d scale %g bias %v (%v) float32 %v: %s", which, p.w, p.b, p.d, tile, p.lg.Scale, p.lg.Bias, hasBias, f32, s)
		}
	})
}
