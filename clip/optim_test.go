package clip

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestAdamWMatchesTorch compares AdamW with the algorithm as PyTorch's
// documentation of torch.optim.AdamW writes it (bias-corrected m̂ and v̂,
// decay applied first), written out here independently, over several steps
// and learning rates, with decay on the first tensor only.
func TestAdamWMatchesTorch(t *testing.T) {
	cfg := OptimConfig{LR: 1e-2, WD: 0.2, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}
	layout := []Param{
		{Name: "w", Shape: []int{2, 3}, Offset: 0, Decay: true},
		{Name: "b", Shape: []int{3}, Offset: 6, Decay: false},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	p := randVec(rng, 9)
	ref := append([]float64(nil), p...)
	m, v := make([]float64, 9), make([]float64, 9)
	opt := NewAdamW[float64](cfg, 9)
	for step := 1; step <= 5; step++ {
		g := randVec(rng, 9)
		lr := cfg.LR * float64(step) / 5
		opt.Step(p, g, layout, lr)
		for i := range ref {
			wd := 0.0
			if i < 6 {
				wd = cfg.WD
			}
			ref[i] -= lr * wd * ref[i]
			m[i] = cfg.Beta1*m[i] + (1-cfg.Beta1)*g[i]
			v[i] = cfg.Beta2*v[i] + (1-cfg.Beta2)*g[i]*g[i]
			mh := m[i] / (1 - math.Pow(cfg.Beta1, float64(step)))
			vh := v[i] / (1 - math.Pow(cfg.Beta2, float64(step)))
			ref[i] -= lr * mh / (math.Sqrt(vh) + cfg.Eps)
		}
		for i := range p {
			// 1e-14: the two forms differ only in where sqrt(1−β2ᵗ) is
			// divided, a few roundings of 1e-16 on values of order 1.
			if math.Abs(p[i]-ref[i]) > 1e-14 {
				t.Fatalf("step %d, element %d: %.17g, PyTorch's algorithm %.17g", step, i, p[i], ref[i])
			}
		}
	}
	if opt.Steps() != 5 {
		t.Errorf("Steps() = %d, want 5", opt.Steps())
	}
}

// TestAdamWDecayGroups: with zero gradients the moments stay zero, decayed
// tensors shrink by exactly (1 − lr·wd) and the others do not move.
func TestAdamWDecayGroups(t *testing.T) {
	cfg := testConfig(MLP, true)
	m := NewModel[float64](cfg.Model, 1)
	before := append([]float64(nil), m.Params()...)
	opt := NewAdamW[float64](OptimConfig{LR: 0.1, WD: 0.5, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6}, len(before))
	opt.Step(m.Params(), make([]float64, len(before)), m.Layout(), 0.1)
	for _, p := range m.Layout() {
		f := 1.0
		if p.Decay {
			f = 1 - 0.1*0.5
		}
		for i := p.Offset; i < p.Offset+p.Size(); i++ {
			if got := m.Params()[i]; got != before[i]*f {
				t.Fatalf("%s: %g → %g, want ×%g", p.Name, before[i], got, f)
			}
		}
	}
}

// TestCosineLR pins OpenCLIP's cosine_lr at the warmup and the ends.
func TestCosineLR(t *testing.T) {
	const base = 1e-3
	for _, c := range []struct {
		warmup, steps, step int
		want                float64
	}{
		{10, 100, 0, base / 10}, // (step+1)/warmup
		{10, 100, 9, base},      // last warmup step
		{10, 100, 10, base},     // cos(0)
		{10, 100, 55, base / 2}, // halfway through the cosine
		{10, 100, 99, base * 0.5 * (1 + math.Cos(math.Pi*89/90))},
		{0, 4, 0, base}, // no warmup
		{0, 4, 2, base / 2},
	} {
		if got := CosineLR(base, c.warmup, c.steps, c.step); math.Abs(got-c.want) > 1e-18 {
			t.Errorf("CosineLR(warmup=%d, steps=%d, step=%d) = %g, want %g", c.warmup, c.steps, c.step, got, c.want)
		}
	}
}
