package loss

// ring drives the ring methods' streams of text blocks: ClipLoss's Ring and
// Fused with W > 1 (a stream to the right in forward, one to the left in
// backward) and SigLIP's Shift (one stream) and Bidir (one each way).
//
// In a stream of direction dir and h hops, rank r visits block
// q = r - dir·k at hop k = 1..h, tile by tile, having visited its own block
// first (when sums travel: half of it first and half last, or all of it
// last when the first blocks are here). Each
// block travels in pieces (chunking): a piece is waited for before its
// first tile and passed on at once, to be visited at hop k+1 by rank
// r+dir; a stream whose first block is already here (here) has nothing to
// wait for at hop 1. With sums, the gradient of block q is summed along the
// ranks that visit it, one hop behind and piece by piece: once a piece's
// tiles are done, rank r adds the piece of the partial sum that rank r-dir
// sent at hop k-1 and sends the sum on (home to rank q after the last hop);
// the own block's second half hides the last pieces going home. So only
// one piece's transfer is left exposed at either end of a visit, and every
// transfer advances while GEMMs run (exec's gemm polls).
type ring struct {
	ch chunking
	t  int
	// names of the transfers in error messages: the blocks, the
	// partial sums, the sums going home
	names   [3]string
	streams [2]stream
}

// stream is one direction of a ring; its buffers are bStream's (streamBufs
// per stream): two text blocks (the one visited and the one arriving), two
// partial sums (the one travelling and the one computed) and the sum
// arriving.
type stream struct {
	dir, hops int
	here      bool   // the first hop's block is already in tb(nb)
	nb        int    // tb(nb) holds the next block to visit
	blk, sum  pieces // the pieces of the block and of the sum arriving
}

const (
	sTB   = 0 // two text blocks
	sPart = 2 // two partial sums
	sIn   = 4 // the partial sum arriving
	sHalf = 5 // with SumsBF16: the two partial sums in bf16, as they leave
	// streamBufs is the number of buffers of a stream.
	streamBufs = 7
)

func (g *ring) init(st *step, t int, names [3]string) {
	g.ch, g.t, g.names = newChunking(st.b, t), t, names
	g.streams = [2]stream{}
}

// run runs the streams with the visitor v, the partial sums of the text
// gradients travelling when sums is set.
func (g *ring) run(e engine, st *step, v visitor, sums bool) error {
	b, d, r := st.b, st.d, st.rank
	// The own block's first part: all of it without sums; with sums half
	// of it (whole tiles) to hide the first blocks' arrival, or none when
	// they are here, so that all of it hides the sums going home.
	half, hops := b, 0
	for i := range g.streams {
		s := &g.streams[i]
		s.blk, s.sum = nopieces(), nopieces()
		if s.hops == 0 {
			continue
		}
		hops = max(hops, s.hops)
		if sums && s.here {
			half = 0
		} else if sums {
			tiles := (b + g.t - 1) / g.t
			half = min(b, (tiles+1)/2*g.t)
		}
		for k := range min(s.hops, 2) {
			e.buffer(bStream.stream(i, sTB+k), b*d)
			if sums {
				e.buffer(bStream.stream(i, sPart+k), b*d)
			}
		}
		if sums {
			e.buffer(bStream.stream(i, sIn), b*d)
		}
		if s.here {
			continue
		}
		// The first hop's block, this rank's own, leaves at once.
		s.nb = 0
		for p := range g.ch.n {
			if err := g.shift(e, st, &s.blk, p, bStream.stream(i, sTB).at(0), s.from(st), bTxt.at(0), s.to(st), g.names[0]); err != nil {
				return err
			}
		}
	}
	visit(e, st, v, r, bTxt.at(0), bDTxt.at(0), 0, half, g.t)
	for k := 1; k <= hops; k++ {
		for i := range g.streams {
			if k <= g.streams[i].hops {
				if err := g.hop(e, st, v, i, k, sums); err != nil {
					return err
				}
			}
		}
	}
	visit(e, st, v, r, bTxt.at(0), bDTxt.at(0), half, b, g.t)
	if !sums {
		return nil
	}
	for i := range g.streams {
		s := &g.streams[i]
		for p := 0; p < g.ch.n && s.hops > 0; p++ {
			if err := e.wait(s.sum[p], g.names[2]); err != nil {
				return err
			}
			lo, hi := g.ch.rows(p)
			e.kernel(kernOp{op: kAdd, x: bDTxt.at(lo * d), y: bStream.stream(i, sIn).at(lo * d), rows: hi - lo, cols: d})
		}
	}
	return nil
}

func (s *stream) to(st *step) int   { return (st.rank + s.dir + st.w) % st.w }
func (s *stream) from(st *step) int { return (st.rank - s.dir + st.w) % st.w }

// hop is hop k of stream i.
func (g *ring) hop(e engine, st *step, v visitor, i, k int, sums bool) error {
	s := &g.streams[i]
	b, d, w := st.b, st.d, st.w
	q := ((st.rank-s.dir*k)%w + w) % w
	to, from := s.to(st), s.from(st)
	sumTo, sumFrom := to, from
	if k == s.hops {
		// Home: this sum to its block's rank, this rank's own block's sum
		// from the rank that visits it last.
		sumTo, sumFrom = q, ((st.rank+s.dir*k)%w+w)%w
	}
	cur := bStream.stream(i, sTB+s.nb)
	s.nb = 1 - s.nb
	acc := bStream.stream(i, sPart+(k-1)%2).at(0)
	in := bStream.stream(i, sIn).at(0)
	blk, sum := nopieces(), nopieces()
	for c0 := 0; c0 < b; c0 += g.t {
		cw := min(g.t, b-c0)
		p := g.ch.piece(c0)
		lo, hi := g.ch.rows(p)
		if c0 == lo {
			if err := e.wait(s.blk[p], g.names[0]); err != nil {
				return err
			}
			if k < s.hops {
				if err := g.shift(e, st, &blk, p, bStream.stream(i, sTB+s.nb).at(0), from, cur.at(0), to, g.names[0]); err != nil {
					return err
				}
			}
		}
		v.tile(e, st, q, cur.at(0), acc, c0, cw)
		if !sums || c0+cw < hi {
			continue
		}
		if k > 1 {
			if err := e.wait(s.sum[p], g.names[1]); err != nil {
				return err
			}
			e.kernel(kernOp{op: kAdd, x: acc.rows(lo, d), y: in.rows(lo, d), rows: hi - lo, cols: d})
		}
		if err := g.shift(e, st, &sum, p, in, sumFrom, acc, sumTo, g.names[1]); err != nil {
			return err
		}
	}
	s.blk, s.sum = blk, sum
	return nil
}

// shift posts piece p of a block: its rows of src to rank to and, from
// rank from, into dst; tx[p] holds its handle.
func (g *ring) shift(e engine, st *step, tx *pieces, p int, dst ref, from int, src ref, to int, what string) error {
	lo, hi := g.ch.rows(p)
	var err error
	tx[p], err = e.post(xfer{dst: dst.rows(lo, st.d), src: src.rows(lo, st.d), from: from, to: to, n: (hi - lo) * st.d, what: what})
	return err
}

// maxChunks is the most pieces the ring methods cut a block transfer into.
const maxChunks = 4

// chunking cuts a block of b rows into tiles of t rows (the last may be
// shorter) and groups g consecutive tiles into each of n pieces, n at most
// maxChunks.
type chunking struct{ b, t, g, n int }

func newChunking(b, t int) chunking {
	tiles := (b + t - 1) / t
	g := (tiles + maxChunks - 1) / maxChunks
	return chunking{b: b, t: t, g: g, n: (tiles + g - 1) / g}
}

// rows returns the rows of piece i.
func (c chunking) rows(i int) (lo, hi int) {
	lo = i * c.g * c.t
	return lo, min(c.b, lo+c.g*c.t)
}

// piece returns the piece that holds row r.
func (c chunking) piece(r int) int { return r / (c.g * c.t) }

// pieces are the exchange handles of a transfer cut into pieces.
type pieces [maxChunks]int

func nopieces() pieces {
	var p pieces
	for i := range p {
		p[i] = noXfer
	}
	return p
}
