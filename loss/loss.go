package loss

import (
	"fmt"
	"os"
	"runtime"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// Warn prints a warning; programs may replace it (tests silence it).
var Warn = func(msg string) { fmt.Fprintln(os.Stderr, "clipmpi: warning:", msg) }

// core is what ClipLoss and SigLipLoss share: the communicator, the
// kernels' threads, the per-call agreement, the engine that computes, and
// Auto's state.
type core[T blas.Float] struct {
	comm     mpi.Comm
	dim      int
	threads  int
	agree    agreement
	x        exec[T]
	auto     *auto // with Auto: the choice per batch size
	half     bool  // AMPBF16
	halfSums bool  // SumsBF16
}

// picker returns the schedule of a validated call (choosing it with
// Auto); ClipLoss and SigLipLoss are pickers.
type picker interface {
	schedule(st *step) (schedule, error)
}

// initCore checks what both constructors check and sets c up, with the
// kernels' pool owned by (closed once unreachable with) owner.
func initCore[T blas.Float, O any](c *core[T], owner *O, comm mpi.Comm, dim, tile int, budget int64, threads int, prec Precision, sums, isAuto bool) {
	if comm == nil {
		panic(errNilComm)
	}
	if dim < 1 {
		panic(errDim)
	}
	if tile < 0 {
		panic(errTile)
	}
	if budget < 0 {
		panic(errBudget)
	}
	checkPrecision[T](prec, sums)
	c.half, c.halfSums = prec == AMPBF16, sums
	threads = resolveThreads(threads)
	p := newOwnedPool(owner, threads)
	c.comm, c.dim, c.threads = comm, dim, threads
	c.agree = newAgreement(comm, dim, p)
	c.x.comm, c.x.k.pool = comm, p
	if isAuto {
		c.auto = &auto{}
	}
}

// call validates a call, picks its schedule and runs it on the engine.
// A failure inside the schedule, which may reach only some ranks, goes to
// mpi.Fail.
func (c *core[T]) call(p picker, dImg, dTxt, img, txt []T, lg Logit, code float64, backward bool, mode func(*step)) (Result, error) {
	if backward && (len(dImg) != len(img) || len(dTxt) != len(txt)) {
		panic(errGradLen)
	}
	st, err := check(&c.agree, img, txt, lg, code, backward)
	if err != nil {
		return Result{}, err
	}
	if mode != nil {
		mode(st)
	}
	st.half, st.halfSums = c.half, c.halfSums
	s, err := p.schedule(st)
	if err != nil {
		return Result{}, err
	}
	c.x.start(dImg, dTxt, img, txt, st)
	r, err := c.x.finish(runStep(s, &c.x, st))
	runtime.KeepAlive(p) // its cleanup stops the kernels' threads
	if err != nil {
		return Result{}, mpi.Fail(c.comm, err)
	}
	return r, nil
}

// Threads returns the number of threads the loss's kernels run on
// (the options' Threads, or what 0 resolved to).
func (c *core[T]) Threads() int { return c.threads }

// choose makes Auto's choice for st.b with pick, agreeing on the inputs
// (and measuring the rates) at the first call; rank 0 prints it through
// Info. ErrNoFit is decided on agreed values and returned; a failed
// collective goes to mpi.Fail.
func (c *core[T]) choose(st *step, rates Rates, budget int64, pick func(autoInputs) (Choice, error)) error {
	a := c.auto
	if a.in == nil {
		in, err := agreeInputs[T](c.comm, st.b, st.d, c.threads, rates, budget)
		if err != nil {
			return mpi.Fail(c.comm, err)
		}
		a.in = &in
	}
	ch, err := pick(*a.in)
	if err != nil {
		return err
	}
	a.b, a.choice = st.b, ch
	if st.rank == 0 {
		Info(ch.Reason)
	}
	return nil
}

// Choice returns Auto's last choice, and false without Auto or before the
// first call.
func (c *core[T]) Choice() (Choice, bool) {
	if c.auto == nil || c.auto.b == 0 {
		return Choice{}, false
	}
	return c.auto.choice, true
}

// auto is Auto's state, for either loss: the inputs agreed at the first
// call and the choice for the last batch size (b = 0 before the first).
type auto struct {
	in     *autoInputs
	b      int
	choice Choice
}

func elemSize[T blas.Float]() int {
	if blas.Is32[T]() {
		return 4
	}
	return 8
}
