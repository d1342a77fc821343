package loss

// The algorithms, each written once as a schedule (engine.go). A schedule
// is a pure function of the step's shape and options: the engine decides
// whether it computes, replays a timeline or records.

// step is the validated shape, mode and logit parameters of one call,
// identical on every rank.
type step struct {
	rank, w, b, n, d int
	// local and gwg are the effective options: both false when W = 1.
	local, gwg  bool
	backward    bool
	half        bool    // AMPBF16
	halfSums    bool    // AMPBF16 with SumsBF16
	scale, bias float64 // bias 0 without one
}

// dh is the row stride of bf16 features: d rounded up to even, so that
// every row starts on a float32 and moves as float32 pairs.
func (st *step) dh() int { return st.d + st.d%2 }

// bf16 reports whether buffer id holds bf16 numbers, rows dh apart:
// features in AMPBF16, and with SumsBF16 the ring's sums as they travel.
func (st *step) bf16(id buf) bool {
	if st.halfSums && id >= bStream && streamBuf(id) >= sIn {
		return true
	}
	return st.half && feature(id)
}

// words returns the elements n elements of buffer id take: half for bf16
// buffers (as bf16 pairs, rows dh apart).
func (st *step) words(id buf, n int) int {
	if st.bf16(id) {
		return n / st.d * st.dh() / 2
	}
	return n
}

// sizes calls f with the words buffer id takes for n elements and with
// those of its bf16 shadows (AMPBF16): the one sizing rule both exec and
// the recorder follow.
func (st *step) sizes(id buf, n int, f func(id buf, words int)) {
	f(id, st.words(id, n))
	if h, ok := st.shadow(id); ok {
		f(h, (n+1)/2)
	}
	if h, ok := st.sumShadow(id); ok {
		f(h, st.words(h, n))
	}
}

// sumShadow returns, with SumsBF16, the bf16 buffer a ring's partial sum
// in id is rounded into before it leaves.
func (st *step) sumShadow(id buf) (buf, bool) {
	if !st.halfSums || id < bStream || streamBuf(id) < sPart || streamBuf(id) >= sIn {
		return 0, false
	}
	return id + sHalf - sPart, true
}

// shadow returns, in AMPBF16, the buffer that holds the bf16 copy of the
// gradient tiles in id (x or y), at the same positions: the GEMMs read it.
func (st *step) shadow(id buf) (buf, bool) {
	if !st.half || id != bX && id != bY {
		return 0, false
	}
	return bHX + id - bX, true
}

// feat returns where, in bf16 numbers, the features at r are in AMPBF16:
// the caller's are read from their rounded copies.
func (st *step) feat(r ref) ref {
	id := r.id
	switch id {
	case bImg:
		id = bHImg
	case bTxt:
		id = bHTxt
	}
	return ref{id, r.off / st.d * st.dh()}
}

// runStep runs s on e; in AMPBF16 it first rounds the caller's features to
// bf16, once: every GEMM and transfer of them reads the copies.
func runStep(s schedule, e engine, st *step) error {
	if st.half {
		for i, h := range [2]buf{bHImg, bHTxt} {
			e.buffer(h, st.b*st.d)
			e.kernel(kernOp{op: kRound, x: h.at(0), y: [2]buf{bImg, bTxt}[i].at(0), rows: st.b, cols: st.d})
		}
	}
	return s.run(e, st)
}

// schedule is one algorithm's step.
type schedule interface {
	run(e engine, st *step) error
}

// defaultTile is the column tile width of Tiled (and of SigLIP's Gather and
// Reduce) when the options leave it 0: wide enough for GEMM efficiency,
// narrow enough that a b×tile block of a few thousand rows stays in the
// tens of MiB.
const defaultTile = 1024

// ringTile is the default tile width of the ring methods for b rows: a
// quarter of the block (whole multiples of 32), so that a block travels in
// maxChunks pieces, and at most 1024.
func ringTile(b int) int {
	return min(1024, (b+4*32-1)/(4*32)*32)
}

// orDefault returns t, or def when t is 0.
func orDefault(t, def int) int {
	if t == 0 {
		return def
	}
	return t
}

// clipSchedule returns the schedule of a ClipLoss algorithm on w ranks;
// it panics if the algorithm is Auto or unknown.
func clipSchedule(o ClipOptions, w int) schedule {
	switch o.Algorithm {
	case Naive:
		return naive{}
	case Fused:
		if w > 1 {
			// The one logit block, its text blocks and gradients moved
			// around the ring behind the GEMMs.
			return &clipRing{keep: true}
		}
		return &clipBlock{}
	case Tiled:
		return &clipBlock{tile: o.Tile, tiled: true}
	case Ring:
		return &clipRing{tile: o.Tile}
	case Auto:
		panic(errAutoPlan)
	}
	panic(errAlgorithm)
}

// sigSchedule returns the schedule of a SigLIP method on w ranks; it
// panics if the method is SigLipAuto or unknown.
func sigSchedule(o SigLipOptions, w int) schedule {
	switch o.Impl {
	case Bidir:
		return &sigRing{tile: o.Tile, hr: w / 2, hl: (w - 1) / 2}
	case Shift:
		return &sigRing{tile: o.Tile, hr: w - 1}
	case Gather:
		return &sigBlocks{tile: o.Tile, gather: true}
	case Reduce:
		return &sigBlocks{tile: o.Tile}
	case SigLipAuto:
		panic(errAutoPlan)
	}
	panic(errSigLipImpl)
}

// The three GEMMs of a tile of cw columns of a text block t (rows c0..):
// its logits x = I·t_tileᵀ, the text-gradient share acc = f·xᵀ·I and the
// image-gradient update dI = f·x·t_tile + beta·dI.

func logits(e engine, st *step, t, x ref, ldx, cw int, cls gemmClass) {
	e.gemm(gemmOp{tB: true, m: st.b, n: cw, k: st.d, alpha: 1, a: bImg.at(0), b: t, c: x, lda: st.d, ldb: st.d, ldc: ldx, cls: cls})
}

func textGrad(e engine, st *step, f float64, x ref, ldx, cw int, acc ref, cls gemmClass) {
	e.gemm(gemmOp{tA: true, m: cw, n: st.d, k: st.b, alpha: f, a: x, b: bImg.at(0), c: acc, lda: ldx, ldb: st.d, ldc: st.d, cls: cls})
}

func imageGrad(e engine, st *step, f float64, x ref, ldx, cw int, t ref, first bool, cls gemmClass) {
	beta := 1.0
	if first {
		beta = 0
	}
	e.gemm(gemmOp{m: st.b, n: st.d, k: cw, alpha: f, beta: beta, a: x, b: t, c: bDImg.at(0), lda: ldx, ldb: st.d, ldc: st.d, cls: cls})
}

// visitor is the work on one tile of a text block in a ring or gather:
// columns c0..c0+cw of block q, whose features start at t and whose
// text-gradient share goes to acc (rows c0.. of both).
type visitor interface {
	tile(e engine, st *step, q int, t, acc ref, c0, cw int)
}

// visit runs v over columns c0..c1 of block q in tiles of width tile.
func visit(e engine, st *step, v visitor, q int, t, acc ref, c0, c1, tile int) {
	for j := c0; j < c1; j += tile {
		v.tile(e, st, q, t, acc, j, min(tile, c1-j))
	}
}

// clipTiles is ClipLoss's work on a tile, forward or backward, for every
// algorithm but Naive: the logits of the rank's b rows against columns
// j0 = q·b + c0 .. j0+cw, kept in a b×N block (keep, leading dimension N)
// or in a reused b×tile one.
type clipTiles struct {
	keep, backward, split bool
	f                     float64 // the feature gradients' factor
	xlen                  int     // the logit block's elements
	cls                   gemmClass
	started               bool // the first image-gradient update is done
}

// start sets the tiles up for a step with tiles of width t, the logits
// kept or not: the logit block and the statistics.
func (v *clipTiles) start(e engine, st *step, t int, keep bool) {
	*v = clipTiles{keep: keep, split: st.local && !st.gwg, f: gradFactor(st), xlen: st.b * t, cls: classOf(t)}
	if keep {
		v.xlen = st.b * st.n
	}
	if keep && t < st.n {
		v.cls = gKept
	}
	e.buffer(bX, v.xlen)
	e.softmax(st.b, st.n)
}

// turn ends the forward pass: the column statistics across ranks, then
// either the loss (a forward-only call: more is false) or the gradient
// accumulators and the tiles' backward.
func (v *clipTiles) turn(e engine, st *step) (more bool, err error) {
	if err := e.reduce(sColumns); err != nil {
		return false, err
	}
	if !st.backward {
		return false, e.reduce(sForward)
	}
	if v.split {
		e.buffer(bY, v.xlen)
	}
	v.backward = true
	return true, e.reduce(sPrepare)
}

func (v *clipTiles) block(st *step, buf buf, j0, cw int) (ref, int) {
	if v.keep {
		return buf.at(j0), st.n
	}
	return buf.at(0), cw
}

// classOf is the cost model's class of the GEMMs of tiles t wide: narrow
// (the ring methods' default, a quarter block) or wide.
func classOf(t int) gemmClass {
	if t < defaultTile {
		return gNarrow
	}
	return gWide
}

func (v *clipTiles) tile(e engine, st *step, q int, t, acc ref, c0, cw int) {
	j0 := q*st.b + c0
	x, ld := v.block(st, bX, j0, cw)
	t = t.rows(c0, st.d)
	if !v.backward {
		logits(e, st, t, x, ld, cw, v.cls)
		e.kernel(kernOp{op: kStats, x: x, ld: ld, rows: st.b, cols: cw, at: j0})
		return
	}
	if !v.keep {
		logits(e, st, t, x, ld, cw, v.cls)
	}
	src, dt := x, noRef()
	if v.split {
		dt, _ = v.block(st, bY, j0, cw)
		src = dt
	}
	e.kernel(kernOp{op: kGrad, x: x, y: dt, ld: ld, rows: st.b, cols: cw, at: j0})
	textGrad(e, st, v.f, src, ld, cw, acc.rows(c0, st.d), v.cls)
	imageGrad(e, st, v.f, x, ld, cw, t, !v.started, v.cls)
	v.started = true
}

// gradFactor is the factor of ClipLoss's feature gradients: the scale,
// times W in the global mode with gather_with_grad.
func gradFactor(st *step) float64 {
	if st.gwg && !st.local {
		return st.scale * float64(st.w)
	}
	return st.scale
}

// clipBlock is Fused with one rank and Tiled: the text features are
// gathered (with one rank the caller's are used), rank r computes
// X_r = I_r·T_allᵀ tile by tile (one tile of N columns for Fused, kept for
// backward) with its row statistics and its share of the column
// statistics, completed by two all-reduces of N-vectors. Backward forms dS
// on the same rows (recomputing the tiles when they were not kept) and
// needs two GEMMs per tile, dI_r = s·dS·T_all and the text partials
// dSᵀ·I_r, which a reduce-scatter sends to their owners.
type clipBlock struct {
	tile  int
	tiled bool
	v     clipTiles
}

func (s *clipBlock) run(e engine, st *step) error {
	n, d := st.n, st.d
	t := n
	if s.tiled {
		t = min(orDefault(s.tile, defaultTile), n)
	}
	tall, partial := bTxt.at(0), bDTxt.at(0)
	if st.w > 1 {
		e.buffer(bTall, n*d)
		if err := e.collective(collOp{op: cAllgather, dst: bTall.at(0), src: bTxt.at(0), n: st.b * d, what: "gathering text features"}); err != nil {
			return err
		}
		tall = bTall.at(0)
	}
	s.v.start(e, st, t, t == n)
	visit(e, st, &s.v, 0, tall, noRef(), 0, n, t)
	if more, err := s.v.turn(e, st); !more {
		return err
	}
	if st.w > 1 {
		e.buffer(bGt, n*d)
		partial = bGt.at(0)
	}
	visit(e, st, &s.v, 0, tall, partial, 0, n, t)
	if st.w > 1 {
		if err := e.collective(collOp{op: cReduceScatter, dst: bDTxt.at(0), src: bGt.at(0), n: st.b * d, what: "sending text gradients home"}); err != nil {
			return err
		}
	}
	return e.reduce(sFinish)
}

// clipRing is the one-block algorithm with the text features travelling
// around a ring instead of being gathered (after Inf-CL's ring, Wang et al.
// 2024, and ring attention): no rank holds more than two text blocks.
// Ring recomputes the logit tiles in backward (4 GEMMs of 2·b·N·d, memory
// O(b·tile + b·d)); Fused with W > 1 keeps them (keep: 3 GEMMs, O(b·N)).
//
// Forward is a ring stream to the right: rank r visits its own block, then
// block r-k at hop k, accumulating the statistics; the column statistics
// are completed as in clipBlock. Backward is a stream to the left that
// starts with the block forward ended with (r+1) and ends with the rank's
// own: the gradient of block q, Σ over ranks of f·dSᵀ·I, is summed along
// the ranks that visit it, one hop behind, and the last visitor is rank
// q's right neighbour, which sends it home.
type clipRing struct {
	tile int
	keep bool
	g    ring
	v    clipTiles
}

func (s *clipRing) run(e engine, st *step) error {
	b := st.b
	t := min(b, ringTile(b))
	if !s.keep {
		t = min(b, orDefault(s.tile, t))
	}
	s.v.start(e, st, t, s.keep)
	s.g.init(st, t, [3]string{"ring shift of text features", "ring shift of text gradients", "ring shift of text gradients home"})
	s.g.streams[0] = stream{dir: 1, hops: st.w - 1}
	if err := s.g.run(e, st, &s.v, false); err != nil {
		return err
	}
	if more, err := s.v.turn(e, st); !more {
		return err
	}
	// Backward's first block is forward's last, already here.
	s.g.streams[0] = stream{dir: -1, hops: st.w - 1, here: true, nb: 1 - s.g.streams[0].nb}
	if err := s.g.run(e, st, &s.v, true); err != nil {
		return err
	}
	return e.reduce(sFinish)
}

// naive is OpenCLIP's ClipLoss as written, with autograd's backward done
// by hand; it is the reference the fast algorithms are tested against.
//
// Global modes (and W = 1): every rank gathers both feature sets and builds
// the N×N logits_per_image S = s·I_all·T_allᵀ; logits_per_text is Sᵀ. One
// GEMM forward, two backward (dI_all = s·dX·T_all, dT_all = s·dXᵀ·I_all with
// dX = dS + dUᵀ), all of N·N·d. Without gather_with_grad rank r keeps its
// own rows (OpenCLIP puts the local tensor back into the gathered list);
// with it the gradients go through all-gather's backward, a SUM
// reduce-scatter.
//
// Local modes: S_r = s·I_r·T_allᵀ and U_r = s·T_r·I_allᵀ, both b×N with
// labels r·b + i; two GEMMs forward and two (direct paths) or four
// (gather_with_grad) backward.
type naive struct{}

func (naive) run(e engine, st *step) error {
	b, n, d := st.b, st.n, st.d
	e.buffer(bIall, n*d)
	e.buffer(bTall, n*d)
	if err := e.collective(collOp{op: cAllgather, dst: bIall.at(0), src: bImg.at(0), n: b * d, what: "gathering image features"}); err != nil {
		return err
	}
	if err := e.collective(collOp{op: cAllgather, dst: bTall.at(0), src: bTxt.at(0), n: b * d, what: "gathering text features"}); err != nil {
		return err
	}
	if st.local {
		return naiveLocal(e, st)
	}
	e.buffer(bX, n*n)
	e.buffer(bY, n*n)
	e.gemm(gemmOp{tB: true, m: n, n: n, k: d, alpha: 1, a: bIall.at(0), b: bTall.at(0), c: bX.at(0), lda: d, ldb: d, ldc: n})
	e.kernel(kernOp{op: kTranspose, x: bY.at(0), y: bX.at(0), rows: n, cols: n, ld: n})
	for i, x := range [2]buf{bX, bY} {
		e.kernel(kernOp{op: kRowStats, x: x.at(0), ld: n, rows: n, cols: n, which: i})
	}
	if !st.backward {
		return e.reduce(sRows)
	}
	for i, x := range [2]buf{bX, bY} {
		e.kernel(kernOp{op: kRowGrad, x: x.at(0), ld: n, rows: n, cols: n, which: i})
	}
	e.kernel(kernOp{op: kAddTranspose, x: bX.at(0), y: bY.at(0), rows: n, cols: n, ld: n}) // dX = dS + dUᵀ
	e.buffer(bGi, n*d)
	e.buffer(bGt, n*d)
	e.gemm(gemmOp{m: n, n: d, k: n, alpha: st.scale, a: bX.at(0), b: bTall.at(0), c: bGi.at(0), lda: n, ldb: d, ldc: d})
	e.gemm(gemmOp{tA: true, m: n, n: d, k: n, alpha: st.scale, a: bX.at(0), b: bIall.at(0), c: bGt.at(0), lda: n, ldb: d, ldc: d})
	for i, g := range [2]buf{bGi, bGt} {
		dst := [2]buf{bDImg, bDTxt}[i]
		if !st.gwg {
			e.kernel(kernOp{op: kCopy, x: dst.at(0), y: g.at(st.rank * b * d), rows: b, cols: d})
			continue
		}
		if err := e.collective(collOp{op: cReduceScatter, dst: dst.at(0), src: g.at(0), n: b * d, what: "all-gather backward"}); err != nil {
			return err
		}
	}
	return e.reduce(sRows)
}

// naiveLocal is naive's local_loss branch with W > 1.
func naiveLocal(e engine, st *step) error {
	b, n, d, r := st.b, st.n, st.d, st.rank
	e.buffer(bX, b*n)
	e.buffer(bY, b*n)
	// logits_per_image = I_r·T_allᵀ, logits_per_text = T_r·I_allᵀ.
	src := [2][2]buf{{bImg, bTall}, {bTxt, bIall}}
	for i, x := range [2]buf{bX, bY} {
		e.gemm(gemmOp{tB: true, m: b, n: n, k: d, alpha: 1, a: src[i][0].at(0), b: src[i][1].at(0), c: x.at(0), lda: d, ldb: d, ldc: n})
	}
	for i, x := range [2]buf{bX, bY} {
		e.kernel(kernOp{op: kRowStats, x: x.at(0), ld: n, rows: b, cols: n, at: r * b, which: i})
	}
	if !st.backward {
		return e.reduce(sRows)
	}
	for i, x := range [2]buf{bX, bY} {
		e.kernel(kernOp{op: kRowGrad, x: x.at(0), ld: n, rows: b, cols: n, at: r * b, which: i})
	}
	// Direct paths, then through the gathered tensors: every rank's
	// dUᵀ·T_r lands on the image rows it came from, and dSᵀ·I_r on the
	// text rows.
	dst := [2]buf{bDImg, bDTxt}
	for i, x := range [2]buf{bX, bY} {
		e.gemm(gemmOp{m: b, n: d, k: n, alpha: st.scale, a: x.at(0), b: src[i][1].at(0), c: dst[i].at(0), lda: n, ldb: d, ldc: d})
	}
	if !st.gwg {
		return e.reduce(sRows)
	}
	e.buffer(bGi, n*d)
	e.buffer(bGt, n*d)
	e.buffer(bOwn, b*d)
	for i, g := range [2]buf{bGi, bGt} {
		x, own := [2]buf{bY, bX}[i], [2]buf{bTxt, bImg}[i]
		e.gemm(gemmOp{tA: true, m: n, n: d, k: b, alpha: st.scale, a: x.at(0), b: own.at(0), c: g.at(0), lda: n, ldb: d, ldc: d})
	}
	for i, g := range [2]buf{bGi, bGt} {
		if err := e.collective(collOp{op: cReduceScatter, dst: bOwn.at(0), src: g.at(0), n: b * d, what: "all-gather backward"}); err != nil {
			return err
		}
		e.kernel(kernOp{op: kAdd, x: dst[i].at(0), y: bOwn.at(0), rows: b, cols: d})
	}
	return e.reduce(sRows)
}

// sigTiles is SigLIP's work on a tile: the logits, the sigmoid kernel
// (loss, and the gradient in place), the text-gradient share and the
// image-gradient update. Each text block is processed in tiles that are
// formed, turned into gradients and multiplied out in one pass: 3 GEMMs
// of 2·b·N·d and O(b·tile) memory.
type sigTiles struct {
	cls     gemmClass
	started bool
}

func (v *sigTiles) tile(e engine, st *step, q int, t, acc ref, c0, cw int) {
	b := st.b
	t = t.rows(c0, st.d)
	logits(e, st, t, bX.at(0), cw, cw, v.cls)
	at := noDiagonal
	if q == st.rank {
		at = -c0
	}
	e.kernel(kernOp{op: kSig, x: bX.at(0), ld: cw, rows: b, cols: cw, at: at})
	if !st.backward {
		return
	}
	textGrad(e, st, st.scale, bX.at(0), cw, cw, acc.rows(c0, st.d), v.cls)
	imageGrad(e, st, st.scale, bX.at(0), cw, cw, t, !v.started, v.cls)
	v.started = true
}

// sigTileWidth returns SigLIP's tile width: the option, or the default of
// the ring methods (ring) or of the others, at most b.
func sigTileWidth(tile, b int, ring bool) int {
	def := defaultTile
	if ring {
		def = ringTile(b)
	}
	return min(b, orDefault(tile, def))
}

// sigRing moves text blocks hr hops to the right and hl hops to the left
// (ring streams): Shift is (W-1, 0), Bidir (⌈(W-1)/2⌉, ⌊(W-1)/2⌋).
type sigRing struct {
	tile, hr, hl int
	g            ring
	v            sigTiles
}

func (s *sigRing) run(e engine, st *step) error {
	t := sigTileWidth(s.tile, st.b, true)
	e.buffer(bX, st.b*t)
	s.v = sigTiles{cls: classOf(t)}
	s.g.init(st, t, [3]string{"SigLIP ring shift", "SigLIP text gradients", "SigLIP text gradients home"})
	s.g.streams[0] = stream{dir: 1, hops: s.hr}
	s.g.streams[1] = stream{dir: -1, hops: s.hl}
	if err := s.g.run(e, st, &s.v, st.backward); err != nil {
		return err
	}
	return e.reduce(sRows)
}

// sigBlocks is SigLIP's Gather and Reduce: every block reaches every rank
// by a collective. Gather all-gathers the text features, visits every
// block, and reduce-scatters the text-gradient partials (all_gather with
// grad). Reduce is OpenCLIP's "reduce": block q reaches every rank through
// an all-reduce of the text features masked to rank q, and its gradient
// returns through an all-reduce of every rank's partial (the all-reduce's
// backward), of which rank q keeps the sum.
type sigBlocks struct {
	tile   int
	gather bool
	v      sigTiles
}

func (s *sigBlocks) run(e engine, st *step) error {
	b, d, bd := st.b, st.d, st.b*st.d
	t := sigTileWidth(s.tile, b, false)
	e.buffer(bX, b*t)
	s.v = sigTiles{cls: classOf(t)}
	if s.gather {
		e.buffer(bTall, st.n*d)
		e.buffer(bGt, st.n*d)
		if err := e.collective(collOp{op: cAllgather, dst: bTall.at(0), src: bTxt.at(0), n: bd, what: "gathering text features"}); err != nil {
			return err
		}
	} else {
		e.buffer(bTall, bd)
		e.buffer(bOwn, bd)
	}
	for q := range st.w {
		if err := s.block(e, st, q); err != nil {
			return err
		}
	}
	if s.gather && st.backward {
		if err := e.collective(collOp{op: cReduceScatter, dst: bDTxt.at(0), src: bGt.at(0), n: bd, what: "sending text gradients home"}); err != nil {
			return err
		}
	}
	return e.reduce(sRows)
}

// block visits block q: Reduce's broadcast, the tiles, Reduce's gradient
// all-reduce.
func (s *sigBlocks) block(e engine, st *step, q int) error {
	b, bd, t := st.b, st.b*st.d, sigTileWidth(s.tile, st.b, false)
	if s.gather {
		visit(e, st, &s.v, q, bTall.at(q*bd), bGt.at(q*bd), 0, b, t)
		return nil
	}
	op := kZero
	if q == st.rank {
		op = kCopy
	}
	e.kernel(kernOp{op: op, x: bTall.at(0), y: bTxt.at(0), rows: b, cols: st.d})
	if err := e.collective(collOp{op: cAllreduce, dst: bTall.at(0), src: bTall.at(0), n: bd, what: "broadcasting text features"}); err != nil {
		return err
	}
	visit(e, st, &s.v, q, bTall.at(0), bOwn.at(0), 0, b, t)
	if !st.backward {
		return nil
	}
	if err := e.collective(collOp{op: cAllreduce, dst: bOwn.at(0), src: bOwn.at(0), n: bd, what: "reducing text gradients"}); err != nil {
		return err
	}
	if q == st.rank {
		e.kernel(kernOp{op: kCopy, x: bDTxt.at(0), y: bOwn.at(0), rows: b, cols: st.d})
	}
	return nil
}
