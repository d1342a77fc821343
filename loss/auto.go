package loss

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
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
	var preds []Prediction
	for _, a := range clipPreference {
		c := o
		c.Algorithm = a
		preds = append(preds, c.Predict(w, b, d, elemSize, r))
	}
	i, ch, err := choose(preds, r, budget, shapeDesc(w, b, d, elemSize))
	if err != nil {
		return 0, ch, err
	}
	return clipPreference[i], ch, nil
}

// Choose is ClipOptions.Choose for SigLIP's methods (ties go to Bidir,
// then Shift, Gather, Reduce).
func (o SigLipOptions) Choose(w, b, d, elemSize int, r Rates, budget int64) (SigLipImpl, Choice, error) {
	var preds []Prediction
	for _, m := range sigPreference {
		c := o
		c.Impl = m
		preds = append(preds, c.Predict(w, b, d, elemSize, r))
	}
	i, ch, err := choose(preds, r, budget, shapeDesc(w, b, d, elemSize))
	if err != nil {
		return 0, ch, err
	}
	return sigPreference[i], ch, nil
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
	less := func(a, b int) bool {
		if (a == best) != (b == best) {
			return a == best
		}
		if fits(a) != fits(b) {
			return fits(a)
		}
		if preds[a].Seconds != preds[b].Seconds {
			return preds[a].Seconds < preds[b].Seconds
		}
		return a < b
	}
	for i := 1; i < len(order); i++ { // insertion sort: a handful of items
		for j := i; j > 0 && less(order[j], order[j-1]); j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
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
	if err := agreeShape[T](comm, b, d, opt.code()); err != nil {
		return opt, Choice{}, err
	}
	if opt.Algorithm != Auto {
		return opt, Choice{}, nil
	}
	in, err := agreeInputs[T](comm, b, d, resolveThreads(opt.Threads), opt.Rates, opt.MemoryBudget)
	if err != nil {
		return opt, Choice{}, mpi.Fail(comm, err)
	}
	var e T
	a, ch, err := opt.Choose(comm.Size(), b, d, blasSize(e), in.rates, in.budget)
	if err != nil {
		return opt, ch, err
	}
	opt.Algorithm = a
	return opt, ch, nil
}

// ResolveSigLip is ResolveClip for SigLipLoss: it replaces SigLipAuto.
func ResolveSigLip[T blas.Float](comm mpi.Comm, opt SigLipOptions, b, d int) (SigLipOptions, Choice, error) {
	if err := agreeShape[T](comm, b, d, opt.code()); err != nil {
		return opt, Choice{}, err
	}
	if opt.Impl != SigLipAuto {
		return opt, Choice{}, nil
	}
	in, err := agreeInputs[T](comm, b, d, resolveThreads(opt.Threads), opt.Rates, opt.MemoryBudget)
	if err != nil {
		return opt, Choice{}, mpi.Fail(comm, err)
	}
	var e T
	m, ch, err := opt.Choose(comm.Size(), b, d, blasSize(e), in.rates, in.budget)
	if err != nil {
		return opt, ch, err
	}
	opt.Impl = m
	return opt, ch, nil
}

// agreeShape checks with one all-reduce that every rank passes the same b,
// d, element size and options.
func agreeShape[T blas.Float](comm mpi.Comm, b, d int, code float64) error {
	if b < 1 || d < 1 {
		panic("loss: Resolve needs b, d ≥ 1")
	}
	var e T
	v := []float64{float64(b), -float64(b), float64(d), -float64(d), float64(blasSize(e)), -float64(blasSize(e)), code, -code}
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

// rateFields lists Rates' fields with whether a larger value is faster.
func rateFields(r *Rates) []struct {
	p      *float64
	faster bool
} {
	return []struct {
		p      *float64
		faster bool
	}{
		{&r.GemmGflops, true}, {&r.StatsNs, false}, {&r.GradNs, false}, {&r.NaiveStatsNs, false},
		{&r.NaiveGradNs, false}, {&r.SigmoidNs, false}, {&r.CopyNs, false}, {&r.TransposeNs, false},
		{&r.LinkGbits, true}, {&r.LatencyUs, false},
	}
}

// complete reports whether every rate a step of w ranks needs is given.
func (r Rates) complete(w int) bool {
	for i, f := range rateFields(&r) {
		if i >= 8 && w == 1 { // the link does not matter with one rank
			break
		}
		if !(*f.p > 0) {
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
		local, err := ranksOnNode(comm)
		if err != nil {
			return autoInputs{}, err
		}
		budget = availableMemory() / int64(local)
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

// ranksOnNode counts the ranks of comm whose host name is this rank's.
func ranksOnNode(comm mpi.Comm) (int, error) {
	name, _ := os.Hostname()
	h := fnv.New64a()
	h.Write([]byte(name))
	mine := float64(h.Sum64() & (1<<52 - 1)) // exact in a float64
	all := make([]float64, comm.Size())
	if err := comm.AllgatherF64(all, []float64{mine}); err != nil {
		return 0, fmt.Errorf("loss: counting the ranks on this node: %w", err)
	}
	n := 0
	for _, x := range all {
		if x == mine {
			n++
		}
	}
	return n, nil
}

// availableMemory returns the bytes this process may still allocate: the
// kernel's MemAvailable, or less if its cgroup's limit says so (v2
// memory.max - memory.current, v1 memory.limit_in_bytes -
// memory.usage_in_bytes). Without either it returns math.MaxInt64.
func availableMemory() int64 {
	avail := int64(math.MaxInt64)
	if kb := procValue("/proc/meminfo", "MemAvailable:"); kb > 0 {
		avail = kb << 10
	}
	for _, dir := range cgroupDirs() {
		for _, f := range [][2]string{{"memory.max", "memory.current"}, {"memory.limit_in_bytes", "memory.usage_in_bytes"}} {
			limit, err1 := readInt(filepath.Join(dir, f[0]))
			used, err2 := readInt(filepath.Join(dir, f[1]))
			if err1 == nil && err2 == nil && limit > 0 && limit < 1<<60 {
				avail = min(avail, max(limit-used, 0))
			}
		}
	}
	return avail
}

// cgroupDirs returns the memory cgroup directories of this process (v2 and
// v1), those that exist.
func cgroupDirs() []string {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir = filepath.Join("/sys/fs/cgroup", parts[2])
		case strings.Contains(","+parts[1]+",", ",memory,"):
			dir = filepath.Join("/sys/fs/cgroup/memory", parts[2])
		default:
			continue
		}
		if _, err := os.Stat(dir); err == nil {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// procValue reads a "Name: value kB" line of a /proc file (0 if absent).
func procValue(file, name string) int64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name) {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 {
				v, _ := strconv.ParseInt(fields[1], 10, 64)
				return v
			}
		}
	}
	return 0
}

// clipAuto is a ClipLoss's Auto state: the inputs agreed at the first
// call, the choice for the last batch size, and the algorithms made so far
// (kept, so that alternating batch sizes allocate nothing after the first
// of each).
type clipAuto[T blas.Float] struct {
	in     *autoInputs
	b      int
	algo   Algorithm
	choice Choice
	impls  [Auto]clipImpl[T]
}

// pick returns the algorithm for this call: the options' one, or Auto's
// choice for st.b, made (collectively) when b is new. ErrNoFit is decided
// on agreed values and returned; a failed collective goes to mpi.Fail.
func (l *ClipLoss[T]) pick(st *clipStep) (clipImpl[T], error) {
	a := l.auto
	if a == nil {
		return l.impl, nil
	}
	if l.impl != nil && a.b == st.b {
		return l.impl, nil
	}
	if a.in == nil {
		in, err := agreeInputs[T](l.comm, st.b, st.d, l.pool.threads, l.opt.Rates, l.opt.MemoryBudget)
		if err != nil {
			return nil, mpi.Fail(l.comm, err)
		}
		a.in = &in
	}
	var e T
	alg, ch, err := l.opt.Choose(st.w, st.b, st.d, blasSize(e), a.in.rates, a.in.budget)
	if err != nil {
		return nil, err
	}
	if a.impls[alg] == nil {
		o := l.opt
		o.Algorithm = alg
		a.impls[alg] = newClipImpl[T](l.comm, o, l.pool)
	}
	a.b, a.algo, a.choice, l.impl = st.b, alg, ch, a.impls[alg]
	if st.rank == 0 {
		Info(ch.Reason)
	}
	return l.impl, nil
}

// Algorithm returns the algorithm that computes the loss: the options'
// one, or with Auto the one chosen at the last call (Auto before the
// first call).
func (l *ClipLoss[T]) Algorithm() Algorithm {
	if l.auto == nil || l.impl == nil {
		return l.opt.Algorithm
	}
	return l.auto.algo
}

// Choice returns Auto's last choice, and false without Auto or before the
// first call.
func (l *ClipLoss[T]) Choice() (Choice, bool) {
	if l.auto == nil || l.impl == nil {
		return Choice{}, false
	}
	return l.auto.choice, true
}

// sigLipAuto is a SigLipLoss's SigLipAuto state (see clipAuto).
type sigLipAuto struct {
	in     *autoInputs
	b      int
	choice Choice
}

// pick sets l.impl for this call (see ClipLoss.pick).
func (l *SigLipLoss[T]) pick(st *clipStep) error {
	a := l.auto
	if a == nil || (l.impl != SigLipAuto && a.b == st.b) {
		return nil
	}
	if a.in == nil {
		in, err := agreeInputs[T](l.comm, st.b, st.d, l.k.pool.threads, l.opt.Rates, l.opt.MemoryBudget)
		if err != nil {
			return mpi.Fail(l.comm, err)
		}
		a.in = &in
	}
	var e T
	m, ch, err := l.opt.Choose(st.w, st.b, st.d, blasSize(e), a.in.rates, a.in.budget)
	if err != nil {
		return err
	}
	a.b, a.choice, l.impl = st.b, ch, m
	if st.rank == 0 {
		Info(ch.Reason)
	}
	return nil
}

// Impl returns the method that computes the loss: the options' one, or
// with SigLipAuto the one chosen at the last call (SigLipAuto before the
// first call).
func (l *SigLipLoss[T]) Impl() SigLipImpl { return l.impl }

// Choice returns SigLipAuto's last choice, and false without it or before
// the first call.
func (l *SigLipLoss[T]) Choice() (Choice, bool) {
	if l.auto == nil || l.impl == SigLipAuto {
		return Choice{}, false
	}
	return l.auto.choice, true
}
