package mpi

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// Failure is an error that rank Rank met where the other ranks may not
// have: they may be blocked in a collective that Rank will not join. Fail
// returns it when its hook returns.
type Failure struct {
	Rank, Size int
	Err        error
}

func (f *Failure) Error() string { return fmt.Sprintf("rank %d of %d: %v", f.Rank, f.Size, f.Err) }

// Unwrap returns Err.
func (f *Failure) Unwrap() error { return f.Err }

// FailHook is a communicator's failure policy: Fail calls it on the rank
// that failed. It should end the job (AbortJob) or return an error for the
// caller (ReturnFailure); if it returns, Fail returns what it returned.
type FailHook func(c Comm, f *Failure) error

// failOutput is where AbortJob prints; tests replace it.
var failOutput io.Writer = os.Stderr

// AbortJob is the default FailHook: it prints "mpi: rank R of W: CAUSE" on
// standard error and calls c.Abort(1), which under MPI ends every rank of
// the job and does not return. On an in-process group (NewGroup) Abort
// returns after marking the group aborted, so that every other rank's
// pending and later calls return ErrAborted; AbortJob then returns f.
func AbortJob(c Comm, f *Failure) error {
	fmt.Fprintf(failOutput, "mpi: %v\n", f)
	c.Abort(1)
	return f
}

// ReturnFailure is the FailHook of a library whose caller handles errors
// itself: it returns f and ends nothing. The caller must then end the job
// (the other ranks may be waiting for this one); see WithFailHook.
func ReturnFailure(c Comm, f *Failure) error { return f }

// WithFailHook returns a Comm that is c in every respect but the failure
// policy: Fail on it calls h instead of AbortJob. It panics if c or h is
// nil.
func WithFailHook(c Comm, h FailHook) Comm {
	if c == nil || h == nil {
		panic("mpi: WithFailHook: nil communicator or hook")
	}
	if hc, ok := c.(*hookComm); ok {
		c = hc.Comm
	}
	return &hookComm{Comm: c, hook: h}
}

type hookComm struct {
	Comm
	hook FailHook
}

// Fail applies the failure policy of c to err, an error that this rank met
// and that the other ranks may not have: by default (AbortJob) it prints
// the cause, naming the rank, and ends the job. It returns what the hook
// returns, if the hook returns; nil if err is nil.
//
// The policy: an error that not every rank sees ends the job; it
// never leaves the other ranks waiting.
//
// Some errors are met by every rank at the same point of the program: the
// ranks decide them together (one all-reduce of what each rank saw, as the
// loss's shape check and clip.Agree do) and every rank returns the same
// error. Those stay ordinary errors; the program decides what to do.
//
// Every other error may be met by a subset of the ranks only: a collective
// or transfer that failed on this rank, a read that failed mid-step on this
// rank's data, a panic. The other ranks are then inside, or on their way
// into, a collective that this rank will never join, and would wait for it
// forever. Code that meets such an error calls Fail, which applies the
// communicator's FailHook; the default, AbortJob, prints "mpi: rank R of
// W: CAUSE" once on standard error and ends every rank with Abort (under
// mpirun: MPI_Abort, which ends the whole job within about a second).
//
// A library whose caller wants error codes instead of a process exit (a C
// ABI, a Python extension) replaces the hook with WithFailHook(c,
// ReturnFailure): Fail then returns a *Failure and nothing ends. The ranks
// are out of step at that point, so the caller must end the job itself
// (Abort, MPI_Abort, or exiting every process); calling another
// collective on the communicator may hang.
//
// An err that already went through Fail (it wraps a *Failure) or that
// reports an aborted communicator (ErrAborted: another rank failed first
// and has printed why) is returned as it is, so that a failure is printed
// and handled once however many layers pass it on.
func Fail(c Comm, err error) error {
	if err == nil {
		return nil
	}
	if OutOfStep(err) {
		return err
	}
	f := &Failure{Rank: c.Rank(), Size: c.Size(), Err: err}
	if hc, ok := c.(*hookComm); ok {
		return hc.hook(c, f)
	}
	return AbortJob(c, f)
}

// OutOfStep reports whether err went through Fail (it wraps a *Failure) or
// reports an aborted communicator (ErrAborted): the ranks are out of step,
// and no collective may follow; code that would agree with the other ranks
// on err must return it instead (with a FailHook that returns, another
// collective could wait for ever).
func OutOfStep(err error) bool {
	var f *Failure
	return errors.As(err, &f) || errors.Is(err, ErrAborted)
}

// PanicError is a panic turned into an error by AbortOnPanic: the value
// and the stack of the panicking goroutine.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v\n%s", e.Value, e.Stack) }

// AbortOnPanic makes a panic on one rank end the job, with the rank and
// the panic printed once, instead of leaving the other ranks to the
// launcher (Go's exit status 2 names no rank, and a rank of a custom
// launcher may never notice). Defer it on a rank's main goroutine right
// after the communicator exists:
//
//	comm, err := mpi.World()
//	...
//	defer mpi.AbortOnPanic(comm)
//
// On a panic it calls Fail(c, &PanicError{...}); if the hook returns (an
// in-process group, ReturnFailure), it panics again with the original
// value. It must be called directly by defer (recover works only there).
// Panics of other goroutines are not seen: they end the process, and the
// launcher the job.
func AbortOnPanic(c Comm) {
	p := recover()
	if p == nil {
		return
	}
	Fail(c, &PanicError{Value: p, Stack: debug.Stack()})
	panic(p)
}
