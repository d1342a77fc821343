package mpitest

import (
	"errors"

	"github.com/clipmpi/clipmpi/mpi"
)

// ErrInjected is the error FaultComm's failing call returns.
var ErrInjected = errors.New("mpitest: injected communication failure")

// FaultComm is a Comm that makes one of its rank's communicating calls
// fail without communicating, as a broken link would on this rank only:
// it counts the calls (every collective but Barrier, and every Isendrecv;
// only Isendrecv when OnlyIsendrecv is set) and call number FailAt,
// counted from 1, returns Err (ErrInjected if Err is nil); an Isendrecv
// also returns a Request whose Wait returns it. With FailAt = 0 nothing
// fails, and Calls counts a step's calls. Like any Comm, it is used by one
// goroutine at a time.
type FaultComm struct {
	mpi.Comm
	FailAt        int
	OnlyIsendrecv bool
	Err           error
	// Calls is the number of calls counted so far.
	Calls int
}

func (c *FaultComm) fail(isendrecv bool) error {
	if c.OnlyIsendrecv && !isendrecv {
		return nil
	}
	c.Calls++
	if c.Calls != c.FailAt {
		return nil
	}
	if c.Err != nil {
		return c.Err
	}
	return ErrInjected
}

// failedRequest is the Request returned with an injected error.
type failedRequest struct{ err error }

func (r failedRequest) Wait() error { return r.err }

func (r failedRequest) Test() (bool, error) { return true, r.err }

func (c *FaultComm) AllgatherF32(dst, src []float32) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.AllgatherF32(dst, src)
}

func (c *FaultComm) AllgatherF64(dst, src []float64) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.AllgatherF64(dst, src)
}

func (c *FaultComm) ReduceScatterF32(dst, src []float32) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.ReduceScatterF32(dst, src)
}

func (c *FaultComm) ReduceScatterF64(dst, src []float64) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.ReduceScatterF64(dst, src)
}

func (c *FaultComm) AllreduceF32(op mpi.Op, dst, src []float32) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.AllreduceF32(op, dst, src)
}

func (c *FaultComm) AllreduceF64(op mpi.Op, dst, src []float64) error {
	if err := c.fail(false); err != nil {
		return err
	}
	return c.Comm.AllreduceF64(op, dst, src)
}

func (c *FaultComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (mpi.Request, error) {
	if err := c.fail(true); err != nil {
		return failedRequest{err}, err
	}
	return c.Comm.IsendrecvF32(dst, from, src, to)
}

func (c *FaultComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (mpi.Request, error) {
	if err := c.fail(true); err != nil {
		return failedRequest{err}, err
	}
	return c.Comm.IsendrecvF64(dst, from, src, to)
}
