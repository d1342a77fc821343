package mpi

import "unsafe"

// MaxRequests is the most Requests one Comm may have outstanding (started by
// Isendrecv and not yet completed by Wait or Test). Sixteen is enough for a
// bidirectional ring whose blocks and gradient sums travel separately, each
// in up to four chunks that are waited for one at a time. Starting one
// more panics.
const MaxRequests = 16

// float is the element type of every buffer.
type float interface{ float32 | float64 }

// overlaps reports whether a and b share at least one element of memory.
func overlaps[T float](a, b []T) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	sz := unsafe.Sizeof(a[0])
	pa := uintptr(unsafe.Pointer(&a[0]))
	pb := uintptr(unsafe.Pointer(&b[0]))
	return pa < pb+uintptr(len(b))*sz && pb < pa+uintptr(len(a))*sz
}

// identical reports whether a and b are the same memory: same start and
// same length. Two empty slices are identical.
func identical[T float](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}

// checkAllgather panics unless len(dst) == size*len(src) and the buffers
// are disjoint.
func checkAllgather[T float](size int, dst, src []T) {
	if len(dst) != size*len(src) {
		panic(errShortDst)
	}
	if overlaps(dst, src) {
		panic(errOverlap)
	}
}

// checkReduceScatter panics unless len(src) == size*len(dst) and the
// buffers are disjoint.
func checkReduceScatter[T float](size int, dst, src []T) {
	if len(src) != size*len(dst) {
		panic(errShortSrc)
	}
	if overlaps(dst, src) {
		panic(errOverlap)
	}
}

// checkAllreduce panics unless op is valid, len(dst) == len(src) and dst
// is either src itself or disjoint from it. It reports whether the call is
// in place.
func checkAllreduce[T float](op Op, dst, src []T) (inPlace bool) {
	if op != Sum && op != Max {
		panic(errBadOp)
	}
	if len(dst) != len(src) {
		panic(errShortDst)
	}
	if identical(dst, src) {
		return true
	}
	if overlaps(dst, src) {
		panic(errOverlap)
	}
	return false
}

// checkIsendrecv panics unless from and to are ranks of a size-rank
// communicator and the buffers are disjoint.
func checkIsendrecv[T float](size int, dst []T, from int, src []T, to int) {
	if from < 0 || from >= size || to < 0 || to >= size {
		panic(errBadRank)
	}
	if overlaps(dst, src) {
		panic(errOverlap)
	}
}

// accumulate sets acc[i] = acc[i] op x[i]. len(x) must be at least len(acc).
// Max keeps acc[i] unless x[i] > acc[i], so a NaN in acc stays and a NaN in
// x is ignored; MPI leaves NaN handling unspecified.
func accumulate[T float](op Op, acc, x []T) {
	x = x[:len(acc)]
	if op == Sum {
		for i, v := range x {
			acc[i] += v
		}
		return
	}
	for i, v := range x {
		if v > acc[i] {
			acc[i] = v
		}
	}
}

// exitStatus maps an Abort code to a process exit status that is never 0:
// the operating system keeps only the low 8 bits, so 0, 256, 512, ... would
// otherwise report success.
func exitStatus(code int) int {
	if code&0xff == 0 {
		return 1
	}
	return code & 0xff
}
