package clip

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// TestGradientsFiniteDifferences checks the hand-written backward of the
// heads, the normalisation, the log logit scale and the bias (through
// Trainer.Gradients, plain and GradCache-accumulated) against central
// differences of the loss, parameter by parameter, in float64. The cases
// with a bias use SigLIP's loss, the one that uses it (CLIP's softmax is
// invariant to a common shift, so its bias gradient is 0).
func TestGradientsFiniteDifferences(t *testing.T) {
	for _, head := range []HeadKind{Linear, MLP} {
		for _, bias := range []bool{false, true} {
			for _, accum := range []int{1, 3} {
				t.Run(head.String()+map[bool]string{false: "", true: "+bias"}[bias]+map[int]string{1: "", 3: "/accum=3"}[accum], func(t *testing.T) {
					cfg := testConfig(head, bias)
					cfg.AccumFreq, cfg.BatchSize = accum, 6/accum
					data := testPairs(cfg.Model, 6)
					var l Loss[float64] = loss.NewClipLoss[float64](mpi.Self(), cfg.Model.EmbedDim, loss.ClipOptions{})
					if bias {
						l = loss.NewSigLipLoss[float64](mpi.Self(), cfg.Model.EmbedDim, loss.SigLipOptions{})
					}
					tr, err := NewTrainer[float64](mpi.Self(), cfg, l, memOf(data))
					if err != nil {
						t.Fatal(err)
					}
					// Move the logit scale (and bias) off their initial values
					// so that their gradients are not special.
					p := tr.Model().Params()
					p[tr.Model().scale] = 1.3
					if bias {
						p[tr.Model().bias] = -1.7
					}
					img, txt := toT[float64](data.Image), toT[float64](data.Text)
					if _, err := tr.Gradients(img, txt); err != nil {
						t.Fatal(err)
					}
					got := append([]float64(nil), tr.Model().Grads()...)
					fd := make([]float64, len(p))
					// h = 1e-5: the central difference's truncation error
					// h²·f'''/6 dominates its rounding error eps·L/h ≈ 1e-10
					// (L ≤ 5); measured over these cases it is ≤ 3e-9 (it
					// shrinks as h², to a floor of ≈ 7e-10 at h = 5e-6).
					const h = 1e-5
					for i := range p {
						x := p[i]
						p[i] = x + h
						lp, err := tr.Loss(img, txt)
						if err != nil {
							t.Fatal(err)
						}
						p[i] = x - h
						lm, _ := tr.Loss(img, txt)
						p[i] = x
						fd[i] = (lp - lm) / (2 * h)
					}
					if bias {
						// The bias gradient must be far from 0 for the check
						// to have teeth.
						if g := fd[tr.Model().bias]; math.Abs(g) < 1e-2 {
							t.Errorf("logit bias gradient %g: too small to check", g)
						}
					}
					scale := max(1, maxAbs(fd))
					for i := range p {
						// 1e-7 relative to the largest gradient (at least 1):
						// over 30 times the finite-difference error measured
						// above, and far below what a wrong gradient gives
						// (a bias gradient times 7 is off by more than 0.3).
						if math.Abs(got[i]-fd[i]) > 1e-7*scale {
							name := tr.Model().paramByOffset(i).Name
							t.Errorf("%s (element %d): backward %.10g, finite difference %.10g", name, i, got[i], fd[i])
						}
					}
				})
			}
		}
	}
}

// TestNormalizeTinyRows: a row whose output norm is below F.normalize's
// eps, exactly zero or not, is divided by eps in forward, and its gradient
// in backward is dz/eps (no projection: clamp_min(eps) passes no gradient
// to the norm), in float32 as in float64.
func TestNormalizeTinyRows(t *testing.T) {
	t.Run("float32", testTinyRows[float32])
	t.Run("float64", testTinyRows[float64])
}

func testTinyRows[T float32 | float64](t *testing.T) {
	cfg := testConfig(Linear, false).Model
	m := NewModel[T](cfg, 1)
	clear(m.Params())
	w, b := m.Layout()[0], m.Layout()[1] // image.proj.weight, image.proj.bias
	// y = x·W + b: row 0 (x = 0) is b, with ‖b‖ = 2e-13 < eps; row 1
	// (x = e₀) is b + W[0,:] = b − b = 0 exactly.
	for j := range cfg.EmbedDim {
		m.Params()[b.Offset+j] = 1e-13
		m.Params()[w.Offset+j] = -1e-13
	}
	x := make([]T, 2*cfg.ImageDim)
	x[cfg.ImageDim] = 1
	z := make([]T, 2*cfg.EmbedDim)
	m.EncodeImage(z, x)
	dz := make([]T, len(z))
	for i := range dz {
		dz[i] = 1
	}
	m.BackwardImage(dz, z, x)
	if !isFinite(z) || !isFinite(m.Grads()) {
		t.Fatalf("non-finite features %v or gradients %v", z, m.Grads())
	}
	// 1e-6 relative: a few roundings to float32 (6e-8 each) of values
	// computed in float64. Sending the tiny row through the projection,
	// (dz − z·(z·dz))/eps, makes its dy 4% smaller, the bias gradient 2%.
	near := func(got T, want float64) bool { return math.Abs(float64(got)-want) <= 1e-6*math.Abs(want) }
	for j := range cfg.EmbedDim {
		if !near(z[j], 0.1) || z[cfg.EmbedDim+j] != 0 {
			t.Fatalf("features %v, want 0.1 (1e-13/eps) in row 0 and 0 in row 1", z)
		}
	}
	// dz/eps in each row: the bias gets the column sums, 2/eps; W[0,:]
	// gets row 1's, 1/eps.
	for j := range cfg.EmbedDim {
		if g := m.Grads()[b.Offset+j]; !near(g, 2/normEps) {
			t.Errorf("bias gradient %d: %g, want %g", j, g, 2/normEps)
		}
		if g := m.Grads()[w.Offset+j]; !near(g, 1/normEps) {
			t.Errorf("weight gradient [0,%d]: %g, want %g", j, g, 1/normEps)
		}
	}
}

// TestModelLayout: names, shapes, OpenCLIP's weight-decay groups and the
// initial logit parameters.
func TestModelLayout(t *testing.T) {
	for _, head := range []HeadKind{Linear, MLP} {
		cfg := testConfig(head, true).Model
		m := NewModel[float32](cfg, 3)
		n := 0
		for _, p := range m.Layout() {
			if p.Offset != n {
				t.Errorf("%s: offset %d, want %d", p.Name, p.Offset, n)
			}
			n += p.Size()
			wantDecay := strings.HasSuffix(p.Name, ".weight")
			if p.Decay != wantDecay {
				t.Errorf("%s: decay %v, want %v (weights only, as OpenCLIP)", p.Name, p.Decay, wantDecay)
			}
		}
		if n != len(m.Params()) || n != len(m.Grads()) {
			t.Errorf("%v: layout covers %d elements, params %d", head, n, len(m.Params()))
		}
		lg := m.Logit()
		if math.Abs(lg.Scale-1/0.07) > 1e-5 || !lg.HasBias || lg.Bias != -10 {
			t.Errorf("initial logit %+v, want scale 1/0.07 and bias -10", lg)
		}
		// The same seed gives the same weights; another seed others.
		if a, b := NewModel[float32](cfg, 3).Params(), NewModel[float32](cfg, 4).Params(); a[0] != m.Params()[0] || a[0] == b[0] {
			t.Errorf("initial weights do not follow the seed")
		}
	}
}

// TestInitBounds: nn.Linear's bound 1/sqrt(fan_in) for weights and biases.
func TestInitBounds(t *testing.T) {
	cfg := testConfig(MLP, false).Model
	// EmbedDim 64: the smallest tensor, image.fc2.bias, has 64 elements.
	cfg.ImageDim, cfg.Hidden, cfg.EmbedDim = 100, 400, 64
	m := NewModel[float64](cfg, 1)
	for _, p := range m.Layout()[:4] {
		fanIn := map[string]float64{"image.fc1.weight": 100, "image.fc1.bias": 100, "image.fc2.weight": 400, "image.fc2.bias": 400}[p.Name]
		v := m.Params()[p.Offset : p.Offset+p.Size()]
		bound := 1 / math.Sqrt(fanIn)
		if len(v) < 64 {
			t.Fatalf("%s: %d elements, fewer than the 64 draws the bound below needs", p.Name, len(v))
		}
		if got := maxAbs(v); got > bound || got < 0.8*bound {
			// 0.8: with ≥ 64 uniform draws the largest is above 0.8·bound
			// with probability 1 − 0.8⁶⁴ ≈ 1 − 6e-7.
			t.Errorf("%s: largest |w| %g, want in [0.8, 1]·%g", p.Name, got, bound)
		}
	}
}

// TestClampScale: the log scale is clamped to [0, ln 100] after a step.
func TestClampScale(t *testing.T) {
	cfg := testConfig(Linear, false)
	data := testPairs(cfg.Model, 6)
	tr, err := NewTrainer[float64](mpi.Self(), cfg, loss.NewClipLoss[float64](mpi.Self(), 4, loss.ClipOptions{}), memOf(data))
	if err != nil {
		t.Fatal(err)
	}
	m := tr.Model()
	for _, c := range []struct{ set, want float64 }{{7, math.Log(100)}, {-3, 0}} {
		m.Params()[m.scale] = c.set
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
		if got := m.Params()[m.scale]; got != c.want {
			t.Errorf("log scale %g after a step from %g, want %g", got, c.set, c.want)
		}
	}
}

func TestParseHead(t *testing.T) {
	for _, h := range []HeadKind{Linear, MLP} {
		if g, err := ParseHead(h.String()); err != nil || g != h {
			t.Errorf("ParseHead(%q) = %v, %v", h.String(), g, err)
		}
	}
	if _, err := ParseHead("conv"); err == nil {
		t.Error("ParseHead(conv) succeeded")
	}
}

func TestGELU(t *testing.T) {
	// PyTorch: torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.], dtype=torch.float64))
	for _, c := range []struct{ x, want float64 }{{-1, -0.15865525393145707}, {0.5, 0.34573123063700656}, {2, 1.9544997361036416}} {
		if g := gelu(c.x); math.Abs(g-c.want) > 1e-15 {
			t.Errorf("gelu(%g) = %.17g, want %.17g", c.x, g, c.want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for range 20 {
		x := 3 * rng.NormFloat64()
		const h = 1e-6 // central difference error O(h²) ≈ 1e-12
		if fd := (gelu(x+h) - gelu(x-h)) / (2 * h); math.Abs(fd-geluGrad(x)) > 1e-8 {
			t.Errorf("gelu'(%g) = %g, finite difference %g", x, geluGrad(x), fd)
		}
	}
}
