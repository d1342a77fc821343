package loss

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/mpi"
)

func init() { Info = func(string) {} }

// TestParseRoundTrip: every algorithm and method, Auto included, parses
// back from its name; unknown names are errors that list the valid ones.
func TestParseRoundTrip(t *testing.T) {
	for _, a := range append(Algorithms(), Auto) {
		got, err := ParseAlgorithm(a.String())
		if err != nil || got != a {
			t.Errorf("ParseAlgorithm(%q) = %v, %v; want %v", a.String(), got, err, a)
		}
	}
	for _, m := range append(SigLipImpls(), SigLipAuto) {
		got, err := ParseSigLipImpl(m.String())
		if err != nil || got != m {
			t.Errorf("ParseSigLipImpl(%q) = %v, %v; want %v", m.String(), got, err, m)
		}
	}
	if a, err := ParseAlgorithm("auto"); a != Auto || err != nil {
		t.Errorf(`ParseAlgorithm("auto") = %v, %v`, a, err)
	}
	if _, err := ParseAlgorithm("fastest"); err == nil || !strings.Contains(err.Error(), "auto") {
		t.Errorf(`ParseAlgorithm("fastest"): %v; want an error naming auto`, err)
	}
	if _, err := ParseSigLipImpl("fastest"); err == nil || !strings.Contains(err.Error(), "auto") {
		t.Errorf(`ParseSigLipImpl("fastest"): %v; want an error naming auto`, err)
	}
	for _, a := range Algorithms() {
		if a == Auto {
			t.Error("Algorithms lists Auto")
		}
	}
}

// TestChooseWithinBudget: for budgets from below the smallest algorithm to
// above the largest, the choice fits the budget and is the fastest of those
// that fit; with nothing fitting it is ErrNoFit. A tiny budget picks tiled
// or ring.
func TestChooseWithinBudget(t *testing.T) {
	const w, b, d = 4, 1024, 512
	opt := ClipOptions{LocalLoss: true, GatherWithGrad: true}
	preds := map[Algorithm]Prediction{}
	var smallest int64 = 1 << 62
	var largest int64
	for _, a := range Algorithms() {
		o := opt
		o.Algorithm = a
		preds[a] = o.Predict(w, b, d, 4, testRates)
		smallest = min(smallest, preds[a].MemoryBytes)
		largest = max(largest, preds[a].MemoryBytes)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	budgets := []int64{smallest - 1, smallest, largest, 2 * largest, preds[Fused].MemoryBytes - 1}
	for range 200 {
		budgets = append(budgets, smallest/2+rnd.Int64N(largest*2))
	}
	for _, budget := range budgets {
		a, ch, err := opt.Choose(w, b, d, 4, testRates, budget)
		if budget < smallest {
			if !errors.Is(err, ErrNoFit) {
				t.Errorf("budget %d below every algorithm (smallest %d): %v, %v; want ErrNoFit", budget, smallest, a, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("budget %d: %v", budget, err)
		}
		if m := preds[a].MemoryBytes; m > budget {
			t.Errorf("budget %d: chose %s, which needs %d", budget, a, m)
		}
		for o, p := range preds {
			if p.MemoryBytes <= budget && p.Seconds < preds[a].Seconds*(1-1e-3) {
				t.Errorf("budget %d: chose %s (%g s) but %s fits and is faster (%g s)", budget, a, preds[a].Seconds, o, p.Seconds)
			}
		}
		if ch.Name != a.String() || ch.BudgetBytes != budget || !strings.Contains(ch.Reason, a.String()) {
			t.Errorf("budget %d: choice %+v does not describe %s", budget, ch, a)
		}
	}
	// Tiny: below Fused's and Naive's memory, above Ring's.
	tiny := preds[Fused].MemoryBytes - 1
	if a, _, err := opt.Choose(w, b, d, 4, testRates, tiny); err != nil || (a != Tiled && a != Ring) {
		t.Errorf("tiny budget %d: %v, %v; want tiled or ring", tiny, a, err)
	}
	if m, _, err := (SigLipOptions{}).Choose(w, b, d, 4, testRates, (SigLipOptions{Impl: Reduce}).Memory(w, b, d, 4)); err != nil || m != Reduce {
		t.Errorf("SigLIP budget of exactly reduce's memory: %v, %v; want reduce, the only one that fits", m, err)
	}
	_, _, err := opt.Choose(w, b, d, 4, testRates, 1<<20)
	if !errors.Is(err, ErrNoFit) || !strings.Contains(err.Error(), "needs") {
		t.Errorf("1 MiB: %v; want ErrNoFit naming what the smallest needs", err)
	}
}

// TestChooseDeterministic: the choice depends only on its inputs, and its
// predictions are listed with the choice first, then fastest first, those
// over the budget last. Predictions within 0.1% are a tie, won by the
// earlier candidate (Bidir over Shift, which predict the same at W = 2).
func TestChooseDeterministic(t *testing.T) {
	opt := ClipOptions{LocalLoss: true, GatherWithGrad: true}
	for _, link := range []float64{0.1, 0.5, 2, 10, 100} {
		r := testRates
		r.LinkGbits = link
		budget := opt.Memory(8, 1024, 512, 4) - 1 // Fused with LocalLoss... does not fit
		a1, c1, err1 := opt.Choose(8, 1024, 512, 4, r, budget)
		a2, c2, err2 := opt.Choose(8, 1024, 512, 4, r, budget)
		if a1 != a2 || c1.Reason != c2.Reason || (err1 == nil) != (err2 == nil) {
			t.Errorf("link %g: %v (%s) then %v (%s)", link, a1, c1.Reason, a2, c2.Reason)
		}
		over := false
		for i, p := range c1.Predictions {
			fits := p.MemoryBytes <= budget
			if over && fits {
				t.Errorf("link %g: %s fits but is listed after one over the budget", link, p.Name)
			}
			over = over || !fits
			if i > 1 && fits && p.Seconds < c1.Predictions[i-1].Seconds {
				t.Errorf("link %g: %s listed after a slower one", link, p.Name)
			}
		}
		if c1.Predictions[0].Name != a1.String() {
			t.Errorf("link %g: chose %s but %s is listed first", link, a1, c1.Predictions[0].Name)
		}
	}
	// A 64-thread node: Bidir and Shift hide all their communication and
	// differ by rounding only.
	r := Rates{GemmGflops: 5000, StatsNs: 0.8 / 64, GradNs: 1.0 / 64, NaiveStatsNs: 15.0 / 64, NaiveGradNs: 12.0 / 64,
		SigmoidNs: 1.2 / 64, CopyNs: 0.16 / 64, TransposeNs: 1.9 / 64, LinkGbits: 180, LatencyUs: 3}
	shiftFaster := 0
	for w := 2; w <= 40; w++ {
		bi := SigLipOptions{Impl: Bidir}.Predict(w, 4096, 512, 4, r).Seconds
		sh := SigLipOptions{Impl: Shift}.Predict(w, 4096, 512, 4, r).Seconds
		if math.Abs(bi-sh) > 1e-3*sh {
			continue
		}
		if sh < bi {
			shiftFaster++
		}
		if m, _, err := (SigLipOptions{}).Choose(w, 4096, 512, 4, r, 1<<40); err != nil || m != Bidir {
			t.Errorf("W=%d: SigLIP chose %v, %v; want bidir, which ties with shift (%g s, %g s)", w, m, err, bi, sh)
		}
	}
	if shiftFaster == 0 {
		t.Log("no W where rounding makes shift faster: the tie rule is not exercised")
	}
}

// TestResolveRanksAgree: ranks that give different rates and budgets
// (or none, so that they are measured) agree on them and on the choice;
// the agreed rates are the slowest rank's and the budget the smallest.
func TestResolveRanksAgree(t *testing.T) {
	const w, b, d = 3, 64, 16
	for _, measured := range []bool{false, true} {
		opts := make([]ClipOptions, w)
		sig := make([]SigLipOptions, w)
		for r := range opts {
			rates := testRates
			rates.GemmGflops = 100 + 10*float64(r)
			rates.LinkGbits = 2 - 0.5*float64(r)
			rates.StatsNs = 2 + float64(r)
			if measured {
				rates = Rates{}
			}
			opts[r] = ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Auto, Rates: rates, MemoryBudget: int64(1+r) << 30}
			sig[r] = SigLipOptions{Impl: SigLipAuto, Rates: rates, MemoryBudget: int64(1+r) << 30}
		}
		got := make([]ClipOptions, w)
		chs := make([]Choice, w)
		sgot := make([]SigLipOptions, w)
		schs := make([]Choice, w)
		errs := make([]error, w)
		onRanks(w, func(c mpi.Comm) {
			r := c.Rank()
			var err1, err2 error
			got[r], chs[r], err1 = ResolveClip[float32](c, opts[r], b, d)
			sgot[r], schs[r], err2 = ResolveSigLip[float32](c, sig[r], b, d)
			errs[r] = errors.Join(err1, err2)
		})
		for r := range w {
			if errs[r] != nil {
				t.Fatalf("measured=%v rank %d: %v", measured, r, errs[r])
			}
			if got[r].Algorithm == Auto || sgot[r].Impl == SigLipAuto {
				t.Errorf("measured=%v rank %d: still auto", measured, r)
			}
			if got[r].Algorithm != got[0].Algorithm || chs[r].Reason != chs[0].Reason || chs[r].Rates != chs[0].Rates ||
				sgot[r].Impl != sgot[0].Impl || schs[r].Reason != schs[0].Reason {
				t.Errorf("measured=%v: rank %d chose %v (%s), rank 0 %v (%s)", measured, r, got[r].Algorithm, chs[r].Reason, got[0].Algorithm, chs[0].Reason)
			}
		}
		if chs[0].BudgetBytes != 1<<30 {
			t.Errorf("measured=%v: budget %d, want the smallest, 1 GiB", measured, chs[0].BudgetBytes)
		}
		if !measured {
			want := testRates
			want.GemmGflops, want.LinkGbits, want.StatsNs = 100, 1, 4
			if chs[0].Rates != want {
				t.Errorf("agreed rates %+v, want the slowest rank's %+v", chs[0].Rates, want)
			}
			if a, _, _ := opts[0].Choose(w, b, d, 4, want, 1<<30); a != got[0].Algorithm {
				t.Errorf("resolved %v, Choose with the agreed inputs %v", got[0].Algorithm, a)
			}
		} else if r := chs[0].Rates; !(r.GemmGflops > 0 && r.StatsNs > 0 && r.GradNs > 0 && r.SigmoidNs > 0 &&
			r.NaiveStatsNs > 0 && r.CopyNs > 0 && r.TransposeNs > 0 && r.LinkGbits > 0 && r.LatencyUs > 0) {
			t.Errorf("measured rates %+v: want every one positive", r)
		}
	}
}

// TestResolveErrors: a rank that disagrees on the batch size, and a budget
// nothing fits, give the same error on every rank; a concrete algorithm is
// returned as it is.
func TestResolveErrors(t *testing.T) {
	const w = 3
	run := func(opt func(r int) (ClipOptions, int)) []error {
		errs := make([]error, w)
		onRanks(w, func(c mpi.Comm) {
			o, b := opt(c.Rank())
			_, _, errs[c.Rank()] = ResolveClip[float64](c, o, b, 8)
		})
		return errs
	}
	for r, err := range run(func(r int) (ClipOptions, int) {
		return ClipOptions{Algorithm: Auto, Rates: testRates}, 16 + r/2
	}) {
		if !errors.Is(err, ErrShapeMismatch) {
			t.Errorf("rank %d with b differing: %v, want ErrShapeMismatch", r, err)
		}
	}
	errs := run(func(r int) (ClipOptions, int) {
		return ClipOptions{Algorithm: Auto, Rates: testRates, MemoryBudget: int64(100 + r)}, 16
	})
	for r, err := range errs {
		if !errors.Is(err, ErrNoFit) || err.Error() != errs[0].Error() {
			t.Errorf("rank %d with a budget of 100 bytes: %v, want rank 0's ErrNoFit (%v)", r, err, errs[0])
		}
	}
	for r, err := range run(func(r int) (ClipOptions, int) {
		return ClipOptions{Algorithm: Tiled, MemoryBudget: 100}, 16
	}) {
		if err != nil {
			t.Errorf("rank %d, tiled with a budget it does not use: %v", r, err)
		}
	}
}

// TestAutoLoss: a loss made with Auto computes exactly what the algorithm
// it chose computes, says which it chose, and never takes one over its
// budget; with a budget nothing fits every rank gets ErrNoFit. The same for
// SigLIP.
func TestAutoLoss(t *testing.T) {
	const w, b, d = 3, 8, 6
	p := newProblem(5, w, b, d, 10)
	for _, tc := range []struct {
		budget int64
		allow  []Algorithm
	}{
		{1 << 30, Algorithms()},
		{ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Fused}.Memory(w, b, d, 8) - 1, []Algorithm{Tiled, Ring}},
	} {
		opt := ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Auto, Rates: testRates, MemoryBudget: tc.budget}
		losses := make([]*ClipLoss[float64], w)
		got := solveWith(t, p, func(c mpi.Comm) stepper[float64] {
			losses[c.Rank()] = NewClipLoss[float64](c, d, opt)
			return losses[c.Rank()]
		})
		a := losses[0].Algorithm()
		for r, l := range losses {
			ch, ok := l.Choice()
			if l.Algorithm() != a || !ok || ch.Name != a.String() {
				t.Errorf("budget %d: rank %d chose %v (choice %q, %v), rank 0 %v", tc.budget, r, l.Algorithm(), ch.Name, ok, a)
			}
		}
		ok := false
		for _, x := range tc.allow {
			ok = ok || x == a
		}
		if !ok {
			t.Errorf("budget %d: chose %v, want one of %v", tc.budget, a, tc.allow)
		}
		if want, _, err := opt.Choose(w, b, d, 8, testRates, tc.budget); err != nil || want != a {
			t.Errorf("budget %d: chose %v, Choose says %v, %v", tc.budget, a, want, err)
		}
		concrete := opt
		concrete.Algorithm = a
		if m := concrete.Memory(w, b, d, 8); m > tc.budget {
			t.Errorf("budget %d: chose %v, which needs %d", tc.budget, a, m)
		}
		want := solve[float64](t, p, concrete)
		if bad := got.diff(want, 0, 0); len(bad) > 0 {
			t.Errorf("budget %d: auto (%v) differs from %v: %v", tc.budget, a, a, bad)
		}
	}

	errs := make([]error, w)
	onRanks(w, func(c mpi.Comm) {
		l := NewClipLoss[float64](c, d, ClipOptions{Algorithm: Auto, Rates: testRates, MemoryBudget: 1000})
		img, txt := make([]float64, b*d), make([]float64, b*d)
		copy(img, p.img[c.Rank()*b*d:])
		copy(txt, p.txt[c.Rank()*b*d:])
		_, errs[c.Rank()] = l.ForwardBackward(make([]float64, b*d), make([]float64, b*d), img, txt, p.lg)
	})
	for r, err := range errs {
		if !errors.Is(err, ErrNoFit) {
			t.Errorf("rank %d, 1000-byte budget: %v, want ErrNoFit", r, err)
		}
	}

	// SigLIP: a budget of exactly Reduce's memory leaves only Reduce.
	sopt := SigLipOptions{Impl: SigLipAuto, Rates: testRates, MemoryBudget: SigLipOptions{Impl: Reduce}.Memory(w, b, d, 8)}
	sl := make([]*SigLipLoss[float64], w)
	got := solveWith(t, p, func(c mpi.Comm) stepper[float64] {
		sl[c.Rank()] = NewSigLipLoss[float64](c, d, sopt)
		return sl[c.Rank()]
	})
	for r, l := range sl {
		if ch, ok := l.Choice(); l.Impl() != Reduce || !ok || ch.Name != "reduce" {
			t.Errorf("SigLIP rank %d chose %v (choice %q, %v), want reduce", r, l.Impl(), ch.Name, ok)
		}
	}
	want := solveWith(t, p, sigLoss[float64](p, SigLipOptions{Impl: Reduce}))
	if bad := got.diff(want, 0, 0); len(bad) > 0 {
		t.Errorf("SigLIP auto differs from reduce: %v", bad)
	}
}

// TestAutoNoAllocations: once Auto has chosen, a step allocates nothing.
func TestAutoNoAllocations(t *testing.T) {
	p := newProblem(3, 2, 16, 8, 10)
	if a := stepAllocs(p, func(c mpi.Comm) stepper[float64] {
		return NewClipLoss[float64](c, 8, ClipOptions{Algorithm: Auto, Rates: testRates})
	}); a != 0 {
		t.Errorf("ClipLoss auto: %g allocations per step", a)
	}
	if a := stepAllocs(p, func(c mpi.Comm) stepper[float64] {
		return NewSigLipLoss[float64](c, 8, SigLipOptions{Impl: SigLipAuto, Rates: testRates})
	}); a != 0 {
		t.Errorf("SigLipLoss auto: %g allocations per step", a)
	}
}
