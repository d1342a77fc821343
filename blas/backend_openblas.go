//go:build openblas

package blas

/*
#cgo pkg-config: openblas
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
*/
import "C"

import "gonum.org/v1/netlib/blas/netlib"

// The netlib wrapper is cgo over CBLAS; OpenBLAS provides the symbols, linked
// through the pkg-config line above (Debian ships no separate -lcblas).
func init() {
	impl32 = netlib.Implementation{}
	impl64 = netlib.Implementation{}
}

// Backend names the GEMM implementation compiled in: "gonum" (pure Go) or
// "openblas".
func Backend() string { return "openblas" }

// Threads returns the number of threads one GEMM call may use
// (openblas_get_num_threads, set by OPENBLAS_NUM_THREADS or SetThreads).
func Threads() int { return int(C.openblas_get_num_threads()) }

// SetThreads sets the threads one GEMM call may use. It panics if n < 1.
func SetThreads(n int) {
	if n < 1 {
		panic(errThreads)
	}
	C.openblas_set_num_threads(C.int(n))
}
