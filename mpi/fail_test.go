package mpi

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer that several ranks may write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captureFailOutput sends AbortJob's output to a buffer for the test.
func captureFailOutput(t *testing.T) *lockedBuffer {
	var out lockedBuffer
	old := failOutput
	failOutput = &out
	t.Cleanup(func() { failOutput = old })
	return &out
}

// onRanks runs fn on every rank of a new group of size w and returns the
// ranks' errors; it fails the test if they do not all return within 10 s.
func onRanks(t *testing.T, comms []Comm, fn func(c Comm) error) []error {
	t.Helper()
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fn(c)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the ranks did not return within 10 s: a hang")
	}
	return errs
}

// TestFailAbortsGroup: one rank fails alone while the others wait in a
// collective; the failure is printed once, naming the rank, the failing
// rank gets the *Failure and the others ErrAborted, which Fail passes on
// without printing again.
func TestFailAbortsGroup(t *testing.T) {
	for _, w := range []int{2, 3} {
		out := captureFailOutput(t)
		cause := errors.New("disk on fire")
		errs := onRanks(t, NewGroup(w), func(c Comm) error {
			if c.Rank() == 1 {
				return Fail(c, cause)
			}
			v := []float64{1}
			return Fail(c, c.AllreduceF64(Sum, v, v))
		})
		for r, err := range errs {
			var f *Failure
			switch {
			case r == 1 && (!errors.As(err, &f) || f.Rank != 1 || f.Size != w || !errors.Is(err, cause)):
				t.Errorf("w=%d: failing rank got %v, want a *Failure of rank 1 wrapping the cause", w, err)
			case r != 1 && !errors.Is(err, ErrAborted):
				t.Errorf("w=%d: rank %d got %v, want ErrAborted", w, r, err)
			}
		}
		want := "mpi: rank 1 of " + string(rune('0'+w)) + ": disk on fire\n"
		if got := out.String(); got != want {
			t.Errorf("w=%d: printed %q, want %q once", w, got, want)
		}
	}
}

// TestFailPassesOn: nil stays nil; an error that went through Fail once
// is not handled again, and OutOfStep recognises it.
func TestFailPassesOn(t *testing.T) {
	out := captureFailOutput(t)
	c := NewGroup(1)[0]
	if err := Fail(c, nil); err != nil {
		t.Errorf("Fail(nil) = %v", err)
	}
	first := Fail(c, errors.New("x"))
	wrapped := errors.Join(errors.New("context"), first)
	if got := Fail(c, wrapped); got != wrapped {
		t.Errorf("Fail of a wrapped *Failure = %v, want it unchanged", got)
	}
	if !OutOfStep(first) || !OutOfStep(wrapped) || !OutOfStep(errors.Join(ErrAborted)) || OutOfStep(errors.New("x")) {
		t.Error("OutOfStep does not recognise a *Failure and ErrAborted, and only them")
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Errorf("printed %q, want one line", out.String())
	}
}

// TestFailHook: a replaced hook is called instead of AbortJob; with
// ReturnFailure nothing is printed and the communicator stays usable.
func TestFailHook(t *testing.T) {
	out := captureFailOutput(t)
	var got []*Failure
	comms := NewGroup(2)
	for r, c := range comms {
		comms[r] = WithFailHook(c, func(c Comm, f *Failure) error {
			got = append(got, f)
			return ReturnFailure(c, f)
		})
	}
	errs := onRanks(t, comms, func(c Comm) error {
		var err error
		if c.Rank() == 0 {
			err = Fail(c, errors.New("local trouble"))
		}
		if berr := c.Barrier(); berr != nil {
			return berr
		}
		return err
	})
	var f *Failure
	if !errors.As(errs[0], &f) || f.Rank != 0 || errs[1] != nil {
		t.Errorf("errors %v, want a *Failure on rank 0 and nil on rank 1 (the group not aborted)", errs)
	}
	if len(got) != 1 || out.String() != "" {
		t.Errorf("hook called %d times, printed %q; want once and nothing", len(got), out.String())
	}
	// Replacing the hook of a hooked Comm replaces it.
	c := WithFailHook(comms[0], ReturnFailure)
	if c.(*hookComm).Comm != comms[0].(*hookComm).Comm {
		t.Error("WithFailHook wrapped a hooked Comm twice")
	}
}

// TestAbortOnPanic: a panic on one rank is printed once with its rank and
// aborts the group; the hook returns here, so the panic goes on.
func TestAbortOnPanic(t *testing.T) {
	out := captureFailOutput(t)
	var repanicked any
	errs := onRanks(t, NewGroup(3), func(c Comm) error {
		if c.Rank() == 2 {
			defer func() { repanicked = recover() }()
			defer AbortOnPanic(c)
			var s []int
			_ = s[c.Rank()] // a runtime panic: index out of range
		}
		return Fail(c, c.Barrier())
	})
	if !errors.Is(errs[0], ErrAborted) || !errors.Is(errs[1], ErrAborted) {
		t.Errorf("ranks 0, 1: %v, want ErrAborted", errs[:2])
	}
	if repanicked == nil {
		t.Error("AbortOnPanic swallowed the panic")
	}
	s := out.String()
	if strings.Count(s, "mpi: rank") != 1 || !strings.HasPrefix(s, "mpi: rank 2 of 3: panic: runtime error: index out of range [2] with length 0\n") ||
		!strings.Contains(s, "TestAbortOnPanic") {
		t.Errorf("printed %q, want the panic of rank 2 with its stack, once", s)
	}
}
