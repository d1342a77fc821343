package mpi

import (
	"fmt"
	"os"
)

// Self returns a communicator of one rank (Rank 0, Size 1) that copies where
// MPI would: AllgatherF32 and ReduceScatterF32 copy src into dst,
// AllreduceF32 copies src into dst unless in place, and IsendrecvF32 (from
// and to must be 0) copies src into dst at once and returns a completed
// Request. It needs no MPI and allocates nothing. Abort prints a line to
// standard error and exits the process with a non-zero status.
func Self() Comm { return selfComm{} }

type selfComm struct{}

// doneRequest is a completed Request; Wait returns nil.
type doneRequest struct{}

func (doneRequest) Wait() error { return nil }

func (doneRequest) Test() (bool, error) { return true, nil }

// abortedRequest is the Request returned with ErrAborted; Wait returns
// ErrAborted.
type abortedRequest struct{}

func (abortedRequest) Wait() error { return ErrAborted }

func (abortedRequest) Test() (bool, error) { return true, ErrAborted }

func (selfComm) Rank() int      { return 0 }
func (selfComm) Size() int      { return 1 }
func (selfComm) Barrier() error { return nil }

func (selfComm) AllgatherF32(dst, src []float32) error { return selfCopy(dst, src) }
func (selfComm) AllgatherF64(dst, src []float64) error { return selfCopy(dst, src) }

func selfCopy[T float](dst, src []T) error {
	checkAllgather(1, dst, src)
	copy(dst, src)
	return nil
}

func (selfComm) ReduceScatterF32(dst, src []float32) error { return selfReduceScatter(dst, src) }
func (selfComm) ReduceScatterF64(dst, src []float64) error { return selfReduceScatter(dst, src) }

func selfReduceScatter[T float](dst, src []T) error {
	checkReduceScatter(1, dst, src)
	copy(dst, src)
	return nil
}

func (selfComm) AllreduceF32(op Op, dst, src []float32) error { return selfAllreduce(op, dst, src) }
func (selfComm) AllreduceF64(op Op, dst, src []float64) error { return selfAllreduce(op, dst, src) }

func selfAllreduce[T float](op Op, dst, src []T) error {
	if !checkAllreduce(op, dst, src) {
		copy(dst, src)
	}
	return nil
}

func (selfComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (Request, error) {
	return selfIsendrecv(dst, from, src, to)
}

func (selfComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (Request, error) {
	return selfIsendrecv(dst, from, src, to)
}

func selfIsendrecv[T float](dst []T, from int, src []T, to int) (Request, error) {
	checkIsendrecv(1, dst, from, src, to)
	if len(dst) != len(src) {
		panic(errShortDst)
	}
	copy(dst, src)
	return doneRequest{}, nil
}

func (selfComm) Abort(code int) {
	fmt.Fprintf(os.Stderr, "mpi: Abort(%d) on a one-rank communicator\n", code)
	os.Exit(exitStatus(code))
}
