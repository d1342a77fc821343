//go:build !openblas

package blas

import (
	"runtime"

	"gonum.org/v1/gonum/blas/gonum"
)

func init() {
	impl32 = gonum.Implementation{}
	impl64 = gonum.Implementation{}
}

// Backend names the GEMM implementation compiled in: "gonum" (pure Go) or
// "openblas".
func Backend() string { return "gonum" }

// Threads returns the number of threads one GEMM call may use. gonum's
// pure-Go GEMM splits large products over GOMAXPROCS goroutines.
func Threads() int { return runtime.GOMAXPROCS(0) }

// SetThreads sets the threads one GEMM call may use where the backend can
// (OpenBLAS); the pure-Go backend ignores it. It panics if n < 1.
func SetThreads(n int) {
	if n < 1 {
		panic(errThreads)
	}
}
