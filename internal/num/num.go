// Package num holds the element types clipmpi computes in and the
// reinterpretations that let generic code over them call float32 and
// float64 functions without copying. Both blas and mpi use it, so that
// neither depends on the other.
package num

import "unsafe"

// Float is the set of element types clipmpi computes in: float32 and
// float64 and types defined on them.
type Float interface {
	~float32 | ~float64
}

// Is32 reports whether T is 4 bytes wide: float32 or a type defined on it
// (otherwise it is 8 bytes wide, a float64).
func Is32[T Float]() bool {
	var z T
	return unsafe.Sizeof(z) == 4
}

// As32 returns s as a []float32 sharing its storage, for generic code that
// has checked Is32[T](); nil for an empty s. It does not copy or allocate.
func As32[T Float](s []T) []float32 {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

// As64 is As32 for a T 8 bytes wide.
func As64[T Float](s []T) []float64 {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}
