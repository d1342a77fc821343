package blas

// Panic messages. The GEMM argument errors are gonum's strings, so that
// GemmBF16 panics as Sgemm does.
const (
	errThreads     = "blas: thread count must be at least 1"
	errTranspose   = "blas: illegal transpose"
	errMLT0        = "blas: m < 0"
	errNLT0        = "blas: n < 0"
	errKLT0        = "blas: k < 0"
	errLdA         = "blas: bad leading dimension of A"
	errLdB         = "blas: bad leading dimension of B"
	errLdC         = "blas: bad leading dimension of C"
	errShortA      = "blas: insufficient length of a"
	errShortB      = "blas: insufficient length of b"
	errShortC      = "blas: insufficient length of c"
	errShortDst    = "blas: insufficient length of dst"
	errBF16Backend = "blas: bf16 GEMM failed: "
)
