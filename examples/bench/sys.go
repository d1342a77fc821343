package main

import (
	"time"

	"github.com/clipmpi/clipmpi/mpi"
)

// countingComm counts the bytes a rank receives in each collective under the
// usual bandwidth-optimal algorithms: (W-1)/W of the gathered or reduced
// data for all-gather and reduce-scatter, twice that for all-reduce, the
// whole message for a send/receive. It also adds up in inside the time
// spent in communication calls: the collectives, and Wait and Test of the
// requests it hands out (wrappers from a fixed pool, so that counting
// allocates nothing).
type countingComm struct {
	mpi.Comm
	elem   int
	bytes  int64
	inside int64 // nanoseconds inside communication calls
	reqs   [mpi.MaxRequests]timedRequest
}

// timedRequest adds the time its Wait and Test take to its Comm's inside.
type timedRequest struct {
	c    *countingComm
	r    mpi.Request
	busy bool
}

func (t *timedRequest) Wait() error {
	t0 := time.Now()
	err := t.r.Wait()
	t.c.inside += int64(time.Since(t0))
	t.busy = false
	return err
}

func (t *timedRequest) Test() (bool, error) {
	t0 := time.Now()
	done, err := t.r.Test()
	t.c.inside += int64(time.Since(t0))
	if done {
		t.busy = false
	}
	return done, err
}

// wrap returns a timed wrapper of r from the pool (r itself if every
// wrapper is busy, which the Comm's own limit makes impossible).
func (c *countingComm) wrap(r mpi.Request) mpi.Request {
	for i := range c.reqs {
		if t := &c.reqs[i]; !t.busy {
			*t = timedRequest{c: c, r: r, busy: true}
			return t
		}
	}
	return r
}

// timed adds the time since t0 to inside and returns err.
func (c *countingComm) timed(t0 time.Time, err error) error {
	c.inside += int64(time.Since(t0))
	return err
}

func (c *countingComm) count(n int, factor float64) {
	w := float64(c.Size())
	c.bytes += int64(float64(n*c.elem) * factor * (w - 1) / w)
}

func (c *countingComm) Barrier() error {
	t0 := time.Now()
	return c.timed(t0, c.Comm.Barrier())
}

func (c *countingComm) AllgatherF32(dst, src []float32) error {
	c.count(len(dst), 1)
	t0 := time.Now()
	return c.timed(t0, c.Comm.AllgatherF32(dst, src))
}

func (c *countingComm) AllgatherF64(dst, src []float64) error {
	c.count(len(dst), 1)
	t0 := time.Now()
	return c.timed(t0, c.Comm.AllgatherF64(dst, src))
}

func (c *countingComm) ReduceScatterF32(dst, src []float32) error {
	c.count(len(src), 1)
	t0 := time.Now()
	return c.timed(t0, c.Comm.ReduceScatterF32(dst, src))
}

func (c *countingComm) ReduceScatterF64(dst, src []float64) error {
	c.bytes += int64(float64(len(src)*8) * float64(c.Size()-1) / float64(c.Size()))
	t0 := time.Now()
	return c.timed(t0, c.Comm.ReduceScatterF64(dst, src))
}

func (c *countingComm) AllreduceF32(op mpi.Op, dst, src []float32) error {
	c.count(len(src), 2)
	t0 := time.Now()
	return c.timed(t0, c.Comm.AllreduceF32(op, dst, src))
}

func (c *countingComm) AllreduceF64(op mpi.Op, dst, src []float64) error {
	c.bytes += int64(float64(len(src)*8) * 2 * float64(c.Size()-1) / float64(c.Size()))
	t0 := time.Now()
	return c.timed(t0, c.Comm.AllreduceF64(op, dst, src))
}

func (c *countingComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (mpi.Request, error) {
	return c.started(int64(len(dst)*4), func() (mpi.Request, error) { return c.Comm.IsendrecvF32(dst, from, src, to) })
}

func (c *countingComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (mpi.Request, error) {
	return c.started(int64(len(dst)*8), func() (mpi.Request, error) { return c.Comm.IsendrecvF64(dst, from, src, to) })
}

// started counts the bytes a transfer receives and the time start takes,
// and wraps the request it starts so that its Wait and Test are timed too.
func (c *countingComm) started(bytes int64, start func() (mpi.Request, error)) (mpi.Request, error) {
	c.bytes += bytes
	t0 := time.Now()
	r, err := start()
	c.inside += int64(time.Since(t0))
	if err != nil {
		return r, err
	}
	return c.wrap(r), nil
}
