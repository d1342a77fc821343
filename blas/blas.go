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
	gblas "gonum.org/v1/gonum/blas"

	"github.com/clipmpi/clipmpi/internal/num"
)

// Transpose says whether a GEMM operand is used as stored or transposed.
type Transpose = gblas.Transpose

const (
	// NoTrans uses the operand as stored.
	NoTrans = gblas.NoTrans
	// Trans uses the transpose of the operand.
	Trans = gblas.Trans
)

// Float is the set of element types clipmpi computes in: float32 and
// float64 and types defined on them. It is mpi.Float too.
type Float = num.Float

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
	if Is32[T]() {
		impl32.Sgemm(tA, tB, m, n, k, float32(alpha), As32(a), lda, As32(b), ldb, float32(beta), As32(c), ldc)
		return
	}
	impl64.Dgemm(tA, tB, m, n, k, float64(alpha), As64(a), lda, As64(b), ldb, float64(beta), As64(c), ldc)
}

// Is32 reports whether T is 4 bytes wide: float32 or a type defined on it
// (otherwise it is 8 bytes wide, a float64).
func Is32[T Float]() bool { return num.Is32[T]() }

// As32 returns s as a []float32 sharing its storage, for generic code that
// has checked Is32[T](); nil for an empty s. It does not copy or allocate.
func As32[T Float](s []T) []float32 { return num.As32(s) }

// As64 is As32 for a T 8 bytes wide.
func As64[T Float](s []T) []float64 { return num.As64(s) }

// GemmFlops returns the floating-point operations of one m×n×k GEMM, 2mnk.
func GemmFlops(m, n, k int) float64 {
	return 2 * float64(m) * float64(n) * float64(k)
}
