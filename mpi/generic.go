package mpi

import "unsafe"

// Float is the set of element types the typed helpers below accept: float32
// and float64 and types defined on them.
type Float interface {
	~float32 | ~float64
}

// The typed helpers call a Comm's F32 or F64 method by the width of T,
// without copying or allocating: a []T whose T is 4 bytes wide is a
// []float32, one 8 bytes wide a []float64. They are for generic code
// (func f[T Float]) and panic as the methods they call do.

// Allgather is AllgatherF32 or AllgatherF64.
func Allgather[T Float](c Comm, dst, src []T) error {
	if is32[T]() {
		return c.AllgatherF32(as32(dst), as32(src))
	}
	return c.AllgatherF64(as64(dst), as64(src))
}

// ReduceScatter is ReduceScatterF32 or ReduceScatterF64.
func ReduceScatter[T Float](c Comm, dst, src []T) error {
	if is32[T]() {
		return c.ReduceScatterF32(as32(dst), as32(src))
	}
	return c.ReduceScatterF64(as64(dst), as64(src))
}

// Allreduce is AllreduceF32 or AllreduceF64.
func Allreduce[T Float](c Comm, op Op, dst, src []T) error {
	if is32[T]() {
		return c.AllreduceF32(op, as32(dst), as32(src))
	}
	return c.AllreduceF64(op, as64(dst), as64(src))
}

// Isendrecv is IsendrecvF32 or IsendrecvF64.
func Isendrecv[T Float](c Comm, dst []T, from int, src []T, to int) (Request, error) {
	if is32[T]() {
		return c.IsendrecvF32(as32(dst), from, as32(src), to)
	}
	return c.IsendrecvF64(as64(dst), from, as64(src), to)
}

func is32[T Float]() bool {
	var z T
	return unsafe.Sizeof(z) == 4
}

func as32[T Float](s []T) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

func as64[T Float](s []T) []float64 {
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}
