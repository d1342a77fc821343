package loss

// Rates are the machine-dependent inputs of the cost model: what one rank
// achieves at its thread count, for one element type. MeasureRates measures
// them; a zero field is unknown.
type Rates struct {
	// GemmGflops is the GEMM rate of one rank, GFLOP/s: a tile's three
	// GEMMs (logits, text-gradient share, image-gradient update) on
	// tiles of their own, 1024 columns wide (Tiled, Gather, Reduce).
	GemmGflops float64 `json:"gemm_gflops"`
	// NarrowGflops is the rate on narrower tiles, the ring methods' (a
	// quarter block), and KeptGflops on such tiles of a kept b×N block
	// (leading dimension N: Fused with several ranks). 0 means
	// GemmGflops.
	NarrowGflops float64 `json:"narrow_gemm_gflops"`
	KeptGflops   float64 `json:"kept_gemm_gflops"`
	// BF16Gflops is GemmGflops for AMPBF16's GEMMs (blas.GemmBF16); its
	// ratio to GemmGflops scales the narrow and kept rates too. 0 means
	// GemmGflops.
	BF16Gflops float64 `json:"bf16_gemm_gflops"`
	// StatsNs and GradNs are the ClipLoss softmax kernels of Fused, Tiled
	// and Ring, ns per logit entry: the forward row and column statistics
	// and the backward gradient.
	StatsNs float64 `json:"stats_ns"`
	GradNs  float64 `json:"grad_ns"`
	// NaiveStatsNs and NaiveGradNs are the Naive algorithm's row statistics
	// and row gradient, ns per entry of each logit block.
	NaiveStatsNs float64 `json:"naive_stats_ns"`
	NaiveGradNs  float64 `json:"naive_grad_ns"`
	// SigmoidNs is SigLIP's tile kernel, forward and backward, ns per
	// logit entry.
	SigmoidNs float64 `json:"sigmoid_ns"`
	// CopyNs is a memory-bound pass (copy, transpose, add, finiteness
	// scan), ns per element.
	CopyNs float64 `json:"copy_ns"`
	// TransposeNs is an out-of-place transpose, ns per element (Naive's
	// global mode).
	TransposeNs float64 `json:"transpose_ns"`
	// LinkGbits is the bandwidth of one rank's link in each direction,
	// Gbit/s: what a ring shift achieves between ranks.
	LinkGbits float64 `json:"link_gbit_s"`
	// LatencyUs is the time of an empty message, µs.
	LatencyUs float64 `json:"latency_us"`
}

// Prediction is the cost model's estimate of one ForwardBackward step of
// one algorithm on one rank.
type Prediction struct {
	// Name is the algorithm or SigLIP method.
	Name string `json:"algo"`
	// Seconds is the predicted step time.
	Seconds float64 `json:"step_s"`
	// GemmSeconds and KernelSeconds are the compute parts: the GEMMs and
	// the elementwise and memory-bound passes.
	GemmSeconds   float64 `json:"gemm_s"`
	KernelSeconds float64 `json:"kernel_s"`
	// CommSeconds is the time the link is held (bytes, latencies and the
	// rendezvous of posted transfers); ExposedSeconds is the part
	// of the step spent waiting for it (Seconds - GemmSeconds -
	// KernelSeconds); the rest is hidden behind compute.
	CommSeconds    float64 `json:"comm_s"`
	ExposedSeconds float64 `json:"exposed_comm_s"`
	// CommBytes is what the rank receives per step.
	CommBytes float64 `json:"comm_bytes"`
	// Flops is the GEMM work of the step (Plan's).
	Flops float64 `json:"flops"`
	// MemoryBytes is what the step holds per rank: Plan's workspace plus
	// the features and their gradients (4·b·d elements), as Memory counts.
	MemoryBytes int64 `json:"memory_bytes"`
}

// Plan returns the per-rank work of one ForwardBackward step with w ranks of
// b rows of dimension d, for elements of elemSize bytes (4 or 8): what the
// algorithm's schedule does, recorded. It panics if w, b or d is less than
// 1 or if the algorithm is Auto (ResolveClip turns it into one) or unknown.
func (o ClipOptions) Plan(w, b, d, elemSize int) Plan {
	return record(clipSchedule(o, w), o.step(w, b, d), elemSize)
}

// Plan is ClipOptions.Plan for SigLipLoss. Every method does the same 3
// GEMMs of 2·b·N·d; they differ in memory and communication. It panics if
// w, b or d is less than 1 or if the method is SigLipAuto.
func (o SigLipOptions) Plan(w, b, d, elemSize int) Plan {
	return record(sigSchedule(o, w), o.step(w, b, d), elemSize)
}

// newStep is the step the model and Plan describe: rank 0's
// ForwardBackward, scale 1.
func newStep(w, b, d int) *step {
	if w < 1 || b < 1 || d < 1 {
		panic("loss: Plan needs w, b, d ≥ 1")
	}
	return &step{w: w, b: b, n: w * b, d: d, backward: true, scale: 1}
}

func (o ClipOptions) step(w, b, d int) *step {
	st := newStep(w, b, d)
	st.local, st.gwg = o.LocalLoss && w > 1, o.GatherWithGrad && w > 1
	st.half, st.halfSums = o.Precision == AMPBF16, o.SumsBF16
	return st
}

func (o SigLipOptions) step(w, b, d int) *step {
	st := newStep(w, b, d)
	st.half, st.halfSums = o.Precision == AMPBF16, o.SumsBF16
	return st
}

func record(s schedule, st *step, elemSize int) Plan {
	r := newRecorder(st, elemSize)
	if err := runStep(s, r, st); err != nil {
		panic("loss: internal error: " + err.Error())
	}
	return r.plan()
}

// Memory returns the memory one rank holds in a ForwardBackward step with w
// ranks of b rows of dimension d and elements of elemSize bytes: the
// workspace of Plan plus the image and text features and their gradients,
// 4·b·d elements. It panics as Plan does.
func (o ClipOptions) Memory(w, b, d, elemSize int) int64 {
	return o.Plan(w, b, d, elemSize).WorkspaceBytes + 4*int64(b)*int64(d)*int64(elemSize)
}

// Memory is ClipOptions.Memory for SigLipLoss.
func (o SigLipOptions) Memory(w, b, d, elemSize int) int64 {
	return o.Plan(w, b, d, elemSize).WorkspaceBytes + 4*int64(b)*int64(d)*int64(elemSize)
}

// Predict returns the cost model's estimate of one ForwardBackward step of
// the options' algorithm with w ranks of b rows of dimension d and elements
// of elemSize bytes, on ranks with the rates r.
//
// The algorithm's schedule is replayed as a timeline (in program order,
// like the code: it is the same code). With G the rate of the GEMM's
// class (r.GemmGflops for wide tiles, r.NarrowGflops for narrow ones,
// r.KeptGflops for narrow tiles of a kept b×N block), β = r.LinkGbits/8
// GB/s and α = r.LatencyUs:
//
//	GEMM (m×n×k)                2·m·n·k / G
//	kernel over E entries       E · (ns per entry of that kernel)
//	exchange of n bytes         α + n/β + h              (ring shift; h = the
//	                            rendezvous, one poll period pollFlops/G)
//	all-gather                  (W-1)·α + n·(W-1)/(W·β)  (n: gathered size)
//	reduce-scatter              (W-1)·α + (n + n·(W-1)/W)/β  (n: source size;
//	                            Open MPI reduces to one rank, then scatters)
//	all-reduce of n bytes       2·⌈log₂W⌉·α + 2·n·(W-1)/(W·β)
//
// Compute runs in program order. A collective blocks: it starts when the
// link is free and compute waits for it. A non-blocking exchange
// (Isendrecv) occupies the link from when it is posted (or when the link
// frees) and runs behind the compute that follows, until the schedule
// waits for it. The step time is when the timeline ends, plus for every
// algorithm the finiteness scan of 2·b·d elements and the agreement
// all-reduce every call makes. It panics if w, b or d is less than 1, if
// the algorithm is Auto or unknown, or, with w > 1, if r.LinkGbits is not
// positive.
func (o ClipOptions) Predict(w, b, d, elemSize int, r Rates) Prediction {
	return predict(o.Algorithm.String(), clipSchedule(o, w), o.step(w, b, d), elemSize, r)
}

// Predict is ClipOptions.Predict for SigLipLoss. Its methods differ in
// communication: Bidir and Shift move text blocks and their gradients'
// partial sums around the ring in pieces, hidden behind the tiles; Gather
// blocks on an all-gather and a reduce-scatter of N·d; Reduce on 2·W
// all-reduces of b·d. It panics as ClipOptions.Predict does (with
// SigLipAuto for Auto).
func (o SigLipOptions) Predict(w, b, d, elemSize int, r Rates) Prediction {
	return predict(o.Impl.String(), sigSchedule(o, w), o.step(w, b, d), elemSize, r)
}

func predict(name string, s schedule, st *step, elemSize int, r Rates) Prediction {
	tl := newTimeline(st, elemSize, r)
	tl.kernel(kernOp{op: kCopy, rows: 2 * st.b, cols: st.d}) // the finiteness scan
	tl.allreduce(8 * float64(agreeFixed+st.w))
	if err := runStep(s, tl, st); err != nil {
		panic("loss: internal error: " + err.Error())
	}
	p := tl.rec.plan()
	end := max(tl.now, tl.link)
	return Prediction{
		Name: name, Seconds: end, GemmSeconds: tl.gemmS, KernelSeconds: tl.kernS,
		CommSeconds: tl.commS, ExposedSeconds: max(0, end-tl.gemmS-tl.kernS),
		CommBytes: tl.bytesReceived, Flops: p.Flops(),
		MemoryBytes: p.WorkspaceBytes + 4*int64(st.b)*int64(st.d)*int64(elemSize),
	}
}

// timeline is the engine behind Predict: it replays one rank's step on a
// compute clock and a link that carries one transfer at a time, with the
// completion times of posted exchanges. It records the step as it goes
// (rec), for the Plan the Prediction reports.
type timeline struct {
	rec                  *recorder
	st                   *step
	r                    Rates
	e                    float64 // bytes per element
	beta, alpha          float64 // bytes/s, s
	handshake            float64 // s: a posted transfer's rendezvous, one poll period
	now                  float64 // compute clock
	link                 float64 // when the link is free
	done                 []float64
	gemmS, kernS, commS  float64
	flops, bytesReceived float64
}

func newTimeline(st *step, elemSize int, r Rates) *timeline {
	if st.w > 1 && !(r.LinkGbits > 0) {
		panic("loss: the cost model needs a positive link bandwidth with more than one rank")
	}
	tl := &timeline{rec: newRecorder(st, elemSize), st: st, r: r, e: float64(elemSize), beta: r.LinkGbits * 1e9 / 8, alpha: r.LatencyUs * 1e-6}
	// A block piece (hundreds of KiB) goes by MPI's rendezvous protocol:
	// its data leaves after the receiver has matched the request and the
	// sender has seen the reply, and each side does that only when it
	// polls, between GEMM panels of pollFlops. A piece queued behind
	// another waits for its own handshake after that one's data, so each
	// posted transfer keeps the link one poll period longer. (Fitted on
	// bench-net, W = 2, b = 1024, d = 512: without it every ring method was
	// predicted 14-21% fast at 500 Mbit/s, with it 2-5%.)
	if r.GemmGflops > 0 {
		tl.handshake = pollFlops / (r.GemmGflops * 1e9)
	}
	return tl
}

func (tl *timeline) buffer(id buf, n int)   { tl.rec.buffer(id, n) }
func (tl *timeline) softmax(rows, cols int) { tl.rec.softmax(rows, cols) }

func (tl *timeline) gemm(g gemmOp) {
	tl.rec.gemm(g)
	rate := [...]float64{gWide: tl.r.GemmGflops, gNarrow: tl.r.NarrowGflops, gKept: tl.r.KeptGflops}[g.cls]
	if !(rate > 0) {
		rate = tl.r.GemmGflops
	}
	if tl.st.half && tl.r.BF16Gflops > 0 && tl.r.GemmGflops > 0 {
		rate *= tl.r.BF16Gflops / tl.r.GemmGflops
	}
	f := 2 * float64(g.m) * float64(g.n) * float64(g.k)
	s := f / (rate * 1e9)
	tl.flops += f
	tl.gemmS += s
	tl.now += s
}

func (tl *timeline) kernel(k kernOp) {
	tl.rec.kernel(k)
	r := tl.r
	ns := [...]float64{kStats: r.StatsNs, kGrad: r.GradNs, kSig: r.SigmoidNs, kRowStats: r.NaiveStatsNs,
		kRowGrad: r.NaiveGradNs, kTranspose: r.TransposeNs, kAddTranspose: r.TransposeNs,
		kAdd: r.CopyNs, kCopy: r.CopyNs, kZero: r.CopyNs, kRound: r.CopyNs}[k.op]
	s := float64(k.rows) * float64(k.cols) * ns * 1e-9
	tl.kernS += s
	tl.now += s
}

// transfer occupies the link for steps latencies and bytes, starting when
// both the compute clock (from) and the link allow; it returns the end. A
// posted transfer (Isendrecv) holds the link one handshake longer: see
// newTimeline.
func (tl *timeline) transfer(from float64, steps int, bytes float64, posted bool) float64 {
	if tl.st.w == 1 {
		return from
	}
	s := float64(steps)*tl.alpha + bytes/tl.beta
	if posted {
		s += tl.handshake
	}
	tl.commS += s
	start := max(from, tl.link)
	tl.link = start + s
	tl.bytesReceived += bytes
	return tl.link
}

// blocking runs a collective: compute waits for it.
func (tl *timeline) blocking(steps int, bytes float64) {
	tl.now = tl.transfer(tl.now, steps, bytes, false)
}

func (tl *timeline) post(x xfer) (int, error) {
	tl.rec.post(x)
	tl.done = append(tl.done, tl.transfer(tl.now, 1, float64(tl.st.words(x.dst.id, x.n))*tl.e, true))
	return len(tl.done) - 1, nil
}

func (tl *timeline) wait(h int, what string) error {
	tl.rec.wait(h, what)
	if h != noXfer {
		tl.now = max(tl.now, tl.done[h])
	}
	return nil
}

func (tl *timeline) share(n float64) float64 { return n * float64(tl.st.w-1) / float64(tl.st.w) }

// collective: an all-gather of the gathered size; a reduce-scatter as
// Open MPI 4.1 runs MPI_Reduce_scatter_block, a reduce to one rank and a
// scatter: the link carries the whole source once (a pipelined reduce) and
// then the scattered shares, and the reduce adds what arrives (measured on
// a 2 Gbit/s link at W = 2: 31.5 ms for 4.2 MB, where a shift of 2.1 MB
// takes 8 ms and an all-gather of 2 × 2.1 MB 9.1 ms); an all-reduce.
func (tl *timeline) collective(c collOp) error {
	tl.rec.collective(c)
	w := tl.st.w
	n := float64(tl.st.words(c.dst.id, c.n)) * tl.e
	switch c.op {
	case cAllgather:
		tl.blocking(w-1, tl.share(n*float64(w)))
	case cReduceScatter:
		src := n * float64(w)
		tl.blocking(w-1, src+tl.share(src))
		if w > 1 {
			tl.kernel(kernOp{op: kAdd, rows: 1, cols: int(tl.share(float64(c.n * w)))})
		}
	case cAllreduce:
		tl.allreduce(n)
	}
	return nil
}

func (tl *timeline) allreduce(bytes float64) {
	tl.blocking(2*ceilLog2(tl.st.w), 2*tl.share(bytes))
}

// reduce: the column statistics' two all-reduces of N float64, and
// finishClip's all-reduce (global) or reduce-scatter (local).
func (tl *timeline) reduce(s stat) error {
	switch {
	case s == sColumns:
		tl.allreduce(8 * float64(tl.st.n))
		tl.allreduce(8 * float64(tl.st.n))
	case s == sFinish && tl.st.local:
		tl.blocking(tl.st.w-1, tl.share(16*float64(tl.st.w)))
	case s == sFinish, s == sForward && !tl.st.local:
		tl.allreduce(24)
	}
	return nil
}

func ceilLog2(w int) int {
	k := 0
	for 1<<k < w {
		k++
	}
	return k
}
