package loss

import (
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
func (m SigLipImpl) String() string { return nameOf(sigLipImplNames[:], "SigLipImpl", int(m)) }

// ParseSigLipImpl returns the method with the given name ("bidir",
// "shift", "reduce", "gather" or "auto").
func ParseSigLipImpl(name string) (SigLipImpl, error) {
	i, err := parseName(sigLipImplNames[:], "SigLIP dist_impl", name)
	return SigLipImpl(i), err
}

// SigLipOptions are OpenCLIP's SigLipLoss options.
//
// The zero value is OpenCLIP's default: Bidir, whole blocks.
type SigLipOptions struct {
	// Impl is OpenCLIP's dist_impl.
	Impl SigLipImpl
	// Tile is the width of the logit tiles computed at once (clipmpi's
	// own; OpenCLIP's SigLipLoss has no such option); 0 picks a default.
	// Memory per rank is O(b·Tile + b·d) for the ring methods, in forward
	// and backward.
	Tile int
	// Precision and SumsBF16 are ClipOptions'.
	Precision Precision
	SumsBF16  bool
	// MemoryBudget and Rates are ClipOptions' (for SigLipAuto).
	MemoryBudget int64
	Rates        Rates
	// Threads is the number of threads this rank's elementwise kernels
	// run on, as in ClipOptions.
	Threads int
}

func (o SigLipOptions) code() float64 {
	return 1e6 + float64(o.Impl) + float64(o.Tile)*8 + float64(o.Precision)*0x1p52 + b2f(o.SumsBF16)*0x1p51
}

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
	core[T]
	opt    SigLipOptions
	impl   SigLipImpl           // the method in use (SigLipAuto before its first choice)
	scheds [SigLipAuto]schedule // the schedules made so far, by method
}

// NewSigLipLoss returns a SigLipLoss over comm for features of dimension
// dim. With SigLipAuto the method is chosen as NewClipLoss chooses with
// Auto. It panics if comm is nil, dim < 1, opt.Tile < 0, opt.MemoryBudget <
// 0, opt.Threads < 0 or the method is unknown.
func NewSigLipLoss[T blas.Float](comm mpi.Comm, dim int, opt SigLipOptions) *SigLipLoss[T] {
	if opt.Impl < 0 || opt.Impl > SigLipAuto {
		panic(errSigLipImpl)
	}
	l := &SigLipLoss[T]{opt: opt, impl: opt.Impl}
	initCore(&l.core, l, comm, dim, opt.Tile, opt.MemoryBudget, opt.Threads, opt.Precision, opt.SumsBF16, opt.Impl == SigLipAuto)
	return l
}

// Options returns the options the loss was made with.
func (l *SigLipLoss[T]) Options() SigLipOptions { return l.opt }

// Impl returns the method that computes the loss: the options' one, or
// with SigLipAuto the one chosen at the last call (SigLipAuto before the
// first call).
func (l *SigLipLoss[T]) Impl() SigLipImpl { return l.impl }

// Forward returns this rank's loss. It is collective, panics and fails as
// ClipLoss.Forward does.
func (l *SigLipLoss[T]) Forward(img, txt []T, lg Logit) (float64, error) {
	r, err := l.call(l, nil, nil, img, txt, lg, l.opt.code(), false, nil)
	return r.Loss, err
}

// ForwardBackward computes this rank's loss and writes its image and text
// feature gradients into dImg and dTxt. It is collective, panics and fails
// as ClipLoss.ForwardBackward does.
func (l *SigLipLoss[T]) ForwardBackward(dImg, dTxt, img, txt []T, lg Logit) (Result, error) {
	return l.call(l, dImg, dTxt, img, txt, lg, l.opt.code(), true, nil)
}

// schedule returns the method's schedule, choosing it with SigLipAuto
// when the batch size is new.
func (l *SigLipLoss[T]) schedule(st *step) (schedule, error) {
	if l.auto != nil && l.auto.b != st.b {
		err := l.choose(st, l.opt.Rates, l.opt.MemoryBudget, func(in autoInputs) (Choice, error) {
			m, ch, err := l.opt.Choose(st.w, st.b, st.d, elemSize[T](), in.rates, in.budget)
			if err == nil {
				l.impl = m
			}
			return ch, err
		})
		if err != nil {
			return nil, err
		}
	}
	if l.scheds[l.impl] == nil {
		o := l.opt
		o.Impl = l.impl
		l.scheds[l.impl] = sigSchedule(o, st.w)
	}
	return l.scheds[l.impl], nil
}
