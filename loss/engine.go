package loss

// Schedules and engines. Each algorithm is written once, as a schedule
// (schedule.go): the GEMMs, kernel passes, transfers and collectives of one
// rank's step, in program order, on named buffers. A schedule runs on an
// engine, and three engines read it:
//
//   - exec (exec.go) computes: BLAS, the kernels, MPI;
//   - timeline (model.go) replays it against machine rates: Predict;
//   - recorder (below) lists its work and its buffers: Plan and Memory.
//
// So the cost model and Plan describe what the code does by construction.

// buf names a buffer of a step: the caller's four, then the workspaces.
type buf uint8

const (
	bImg    buf = iota // the caller's image features, b×d
	bTxt               // the caller's text features, b×d
	bDImg              // the caller's image gradients, b×d
	bDTxt              // the caller's text gradients, b×d
	bIall              // N×d gathered image features (Naive)
	bTall              // N×d gathered text features; b×d for SigLIP's Reduce
	bX                 // logits: b×N kept, b×tile, or N×N (Naive)
	bY                 // a second logit or gradient block
	bGi                // N×d image-gradient sources (Naive)
	bGt                // N×d text-gradient partials
	bOwn               // b×d: a reduce-scatter's share, Reduce's partial
	bHImg              // b×d: the caller's image features in bf16 (AMPBF16)
	bHTxt              // b×d: the caller's text features in bf16 (AMPBF16)
	bHX                // x's gradient tile in bf16, at x's positions (AMPBF16)
	bHY                // y's, likewise
	bStream            // the ring streams' buffers, streamBufs each
	nbuf    = bStream + 2*streamBufs
)

// callerBufs is the number of buffers the caller owns (bImg..bDTxt).
const callerBufs = 4

// ref is a position in a buffer, in elements.
type ref struct {
	id  buf
	off int
}

func (b buf) at(off int) ref      { return ref{b, off} }
func (r ref) plus(off int) ref    { return ref{r.id, r.off + off} }
func (r ref) rows(lo, d int) ref  { return r.plus(lo * d) }
func (r ref) valid() bool         { return r.id < nbuf }
func noRef() ref                  { return ref{id: nbuf} }
func (b buf) stream(s, k int) buf { return bStream + buf(s*streamBufs+k) }

// feature reports whether buffer id holds features (b or N rows of d):
// in AMPBF16 they hold bf16 numbers, rows step.dh apart (step.words).
func feature(id buf) bool {
	if id >= bStream {
		return streamBuf(id) < sPart
	}
	return id <= bTxt || id == bIall || id == bTall || id == bHImg || id == bHTxt
}

// streamBuf returns which of its stream's buffers id is (sTB...).
func streamBuf(id buf) int { return int(id-bStream) % streamBufs }

// gemmOp is C = alpha·op(A)·op(B) + beta·C, row-major.
type gemmOp struct {
	tA, tB        bool
	m, n, k       int
	alpha, beta   float64
	a, b, c       ref
	lda, ldb, ldc int
	cls           gemmClass
}

// gemmClass is the cost model's class of a GEMM, each with its measured
// rate (Rates): on tiles of their own, wide (defaultTile columns, and
// whole blocks) or narrow (fewer), or on tiles of a kept b×N block.
type gemmClass uint8

const (
	gWide gemmClass = iota
	gNarrow
	gKept
)

// kind is a kernel pass.
type kind uint8

const (
	kStats        kind = iota // ClipLoss row and column statistics of a logit tile
	kGrad                     // ClipLoss gradient tile (into x, and y when split)
	kSig                      // SigLIP loss and gradient tile
	kRowStats                 // Naive: row statistics and loss of a logit block
	kRowGrad                  // Naive: row gradient of a logit block
	kTranspose                // x = yᵀ, n×n (rows = cols = n)
	kAddTranspose             // x += yᵀ
	kAdd                      // x += y, rows·cols elements
	kCopy                     // x = y
	kZero                     // x = 0
	kRound                    // x = y rounded to bf16: rows of features (AMPBF16)
)

// kernOp is one kernel pass over a rows×cols tile x (leading dimension ld).
type kernOp struct {
	op             kind
	x, y           ref
	ld, rows, cols int
	// at is the global column of the tile's first column (kStats, kGrad),
	// the offset of the positive pairs' diagonal (kSig: column j of row
	// i is positive where j = i + at; noDiagonal: none),
	// or the first global row's label (kRowStats, kRowGrad).
	at int
	// which is Naive's logit block: 0 per image, 1 per text.
	which int
}

// noDiagonal is kSig's at for a tile without positive pairs.
const noDiagonal = -1 << 62

// coll is a collective on a step's elements.
type coll uint8

const (
	cAllgather     coll = iota // dst (w·n) ← every rank's src (n)
	cReduceScatter             // dst (n) ← this rank's share of Σ src (w·n)
	cAllreduce                 // dst (n) ← Σ src (n)
)

type collOp struct {
	op       coll
	dst, src ref
	n        int
	what     string
}

// stat is a step on the float64 statistics of the losses.
type stat uint8

const (
	sColumns stat = iota // complete the column statistics across ranks (two all-reduces of N)
	sForward             // a forward-only ClipLoss result (global: one all-reduce)
	sPrepare             // zero the gradient accumulators
	sFinish              // ClipLoss loss and scale gradients (an all-reduce or a reduce-scatter)
	sRows                // Naive's and SigLIP's result: rank-local sums
)

// xfer is a non-blocking exchange of n elements: src to rank to, and from
// rank from into dst.
type xfer struct {
	dst, src ref
	from, to int
	n        int
	what     string
}

// noXfer is the handle of no exchange; wait accepts it.
const noXfer = -1

// engine runs a schedule. Its methods take buffers by name; only exec
// touches data. A failure is returned by the method that met it, after
// every exchange in flight has completed (exec drains).
type engine interface {
	// buffer makes the workspace id hold at least n elements.
	buffer(id buf, n int)
	// softmax makes the ClipLoss statistics of rows×cols logits and
	// empties the row statistics.
	softmax(rows, cols int)
	gemm(g gemmOp)
	kernel(k kernOp)
	collective(c collOp) error
	reduce(s stat) error
	// post starts an exchange and returns its handle.
	post(x xfer) (int, error)
	// wait completes the exchange h (noXfer: none).
	wait(h int, what string) error
}

// GemmShape is one GEMM a step performs Count times: C (M×N) = op(A)·op(B)
// with inner dimension K.
type GemmShape struct {
	TransA, TransB bool
	M, N, K        int
	Count          int
}

// Flops returns the floating-point operations of the Count GEMMs, 2·M·N·K
// each.
func (g GemmShape) Flops() float64 {
	return 2 * float64(g.M) * float64(g.N) * float64(g.K) * float64(g.Count)
}

// Transfer is a kind of communication a step performs Count times:
// "shift" (a non-blocking exchange with a neighbour, Bytes sent and as many
// received), "allgather" (Bytes of this rank's contribution),
// "reduce_scatter" (Bytes of this rank's share) or "allreduce" (Bytes
// reduced), of feature elements; the float64 statistics' reductions are
// not listed.
type Transfer struct {
	Kind  string
	Bytes int64
	Count int
}

// Plan is the work one rank does in one ForwardBackward step: its GEMMs,
// its transfers, the memory its workspaces hold (beyond the caller's
// features and gradients) and the most exchanges it has in flight at once.
type Plan struct {
	Gemms          []GemmShape
	Transfers      []Transfer
	WorkspaceBytes int64
	MaxInFlight    int
}

// Flops returns the GEMM flops of the step.
func (p Plan) Flops() float64 {
	var f float64
	for _, g := range p.Gemms {
		f += g.Flops()
	}
	return f
}

// recorder is the engine behind Plan: it lists a schedule's GEMMs and
// transfers and sizes its buffers.
type recorder struct {
	st       *step
	elem     int64
	size     [nbuf]int
	stats    int64 // bytes of the float64 statistics
	kern     int64 // bytes of the kernels' scratch
	live     int   // exchanges in flight
	p        Plan
	gemmAt   map[GemmShape]int
	transfAt map[Transfer]int
}

func newRecorder(st *step, elemSize int) *recorder {
	return &recorder{st: st, elem: int64(elemSize), gemmAt: map[GemmShape]int{}, transfAt: map[Transfer]int{}}
}

func (r *recorder) buffer(id buf, n int) {
	r.st.sizes(id, n, func(id buf, w int) { r.size[id] = max(r.size[id], w) })
}
func (r *recorder) softmax(rows, cols int) {
	r.stats = max(r.stats, 8*(6*int64(cols)+4*int64(rows)))
}
func (r *recorder) gemm(g gemmOp) {
	s := GemmShape{TransA: g.tA, TransB: g.tB, M: g.m, N: g.n, K: g.k, Count: 1}
	if i, ok := r.gemmAt[s]; ok {
		r.p.Gemms[i].Count++
		return
	}
	r.gemmAt[s] = len(r.p.Gemms)
	r.p.Gemms = append(r.p.Gemms, s)
}
func (r *recorder) kernel(k kernOp) {
	if k.op <= kRowGrad {
		r.kern = max(r.kern, kernelBytes(k.rows, k.cols))
	}
}
func (r *recorder) transfer(kind string, bytes int64) {
	t := Transfer{Kind: kind, Bytes: bytes}
	if i, ok := r.transfAt[t]; ok {
		r.p.Transfers[i].Count++
		return
	}
	r.transfAt[t] = len(r.p.Transfers)
	t.Count = 1
	r.p.Transfers = append(r.p.Transfers, t)
}
func (r *recorder) collective(c collOp) error {
	r.transfer(collNames[c.op], int64(r.st.words(c.dst.id, c.n))*r.elem)
	return nil
}
func (r *recorder) reduce(stat) error { return nil }
func (r *recorder) post(x xfer) (int, error) {
	r.transfer("shift", int64(r.st.words(x.dst.id, x.n))*r.elem)
	r.live++
	r.p.MaxInFlight = max(r.p.MaxInFlight, r.live)
	return 0, nil
}
func (r *recorder) wait(h int, _ string) error {
	if h != noXfer {
		r.live--
	}
	return nil
}

var collNames = [...]string{cAllgather: "allgather", cReduceScatter: "reduce_scatter", cAllreduce: "allreduce"}

// plan returns what the recorder saw.
func (r *recorder) plan() Plan {
	p := r.p
	for id := buf(callerBufs); id < nbuf; id++ {
		p.WorkspaceBytes += int64(r.size[id]) * r.elem
	}
	p.WorkspaceBytes += r.stats + r.kern
	return p
}
