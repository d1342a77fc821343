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

	bufs [4][]T // packed [A | T] blocks: two per ring direction
	x    []T    // b×tile logits, then gradients
	tall []T    // gather: N×d; reduce: b×d
	part []T    // gather: N×d partials; reduce: b×d
	home []T    // bidir: the left stream's accumulator coming home

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

// visit adds the contribution of the b×d text block tq, global block q, to
// this rank's loss, to dImg (scaled by Scale; overwritten when first) and to
// the text-gradient accumulator acc (overwritten when fresh). It stops
// before the last tile's image-gradient GEMM, which finish does, so that the
// caller can send acc meanwhile.
func (l *SigLipLoss[T]) visit(dImg, acc, img, tq []T, q int, st *clipStep, first, fresh bool) {
	b, d := st.b, st.d
	scale, bias := l.lg.Scale, 0.0
	if l.lg.HasBias {
		bias = l.lg.Bias
	}
	c := 1 / float64(b)
	for c0 := 0; c0 < b; c0 += l.tile {
		cw := min(l.tile, b-c0)
		blas.Gemm(blas.NoTrans, blas.Trans, b, cw, d, 1, img, d, tq[c0*d:], d, 0, l.x, cw)
		e0 := -1 << 62 // no positive pair in this block
		if q == st.rank {
			e0 = -c0
		}
		ls, gs, gb := sigTile(&l.k, l.x, l.x, cw, b, cw, e0, scale, bias, c, l.backward)
		l.sum.loss += ls
		l.sum.gs += gs
		l.sum.gb += gb
		if !l.backward {
			continue
		}
		beta := T(1)
		if fresh {
			beta = 0
		}
		blas.Gemm(blas.Trans, blas.NoTrans, cw, d, b, T(scale), l.x, cw, img, d, beta, acc[c0*d:], d)
		if c0+cw < b {
			l.imageGrad(dImg, tq, c0, cw, st, first)
		}
	}
}

// finish does the last tile's image-gradient GEMM of a visit.
func (l *SigLipLoss[T]) finish(dImg, tq []T, st *clipStep, first bool) {
	if !l.backward {
		return
	}
	c0 := (st.b - 1) / l.tile * l.tile
	l.imageGrad(dImg, tq, c0, st.b-c0, st, first)
}

func (l *SigLipLoss[T]) imageGrad(dImg, tq []T, c0, cw int, st *clipStep, first bool) {
	beta := T(1)
	if first && c0 == 0 {
		beta = 0
	}
	blas.Gemm(blas.NoTrans, blas.NoTrans, st.b, st.d, cw, T(l.lg.Scale), l.x, cw, tq[c0*st.d:], st.d, beta, dImg, st.d)
}

// ring moves text blocks hr hops to the right and hl hops to the left, each
// followed by its gradient accumulator; at the end each accumulator goes
// straight home. Shift is (W-1, 0); Bidir is (⌈(W-1)/2⌉, ⌊(W-1)/2⌋).
func (l *SigLipLoss[T]) ring(dImg, dTxt, img, txt []T, st *clipStep, hr, hl int) error {
	b, d, w, r := st.b, st.d, st.w, st.rank
	bd := b * d
	for i := range l.bufs {
		l.bufs[i] = grow(l.bufs[i], 2*bd)
	}
	rCur, rNext, lCur, lNext := l.bufs[0], l.bufs[1], l.bufs[2], l.bufs[3]
	copy(rCur[bd:], txt)
	copy(lCur[bd:], txt)
	right, left := (r+1)%w, (r+w-1)%w

	// Step 0: this rank's own block, counted once, into the right stream's
	// accumulator; the left stream starts empty.
	l.visit(dImg, rCur[:bd], img, txt, r, st, true, true)
	for i := range lCur[:bd] {
		lCur[i] = 0
	}
	var rReq, lReq mpi.Request
	var err error
	if hr > 0 {
		if rReq, err = mpi.Isendrecv(l.comm, rNext, left, rCur, right); err != nil {
			return fmt.Errorf("loss: SigLIP ring shift: %w", err)
		}
	}
	if hl > 0 {
		if lReq, err = mpi.Isendrecv(l.comm, lNext, right, lCur, left); err != nil {
			return fmt.Errorf("loss: SigLIP ring shift: %w", err)
		}
	}
	l.finish(dImg, txt, st, true)
	for k := 1; k <= max(hr, hl); k++ {
		if err := wait(rReq, lReq); err != nil {
			return err
		}
		rReq, lReq = nil, nil
		if k <= hr {
			rCur, rNext = rNext, rCur
			l.visit(dImg, rCur[:bd], img, rCur[bd:], (r-k+w)%w, st, false, false)
			if k < hr {
				if rReq, err = mpi.Isendrecv(l.comm, rNext, left, rCur, right); err != nil {
					return fmt.Errorf("loss: SigLIP ring shift: %w", err)
				}
			}
			l.finish(dImg, rCur[bd:], st, false)
		}
		if k <= hl {
			lCur, lNext = lNext, lCur
			l.visit(dImg, lCur[:bd], img, lCur[bd:], (r+k)%w, st, false, false)
			if k < hl {
				if lReq, err = mpi.Isendrecv(l.comm, lNext, right, lCur, left); err != nil {
					return fmt.Errorf("loss: SigLIP ring shift: %w", err)
				}
			}
			l.finish(dImg, lCur[bd:], st, false)
		}
	}
	if err := wait(rReq, lReq); err != nil {
		return err
	}
	if !l.backward {
		return nil
	}
	// Home: the right stream holds block r-hr's accumulator, the left one
	// block r+hl's.
	if hr == 0 {
		copy(dTxt, rCur[:bd])
	} else if rReq, err = mpi.Isendrecv(l.comm, dTxt, (r+hr)%w, rCur[:bd], (r-hr+w)%w); err != nil {
		return fmt.Errorf("loss: SigLIP text gradients home: %w", err)
	}
	if hl > 0 {
		l.home = grow(l.home, bd)
		if lReq, err = mpi.Isendrecv(l.comm, l.home[:bd], (r-hl+w)%w, lCur[:bd], (r+hl)%w); err != nil {
			return fmt.Errorf("loss: SigLIP text gradients home: %w", err)
		}
	}
	if err := wait(rReq, lReq); err != nil {
		return err
	}
	if hl > 0 {
		addTo(&l.k, dTxt, l.home[:bd])
	}
	return nil
}

// wait waits for the requests that are not nil.
func wait(reqs ...mpi.Request) error {
	var first error
	for _, q := range reqs {
		if q != nil {
			if err := q.Wait(); err != nil && first == nil {
				first = fmt.Errorf("loss: SigLIP ring shift: %w", err)
			}
		}
	}
	return first
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
		l.visit(dImg, l.part[q*b*d:], img, tq, q, st, q == 0, true)
		l.finish(dImg, tq, st, q == 0)
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
		l.visit(dImg, l.part, img, l.tall, q, st, q == 0, true)
		l.finish(dImg, l.tall, st, q == 0)
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
