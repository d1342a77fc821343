package mpi

import "github.com/clipmpi/clipmpi/internal/num"

// Float is the set of element types the typed helpers below accept: float32
// and float64 and types defined on them. It is blas.Float too.
type Float = num.Float

// The typed helpers call a Comm's F32 or F64 method by the width of T,
// without copying or allocating: a []T whose T is 4 bytes wide is a
// []float32, one 8 bytes wide a []float64. They are for generic code
// (func f[T Float]) and panic as the methods they call do.

// Allgather is AllgatherF32 or AllgatherF64.
func Allgather[T Float](c Comm, dst, src []T) error {
	if num.Is32[T]() {
		return c.AllgatherF32(num.As32(dst), num.As32(src))
	}
	return c.AllgatherF64(num.As64(dst), num.As64(src))
}

// ReduceScatter is ReduceScatterF32 or ReduceScatterF64.
func ReduceScatter[T Float](c Comm, dst, src []T) error {
	if num.Is32[T]() {
		return c.ReduceScatterF32(num.As32(dst), num.As32(src))
	}
	return c.ReduceScatterF64(num.As64(dst), num.As64(src))
}

// Allreduce is AllreduceF32 or AllreduceF64.
func Allreduce[T Float](c Comm, op Op, dst, src []T) error {
	if num.Is32[T]() {
		return c.AllreduceF32(op, num.As32(dst), num.As32(src))
	}
	return c.AllreduceF64(op, num.As64(dst), num.As64(src))
}

// Isendrecv is IsendrecvF32 or IsendrecvF64.
func Isendrecv[T Float](c Comm, dst []T, from int, src []T, to int) (Request, error) {
	if num.Is32[T]() {
		return c.IsendrecvF32(num.As32(dst), from, num.As32(src), to)
	}
	return c.IsendrecvF64(num.As64(dst), from, num.As64(src), to)
}
