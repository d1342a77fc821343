package loss

import (
	"fmt"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// SigLipImpl is how SigLipLoss moves text features between ranks: OpenCLIP's
// dist_impl. All four give the same loss and gradients.
type SigLipImpl int

const (
	// Bidir passes text blocks both ways around the ring (OpenCLIP's
	// default): ⌈(W-1)/2⌉ hops to the right and ⌊(W-1)/2⌋ to the left.
	Bidir SigLipImpl = iota
	// Shift passes text blocks one way around the ring, W-1 hops.
	Shift
	// Reduce broadcasts each rank's text block with an all-reduce, as
	// OpenCLIP does, and returns its gradient the same way.
	Reduce
	// Gather all-gathers the text features and reduce-scatters their
	// gradients.
	Gather
	// SigLipAuto lets the loss choose, at its first call, the method the
	// cost model says is fastest among those that fit the memory budget;
	// see ResolveSigLip. It is not in SigLipImpls.
	SigLipAuto
)

var sigLipImplNames = [...]string{Bidir: "bidir", Shift: "shift", Reduce: "reduce", Gather: "gather", SigLipAuto: "auto"}

// SigLipImpls lists every distribution method (SigLipAuto is a choice
// among them, not one of them).
func SigLipImpls() []SigLipImpl { return []SigLipImpl{Bidir, Shift, Reduce, Gather} }

// String returns the method's name as ParseSigLipImpl accepts it.
func (m SigLipImpl) String() string {
	if m < 0 || int(m) >= len(sigLipImplNames) {
		return fmt.Sprintf("SigLipImpl(%d)", int(m))
	}
	return sigLipImplNames[m]
}

// ParseSigLipImpl returns the method with the given name ("bidir",
// "shift", "reduce", "gather" or "auto").
func ParseSigLipImpl(name string) (SigLipImpl, error) {
	for i, n := range sigLipImplNames {
		if n == name {
			return SigLipImpl(i), nil
		}
	}
	return 0, fmt.Errorf("loss: unknown SigLIP dist_impl %q (want bidir, shift, reduce, gather or auto)", name)
}

// SigLipOptions are OpenCLIP's SigLipLoss options.
//
// The zero value is OpenCLIP's default: Bidir, whole blocks.
type SigLipOptions struct {
	// Impl is OpenCLIP's dist_impl.
	Impl SigLipImpl
	// Tile is the width of the logit tiles computed at once (OpenCLIP's
	// chunk_size); 0 picks a default. Memory per rank is O(b·Tile + b·d)
	// for the ring methods, in forward and backward.
	Tile int
	// MemoryBudget and Rates are ClipOptions' (for SigLipAuto).
	MemoryBudget int64
	Rates        Rates
	// Threads is the number of threads this rank's elementwise kernels
	// run on, as in ClipOptions.
	Threads int
}

func (o SigLipOptions) code() float64 { return 1e6 + float64(o.Impl) + float64(o.Tile)*8 }

// SigLipLoss is OpenCLIP's SigLipLoss across the ranks of a communicator.
//
// Rank r holds b rows of image and text features; with logits
// z_ij = Scale·I_i·T_j + Bias and labels y_ij = +1 for i = j and -1
// otherwise, rank r's loss is
//
//	loss_r = -(1/b) Σ_{i on rank r} Σ_{j = 1..N} log σ(y_ij·z_ij).
//
// Each rank gets what OpenCLIP leaves in .grad before DDP averaging: its
// image gradient ∂loss_r/∂I_r, its text gradient Σ_q ∂loss_q/∂T_r (text
// features travel with gradient, so every rank's loss reaches them; summed
// over ranks this is W times the gradient of the mean loss), and the
// rank-local scale and bias gradients ∂loss_r/∂Scale and ∂loss_r/∂Bias.
//
// The logits are never held whole: each text block is processed in tiles
// that are formed, turned into gradients and multiplied out in one pass, so
// forward and backward take 3 GEMMs of 2·b·N·d and O(b·tile) memory. A
// SigLipLoss allocates nothing after its first call with the largest batch;
// it is not safe for concurrent use.
type SigLipLoss[T blas.Float] struct {
	comm    mpi.Comm
	dim     int
	opt     SigLipOptions
	threads int
	agree   agreement
	k       kernels[T]
	impl    SigLipImpl  // the method in use
	auto    *sigLipAuto // with SigLipAuto: the choice per batch size

	rs   [2]sigStream[T] // bidir, shift: the streams to the right and left
	ex   exchanges       // bidir, shift: the transfers in flight
	x    []T             // b×tile logits, then gradients
	tall []T             // gather: N×d; reduce: b×d
	part []T             // gather: N×d partials; reduce: b×d

	// per call
	sum      sigSums
	lg       Logit
	tile     int
	backward bool
}

// sigSums accumulates this rank's loss and scale and bias gradients.
type sigSums struct{ loss, gs, gb float64 }

// defaultSigTile is the default logit tile width.
const defaultSigTile = 1024

// NewSigLipLoss returns a SigLipLoss over comm for features of dimension
// dim. With SigLipAuto the method is chosen as NewClipLoss chooses with
// Auto. It panics if comm is nil, dim < 1, opt.Tile < 0, opt.MemoryBudget <
// 0, opt.Threads < 0 or the method is unknown.
func NewSigLipLoss[T blas.Float](comm mpi.Comm, dim int, opt SigLipOptions) *SigLipLoss[T] {
	if comm == nil {
		panic(errNilComm)
	}
	if dim < 1 {
		panic(errDim)
	}
	if opt.Tile < 0 {
		panic(errTile)
	}
	if opt.Impl < 0 || int(opt.Impl) >= len(sigLipImplNames) {
		panic(errSigLipImpl)
	}
	if opt.MemoryBudget < 0 {
		panic(errBudget)
	}
	threads := resolveThreads(opt.Threads)
	l := &SigLipLoss[T]{comm: comm, dim: dim, opt: opt, threads: threads, impl: opt.Impl}
	p := newOwnedPool(l, threads)
	l.agree, l.k = newAgreement(comm, dim, p), kernels[T]{pool: p}
	if opt.Impl == SigLipAuto {
		l.auto = &sigLipAuto{}
	}
	return l
}

// Options returns the options the loss was made with.
func (l *SigLipLoss[T]) Options() SigLipOptions { return l.opt }

// Threads returns the number of threads the loss's kernels run on
// (Options().Threads, or what 0 resolved to).
func (l *SigLipLoss[T]) Threads() int { return l.threads }

// Forward returns this rank's loss. It is collective, panics and fails as
// ClipLoss.Forward does.
func (l *SigLipLoss[T]) Forward(img, txt []T, lg Logit) (float64, error) {
	st, err := check(&l.agree, img, txt, lg, l.opt.code(), false)
	if err == nil {
		err = l.pick(st)
	}
	if err != nil {
		return 0, err
	}
	r, err := l.run(nil, nil, img, txt, lg, st)
	if err != nil {
		return 0, mpi.Fail(l.comm, err)
	}
	return r.Loss, nil
}

// ForwardBackward computes this rank's loss and writes its image and text
// feature gradients into dImg and dTxt. It is collective, panics and fails
// as ClipLoss.ForwardBackward does.
func (l *SigLipLoss[T]) ForwardBackward(dImg, dTxt, img, txt []T, lg Logit) (Result, error) {
	if len(dImg) != len(img) || len(dTxt) != len(txt) {
		panic(errGradLen)
	}
	st, err := check(&l.agree, img, txt, lg, l.opt.code(), true)
	if err == nil {
		err = l.pick(st)
	}
	if err != nil {
		return Result{}, err
	}
	r, err := l.run(dImg, dTxt, img, txt, lg, st)
	if err != nil {
		return Result{}, mpi.Fail(l.comm, err)
	}
	return r, nil
}

func (l *SigLipLoss[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	b := st.b
	l.sum, l.lg, l.backward = sigSums{}, lg, st.backward
	l.tile = l.opt.Tile
	if l.tile == 0 {
		l.tile = defaultSigTile
		if l.impl == Bidir || l.impl == Shift {
			l.tile = ringTile(b)
		}
	}
	l.tile = min(l.tile, b)
	l.x = grow(l.x, b*l.tile)
	var err error
	switch l.impl {
	case Gather:
		err = l.gather(dImg, dTxt, img, txt, st)
	case Reduce:
		err = l.reduce(dImg, dTxt, img, txt, st)
	case Shift:
		err = l.ring(dImg, dTxt, img, txt, st, st.w-1, 0)
	default:
		err = l.ring(dImg, dTxt, img, txt, st, st.w/2, (st.w-1)/2)
	}
	if err != nil {
		return Result{}, err
	}
	inv := 1 / float64(b)
	return Result{Loss: l.sum.loss * inv, GradScale: l.sum.gs, GradBias: l.sum.gb}, nil
}

// visit adds the contribution of columns c0..c1 of the b×d text block tq,
// global block q, to this rank's loss, to dImg (scaled by Scale;
// overwritten by the first tile when first) and to rows c0..c1 of the
// text-gradient accumulator acc (overwritten), in tiles of l.tile.
func (l *SigLipLoss[T]) visit(dImg, acc, img, tq []T, q, c0, c1 int, st *clipStep, first bool) {
	for j0 := c0; j0 < c1; j0 += l.tile {
		l.visitTile(dImg, acc, img, tq, q, j0, min(l.tile, c1-j0), st, first && j0 == c0)
	}
}

// visitTile is visit's work on the cw columns from j0: the logits, the
// sigmoid tile, the text-gradient and the image-gradient GEMMs (which poll
// the transfers in flight, see gemm).
func (l *SigLipLoss[T]) visitTile(dImg, acc, img, tq []T, q, j0, cw int, st *clipStep, first bool) {
	b, d := st.b, st.d
	scale, bias := l.lg.Scale, 0.0
	if l.lg.HasBias {
		bias = l.lg.Bias
	}
	gemm(&l.ex, blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[j0*d:], d, 0, l.x, cw)
	e0 := -1 << 62 // no positive pair in this block
	if q == st.rank {
		e0 = -j0
	}
	ls, gs, gb := sigTile(&l.k, l.x, l.x, cw, b, cw, e0, scale, bias, 1/float64(b), l.backward)
	l.sum.loss += ls
	l.sum.gs += gs
	l.sum.gb += gb
	if !l.backward {
		return
	}
	gemm(&l.ex, blas.Trans, blas.NoTrans, cw, d, b, T(scale), l.x, cw, img, d, 0, acc[j0*d:], d)
	beta := T(1)
	if first {
		beta = 0
	}
	gemm(&l.ex, blas.NoTrans, blas.NoTrans, b, d, cw, T(scale), l.x, cw, tq[j0*d:], d, beta, dImg, d)
}

// sigStream is one direction of the ring methods: text blocks travel hops
// steps towards rank r+dir, each followed one step behind by the partial
// sum of its gradient, both in pieces (chunking).
type sigStream[T blas.Float] struct {
	dir, hops int
	tb        [2][]T // text blocks: the one visited, the one arriving
	part      [2][]T // partial sums: the one travelling, the one computed
	in        []T    // the partial sum arriving, then the one coming home
	nb        int    // tb[nb] receives the next block
	blk, sum  pieces // the pieces of the block and of the sum arriving
}

// streamBlocks is the number of b×d blocks a stream of the ring methods
// holds for a given number of hops: the text blocks (the one visited and
// the one arriving), the partial sums (the one travelling and the one
// computed) and the one arriving; one of each for a single hop.
func streamBlocks(hops int) int64 {
	switch {
	case hops > 1:
		return 5
	case hops == 1:
		return 3
	}
	return 0
}

// ring moves text blocks hr hops to the right and hl hops to the left.
// Shift is (W-1, 0); Bidir is (⌈(W-1)/2⌉, ⌊(W-1)/2⌋).
//
// Each direction is a stream. At hop k rank r visits block q = r - dir·k,
// tile by tile: each piece of the block is waited for before its first
// tile and passed on at once, to be visited at hop k+1 by rank r+dir. The
// gradient of block q is summed along the ranks that visit it, one hop
// behind and piece by piece: once a piece's tiles are done, rank r adds the
// piece of the partial sum that rank r-dir sent at hop k-1 and sends the
// sum on (home to rank q after the last hop). The rank's own block is
// visited in two halves, the first while the first pieces of the other
// blocks arrive, the second while the last sums travel home. So only one
// piece's transfer is left exposed at either end, and every transfer
// advances while GEMMs run (gemm polls).
func (l *SigLipLoss[T]) ring(dImg, dTxt, img, txt []T, st *clipStep, hr, hl int) error {
	b, d, w, r := st.b, st.d, st.w, st.rank
	bd := b * d
	ch := newChunking(b, l.tile)
	l.ex.comm = l.comm
	l.rs[0].dir, l.rs[0].hops = 1, hr
	l.rs[1].dir, l.rs[1].hops = -1, hl
	shift := func(x *pieces, i int, dst []T, from int, src []T, to int, what string) error {
		return shiftPiece(&l.ex, ch, d, x, i, dst, from, src, to, "SigLIP ", what)
	}
	await := func(x *pieces, i int, what string) error { return l.ex.awaitPiece(x, i, "SigLIP ", what) }
	tiles := (b + l.tile - 1) / l.tile
	half := b // the own block's first half: whole tiles
	for i := range l.rs {
		s := &l.rs[i]
		s.blk, s.sum, s.nb = nopieces(), nopieces(), 0
		if s.hops == 0 {
			continue
		}
		half = min(b, (tiles+1)/2*l.tile)
		for k := range min(s.hops, 2) {
			s.tb[k] = grow(s.tb[k], bd)
			if l.backward {
				s.part[k] = grow(s.part[k], bd)
			}
		}
		if l.backward {
			s.in = grow(s.in, bd)
		}
		// The first hop's block, this rank's own, leaves at once.
		to, from := (r+s.dir+w)%w, (r-s.dir+w)%w
		for p := range ch.n {
			if err := shift(&s.blk, p, s.tb[0], from, txt, to, "ring shift"); err != nil {
				return err
			}
		}
	}
	l.visit(dImg, dTxt, img, txt, r, 0, half, st, true)
	for k := 1; k <= max(hr, hl); k++ {
		for i := range l.rs {
			s := &l.rs[i]
			if k > s.hops {
				continue
			}
			q := (r - s.dir*k + 2*w) % w
			to, from := (r+s.dir+w)%w, (r-s.dir+w)%w
			sumTo, sumFrom := to, from
			if k == s.hops {
				// Home: this sum to its block's rank, this rank's own
				// block's sum from the rank that visits it last.
				sumTo, sumFrom = q, (r+s.dir*k+2*w)%w
			}
			cur := s.tb[s.nb]
			s.nb = 1 - s.nb
			acc := s.part[(k-1)%2]
			blk, sum := nopieces(), nopieces()
			for j0 := 0; j0 < b; j0 += l.tile {
				cw := min(l.tile, b-j0)
				p := ch.piece(j0)
				lo, hi := ch.rows(p)
				if j0 == lo {
					if err := await(&s.blk, p, "ring shift"); err != nil {
						return err
					}
					if k < s.hops {
						if err := shift(&blk, p, s.tb[s.nb], from, cur, to, "ring shift"); err != nil {
							return err
						}
					}
				}
				l.visitTile(dImg, acc, img, cur, q, j0, cw, st, false)
				if !l.backward || j0+cw < hi {
					continue
				}
				if k > 1 {
					if err := await(&s.sum, p, "text gradients"); err != nil {
						return err
					}
					addTo(&l.k, rowsOf(acc, lo, hi, d), rowsOf(s.in, lo, hi, d))
				}
				if err := shift(&sum, p, s.in, sumFrom, acc, sumTo, "text gradients"); err != nil {
					return err
				}
			}
			s.blk, s.sum = blk, sum
		}
	}
	l.visit(dImg, dTxt, img, txt, r, half, b, st, false)
	if !l.backward {
		return nil
	}
	for i := range l.rs {
		s := &l.rs[i]
		if s.hops == 0 {
			continue
		}
		for p := range ch.n {
			if err := await(&s.sum, p, "text gradients home"); err != nil {
				return err
			}
			lo, hi := ch.rows(p)
			addTo(&l.k, rowsOf(dTxt, lo, hi, d), rowsOf(s.in, lo, hi, d))
		}
	}
	return nil
}

// gather all-gathers the text features, visits every block, and
// reduce-scatters the text-gradient partials (all_gather with grad).
func (l *SigLipLoss[T]) gather(dImg, dTxt, img, txt []T, st *clipStep) error {
	n, d, b := st.n, st.d, st.b
	l.tall = grow(l.tall, n*d)
	l.part = grow(l.part, n*d)
	if err := mpi.Allgather(l.comm, l.tall, txt); err != nil {
		return fmt.Errorf("loss: gathering text features: %w", err)
	}
	for q := 0; q < st.w; q++ {
		tq := l.tall[q*b*d : (q+1)*b*d]
		l.visit(dImg, l.part[q*b*d:], img, tq, q, 0, b, st, q == 0)
	}
	if !l.backward {
		return nil
	}
	if err := mpi.ReduceScatter(l.comm, dTxt, l.part); err != nil {
		return fmt.Errorf("loss: sending text gradients home: %w", err)
	}
	return nil
}

// reduce is OpenCLIP's "reduce": block q reaches every rank through an
// all-reduce of the text features masked to rank q, and its gradient
// returns through an all-reduce of every rank's partial (the all-reduce's
// backward), of which rank q keeps the sum.
func (l *SigLipLoss[T]) reduce(dImg, dTxt, img, txt []T, st *clipStep) error {
	bd := st.b * st.d
	l.tall = grow(l.tall, bd)
	l.part = grow(l.part, bd)
	for q := 0; q < st.w; q++ {
		if q == st.rank {
			copy(l.tall, txt)
		} else {
			for i := range l.tall {
				l.tall[i] = 0
			}
		}
		if err := mpi.Allreduce(l.comm, mpi.Sum, l.tall, l.tall); err != nil {
			return fmt.Errorf("loss: broadcasting text features: %w", err)
		}
		l.visit(dImg, l.part, img, l.tall, q, 0, st.b, st, q == 0)
		if !l.backward {
			continue
		}
		if err := mpi.Allreduce(l.comm, mpi.Sum, l.part, l.part); err != nil {
			return fmt.Errorf("loss: reducing text gradients: %w", err)
		}
		if q == st.rank {
			copy(dTxt, l.part)
		}
	}
	return nil
}
