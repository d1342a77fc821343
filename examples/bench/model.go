package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/node"
)

// measureRates measures the cost model's rates for the run's element type
// on every rank (loss.MeasureRates), with the run's shapes and kernel
// threads (0: blas.Threads()).
func measureRates(comm mpi.Comm, dtype string, b, d, threads int) (loss.Rates, error) {
	if dtype == "float64" {
		return loss.MeasureRates[float64](comm, b, d, threads)
	}
	return loss.MeasureRates[float32](comm, b, d, threads)
}

// ModelRecord is one line of bin/bench -model: the cost model's prediction
// for one algorithm.
type ModelRecord struct {
	Loss           string     `json:"loss"`
	Algo           string     `json:"algo"`
	Mode           string     `json:"mode"`
	World          int        `json:"world"`
	RanksPerNode   int        `json:"ranks_per_node"`
	B              int        `json:"b"`
	D              int        `json:"d"`
	Dtype          string     `json:"dtype"`
	Threads        int        `json:"threads"`
	Rates          loss.Rates `json:"rates"`
	StepMs         float64    `json:"step_ms"`
	GemmMs         float64    `json:"gemm_ms"`
	KernelMs       float64    `json:"kernel_ms"`
	CommMs         float64    `json:"comm_ms"`
	ExposedCommMs  float64    `json:"exposed_comm_ms"`
	CommMB         float64    `json:"comm_mb"`
	MemoryMiB      float64    `json:"memory_mib"`
	BudgetMiB      float64    `json:"budget_mib_per_rank"`
	Fits           bool       `json:"fits"`
	MaxBPerRank    int        `json:"max_b_per_rank"`
	MaxGlobalBatch int        `json:"max_global_batch"`
	Auto           bool       `json:"auto_choice"`
}

// modelConfig is bin/bench -model's command line.
type modelConfig struct {
	loss, mode, algos, dtype string
	w, b, d, tile, threads   int
	ranksPerNode             int
	gflops, link, latency    float64
	nodeMemGiB               float64
	kernelRates              string
	jsonOnly                 bool
}

// modelMain is bin/bench -model: the cost model's predicted step time and
// memory per algorithm for the shape and machine given by the flags,
// without MPI. Rates not given are measured in this process: the kernels at
// one thread, their time divided by -threads (the kernels split rows over
// the threads), and the GEMM rate at one thread times -threads.
func modelMain(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench -model", flag.ContinueOnError)
	fs.SetOutput(out)
	mc := modelConfig{}
	fs.StringVar(&mc.loss, "loss", "clip", "loss: clip, siglip or both")
	fs.StringVar(&mc.mode, "mode", "local_gwg", "ClipLoss mode: global, global_gwg, local or local_gwg")
	fs.StringVar(&mc.algos, "algo", "all", "algorithm(s), comma-separated, or all")
	fs.StringVar(&mc.dtype, "dtype", "float32", "float32 or float64")
	fs.IntVar(&mc.w, "w", 2, "ranks in all (nodes × ranks per node)")
	fs.IntVar(&mc.b, "b", 1024, "rows per rank")
	fs.IntVar(&mc.d, "d", 512, "feature dimension")
	fs.IntVar(&mc.tile, "tile", 0, "tile width of tiled, ring and SigLIP (0: default)")
	fs.IntVar(&mc.threads, "threads", 1, "threads per rank (BLAS and kernels)")
	fs.IntVar(&mc.ranksPerNode, "ranks-per-node", 1, "ranks per node (they share -node-mem-gib)")
	fs.Float64Var(&mc.gflops, "gflops", 0, "GEMM rate of one rank, GFLOP/s (0: measured here at one thread, times -threads)")
	fs.Float64Var(&mc.link, "link-gbit", 2, "link bandwidth of one rank, Gbit/s each way")
	fs.Float64Var(&mc.latency, "latency-us", 10, "message latency, µs")
	fs.Float64Var(&mc.nodeMemGiB, "node-mem-gib", 0, "memory of a node for the loss, GiB (0: what this machine has available)")
	fs.StringVar(&mc.kernelRates, "kernel-rates", "", `kernel rates of one thread as JSON, e.g. '{"stats_ns":2.2,"grad_ns":1.7}' (fields of loss.Rates: stats_ns, grad_ns, naive_stats_ns, naive_grad_ns, sigmoid_ns, copy_ns, transpose_ns); those not given are measured here`)
	fs.BoolVar(&mc.jsonOnly, "json", false, "print only the JSON lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if mc.w < 1 || mc.b < 1 || mc.d < 1 || mc.threads < 1 || mc.ranksPerNode < 1 || mc.tile < 0 {
		return errors.New("-w, -b, -d, -threads and -ranks-per-node must be positive, -tile not negative")
	}
	if mc.w > 1 && !(mc.link > 0) {
		return errors.New("-link-gbit must be positive with more than one rank")
	}
	if mc.dtype != "float32" && mc.dtype != "float64" {
		return fmt.Errorf("unknown dtype %q (want float32 or float64)", mc.dtype)
	}
	kinds := []string{mc.loss}
	if mc.loss == "both" {
		kinds = []string{"clip", "siglip"}
	}
	for _, kind := range kinds {
		if _, _, err := modelLoss(mc, kind, loss.Rates{GemmGflops: 1, LinkGbits: 1}, 4, 0); err != nil {
			return err // a bad -loss, -mode or -algo, before measuring
		}
	}
	// Kernel rates of one thread: given, or measured here.
	var given loss.Rates
	if mc.kernelRates != "" {
		dec := json.NewDecoder(strings.NewReader(mc.kernelRates))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&given); err != nil {
			return fmt.Errorf("-kernel-rates: %w", err)
		}
	}
	kernels := func(r *loss.Rates) []*float64 {
		return []*float64{&r.StatsNs, &r.GradNs, &r.NaiveStatsNs, &r.NaiveGradNs, &r.SigmoidNs, &r.CopyNs, &r.TransposeNs}
	}
	esize := 4
	if mc.dtype == "float64" {
		esize = 8
	}
	r := given
	measure := !(mc.gflops > 0)
	for _, p := range kernels(&given) {
		measure = measure || !(*p > 0)
	}
	if measure {
		saved := blas.Threads()
		blas.SetThreads(1)
		if mc.dtype == "float64" {
			r = loss.MeasureComputeRates[float64](mc.b, mc.d, 1)
		} else {
			r = loss.MeasureComputeRates[float32](mc.b, mc.d, 1)
		}
		blas.SetThreads(saved)
		g, m := kernels(&given), kernels(&r)
		for i := range g {
			if *g[i] > 0 {
				*m[i] = *g[i]
			}
		}
	}
	t := float64(mc.threads)
	for _, p := range kernels(&r) {
		*p /= t
	}
	// The GEMM rates of every class scale together: by the threads, or
	// to the rate given.
	g := t
	if mc.gflops > 0 && r.GemmGflops > 0 {
		g = mc.gflops / r.GemmGflops
	}
	r.GemmGflops, r.NarrowGflops, r.KeptGflops = r.GemmGflops*g, r.NarrowGflops*g, r.KeptGflops*g
	if mc.gflops > 0 {
		r.GemmGflops = mc.gflops
	}
	r.LinkGbits, r.LatencyUs = mc.link, mc.latency
	if mc.w == 1 {
		r.LinkGbits, r.LatencyUs = 0, 0
	}
	nodeMem := mc.nodeMemGiB * (1 << 30)
	if nodeMem == 0 {
		nodeMem = float64(min(node.AvailableMemory(), 1<<50)) // 1 PiB if unknown
	}
	budget := int64(nodeMem) / int64(mc.ranksPerNode)

	var recs []ModelRecord
	var notes []string
	for _, kind := range kinds {
		rs, note, err := modelLoss(mc, kind, r, esize, budget)
		if err != nil {
			return err
		}
		recs = append(recs, rs...)
		notes = append(notes, note)
	}
	for _, rec := range recs {
		line, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(line))
	}
	if mc.jsonOnly {
		return nil
	}
	fmt.Fprintf(out, "\n# cost model: W=%d (%d per node), b=%d, d=%d, %s, %d threads per rank; GEMM %.0f GFLOP/s, link %g Gbit/s, latency %g µs; %.0f GiB per node\n",
		mc.w, mc.ranksPerNode, mc.b, mc.d, mc.dtype, mc.threads, r.GemmGflops, mc.link, mc.latency, nodeMem/(1<<30))
	fmt.Fprintf(out, "%-7s %-7s %10s %9s %9s %9s %9s %11s %8s %14s\n",
		"loss", "algo", "step ms", "GEMM ms", "kern ms", "comm ms", "wait ms", "memory MiB", "fits", "max global b")
	for _, rec := range recs {
		mark := ""
		if rec.Auto {
			mark = " ← auto"
		}
		fmt.Fprintf(out, "%-7s %-7s %10.1f %9.1f %9.1f %9.1f %9.1f %11.0f %8v %14d%s\n",
			rec.Loss, rec.Algo, rec.StepMs, rec.GemmMs, rec.KernelMs, rec.CommMs, rec.ExposedCommMs, rec.MemoryMiB, rec.Fits, rec.MaxGlobalBatch, mark)
	}
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	return nil
}

// modelLoss predicts every requested algorithm of one loss, and Auto's
// choice among all of them.
func modelLoss(mc modelConfig, kind string, r loss.Rates, esize int, budget int64) ([]ModelRecord, string, error) {
	type cand struct {
		name    string
		predict func(w, b, d int) loss.Prediction
		memory  func(w, b, d int) int64
	}
	var cands []cand
	var choice loss.Choice
	var chooseErr error
	mode := "siglip"
	switch kind {
	case "clip":
		opt, err := loss.ParseMode(mc.mode)
		if err != nil {
			return nil, "", err
		}
		mode = mc.mode
		opt.Tile = mc.tile
		for _, a := range loss.Algorithms() {
			o := opt
			o.Algorithm = a
			cands = append(cands, cand{a.String(),
				func(w, b, d int) loss.Prediction { return o.Predict(w, b, d, esize, r) },
				func(w, b, d int) int64 { return o.Memory(w, b, d, esize) }})
		}
		_, choice, chooseErr = opt.Choose(mc.w, mc.b, mc.d, esize, r, budget)
	case "siglip":
		for _, m := range loss.SigLipImpls() {
			o := loss.SigLipOptions{Impl: m, Tile: mc.tile}
			cands = append(cands, cand{m.String(),
				func(w, b, d int) loss.Prediction { return o.Predict(w, b, d, esize, r) },
				func(w, b, d int) int64 { return o.Memory(w, b, d, esize) }})
		}
		_, choice, chooseErr = loss.SigLipOptions{Tile: mc.tile}.Choose(mc.w, mc.b, mc.d, esize, r, budget)
	default:
		return nil, "", fmt.Errorf("unknown loss %q (want clip, siglip or both)", kind)
	}
	want := map[string]bool{}
	if mc.algos != "all" {
		for _, a := range strings.Split(mc.algos, ",") {
			want[a] = true
		}
	}
	var recs []ModelRecord
	for _, c := range cands {
		if mc.algos != "all" && !want[c.name] {
			continue
		}
		p := c.predict(mc.w, mc.b, mc.d)
		rec := ModelRecord{Loss: kind, Algo: c.name, Mode: mode, World: mc.w, RanksPerNode: mc.ranksPerNode,
			B: mc.b, D: mc.d, Dtype: mc.dtype, Threads: mc.threads, Rates: r,
			StepMs: p.Seconds * 1e3, GemmMs: p.GemmSeconds * 1e3, KernelMs: p.KernelSeconds * 1e3,
			CommMs: p.CommSeconds * 1e3, ExposedCommMs: p.ExposedSeconds * 1e3, CommMB: p.CommBytes / 1e6,
			MemoryMiB: float64(p.MemoryBytes) / (1 << 20), BudgetMiB: float64(budget) / (1 << 20),
			Fits: p.MemoryBytes <= budget, Auto: chooseErr == nil && c.name == choice.Name}
		// The largest b whose memory fits the budget, by bisection (memory
		// grows with b, and the doubling stops long before int64 overflows).
		fits := func(b int) bool { return c.memory(mc.w, b, mc.d) <= budget }
		lo, hi := 0, 1
		for hi < 1<<40 && fits(hi) {
			lo, hi = hi, 2*hi
		}
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			if fits(mid) {
				lo = mid
			} else {
				hi = mid
			}
		}
		rec.MaxBPerRank, rec.MaxGlobalBatch = lo, lo*mc.w
		recs = append(recs, rec)
	}
	if len(recs) == 0 {
		return nil, "", fmt.Errorf("no algorithm of %s is named in -algo %q", kind, mc.algos)
	}
	note := choice.Reason
	if chooseErr != nil {
		note = "auto: " + chooseErr.Error()
	}
	return recs, kind + " " + note, nil
}

// autoLine is what Auto would choose among all the loss's algorithms with
// the rates of the run and the bench's memory limit per rank.
func autoLine(lossKind, mode string, w, b, d int, dtype string, prec loss.Precision, sums bool, tile int, r loss.Rates, limitMiB float64) string {
	esize := 4
	if dtype == "float64" {
		esize = 8
	}
	budget := int64(limitMiB * (1 << 20))
	var ch loss.Choice
	var err error
	if lossKind == "siglip" {
		_, ch, err = loss.SigLipOptions{Tile: tile, Precision: prec, SumsBF16: sums}.Choose(w, b, d, esize, r, budget)
	} else {
		opt, perr := loss.ParseMode(mode)
		if perr != nil {
			return "auto: " + perr.Error()
		}
		opt.Tile, opt.Precision, opt.SumsBF16 = tile, prec, sums
		_, ch, err = opt.Choose(w, b, d, esize, r, budget)
	}
	if err != nil {
		return "auto: " + err.Error()
	}
	return ch.Reason
}
