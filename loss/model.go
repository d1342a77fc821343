package loss

import (
	"fmt"
	"math"
)

// Rates are the machine-dependent inputs of the cost model: what one rank
// achieves at its thread count, for one element type. MeasureRates measures
// them; a zero field is unknown.
type Rates struct {
	// GemmGflops is the GEMM rate of one rank, GFLOP/s.
	GemmGflops float64 `json:"gemm_gflops"`
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
// The step is replayed as a timeline in the algorithm's program order. With
// G = r.GemmGflops, β = r.LinkGbits/8 GB/s and α = r.LatencyUs:
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
// frees) and runs behind the compute that follows, until the algorithm
// waits for it. So Fused, Tiled and Naive expose all their communication
// (all-gathers, reduce-scatters and the column-statistics all-reduces),
// and Ring hides each text shift behind the block it computes meanwhile.
// The step time is when the timeline ends; its parts:
//
//	Fused, Tiled, Ring   GEMMs of Plan + b·N·(StatsNs + GradNs) + comm
//	Naive                GEMMs of Plan + blocks·(NaiveStatsNs + NaiveGradNs) + transposes + comm
//
// plus, for every algorithm, the finiteness scan of 2·b·d elements and the
// agreement all-reduce every call makes. It panics if w, b or d is less
// than 1, if the algorithm is Auto or unknown, or, with w > 1, if
// r.LinkGbits is not positive.
func (o ClipOptions) Predict(w, b, d, elemSize int, r Rates) Prediction {
	p := o.Plan(w, b, d, elemSize) // checks w, b, d and the algorithm
	tl := newTimeline(w, r)
	n := w * b
	e := float64(elemSize)
	local := o.LocalLoss && w > 1
	tl.prologue(b, d)
	switch o.Algorithm {
	case Naive:
		tl.allgather(float64(n) * float64(d) * e)
		tl.allgather(float64(n) * float64(d) * e)
		if !local {
			nn := float64(n) * float64(n)
			tl.gemm(n, n, d)
			tl.kernel(nn, r.TransposeNs)
			tl.kernel(2*nn, r.NaiveStatsNs)
			tl.kernel(2*nn, r.NaiveGradNs)
			tl.kernel(nn, r.TransposeNs) // add the transpose
			tl.gemm(n, d, n)
			tl.gemm(n, d, n)
			if o.GatherWithGrad && w > 1 {
				tl.reduceScatter(float64(n)*float64(d)*e, n*d)
				tl.reduceScatter(float64(n)*float64(d)*e, n*d)
			} else {
				tl.kernel(2*float64(b*d), r.CopyNs)
			}
			break
		}
		bn := float64(b) * float64(n)
		tl.gemm(b, n, d)
		tl.gemm(b, n, d)
		tl.kernel(2*bn, r.NaiveStatsNs)
		tl.kernel(2*bn, r.NaiveGradNs)
		tl.gemm(b, d, n)
		tl.gemm(b, d, n)
		if o.GatherWithGrad {
			tl.gemm(n, d, b)
			tl.gemm(n, d, b)
			for range 2 {
				tl.reduceScatter(float64(n)*float64(d)*e, n*d)
				tl.kernel(float64(b*d), r.CopyNs)
			}
		}
	case Fused, Tiled:
		if o.Algorithm == Fused && w > 1 {
			tl.ring(w, b, d, min(ringTile(b), b), e, true)
			tl.finishClip(local)
			break
		}
		t := n
		if o.Algorithm == Tiled {
			t = o.Tile
			if t == 0 {
				t = defaultTile
			}
			t = min(t, n)
		}
		tl.allgather(float64(n) * float64(d) * e)
		for j0 := 0; j0 < n; j0 += t {
			cw := min(t, n-j0)
			tl.gemm(b, cw, d)
			tl.kernel(float64(b*cw), r.StatsNs)
		}
		tl.completeColumns(n)
		for j0 := 0; j0 < n; j0 += t {
			cw := min(t, n-j0)
			if t < n {
				tl.gemm(b, cw, d)
			}
			tl.kernel(float64(b*cw), r.GradNs)
			tl.gemm(b, d, cw)
			tl.gemm(cw, d, b)
		}
		tl.reduceScatter(float64(n)*float64(d)*e, n*d)
		tl.finishClip(local)
	case Ring:
		t := o.Tile
		if t == 0 {
			t = ringTile(b)
		}
		tl.ring(w, b, d, min(t, b), e, false)
		tl.finishClip(local)
	}
	return tl.prediction(o.Algorithm.String(), p, o.Memory(w, b, d, elemSize))
}

// Predict is ClipOptions.Predict for SigLipLoss. Every method does the same
// GEMMs and b·N·SigmoidNs of kernels; they differ in communication:
//
//	Bidir, Shift  per direction, ring hops of text blocks (b·d elements)
//	              and of partial sums of their gradients (b·d, home after
//	              the last hop), in pieces of up to 4 tiles, each hidden
//	              behind the compute until its wait (Bidir's two
//	              directions share the link)
//	Gather        all-gather of N·d, reduce-scatter of N·d, both blocking
//	Reduce        2·W all-reduces of b·d, blocking
//
// It panics as ClipOptions.Predict does (with SigLipAuto for Auto).
func (o SigLipOptions) Predict(w, b, d, elemSize int, r Rates) Prediction {
	if o.Impl == SigLipAuto {
		panic(errAutoPlan)
	}
	p := o.Plan(w, b, d, elemSize)
	tl := newTimeline(w, r)
	n := w * b
	e := float64(elemSize)
	bd := float64(b*d) * e
	t := o.Tile
	if t == 0 {
		t = defaultSigTile
		if o.Impl == Bidir || o.Impl == Shift {
			t = ringTile(b)
		}
	}
	t = min(t, b)
	// visit: the logits, kernel, text-gradient and image-gradient GEMMs
	// of the tiles of columns c0..c1 of a block.
	visit := func(c0, c1 int) {
		for j0 := c0; j0 < c1; j0 += t {
			cw := min(t, c1-j0)
			tl.gemm(b, cw, d)
			tl.kernel(float64(b*cw), r.SigmoidNs)
			tl.gemm(cw, d, b)
			tl.gemm(b, d, cw)
		}
	}
	tl.prologue(b, d)
	switch o.Impl {
	case Gather:
		tl.allgather(float64(n) * float64(d) * e)
		for range w {
			visit(0, b)
		}
		tl.reduceScatter(float64(n)*float64(d)*e, n*d)
	case Reduce:
		for range w {
			tl.kernel(float64(b*d), r.CopyNs)
			tl.allreduce(bd)
			visit(0, b)
			tl.allreduce(bd)
			tl.kernel(float64(b*d), r.CopyNs)
		}
	default:
		// The ring methods (SigLipLoss.ring): each stream's own block
		// leaves at once, in pieces, and the own block's first half hides
		// them; at hop k a stream waits for each piece before its first
		// tile and passes it on (k < hops), and after a piece's last tile
		// waits for the piece of the sum received (k > 1), adds it and
		// sends the sum on (home after the last hop); the own block's
		// second half hides the last pieces going home.
		ch := newChunking(b, t)
		piece := func(i int) float64 { return ch.bytes(i, d, e) }
		hops := []int{w / 2, (w - 1) / 2}
		if o.Impl == Shift {
			hops = []int{w - 1, 0}
		}
		tiles := (b + t - 1) / t
		half := b
		blk, sum := [2]pieces{nopieces(), nopieces()}, [2]pieces{nopieces(), nopieces()}
		for i, h := range hops {
			if h > 0 {
				half = min(b, (tiles+1)/2*t)
				for p := range ch.n {
					blk[i][p] = tl.post(piece(p))
				}
			}
		}
		visit(0, half)
		for k := 1; k <= hops[0]; k++ {
			for i, h := range hops {
				if k > h {
					continue
				}
				nblk, nsum := nopieces(), nopieces()
				for j0 := 0; j0 < b; j0 += t {
					cw := min(t, b-j0)
					p := ch.piece(j0)
					lo, hi := ch.rows(p)
					if j0 == lo {
						tl.wait(blk[i][p])
						if k < h {
							nblk[p] = tl.post(piece(p))
						}
					}
					visit(j0, j0+cw)
					if j0+cw == hi {
						if k > 1 {
							tl.wait(sum[i][p])
							tl.kernel(float64((hi-lo)*d), r.CopyNs)
						}
						nsum[p] = tl.post(piece(p))
					}
				}
				blk[i], sum[i] = nblk, nsum
			}
		}
		visit(half, b)
		for i, h := range hops {
			if h == 0 {
				continue
			}
			for p := range ch.n {
				lo, hi := ch.rows(p)
				tl.wait(sum[i][p])
				tl.kernel(float64((hi-lo)*d), r.CopyNs)
			}
		}
	}
	return tl.prediction(o.Impl.String(), p, o.Memory(w, b, d, elemSize))
}

// ring replays ringClip's step but for finishClip, with tiles of t columns,
// elements of e bytes, the logits kept from forward (Fused) or recomputed
// in backward (Ring). A block's pieces are waited for before their first
// tile and passed on at once; in backward each piece of a gradient's
// partial sum leaves after its last tile, and the piece received (sent
// one visit earlier) is waited for and added there.
func (tl *timeline) ring(w, b, d, t int, e float64, keep bool) {
	r := tl.r
	ch := newChunking(b, t)
	piece := func(i int) float64 { return ch.bytes(i, d, e) }
	in := nopieces()
	for k := 0; k < w; k++ {
		next := nopieces()
		for c0 := 0; c0 < b; c0 += t {
			cw := min(t, b-c0)
			if i := ch.piece(c0); ch.starts(c0) {
				tl.wait(in[i])
				if k < w-1 {
					next[i] = tl.post(piece(i))
				}
			}
			tl.gemm(b, cw, d)
			tl.kernel(float64(b*cw), r.StatsNs)
		}
		if k < w-1 {
			in = next
		}
	}
	tl.completeColumns(w * b)
	in, part := nopieces(), nopieces()
	for j := 0; j < w; j++ {
		next, nextPart := nopieces(), nopieces()
		for c0 := 0; c0 < b; c0 += t {
			cw := min(t, b-c0)
			i := ch.piece(c0)
			if ch.starts(c0) {
				tl.wait(in[i])
				if j < w-2 {
					next[i] = tl.post(piece(i))
				}
			}
			if !keep {
				tl.gemm(b, cw, d)
			}
			tl.kernel(float64(b*cw), r.GradNs)
			tl.gemm(cw, d, b)
			tl.gemm(b, d, cw)
			if lo, hi := ch.rows(i); c0+cw == hi && w > 1 {
				if j > 0 {
					tl.wait(part[i])
					tl.kernel(float64((hi-lo)*d), r.CopyNs)
				}
				if j < w-1 {
					nextPart[i] = tl.post(piece(i))
				}
			}
		}
		in, part = next, nextPart
	}
}

// timeline replays one rank's step: a compute clock, a link that carries
// one transfer at a time, and the completion times of posted exchanges.
type timeline struct {
	w                    int
	r                    Rates
	beta, alpha          float64 // bytes/s, s
	handshake            float64 // s: a posted transfer's rendezvous, one poll period
	now                  float64 // compute clock
	link                 float64 // when the link is free
	done                 []float64
	gemmS, kernS, commS  float64
	flops, bytesReceived float64
}

func newTimeline(w int, r Rates) *timeline {
	if w > 1 && !(r.LinkGbits > 0) {
		panic("loss: the cost model needs a positive link bandwidth with more than one rank")
	}
	tl := &timeline{w: w, r: r, beta: r.LinkGbits * 1e9 / 8, alpha: r.LatencyUs * 1e-6}
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

func (tl *timeline) gemm(m, n, k int) {
	f := 2 * float64(m) * float64(n) * float64(k)
	s := f / (tl.r.GemmGflops * 1e9)
	tl.flops += f
	tl.gemmS += s
	tl.now += s
}

func (tl *timeline) kernel(entries, ns float64) {
	s := entries * ns * 1e-9
	tl.kernS += s
	tl.now += s
}

// transfer occupies the link for steps latencies and bytes, starting when
// both the compute clock (from) and the link allow; it returns the end. A
// posted transfer (Isendrecv) holds the link one handshake longer: see
// newTimeline.
func (tl *timeline) transfer(from float64, steps int, bytes float64, posted bool) float64 {
	if tl.w == 1 {
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

// post starts an exchange of bytes with the neighbours and returns its
// handle for wait.
func (tl *timeline) post(bytes float64) int {
	tl.done = append(tl.done, tl.transfer(tl.now, 1, bytes, true))
	return len(tl.done) - 1
}

// wait waits for the exchange x (none if x < 0).
func (tl *timeline) wait(x int) {
	if x >= 0 {
		tl.now = max(tl.now, tl.done[x])
	}
}

func (tl *timeline) share(n float64) float64 { return n * float64(tl.w-1) / float64(tl.w) }

func (tl *timeline) allgather(gathered float64) { tl.blocking(tl.w-1, tl.share(gathered)) }

// reduceScatter is MPI_Reduce_scatter_block of src bytes (elems elements)
// as Open MPI 4.1 runs it, a reduce to one rank and a scatter: the link
// carries the whole source once (a pipelined reduce) and then the
// scattered shares; the reduce adds what arrives. (Measured on a 2 Gbit/s
// link at W = 2: 31.5 ms for 4.2 MB, where a shift of 2.1 MB takes 8 ms
// and an all-gather of 2 × 2.1 MB 9.1 ms.)
func (tl *timeline) reduceScatter(src float64, elems int) {
	tl.blocking(tl.w-1, src+tl.share(src))
	if tl.w > 1 {
		tl.kernel(tl.share(float64(elems)), tl.r.CopyNs)
	}
}

func (tl *timeline) allreduce(bytes float64) {
	tl.blocking(2*ceilLog2(tl.w), 2*tl.share(bytes))
}

// prologue is what every call does first: scan both feature sets for
// non-finite values and agree with the other ranks (one small all-reduce).
func (tl *timeline) prologue(b, d int) {
	tl.kernel(2*float64(b*d), tl.r.CopyNs)
	tl.allreduce(8 * float64(agreeFixed+tl.w))
}

// completeColumns is the two all-reduces of N column statistics.
func (tl *timeline) completeColumns(n int) {
	tl.allreduce(8 * float64(n))
	tl.allreduce(8 * float64(n))
}

// finishClip is finishClip's all-reduce (global) or reduce-scatter (local).
func (tl *timeline) finishClip(local bool) {
	if local {
		tl.blocking(tl.w-1, tl.share(16*float64(tl.w)))
	} else {
		tl.allreduce(24)
	}
}

func (tl *timeline) prediction(name string, p Plan, mem int64) Prediction {
	if math.Abs(tl.flops-p.Flops()) > 1e-9*p.Flops() {
		panic(fmt.Sprintf("loss: internal error: the cost model of %s does %g flops, its plan %g", name, tl.flops, p.Flops()))
	}
	end := max(tl.now, tl.link)
	return Prediction{
		Name: name, Seconds: end, GemmSeconds: tl.gemmS, KernelSeconds: tl.kernS,
		CommSeconds: tl.commS, ExposedSeconds: max(0, end-tl.gemmS-tl.kernS),
		CommBytes: tl.bytesReceived, Flops: p.Flops(), MemoryBytes: mem,
	}
}

func ceilLog2(w int) int {
	k := 0
	for 1<<k < w {
		k++
	}
	return k
}

// bytes returns the size of piece i of a block of width d with elements of
// e bytes.
func (c chunking) bytes(i, d int, e float64) float64 {
	lo, hi := c.rows(i)
	return float64((hi-lo)*d) * e
}
