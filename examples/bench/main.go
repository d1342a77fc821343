// Command bench times the distributed ClipLoss, forward and backward, per
// algorithm, under mpirun, and compares each with its floor: the time its
// GEMMs take at the sgemm rate measured in the same run on the same shapes,
// plus the time its bytes take at the collective bandwidth measured in the
// same run. It prints one JSON object per configuration and a table.
//
//	mpirun -np 2 ./bench -b 1024 -d 512 -mode local_gwg -algo all -dtype float32 -steps 10
//
// `make bench-loss NP=2 B=1024 D=512 MODE=local_gwg ALGO=all DTYPE=float32 STEPS=10`
// runs it with this machine's mpirun flags.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/node"
)

// Record is one configuration's result, one JSON line. Every field is
// always present; a value that does not exist is null, never NaN: today
// only collective_gb_per_s, which is null with one rank (nothing is
// exchanged, so comm_bytes_per_step and comm_floor_ms are 0). The fields
// after skipped appear only with -max-batch. A record that cannot be
// encoded ends the bench with an error on every rank.
type Record struct {
	Loss             string   `json:"loss"`
	Algo             string   `json:"algo"`
	Mode             string   `json:"mode"`
	World            int      `json:"world"`
	B                int      `json:"b"`
	D                int      `json:"d"`
	Dtype            string   `json:"dtype"`
	Precision        string   `json:"precision"` // fp32 or amp_bf16 (loss.Precision)
	GemmPath         string   `json:"gemm_path"` // what runs the GEMMs: blas_backend, or blas.BF16Path() in amp_bf16
	Tile             int      `json:"tile"`
	Steps            int      `json:"steps"`
	StepMsMedian     float64  `json:"step_ms_median"`
	StepMsMin        float64  `json:"step_ms_min"`
	StepMsMax        float64  `json:"step_ms_max"`
	GflopPerStep     float64  `json:"gflop_per_step"`
	Gflops           float64  `json:"gflops"`
	GemmFloorMs      float64  `json:"gemm_floor_ms"`
	CommFloorMs      float64  `json:"comm_floor_ms"`
	FloorMs          float64  `json:"floor_ms"`
	RatioToFloor     float64  `json:"ratio_to_floor"`
	SgemmGflops      float64  `json:"sgemm_gflops"`
	CollectiveGBs    *float64 `json:"collective_gb_per_s"` // nil with one rank
	PeakRSSMiB       float64  `json:"peak_rss_mib"`
	WorkspaceMiB     float64  `json:"workspace_mib"`
	CommBytesPerStep float64  `json:"comm_bytes_per_step"`
	AllocsPerStep    float64  `json:"allocs_per_step"`
	BlasBackend      string   `json:"blas_backend"`
	BlasThreads      int      `json:"blas_threads"`
	Threads          int      `json:"threads"` // the loss kernels' threads per rank
	Loss0            float64  `json:"loss_value"`
	// PredictedStepMs is the cost model's step time (loss.Predict) with the
	// rates loss.MeasureRates measured at the start of the same run.
	PredictedStepMs float64 `json:"predicted_step_ms"`
	// The communication hidden behind compute (see README, "A shaped
	// network"): compute_floor_ms is gemm_floor_ms; link_gbit_s is the
	// point-to-point rate measured with -net (null without), which then
	// sets comm_floor_ms; comm_exposed_ms is the median over steps of the
	// slowest rank's time inside communication calls; comm_hidden_fraction
	// is 1 - comm_exposed_ms / comm_floor_ms clamped to [0, 1] (null when
	// nothing is exchanged); max_floor_ms is max(compute_floor_ms,
	// comm_floor_ms), the step of perfect overlap.
	LinkGbits          *float64 `json:"link_gbit_s"`
	ComputeFloorMs     float64  `json:"compute_floor_ms"`
	CommExposedMs      float64  `json:"comm_exposed_ms"`
	CommHiddenFraction *float64 `json:"comm_hidden_fraction"`
	MaxFloorMs         float64  `json:"max_floor_ms"`
	RatioToMaxFloor    float64  `json:"ratio_to_max_floor"`
	Skipped            string   `json:"skipped,omitempty"`
	// With -max-batch: the memory model (workspace from loss.Plan plus the
	// features and gradients plus the base RSS) checked against the peak RSS
	// measured at b, and the largest global batch it admits in the budget.
	ModelMiB       float64 `json:"model_mib,omitempty"`
	BudgetMiB      float64 `json:"budget_mib_per_rank,omitempty"`
	MaxBPerRank    int     `json:"max_b_per_rank,omitempty"`
	MaxGlobalBatch int     `json:"max_global_batch,omitempty"`
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-model" || os.Args[1] == "--model") {
		// The cost model alone, without MPI (model.go).
		if err := modelMain(os.Args[2:], os.Stdout); err != nil {
			if !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(os.Stderr, "bench -model:", err)
			}
			os.Exit(2)
		}
		return
	}
	b := flag.Int("b", 1024, "rows per rank")
	d := flag.Int("d", 512, "feature dimension")
	mode := flag.String("mode", "local_gwg", "OpenCLIP mode: global, global_gwg, local or local_gwg")
	algos := flag.String("algo", "all", "algorithm(s), comma-separated, or all")
	dtype := flag.String("dtype", "float32", "float32 or float64")
	precision := flag.String("precision", "fp32", "the GEMMs' precision: fp32, or amp_bf16 (bf16: the same; float32 only)")
	sumsBF16 := flag.Bool("sums-bf16", false, "with amp_bf16: the ring methods' gradient sums travel in bf16 too (loss SumsBF16)")
	steps := flag.Int("steps", 10, "timed steps")
	warmup := flag.Int("warmup", 2, "untimed steps first")
	tile := flag.Int("tile", 0, "tile width of tiled and ring (0: default)")
	threads := flag.Int("threads", 0, "threads per rank, for the BLAS and the loss kernels (0: usable CPUs / ranks on this node)")
	memLimit := flag.Float64("mem-limit-mib", 0, "skip configurations whose workspace estimate exceeds this per rank (0: 80% of the available memory / ranks on the node)")
	lossKind := flag.String("loss", "clip", "loss: clip or siglip (then -algo names SigLIP methods: bidir, shift, reduce, gather, or all)")
	jsonOnly := flag.Bool("json", false, "print only the JSON lines")
	repeat := flag.Int("repeat", 1, "rounds: measure every configuration this many times, round after round, and report each one's round with the lowest median step (with the lowest GEMM floor of its rounds and, with -net, the highest link rate)")
	netRate := flag.Bool("net", false, "measure the point-to-point link rate (a ring exchange of 16 MiB each way, best of 5) and take the communication floor from it: for ranks on different hosts")
	maxBatch := flag.Float64("max-batch", 0, "memory budget in GiB for all ranks on this node (e.g. 24): report the largest global batch per algorithm that fits, from the memory model checked against the peak RSS measured at -b")
	flag.Parse()

	comm, err := mpi.World()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	code := 0
	cfg := benchConfig{loss: *lossKind, b: *b, d: *d, mode: *mode, algos: *algos, dtype: *dtype, precision: *precision, sumsBF16: *sumsBF16,
		steps: *steps, warmup: *warmup, tile: *tile, threads: *threads, memLimit: *memLimit, jsonOnly: *jsonOnly, budget: *maxBatch, net: *netRate, repeat: *repeat}
	if err := run(comm, os.Stdout, cfg); err != nil {
		if comm.Rank() == 0 {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		code = 1
	}
	mpi.Finalize()
	os.Exit(code)
}

// benchConfig is the command line.
type benchConfig struct {
	loss, mode, algos, dtype  string
	precision                 string
	sumsBF16                  bool
	b, d, steps, warmup, tile int
	threads                   int     // per rank, BLAS and kernels; 0: CPUs / local ranks
	memLimit                  float64 // MiB per rank; 0: 80% of node.AvailableMemory / ranks on the node
	jsonOnly                  bool
	budget                    float64 // -max-batch, GiB per node; 0: off
	net                       bool    // -net: measure the link, floor from it
	repeat                    int     // -repeat: rounds; 0 or 1: one
}

// config is one configuration to measure: a loss maker, its plan and its
// cost model.
type config struct {
	name    string
	plan    func(w, b, d, elem int) loss.Plan
	predict func(w, b, d, elem int, r loss.Rates) loss.Prediction
	tile    int
	threads int                            // the loss's Threads
	make    func(comm mpi.Comm, d int) any // *loss.ClipLoss[T] or *loss.SigLipLoss[T]
}

// run measures every configuration of bc on comm and writes, on rank 0, one
// JSON line per configuration to out, then (unless bc.jsonOnly) a table. It
// is collective; its errors are the same on every rank.
func run(comm mpi.Comm, out io.Writer, bc benchConfig) error {
	lossKind, b, d, mode, algos, dtype := bc.loss, bc.b, bc.d, bc.mode, bc.algos, bc.dtype
	steps, warmup, tile, memLimit, jsonOnly := bc.steps, bc.warmup, bc.tile, bc.memLimit, bc.jsonOnly
	if dtype != "float32" && dtype != "float64" {
		return fmt.Errorf("unknown dtype %q (want float32 or float64)", dtype)
	}
	prec, err := loss.FP32, error(nil) // an empty -precision too
	if bc.precision != "" {
		if prec, err = loss.ParsePrecision(bc.precision); err != nil {
			return err
		}
	}
	if prec == loss.AMPBF16 && dtype != "float32" {
		return fmt.Errorf("-precision amp_bf16 needs -dtype float32")
	}
	if bc.sumsBF16 && prec != loss.AMPBF16 {
		return fmt.Errorf("-sums-bf16 needs -precision amp_bf16")
	}
	gemmPath := blas.Backend()
	if prec == loss.AMPBF16 {
		gemmPath = blas.BF16Path()
	}
	if bc.threads < 0 {
		return fmt.Errorf("-threads %d: want a positive count, or 0 for the CPUs per rank", bc.threads)
	}
	local, err := node.RanksOnNode(comm)
	if err != nil {
		return err
	}
	threads := bc.threads
	if threads == 0 {
		threads = max(1, runtime.NumCPU()/local)
	}
	blas.SetThreads(threads)
	var configs []config
	switch lossKind {
	case "clip":
		opt, err := loss.ParseMode(mode)
		if err != nil {
			return err
		}
		list := loss.Algorithms()
		if algos != "all" {
			list = nil
			for _, name := range strings.Split(algos, ",") {
				a, err := loss.ParseAlgorithm(name)
				if err != nil {
					return err
				}
				list = append(list, a)
			}
		}
		for _, a := range list {
			o := opt
			o.Algorithm, o.Tile, o.Threads, o.Precision, o.SumsBF16 = a, tile, threads, prec, bc.sumsBF16
			configs = append(configs, config{a.String(), o.Plan, o.Predict, tile, threads, func(c mpi.Comm, d int) any {
				if dtype == "float64" {
					return loss.NewClipLoss[float64](c, d, o)
				}
				return loss.NewClipLoss[float32](c, d, o)
			}})
		}
	case "siglip":
		mode = "siglip"
		list := loss.SigLipImpls()
		if algos != "all" {
			list = nil
			for _, name := range strings.Split(algos, ",") {
				m, err := loss.ParseSigLipImpl(name)
				if err != nil {
					return err
				}
				list = append(list, m)
			}
		}
		for _, m := range list {
			o := loss.SigLipOptions{Impl: m, Tile: tile, Threads: threads, Precision: prec, SumsBF16: bc.sumsBF16}
			configs = append(configs, config{m.String(), o.Plan, o.Predict, tile, threads, func(c mpi.Comm, d int) any {
				if dtype == "float64" {
					return loss.NewSigLipLoss[float64](c, d, o)
				}
				return loss.NewSigLipLoss[float32](c, d, o)
			}})
		}
	default:
		return fmt.Errorf("unknown loss %q (want clip or siglip)", lossKind)
	}
	if memLimit == 0 {
		memLimit = 0.8 * float64(node.AvailableMemory()) / (1 << 20) / float64(local)
	}
	loss.Warn = func(string) {}
	rank0 := comm.Rank() == 0
	if rank0 && !jsonOnly {
		fmt.Fprintf(out, "# clipmpi bench: loss=%s W=%d, b=%d, d=%d, mode=%s, %s, precision %s (GEMMs: %s, sums in bf16: %v), %d steps after %d warm-up; blas=%s threads=%d, kernels=%s threads=%d, mpi=%v\n",
			lossKind, comm.Size(), b, d, mode, dtype, prec, gemmPath, bc.sumsBF16, steps, warmup, blas.Backend(), blas.Threads(), loss.KernelISA(), threads, mpi.Enabled)
	}
	rates, err := measureRates(comm, dtype, b, d, threads)
	if err != nil {
		return err
	}
	if rank0 && !jsonOnly {
		fmt.Fprintf(out, "# cost model rates: GEMM %.1f GFLOP/s (narrow tiles %.1f, kept b×N block %.1f, bf16 %.1f); kernels stats %.2f, grad %.2f, sigmoid %.2f, naive %.1f + %.1f ns per logit; copy %.2f, transpose %.2f ns per element; link %.3g Gbit/s, latency %.3g µs\n",
			rates.GemmGflops, rates.NarrowGflops, rates.KeptGflops, rates.BF16Gflops, rates.StatsNs, rates.GradNs, rates.SigmoidNs, rates.NaiveStatsNs, rates.NaiveGradNs, rates.CopyNs, rates.TransposeNs, rates.LinkGbits, rates.LatencyUs)
	}
	// Rounds (-repeat): every configuration is measured once per round,
	// round after round, so that other work on the machine falls on all
	// of them alike; each record is the configuration's round with the
	// lowest median step, with the lowest GEMM floor of its rounds and
	// the highest link rate of the run (floors are lower bounds).
	rounds := max(1, bc.repeat)
	best := make([]Record, len(configs))
	gemmMs := make([]float64, len(configs))
	var link *float64
	for round := range rounds {
		if bc.net && comm.Size() > 1 {
			gbit, err := linkRate(comm, linkBytes, linkTries)
			if err != nil {
				return fmt.Errorf("measuring the link: %w", err)
			}
			if rank0 && !jsonOnly {
				fmt.Fprintf(out, "# link: %.3f Gbit/s each way (ring exchange of %d MiB each way, best of %d)\n", gbit, linkBytes>>20, linkTries)
			}
			if link == nil || gbit > *link {
				link = &gbit
			}
		}
		for i, cfg := range configs {
			var rec Record
			var err error
			if dtype == "float64" {
				rec, err = measure[float64](comm, cfg, b, d, steps, warmup, local, memLimit, bc.budget, link, prec)
			} else {
				rec, err = measure[float32](comm, cfg, b, d, steps, warmup, local, memLimit, bc.budget, link, prec)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", cfg.name, err)
			}
			if round == 0 || rec.GemmFloorMs < gemmMs[i] {
				gemmMs[i] = rec.GemmFloorMs
			}
			if round == 0 || rec.StepMsMedian < best[i].StepMsMedian {
				best[i] = rec
			}
		}
	}
	var recs []Record
	for i, cfg := range configs {
		rec := best[i]
		if rec.Skipped == "" {
			rec.setFloors(gemmMs[i], link)
		}
		esize := 4
		if dtype == "float64" {
			esize = 8
		}
		rec.PredictedStepMs = cfg.predict(comm.Size(), b, d, esize, rates).Seconds * 1e3
		rec.Mode, rec.Dtype, rec.Loss, rec.Precision, rec.GemmPath = mode, dtype, lossKind, prec.String(), gemmPath
		recs = append(recs, rec)
		if err := emit(comm, out, &rec); err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
	}
	if rank0 && !jsonOnly {
		table(out, recs, bc.budget, bc.net)
		fmt.Fprintln(out, autoLine(lossKind, mode, comm.Size(), b, d, dtype, prec, bc.sumsBF16, tile, rates, memLimit))
	}
	return nil
}

// emit writes rank 0's record as one JSON line. Only rank 0 encodes, so the
// ranks then agree on whether that worked: a record that cannot be encoded
// (a NaN or ±Inf that should have been null) is an error on every rank,
// never a blank line.
func emit(comm mpi.Comm, out io.Writer, rec *Record) error {
	flag := []float64{0}
	var encErr error
	if comm.Rank() == 0 {
		line, err := json.Marshal(rec)
		if err == nil {
			_, err = fmt.Fprintln(out, string(line))
		}
		if err != nil {
			encErr = fmt.Errorf("writing the JSON record: %w", err)
			flag[0] = 1
		}
	}
	if err := comm.AllreduceF64(mpi.Max, flag, flag); err != nil {
		return mpi.Fail(comm, err)
	}
	if encErr != nil {
		return encErr
	}
	if flag[0] != 0 {
		return errors.New("rank 0 could not write the JSON record")
	}
	return nil
}

// stepper is what both losses offer.
type stepper[T blas.Float] interface {
	ForwardBackward(dImg, dTxt, img, txt []T, lg loss.Logit) (loss.Result, error)
}

// netTable is the table of a -net run: what the link costs each algorithm
// and how much of it the algorithm hides.
func netTable(out io.Writer, recs []Record) {
	fmt.Fprintf(out, "\n%-7s %9s %9s %10s %9s %9s %9s %8s %9s %8s\n",
		"algo", "step ms", "model ms", "compute ms", "comm ms", "link Gb/s", "exposed", "hidden", "x max fl", "comm MB")
	for _, r := range recs {
		if r.Skipped != "" {
			fmt.Fprintf(out, "%-7s skipped: %s\n", r.Algo, r.Skipped)
			continue
		}
		link, hidden := "-", "-"
		if r.LinkGbits != nil {
			link = fmt.Sprintf("%.3f", *r.LinkGbits)
		}
		if r.CommHiddenFraction != nil {
			hidden = fmt.Sprintf("%.2f", *r.CommHiddenFraction)
		}
		fmt.Fprintf(out, "%-7s %9.1f %9.1f %10.1f %9.1f %9s %9.1f %8s %9.2f %8.1f\n",
			r.Algo, r.StepMsMedian, r.PredictedStepMs, r.ComputeFloorMs, r.CommFloorMs, link, r.CommExposedMs, hidden, r.RatioToMaxFloor, r.CommBytesPerStep/1e6)
	}
	var best *Record
	for i := range recs {
		if r := &recs[i]; r.Skipped == "" && (best == nil || r.StepMsMedian < best.StepMsMedian) {
			best = r
		}
	}
	if best != nil {
		link := ""
		if best.LinkGbits != nil {
			link = fmt.Sprintf(" at %.3f Gbit/s", *best.LinkGbits)
		}
		fmt.Fprintf(out, "best: %s %.1f ms = %.2f x max(compute floor %.1f ms, comm floor %.1f ms%s)\n",
			best.Algo, best.StepMsMedian, best.RatioToMaxFloor, best.ComputeFloorMs, best.CommFloorMs, link)
	}
}

func table(out io.Writer, recs []Record, budget float64, net bool) {
	if net && budget == 0 {
		netTable(out, recs)
		return
	}
	fmt.Fprintf(out, "\n%-7s %9s %9s %9s %8s %9s %10s %9s %9s %8s %10s %7s\n",
		"algo", "median ms", "min ms", "floor ms", "ratio", "model ms", "GFLOP/s", "x naive", "peak MiB", "ws MiB", "comm MB", "allocs")
	var naive float64
	for _, r := range recs {
		if r.Algo == "naive" && r.Skipped == "" {
			naive = r.StepMsMedian
		}
	}
	for _, r := range recs {
		if r.Skipped != "" {
			fmt.Fprintf(out, "%-7s skipped: %s\n", r.Algo, r.Skipped)
			continue
		}
		if budget > 0 {
			fmt.Fprintf(out, "%-7s memory model %.0f MiB + base vs measured peak %.0f MiB at b=%d; largest global batch in %.0f GiB: %d (b=%d per rank)\n",
				r.Algo, r.ModelMiB, r.PeakRSSMiB, r.B, budget, r.MaxGlobalBatch, r.MaxBPerRank)
			continue
		}
		speed := "-"
		if naive > 0 {
			speed = fmt.Sprintf("%.2f", naive/r.StepMsMedian)
		}
		fmt.Fprintf(out, "%-7s %9.1f %9.1f %9.1f %8.2f %9.1f %10.1f %9s %9.0f %8.0f %10.1f %7.1f\n",
			r.Algo, r.StepMsMedian, r.StepMsMin, r.FloorMs, r.RatioToFloor, r.PredictedStepMs, r.Gflops, speed, r.PeakRSSMiB, r.WorkspaceMiB, r.CommBytesPerStep/1e6, r.AllocsPerStep)
	}
}

func measure[T blas.Float](comm mpi.Comm, cfg config, b, d, steps, warmup, local int, memLimit, budget float64, link *float64, prec loss.Precision) (Record, error) {
	esize := 8
	if blas.Is32[T]() {
		esize = 4
	}
	w := comm.Size()
	plan := cfg.plan(w, b, d, esize)
	rec := Record{Algo: cfg.name, World: w, B: b, D: d, Tile: cfg.tile, Steps: steps,
		BlasBackend: blas.Backend(), BlasThreads: blas.Threads(), Threads: cfg.threads,
		GflopPerStep: plan.Flops() / 1e9, WorkspaceMiB: float64(plan.WorkspaceBytes) / (1 << 20)}
	if ws := rec.WorkspaceMiB + float64(4*b*d*esize)/(1<<20); ws > memLimit {
		rec.Skipped = fmt.Sprintf("needs about %.0f MiB per rank, limit %.0f MiB (-mem-limit-mib)", ws, memLimit)
		return rec, nil
	}
	runtime.GC()
	debug.FreeOSMemory()
	_ = node.ResetPeakRSS() // best effort: without it the peak may be an earlier configuration's

	img, txt := features[T](comm.Rank(), b, d)
	dImg, dTxt := make([]T, b*d), make([]T, b*d)
	cc := &countingComm{Comm: comm, elem: esize}
	l := cfg.make(cc, d).(stepper[T])
	lg := loss.Logit{Scale: 1 / 0.07}
	if cfg.name == "bidir" || cfg.name == "shift" || cfg.name == "reduce" || cfg.name == "gather" {
		lg = loss.Logit{Scale: 10, Bias: -10, HasBias: true} // SigLIP's initialisation
	}
	for range warmup {
		if _, err := l.ForwardBackward(dImg, dTxt, img, txt, lg); err != nil {
			return rec, err
		}
	}
	cc.bytes = 0
	// times[s] is step s's wall time, times[steps+s] its time inside
	// communication calls.
	times := make([]float64, 2*steps)
	var mallocs uint64
	for s := range steps {
		if err := comm.Barrier(); err != nil {
			return rec, mpi.Fail(comm, err)
		}
		// Allocations are counted around the step alone (runtime.MemStats
		// counts every allocation of the process, the runtime's own too).
		m0 := mallocCount()
		c0 := cc.inside
		t0 := time.Now()
		res, err := l.ForwardBackward(dImg, dTxt, img, txt, lg)
		times[s] = float64(time.Since(t0).Nanoseconds()) / 1e6
		times[steps+s] = float64(cc.inside-c0) / 1e6
		mallocs += mallocCount() - m0 // outside the timed span
		if err != nil {
			return rec, err
		}
		rec.Loss0 = res.Loss
	}
	rec.AllocsPerStep = float64(mallocs) / float64(steps)
	rec.CommBytesPerStep = float64(cc.bytes) / float64(steps)
	rec.PeakRSSMiB = float64(node.PeakRSS()) / (1 << 20)
	// Every rank reports the slowest rank's step: a step ends when all do.
	if err := comm.AllreduceF64(mpi.Max, times, times); err != nil {
		return rec, mpi.Fail(comm, err)
	}
	exposed := times[steps:]
	times = times[:steps]
	sort.Float64s(times)
	sort.Float64s(exposed)
	rec.StepMsMedian, rec.StepMsMin, rec.StepMsMax = times[len(times)/2], times[0], times[len(times)-1]
	rec.CommExposedMs = exposed[len(exposed)/2]
	rec.Gflops = rec.GflopPerStep / (rec.StepMsMedian / 1e3)

	gemmMs, err := gemmFloor[T](comm, plan, prec)
	if err != nil {
		return rec, err
	}
	gbs, err := bandwidth[T](comm, b*d)
	if err != nil {
		return rec, err
	}
	if w > 1 {
		rec.CollectiveGBs = &gbs
	}
	rec.setFloors(gemmMs, link)
	if budget > 0 {
		maxBatch(&rec, cfg, w, b, d, esize, local, budget)
	}
	return rec, nil
}

// setFloors sets the floors and what derives from them: the GEMM time
// gemmMs, the communication floor (the bytes at the link rate, or at the
// all-gather bandwidth without one), their sum and maximum, the ratios to
// them and the hidden fraction.
func (rec *Record) setFloors(gemmMs float64, link *float64) {
	rec.GemmFloorMs = gemmMs
	rec.ComputeFloorMs = gemmMs
	rec.SgemmGflops = rec.GflopPerStep / (gemmMs / 1e3)
	rec.CommFloorMs, rec.LinkGbits, rec.CommHiddenFraction = 0, nil, nil
	if rec.CollectiveGBs != nil {
		rec.CommFloorMs = rec.CommBytesPerStep / (*rec.CollectiveGBs * 1e9) * 1e3
		if link != nil {
			rec.LinkGbits = link
			rec.CommFloorMs = rec.CommBytesPerStep * 8 / (*link * 1e9) * 1e3
		}
		if rec.CommFloorMs > 0 {
			h := min(max(1-rec.CommExposedMs/rec.CommFloorMs, 0), 1)
			rec.CommHiddenFraction = &h
		}
	}
	rec.FloorMs = rec.GemmFloorMs + rec.CommFloorMs
	rec.RatioToFloor = rec.StepMsMedian / rec.FloorMs
	rec.MaxFloorMs = max(rec.ComputeFloorMs, rec.CommFloorMs)
	rec.RatioToMaxFloor = rec.StepMsMedian / rec.MaxFloorMs
}

// maxBatch fills the -max-batch fields. The model of a rank's memory is the
// loss's workspace (loss.Plan) plus its features and gradients (4·b·d
// elements) plus the base the process had before (the measured peak minus
// the model at the measured b). The largest b is found by bisection.
func maxBatch(rec *Record, cfg config, w, b, d, esize, local int, budget float64) {
	model := func(b int) float64 {
		return float64(cfg.plan(w, b, d, esize).WorkspaceBytes+int64(4*b*d*esize)) / (1 << 20)
	}
	rec.ModelMiB = model(b)
	base := max(rec.PeakRSSMiB-rec.ModelMiB, 0)
	rec.BudgetMiB = budget * 1024 / float64(local)
	lo, hi := 0, 1
	for model(hi)+base <= rec.BudgetMiB && hi < 1<<40 {
		lo, hi = hi, 2*hi
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if model(mid)+base <= rec.BudgetMiB {
			lo = mid
		} else {
			hi = mid
		}
	}
	rec.MaxBPerRank, rec.MaxGlobalBatch = lo, lo*w
}

// gemmFloor times each GEMM shape of the plan on this machine, all ranks at
// once (as in a step, so the ranks share memory bandwidth), and returns the
// step's GEMM time: the fastest of 3 runs of each shape (a floor is a lower
// bound; the slowest rank's time counts in each run) times its count. In
// amp_bf16 the GEMMs are blas.GemmBF16's.
func gemmFloor[T blas.Float](comm mpi.Comm, plan loss.Plan, prec loss.Precision) (float64, error) {
	var total float64
	for _, g := range plan.Gemms {
		a := make([]T, g.M*g.K)
		bb := make([]T, g.K*g.N)
		c := make([]T, g.M*g.N)
		for i := range a {
			a[i] = T(float64(i%17) / 17)
		}
		for i := range bb {
			bb[i] = T(float64(i%13) / 13)
		}
		var ah, bh []blas.BF16
		if prec == loss.AMPBF16 {
			ah, bh = make([]blas.BF16, len(a)), make([]blas.BF16, len(bb))
			blas.RoundBF16(ah, blas.As32(a))
			blas.RoundBF16(bh, blas.As32(bb))
		}
		ta, tb := blas.NoTrans, blas.NoTrans
		lda, ldb := g.K, g.N
		if g.TransA {
			ta, lda = blas.Trans, g.M
		}
		if g.TransB {
			tb, ldb = blas.Trans, g.K
		}
		var ts []float64
		for range 3 {
			if err := comm.Barrier(); err != nil {
				return 0, mpi.Fail(comm, err)
			}
			t0 := time.Now()
			if prec == loss.AMPBF16 {
				blas.GemmBF16(ta, tb, g.M, g.N, g.K, 1, ah, lda, bh, ldb, 0, blas.As32(c), g.N)
			} else {
				blas.Gemm(ta, tb, g.M, g.N, g.K, 1, a, lda, bb, ldb, 0, c, g.N)
			}
			ts = append(ts, float64(time.Since(t0).Nanoseconds())/1e6)
		}
		if err := comm.AllreduceF64(mpi.Max, ts, ts); err != nil {
			return 0, mpi.Fail(comm, err)
		}
		sort.Float64s(ts)
		total += ts[0] * float64(g.Count)
	}
	return total, nil
}

// bandwidth measures the collective bandwidth in GB/s: bytes a rank
// receives in an all-gather of n elements per rank, per second (best of 10).
// With one rank nothing is received; it returns 0.
func bandwidth[T blas.Float](comm mpi.Comm, n int) (float64, error) {
	w := comm.Size()
	if w == 1 {
		return 0, nil
	}
	src, dst := make([]T, n), make([]T, n*w)
	cc := &countingComm{Comm: comm, elem: 8}
	if blas.Is32[T]() {
		cc.elem = 4
	}
	best := math.Inf(1)
	const tries = 10
	for range tries {
		if err := comm.Barrier(); err != nil {
			return 0, mpi.Fail(comm, err)
		}
		t0 := time.Now()
		if err := mpi.Allgather(cc, dst, src); err != nil {
			return 0, mpi.Fail(cc, err)
		}
		best = min(best, time.Since(t0).Seconds())
	}
	v := []float64{best}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		return 0, mpi.Fail(comm, err)
	}
	return float64(cc.bytes) / tries / v[0] / 1e9, nil
}

// linkBytes and linkTries size the link measurement of -net: long enough
// that a token bucket's burst (a few hundred KiB) adds under 2%.
const (
	linkBytes = 16 << 20
	linkTries = 5
)

// linkRate measures the point-to-point rate in Gbit/s: every rank sends
// bytes to the next rank and receives as many from the previous one at
// the same time (as the ring algorithms do), and the rate is what a rank
// receives per second in the best of tries, the slowest rank's time
// counting in each. A failed call goes to mpi.Fail, as the other probes'.
func linkRate(comm mpi.Comm, bytes, tries int) (float64, error) {
	w, r := comm.Size(), comm.Rank()
	n := bytes / 4
	src, dst := make([]float32, n), make([]float32, n)
	ts := make([]float64, tries)
	for i := range ts {
		if err := comm.Barrier(); err != nil {
			return 0, mpi.Fail(comm, err)
		}
		t0 := time.Now()
		req, err := comm.IsendrecvF32(dst, (r+w-1)%w, src, (r+1)%w)
		if err == nil {
			err = req.Wait()
		}
		if err != nil {
			return 0, mpi.Fail(comm, err)
		}
		ts[i] = time.Since(t0).Seconds()
	}
	if err := comm.AllreduceF64(mpi.Max, ts, ts); err != nil {
		return 0, mpi.Fail(comm, err)
	}
	return float64(4*n) * 8 / slices.Min(ts) / 1e9, nil
}

// features returns rank r's b×d unit-norm features, correlated pairs.
func features[T blas.Float](r, b, d int) (img, txt []T) {
	rnd := rand.New(rand.NewPCG(uint64(r)+1, 99))
	img, txt = make([]T, b*d), make([]T, b*d)
	for i := 0; i < b; i++ {
		var si, st float64
		for k := 0; k < d; k++ {
			z := rnd.NormFloat64()
			x, y := z+rnd.NormFloat64(), z+rnd.NormFloat64()
			img[i*d+k], txt[i*d+k] = T(x), T(y)
			si += x * x
			st += y * y
		}
		for k := 0; k < d; k++ {
			img[i*d+k] /= T(math.Sqrt(si))
			txt[i*d+k] /= T(math.Sqrt(st))
		}
	}
	return img, txt
}

// mallocCount returns the number of heap allocations so far. It reads
// runtime.MemStats, which stops the world but is exact (runtime/metrics'
// counter lags behind by the allocations cached per P).
func mallocCount() uint64 {
	runtime.ReadMemStats(&memStats)
	return memStats.Mallocs
}

var memStats runtime.MemStats
