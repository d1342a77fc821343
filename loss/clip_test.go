package loss

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

func init() { Warn = func(string) {} }

// onRanks runs fn on every rank of a fresh in-process group of size w.
func onRanks(w int, fn func(c mpi.Comm)) {
	var wg sync.WaitGroup
	for _, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(c)
		}()
	}
	wg.Wait()
}

// problem is a global batch of N = w·b pairs in float64, split in rank order.
type problem struct {
	w, b, d  int
	img, txt []float64 // N×d
	lg       Logit
}

// newProblem draws unit-norm features whose pairs are correlated (so the loss
// is neither saturated nor flat).
func newProblem(seed uint64, w, b, d int, scale float64) *problem {
	rnd := rand.New(rand.NewPCG(seed, 7))
	n := w * b
	p := &problem{w: w, b: b, d: d, img: make([]float64, n*d), txt: make([]float64, n*d), lg: Logit{Scale: scale}}
	for i := 0; i < n; i++ {
		for k := 0; k < d; k++ {
			z := rnd.NormFloat64()
			p.img[i*d+k] = z + 0.5*rnd.NormFloat64()
			p.txt[i*d+k] = z + 0.5*rnd.NormFloat64()
		}
		normalize(p.img[i*d : (i+1)*d])
		normalize(p.txt[i*d : (i+1)*d])
	}
	return p
}

func normalize(v []float64) {
	var s float64
	for _, x := range v {
		s += x * x
	}
	s = math.Sqrt(s)
	for i := range v {
		v[i] /= s
	}
}

// outputs are every rank's results, concatenated in rank order.
type outputs struct {
	loss, gs, gb []float64 // per rank
	dImg, dTxt   []float64 // N×d
}

func convert[T blas.Float](s []float64) []T {
	t := make([]T, len(s))
	for i, v := range s {
		t[i] = T(v)
	}
	return t
}

// stepper is what ClipLoss and SigLipLoss have in common.
type stepper[T blas.Float] interface {
	ForwardBackward(dImg, dTxt, img, txt []T, lg Logit) (Result, error)
	Forward(img, txt []T, lg Logit) (float64, error)
}

// solve runs ClipLoss.ForwardBackward on every rank of an in-process group.
func solve[T blas.Float](t testing.TB, p *problem, opt ClipOptions) *outputs {
	t.Helper()
	return solveWith(t, p, func(c mpi.Comm) stepper[T] { return NewClipLoss[T](c, p.d, opt) })
}

// solveWith runs ForwardBackward of the loss newLoss makes on every rank of
// an in-process group.
func solveWith[T blas.Float](t testing.TB, p *problem, newLoss func(c mpi.Comm) stepper[T]) *outputs {
	t.Helper()
	n, bd := p.w*p.b, p.b*p.d
	out := &outputs{loss: make([]float64, p.w), gs: make([]float64, p.w), gb: make([]float64, p.w),
		dImg: make([]float64, n*p.d), dTxt: make([]float64, n*p.d)}
	errs := make([]error, p.w)
	onRanks(p.w, func(c mpi.Comm) {
		r := c.Rank()
		img, txt := convert[T](p.img[r*bd:(r+1)*bd]), convert[T](p.txt[r*bd:(r+1)*bd])
		di, dt := make([]T, bd), make([]T, bd)
		res, err := newLoss(c).ForwardBackward(di, dt, img, txt, p.lg)
		errs[r] = err
		out.loss[r], out.gs[r], out.gb[r] = res.Loss, res.GradScale, res.GradBias
		for i := range di {
			out.dImg[r*bd+i], out.dTxt[r*bd+i] = float64(di[i]), float64(dt[i])
		}
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out
}

// forwardLosses returns every rank's ClipLoss.Forward loss.
func forwardLosses(t testing.TB, p *problem, opt ClipOptions) []float64 {
	t.Helper()
	return forwardWith(t, p, func(c mpi.Comm) stepper[float64] { return NewClipLoss[float64](c, p.d, opt) })
}

// forwardWith returns every rank's Forward loss of the loss newLoss makes.
func forwardWith(t testing.TB, p *problem, newLoss func(c mpi.Comm) stepper[float64]) []float64 {
	t.Helper()
	bd := p.b * p.d
	losses := make([]float64, p.w)
	errs := make([]error, p.w)
	onRanks(p.w, func(c mpi.Comm) {
		r := c.Rank()
		losses[r], errs[r] = newLoss(c).Forward(p.img[r*bd:(r+1)*bd], p.txt[r*bd:(r+1)*bd], p.lg)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return losses
}

func maxAbs(s []float64) float64 {
	var m float64
	for _, v := range s {
		m = math.Max(m, math.Abs(v))
	}
	return m
}

// diff returns "" when got and want agree to rel times max|want| (plus abs).
func diff(what string, got, want []float64, rel, abs float64) string {
	scale := maxAbs(want)
	tol := rel*scale + abs
	worst, at := 0.0, -1
	for i := range want {
		if d := math.Abs(got[i] - want[i]); !(d <= worst) {
			worst, at = d, i
		}
	}
	if at < 0 || worst <= tol {
		return ""
	}
	return fmt.Sprintf("%s[%d] = %.12g, want %.12g (|diff| %.3g = %.3g × max|want| > tol %.3g)",
		what, at, got[at], want[at], worst, worst/scale, tol)
}

func (o *outputs) diff(want *outputs, rel, abs float64) []string {
	var bad []string
	for _, s := range []string{
		diff("loss", o.loss, want.loss, rel, abs),
		diff("grad scale", o.gs, want.gs, rel, abs),
		diff("grad image", o.dImg, want.dImg, rel, abs),
		diff("grad text", o.dTxt, want.dTxt, rel, abs),
	} {
		if s != "" {
			bad = append(bad, s)
		}
	}
	return bad
}

var modes = []ClipOptions{{}, {GatherWithGrad: true}, {LocalLoss: true}, {LocalLoss: true, GatherWithGrad: true}}

// TestAlgorithmsAgree checks every fast algorithm against the naive
// reference in float64 on random data, for world sizes and tiles that do
// and do not divide the blocks.
func TestAlgorithmsAgree(t *testing.T) {
	for _, sh := range []struct{ w, b, d int }{{1, 5, 3}, {2, 4, 8}, {3, 5, 7}, {5, 3, 4}, {8, 2, 5}} {
		p := newProblem(uint64(sh.w*100+sh.b), sh.w, sh.b, sh.d, 20)
		p.lg.Bias, p.lg.HasBias = -1.5, true
		for _, m := range modes {
			ref := solve[float64](t, p, m)
			for _, algo := range Algorithms() {
				for _, tile := range []int{0, 1, 2, 7} {
					if tile != 0 && algo != Tiled && algo != Ring {
						continue
					}
					opt := m
					opt.Algorithm, opt.Tile = algo, tile
					name := fmt.Sprintf("w=%d/b=%d/d=%d/mode=%s/algo=%s/tile=%d", sh.w, sh.b, sh.d, m.Mode(), algo, tile)
					t.Run(name, func(t *testing.T) {
						got := solve[float64](t, p, opt)
						// 1e-12: the same float64 sums in a different order.
						for _, s := range got.diff(ref, 1e-12, 0) {
							t.Error(s)
						}
						// The bias cancels in softmax: its gradient is rounding noise.
						if g := maxAbs(got.gb); g > 1e-13 {
							t.Errorf("bias gradient %g, want 0 up to rounding", g)
						}
					})
				}
			}
		}
	}
}

// TestModeRelations checks the mode table against the global loss: mean of
// rank losses = L, sum of scale gradients = W·g_s in the local modes, W·G in
// the gather-with-grad modes.
func TestModeRelations(t *testing.T) {
	p := newProblem(3, 4, 3, 6, 10)
	global := solve[float64](t, p, ClipOptions{})
	single := &problem{w: 1, b: p.w * p.b, d: p.d, img: p.img, txt: p.txt, lg: p.lg}
	one := solve[float64](t, single, ClipOptions{})
	w := float64(p.w)
	for r := 0; r < p.w; r++ {
		if s := diff("global loss", global.loss[r:r+1], one.loss, 1e-13, 0); s != "" {
			t.Error(s)
		}
	}
	if s := diff("global grads", global.dImg, one.dImg, 1e-12, 0); s != "" {
		t.Error(s)
	}
	for _, m := range []ClipOptions{{GatherWithGrad: true}, {LocalLoss: true, GatherWithGrad: true}} {
		o := solve[float64](t, p, m)
		scaled := make([]float64, len(one.dTxt))
		for i, v := range one.dTxt {
			scaled[i] = w * v
		}
		if s := diff(m.Mode()+" text grads vs W·G", o.dTxt, scaled, 1e-12, 0); s != "" {
			t.Error(s)
		}
	}
	for _, m := range []ClipOptions{{LocalLoss: true}, {LocalLoss: true, GatherWithGrad: true}} {
		o := solve[float64](t, p, m)
		var ls, gs float64
		for r := range o.loss {
			ls += o.loss[r]
			gs += o.gs[r]
		}
		if s := diff(m.Mode()+" mean loss", []float64{ls / w}, one.loss, 1e-13, 0); s != "" {
			t.Error(s)
		}
		if s := diff(m.Mode()+" sum of scale grads", []float64{gs}, []float64{w * one.gs[0]}, 1e-12, 0); s != "" {
			t.Error(s)
		}
	}
}

// TestFiniteDifference checks each mode's gradients against central
// differences of the quantity the mode differentiates: the global loss L
// (times W with gather_with_grad) for the features, and L or the rank-local
// loss for the scale. The local mode without gather_with_grad differentiates
// along the direct paths only, which no perturbation of the inputs isolates;
// the golden cases and TestAlgorithmsAgree cover it.
func TestFiniteDifference(t *testing.T) {
	p := newProblem(11, 3, 2, 4, 5)
	single := func(q *problem) float64 {
		return forwardLosses(t, &problem{w: 1, b: q.w * q.b, d: q.d, img: q.img, txt: q.txt, lg: q.lg}, ClipOptions{})[0]
	}
	const h = 1e-5
	for _, m := range []ClipOptions{{}, {GatherWithGrad: true}, {LocalLoss: true, GatherWithGrad: true}} {
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm, opt.Tile = algo, 1
			t.Run(fmt.Sprintf("mode=%s/algo=%s", m.Mode(), algo), func(t *testing.T) {
				got := solve[float64](t, p, opt)
				factor := 1.0
				if m.GatherWithGrad {
					factor = float64(p.w)
				}
				for _, which := range []string{"image", "text"} {
					feat, grad := p.img, got.dImg
					if which == "text" {
						feat, grad = p.txt, got.dTxt
					}
					for _, k := range []int{0, 5, 13, len(feat) - 1} {
						orig := feat[k]
						feat[k] = orig + h
						lp := single(p)
						feat[k] = orig - h
						lm := single(p)
						feat[k] = orig
						fd := factor * (lp - lm) / (2 * h)
						// Central differences: error O(h²·f''') ≈ 1e-9 here, plus
						// rounding ε·L/h ≈ 1e-11.
						if math.Abs(fd-grad[k]) > 1e-7*math.Max(1, math.Abs(fd)) {
							t.Errorf("d/d %s[%d]: analytic %.10g, finite difference %.10g", which, k, grad[k], fd)
						}
					}
				}
				s := p.lg.Scale
				p.lg.Scale = s + h
				lp := forwardLosses(t, p, opt)
				p.lg.Scale = s - h
				lm := forwardLosses(t, p, opt)
				p.lg.Scale = s
				for r := range lp {
					fd := (lp[r] - lm[r]) / (2 * h)
					if math.Abs(fd-got.gs[r]) > 1e-7*math.Max(1, math.Abs(fd)) {
						t.Errorf("rank %d d/d scale: analytic %.10g, finite difference %.10g", r, got.gs[r], fd)
					}
				}
			})
		}
	}
}

// TestFloat32MatchesFloat64 runs the float32 fast path against the float64
// reference at b=256, d=512, W=4 for every mode and algorithm.
func TestFloat32MatchesFloat64(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the b=256, d=512, W=4 comparison takes seconds with the pure-Go GEMM")
	}
	p := newProblem(5, 4, 256, 512, 100/7.0)
	for _, m := range modes {
		ref := solve[float64](t, p, ClipOptions{LocalLoss: m.LocalLoss, GatherWithGrad: m.GatherWithGrad, Algorithm: Naive})
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm = algo
			t.Run(fmt.Sprintf("mode=%s/algo=%s", m.Mode(), algo), func(t *testing.T) {
				got := solve[float32](t, p, opt)
				// Float32 logits (|s| ≤ 14.3, rounding ~1e-6) enter exp, and the
				// gradients c·P - c·E cancel to values ~50× smaller than their
				// terms. Measured worst deviation: 4.3e-6 of the largest value
				// with the Go kernels (-tags purego), 4.2e-6 with the C float32
				// kernels; 2e-5 leaves a factor of about 4.5.
				for _, s := range got.diff(ref, 2e-5, 0) {
					t.Error(s)
				}
			})
		}
	}
}

// TestErrorsOnEveryRank checks that conditions a caller can act on come
// back as the same error on every rank, with no hang.
func TestErrorsOnEveryRank(t *testing.T) {
	cases := []struct {
		name  string
		want  error
		msg   string
		setup func(rank int, b, d *int, img []float64, lg *Logit, opt *ClipOptions)
	}{
		{"batch size differs", ErrShapeMismatch, "batch size", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 1 {
				*b = 3
			}
		}},
		{"dimension differs", ErrShapeMismatch, "dimension", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 2 {
				*d = 6
			}
		}},
		{"empty batch", ErrEmptyBatch, "0 rows", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) { *b = 0 }},
		{"NaN on one rank", ErrNonFinite, "on rank 2", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 2 {
				img[3] = math.NaN()
			}
		}},
		{"Inf scale", ErrNonFinite, "logit scale", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 0 {
				lg.Scale = math.Inf(1)
			}
		}},
		{"scale differs", ErrShapeMismatch, "logit scale", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 1 {
				lg.Scale = 11
			}
		}},
		{"options differ", ErrShapeMismatch, "options", func(r int, b, d *int, img []float64, lg *Logit, opt *ClipOptions) {
			if r == 0 {
				opt.LocalLoss = true
			}
		}},
	}
	for _, tc := range cases {
		// Every ClipLoss algorithm, then SigLipLoss (-1), which shares the check.
		for _, algo := range append(Algorithms(), -1) {
			name := "algo=" + algo.String()
			if algo < 0 {
				name = "siglip"
			}
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				const w = 3
				errs := make([]error, w)
				onRanks(w, func(c mpi.Comm) {
					b, d := 4, 5
					img := make([]float64, 64)
					for i := range img {
						img[i] = float64(i%7) / 7
					}
					lg := Logit{Scale: 10}
					opt := ClipOptions{Algorithm: max(algo, 0)}
					tc.setup(c.Rank(), &b, &d, img, &lg, &opt)
					var l stepper[float64]
					if algo < 0 {
						so := SigLipOptions{}
						if opt.LocalLoss {
							so.Impl = Gather // "options differ"
						}
						l = NewSigLipLoss[float64](c, d, so)
					} else {
						l = NewClipLoss[float64](c, d, opt)
					}
					_, errs[c.Rank()] = l.ForwardBackward(make([]float64, b*d), make([]float64, b*d), img[:b*d], img[1:b*d+1], lg)
				})
				for r, err := range errs {
					if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
						t.Errorf("rank %d: error %v, want %v mentioning %q", r, err, tc.want, tc.msg)
					}
					if err != nil && errs[0] != nil && err.Error() != errs[0].Error() {
						t.Errorf("rank %d says %q, rank 0 says %q", r, err, errs[0])
					}
				}
			})
		}
	}
}

func TestPanics(t *testing.T) {
	c := mpi.Self()
	for name, fn := range map[string]func(){
		"nil comm":      func() { NewClipLoss[float64](nil, 3, ClipOptions{}) },
		"dim 0":         func() { NewClipLoss[float64](c, 0, ClipOptions{}) },
		"bad algorithm": func() { NewClipLoss[float64](c, 3, ClipOptions{Algorithm: 99}) },
		"negative tile": func() { NewClipLoss[float64](c, 3, ClipOptions{Tile: -1}) },
		"lengths differ": func() {
			NewClipLoss[float64](c, 3, ClipOptions{}).Forward(make([]float64, 6), make([]float64, 3), Logit{Scale: 1})
		},
		"not multiple": func() {
			NewClipLoss[float64](c, 3, ClipOptions{}).Forward(make([]float64, 4), make([]float64, 4), Logit{Scale: 1})
		},
		"short gradients": func() {
			NewClipLoss[float64](c, 3, ClipOptions{}).ForwardBackward(make([]float64, 3), make([]float64, 6), make([]float64, 6), make([]float64, 6), Logit{Scale: 1})
		},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				r := recover()
				if s, ok := r.(string); !ok || !strings.HasPrefix(s, "loss: ") {
					t.Errorf("recovered %v, want a loss: panic", r)
				}
			}()
			fn()
		})
	}
}

// TestNoAllocations checks that steady-state steps allocate nothing, for
// every algorithm and mode, on an in-process group of two ranks.
func TestNoAllocations(t *testing.T) {
	if blas.Backend() == "gonum" {
		t.Log("pure-Go GEMM: sizes kept below gonum's parallel threshold")
	}
	p := newProblem(9, 2, 6, 8, 10)
	for _, m := range modes {
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm, opt.Tile = algo, 5
			t.Run(fmt.Sprintf("mode=%s/algo=%s", m.Mode(), algo), func(t *testing.T) {
				if n := stepAllocs(p, func(c mpi.Comm) stepper[float64] { return NewClipLoss[float64](c, p.d, opt) }); n != 0 {
					t.Errorf("%v allocations per step, want 0", n)
				}
			})
		}
	}
}

// stepAllocs returns the allocations per ForwardBackward step, after the
// first, of the loss newLoss makes, on every rank of an in-process group
// (testing.AllocsPerRun counts the whole process: all ranks' allocations).
func stepAllocs[T blas.Float](p *problem, newLoss func(c mpi.Comm) stepper[T]) float64 {
	const runs = 20
	b, d := p.b, p.d
	var allocs float64
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(p.w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, txt := convert[T](p.img[r*b*d:(r+1)*b*d]), convert[T](p.txt[r*b*d:(r+1)*b*d])
			di, dt := make([]T, b*d), make([]T, b*d)
			l := newLoss(c)
			step := func() {
				if _, err := l.ForwardBackward(di, dt, img, txt, p.lg); err != nil {
					panic(err)
				}
			}
			step() // the first call sizes the workspaces
			if r == 0 {
				allocs = testing.AllocsPerRun(runs, step)
			} else {
				for range runs + 1 {
					step()
				}
			}
		}()
	}
	wg.Wait()
	return allocs
}
