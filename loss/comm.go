package loss

import (
	"unsafe"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// Element-type dispatch of the collectives, without allocating: a []T whose
// T is 4 bytes wide is a []float32, and one 8 bytes wide a []float64.

func is32[T blas.Float]() bool {
	var z T
	return unsafe.Sizeof(z) == 4
}

func f32[T blas.Float](s []T) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

func f64[T blas.Float](s []T) []float64 {
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

func allgather[T blas.Float](c mpi.Comm, dst, src []T) error {
	if is32[T]() {
		return c.AllgatherF32(f32(dst), f32(src))
	}
	return c.AllgatherF64(f64(dst), f64(src))
}

func reduceScatter[T blas.Float](c mpi.Comm, dst, src []T) error {
	if is32[T]() {
		return c.ReduceScatterF32(f32(dst), f32(src))
	}
	return c.ReduceScatterF64(f64(dst), f64(src))
}

func allreduce[T blas.Float](c mpi.Comm, op mpi.Op, dst, src []T) error {
	if is32[T]() {
		return c.AllreduceF32(op, f32(dst), f32(src))
	}
	return c.AllreduceF64(op, f64(dst), f64(src))
}

func isendrecv[T blas.Float](c mpi.Comm, dst []T, from int, src []T, to int) (mpi.Request, error) {
	if is32[T]() {
		return c.IsendrecvF32(f32(dst), from, f32(src), to)
	}
	return c.IsendrecvF64(f64(dst), from, f64(src), to)
}
