//go:build !(dnnl && cgo)

package blas

// bf16Path is always the emulated GEMM without oneDNN.
const bf16Path = pathEmulated

// gemmBF16DNNL is never called without oneDNN.
func gemmBF16DNNL(tA, tB Transpose, m, n, k int, alpha float32, a []BF16, lda int, b []BF16, ldb int, beta float32, c []float32, ldc int) {
	gemmBF16Emulated(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// dnnlImpl names oneDNN's implementation of a product; there is none here.
func dnnlImpl(tA, tB Transpose, m, n, k, lda, ldb, ldc int, alpha, beta float32) string { return "" }
