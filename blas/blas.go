// Package blas is the matrix-multiply layer of clipmpi: float32 and float64
// GEMM on dense row-major storage, backed by OpenBLAS through
// gonum.org/v1/netlib when built with the openblas tag, and by gonum's
// pure-Go BLAS otherwise. Backend names the one compiled in.
//
// Both backends implement gonum's blas.Float32 and blas.Float64 interfaces,
// so argument checking and panics ("blas: ...") are gonum's, identical for
// both.
package blas

import (
	"unsafe"

	gblas "gonum.org/v1/gonum/blas"
)

// Transpose says whether a GEMM operand is used as stored or transposed.
type Transpose = gblas.Transpose

const (
	// NoTrans uses the operand as stored.
	NoTrans = gblas.NoTrans
	// Trans uses the transpose of the operand.
	Trans = gblas.Trans
)

// Float is the set of element types clipmpi computes in.
type Float interface {
	~float32 | ~float64
}

// The backends in use; set by the build-tagged files.
var (
	impl32 gblas.Float32
	impl64 gblas.Float64
)

// Sgemm computes C = alpha * op(A) * op(B) + beta * C for row-major float32
// matrices, where op(A) is m×k, op(B) is k×n and C is m×n with leading
// dimensions lda, ldb and ldc. It panics as gonum's blas.Float32 does on
// invalid arguments.
func Sgemm(tA, tB Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	impl32.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// Dgemm is Sgemm for float64.
func Dgemm(tA, tB Transpose, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	impl64.Dgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// Gemm is Sgemm or Dgemm chosen by the element type, without allocating.
func Gemm[T Float](tA, tB Transpose, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	if unsafe.Sizeof(alpha) == 4 {
		impl32.Sgemm(tA, tB, m, n, k, float32(alpha), as32(a), lda, as32(b), ldb, float32(beta), as32(c), ldc)
		return
	}
	impl64.Dgemm(tA, tB, m, n, k, float64(alpha), as64(a), lda, as64(b), ldb, float64(beta), as64(c), ldc)
}

// as32 reinterprets a []T whose T is 4 bytes wide as []float32.
func as32[T Float](s []T) []float32 {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

// as64 reinterprets a []T whose T is 8 bytes wide as []float64.
func as64[T Float](s []T) []float64 {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

// GemmFlops returns the floating-point operations of one m×n×k GEMM, 2mnk.
func GemmFlops(m, n, k int) float64 {
	return 2 * float64(m) * float64(n) * float64(k)
}
