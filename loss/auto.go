package loss

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/node"
)

// Info prints what Auto chose, once per choice, on rank 0; programs may
// replace it (tests silence it).
var Info = func(msg string) { fmt.Fprintln(os.Stderr, "clipmpi:", msg) }

// Choice is Auto's decision for one shape.
type Choice struct {
	// Name is the algorithm or SigLIP method chosen.
	Name string `json:"choice"`
	// Reason says why, in one line: the prediction, the memory against the
	// budget, the runners-up and what did not fit.
	Reason string `json:"reason"`
	// Predictions has every candidate: the choice first, then the others
	// that fit, fastest first, then those over the budget.
	Predictions []Prediction `json:"predictions"`
	// Rates and BudgetBytes are the inputs every rank agreed on.
	Rates       Rates `json:"rates"`
	BudgetBytes int64 `json:"budget_bytes"`
}

// tieTolerance is the relative difference below which two predictions
// are equal for Choose.
const tieTolerance = 1e-3

// clipPreference is the order candidates are tried in: on equal
// predictions (within tieTolerance) the earlier one wins.
var clipPreference = []Algorithm{Fused, Tiled, Ring, Naive}

var sigPreference = []SigLipImpl{Bidir, Shift, Gather, Reduce}

// Choose returns the algorithm Auto picks for a step of w ranks of b rows
// of dimension d, elements of elemSize bytes, on ranks with rates r and
// budget bytes of memory each: the one Predict says is fastest among those
// whose Memory is at most budget (predictions within 0.1% are a tie, which
// goes to Fused, then Tiled, Ring, Naive). It is a pure function of its arguments, so ranks that agree on
// them agree on the choice. If none fits it returns an error wrapping
// ErrNoFit that names the smallest. It panics as Predict does.
func (o ClipOptions) Choose(w, b, d, elemSize int, r Rates, budget int64) (Algorithm, Choice, error) {
	i, ch, err := chooseAmong(clipPreference, func(a Algorithm) Prediction {
		c := o
		c.Algorithm = a
		return c.Predict(w, b, d, elemSize, r)
	}, r, budget, shapeDesc(w, b, d, elemSize))
	return clipPreference[max(i, 0)], ch, err
}

// Choose is ClipOptions.Choose for SigLIP's methods (ties go to Bidir,
// then Shift, Gather, Reduce).
func (o SigLipOptions) Choose(w, b, d, elemSize int, r Rates, budget int64) (SigLipImpl, Choice, error) {
	i, ch, err := chooseAmong(sigPreference, func(m SigLipImpl) Prediction {
		c := o
		c.Impl = m
		return c.Predict(w, b, d, elemSize, r)
	}, r, budget, shapeDesc(w, b, d, elemSize))
	return sigPreference[max(i, 0)], ch, err
}

// chooseAmong predicts every candidate and chooses among them.
func chooseAmong[A any](cands []A, predict func(A) Prediction, r Rates, budget int64, shape string) (int, Choice, error) {
	preds := make([]Prediction, len(cands))
	for i, c := range cands {
		preds[i] = predict(c)
	}
	return choose(preds, r, budget, shape)
}

func shapeDesc(w, b, d, elemSize int) string {
	t := "float32"
	if elemSize != 4 {
		t = fmt.Sprintf("%d-byte elements", elemSize)
		if elemSize == 8 {
			t = "float64"
		}
	}
	return fmt.Sprintf("W=%d, b=%d, d=%d, %s", w, b, d, t)
}

// choose picks the fastest prediction that fits and explains it; the
// index is into preds.
func choose(preds []Prediction, r Rates, budget int64, shape string) (int, Choice, error) {
	// Predictions within tieTolerance of each other are a tie, which the
	// earlier candidate wins: the model cannot tell them apart.
	best := -1
	for i, p := range preds {
		if p.MemoryBytes <= budget && (best < 0 || p.Seconds < preds[best].Seconds*(1-tieTolerance)) {
			best = i
		}
	}
	// The choice first, then the others fastest first, those over the
	// budget last.
	order := make([]int, len(preds))
	for i := range order {
		order[i] = i
	}
	fits := func(i int) bool { return preds[i].MemoryBytes <= budget }
	rank := func(i int) float64 { return b2f(i != best)*2 + b2f(!fits(i)) } // the choice, the others that fit, the rest
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(preds[a].Seconds, preds[b].Seconds))
	})
	ch := Choice{Rates: r, BudgetBytes: budget}
	for _, i := range order {
		ch.Predictions = append(ch.Predictions, preds[i])
	}
	var others, over []string
	for _, i := range order {
		p := preds[i]
		switch {
		case i == best:
		case fits(i):
			others = append(others, fmt.Sprintf("%s %.1f ms", p.Name, p.Seconds*1e3))
		default:
			over = append(over, fmt.Sprintf("%s %s", p.Name, bytesString(p.MemoryBytes)))
		}
	}
	rates := fmt.Sprintf("GEMM %.0f GFLOP/s", r.GemmGflops)
	if r.LinkGbits > 0 {
		rates += fmt.Sprintf(", link %.3g Gbit/s, latency %.3g µs", r.LinkGbits, r.LatencyUs)
	}
	if best < 0 {
		small := order[0]
		for _, i := range order {
			if preds[i].MemoryBytes < preds[small].MemoryBytes {
				small = i
			}
		}
		ch.Reason = fmt.Sprintf("auto: nothing fits a budget of %s per rank (%s); the smallest, %s, needs %s",
			bytesString(budget), shape, preds[small].Name, bytesString(preds[small].MemoryBytes))
		return -1, ch, fmt.Errorf("%w: %s", ErrNoFit, strings.TrimPrefix(ch.Reason, "auto: "))
	}
	p := preds[best]
	ch.Name = p.Name
	msg := fmt.Sprintf("auto chose %s for %s: %.1f ms per step predicted (GEMMs %.1f, kernels %.1f, waiting for the link %.1f), %s per rank of a %s budget",
		p.Name, shape, p.Seconds*1e3, p.GemmSeconds*1e3, p.KernelSeconds*1e3, p.ExposedSeconds*1e3,
		bytesString(p.MemoryBytes), bytesString(budget))
	if len(others) > 0 {
		msg += "; then " + strings.Join(others, ", ")
	}
	if len(over) > 0 {
		msg += "; over the budget: " + strings.Join(over, ", ")
	}
	ch.Reason = msg + "; rates: " + rates
	return best, ch, nil
}

// bytesString prints a size in MiB or GiB.
func bytesString(n int64) string {
	if n >= math.MaxInt64/2 {
		return "unlimited"
	}
	if n >= 10<<30 {
		return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
	}
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
}

// ResolveClip returns opt with Auto replaced by the algorithm Choose picks
// for b rows per rank of dimension d and element type T on comm, and the
// Choice. The inputs are agreed first, so that every rank picks the same
// algorithm: the budget is opt.MemoryBudget or, if that is 0, the memory
// available on the node divided by the ranks on the node (ranks are counted
// by host name), the smallest over ranks; the rates are opt.Rates where
// every rank gives all of them, else those MeasureRates measures (once; a
// field a rank gives overrides its measurement), the slowest over ranks.
// If opt.Algorithm is not Auto, opt is returned as it is, after the same
// check that the ranks agree.
//
// It is collective. It returns an error, the same on every rank, if the
// ranks disagree on b, d, T or the options (ErrShapeMismatch) or if nothing
// fits (ErrNoFit); a failed collective, which may reach only some ranks,
// goes to mpi.Fail (as in ClipLoss.Forward). It panics if b or d is less
// than 1.
func ResolveClip[T blas.Float](comm mpi.Comm, opt ClipOptions, b, d int) (ClipOptions, Choice, error) {
	ch, err := resolve[T](comm, opt.code(), b, d, opt.Algorithm == Auto, opt.Threads, opt.Rates, opt.MemoryBudget,
		func(in autoInputs) (Choice, error) {
			a, ch, err := opt.Choose(comm.Size(), b, d, elemSize[T](), in.rates, in.budget)
			if err == nil {
				opt.Algorithm = a
			}
			return ch, err
		})
	return opt, ch, err
}

// ResolveSigLip is ResolveClip for SigLipLoss: it replaces SigLipAuto.
func ResolveSigLip[T blas.Float](comm mpi.Comm, opt SigLipOptions, b, d int) (SigLipOptions, Choice, error) {
	ch, err := resolve[T](comm, opt.code(), b, d, opt.Impl == SigLipAuto, opt.Threads, opt.Rates, opt.MemoryBudget,
		func(in autoInputs) (Choice, error) {
			m, ch, err := opt.Choose(comm.Size(), b, d, elemSize[T](), in.rates, in.budget)
			if err == nil {
				opt.Impl = m
			}
			return ch, err
		})
	return opt, ch, err
}

// resolve is ResolveClip's and ResolveSigLip's: agree on the shape, then,
// for Auto, on the inputs, and choose with pick.
func resolve[T blas.Float](comm mpi.Comm, code float64, b, d int, isAuto bool, threads int, rates Rates, budget int64, pick func(autoInputs) (Choice, error)) (Choice, error) {
	if err := agreeShape[T](comm, b, d, code); err != nil || !isAuto {
		return Choice{}, err
	}
	in, err := agreeInputs[T](comm, b, d, resolveThreads(threads), rates, budget)
	if err != nil {
		return Choice{}, mpi.Fail(comm, err)
	}
	return pick(in)
}

// agreeShape checks with one all-reduce that every rank passes the same b,
// d, element size and options.
func agreeShape[T blas.Float](comm mpi.Comm, b, d int, code float64) error {
	if b < 1 || d < 1 {
		panic("loss: Resolve needs b, d ≥ 1")
	}
	e := float64(elemSize[T]())
	v := []float64{float64(b), -float64(b), float64(d), -float64(d), e, -e, code, -code}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		return mpi.Fail(comm, fmt.Errorf("loss: agreeing on the shape: %w", err))
	}
	for i := 0; i < len(v); i += 2 {
		if v[i] != -v[i+1] {
			what := [...]string{"the batch size", "the feature dimension", "the element type", "the loss options"}[i/2]
			return fmt.Errorf("%w on %s", ErrShapeMismatch, what)
		}
	}
	return nil
}

// autoInputs are the agreed inputs of a choice.
type autoInputs struct {
	rates  Rates
	budget int64
}

// rateField is a field of Rates: whether a larger value is faster, and
// when a step needs it given (needAlways, needLink: with more than one
// rank, needNever: optional).
type rateField struct {
	p      *float64
	faster bool
	need   int
}

const (
	needAlways = iota
	needLink
	needNever
)

func rateFields(r *Rates) []rateField {
	return []rateField{
		{&r.GemmGflops, true, needAlways}, {&r.StatsNs, false, needAlways}, {&r.GradNs, false, needAlways},
		{&r.NaiveStatsNs, false, needAlways}, {&r.NaiveGradNs, false, needAlways}, {&r.SigmoidNs, false, needAlways},
		{&r.CopyNs, false, needAlways}, {&r.TransposeNs, false, needAlways},
		{&r.LinkGbits, true, needLink}, {&r.LatencyUs, false, needLink}, {&r.NarrowGflops, true, needNever}, {&r.KeptGflops, true, needNever},
		{&r.BF16Gflops, true, needNever},
	}
}

// complete reports whether every rate a step of w ranks needs is given.
func (r Rates) complete(w int) bool {
	for _, f := range rateFields(&r) {
		if !(*f.p > 0) && (f.need == needAlways || f.need == needLink && w > 1) {
			return false
		}
	}
	return true
}

// agreeInputs agrees on the budget and the rates (measuring them, with the
// kernels on threads threads, unless every rank gives all of them).
func agreeInputs[T blas.Float](comm mpi.Comm, b, d, threads int, given Rates, budget int64) (autoInputs, error) {
	w := comm.Size()
	if budget < 0 {
		panic("loss: negative MemoryBudget")
	}
	if budget == 0 {
		var err error
		if budget, err = node.MemoryBudget(comm); err != nil {
			return autoInputs{}, fmt.Errorf("loss: %w", err)
		}
	}
	budget = min(budget, 1<<62) // exact as a float64 and back

	// One all-reduce: whether any rank lacks a rate, and the smallest budget.
	v := []float64{b2f(!given.complete(w)), -float64(budget)}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		return autoInputs{}, fmt.Errorf("loss: agreeing on the memory budget: %w", err)
	}
	in := autoInputs{rates: given, budget: int64(-v[1])}
	if v[0] != 0 {
		m, err := measureRates[T](comm, b, d, threads)
		if err != nil {
			return autoInputs{}, err
		}
		mf, gf := rateFields(&m), rateFields(&in.rates)
		for i := range gf {
			if !(*gf[i].p > 0) {
				*gf[i].p = *mf[i].p
			}
		}
	}
	// Given rates may differ between ranks: the slowest rank's, everywhere.
	fs := rateFields(&in.rates)
	u := make([]float64, len(fs))
	for i, f := range fs {
		u[i] = *f.p
		if f.faster {
			u[i] = -u[i]
		}
	}
	if err := comm.AllreduceF64(mpi.Max, u, u); err != nil {
		return autoInputs{}, fmt.Errorf("loss: agreeing on the rates: %w", err)
	}
	for i, f := range fs {
		*f.p = u[i]
		if f.faster {
			*f.p = -u[i]
		}
	}
	return in, nil
}
