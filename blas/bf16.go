package blas

import (
	"math"
	"sync"
)

// BF16 is a bfloat16 number: the upper 16 bits of a float32.
type BF16 uint16

// Float32 returns h as a float32 (exact).
func (h BF16) Float32() float32 { return math.Float32frombits(uint32(h) << 16) }

// ToBF16 rounds x to the nearest bf16, ties to even (NaN stays NaN).
// Finite values beyond the largest bf16 round to ±Inf, as IEEE rounding does.
func ToBF16(x float32) BF16 {
	b := math.Float32bits(x)
	if b&0x7fffffff > 0x7f800000 {
		// NaN: keep the sign and the top of the payload, set the quiet
		// bit so that a payload only in the low bits does not become Inf.
		return BF16(b>>16 | 0x40)
	}
	b += 0x7fff + (b>>16)&1
	return BF16(b >> 16)
}

// RoundBF16 sets dst[i] = ToBF16(src[i]); it panics if len(dst) < len(src).
func RoundBF16(dst []BF16, src []float32) {
	if len(dst) < len(src) {
		panic(errShortDst)
	}
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = ToBF16(v)
	}
}

// GemmBF16 computes C = alpha*op(A)*op(B) + beta*C, row-major like Sgemm,
// with bf16 operands and fp32 accumulation and output: op(A) is m×k, op(B)
// is k×n and C is m×n with leading dimensions lda, ldb and ldc. It panics as
// Sgemm does on invalid arguments. When beta is 0, C is not read (NaNs in it
// do not propagate). It is safe for concurrent use on distinct C.
//
// BF16Path names the implementation: oneDNN's matmul where the CPU has bf16
// instructions (dnnl build tag), else the operands widened to float32 and
// multiplied by Sgemm.
func GemmBF16(tA, tB Transpose, m, n, k int, alpha float32, a []BF16, lda int, b []BF16, ldb int, beta float32, c []float32, ldc int) {
	gemmBF16(bf16Path, tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// gemmBF16 is GemmBF16 on the given path; tests call it with each.
func gemmBF16(path string, tA, tB Transpose, m, n, k int, alpha float32, a []BF16, lda int, b []BF16, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(tA, tB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if path != pathEmulated {
		gemmBF16DNNL(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	gemmBF16Emulated(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// BF16Path names the bf16 GEMM in use: "amx" or "avx512_bf16" (oneDNN's
// matmul on the CPU's matrix units / bf16 instructions) or "emulated"
// (operands widened to float32 exactly and multiplied by Sgemm: the same
// numbers up to the order of the fp32 sums). Builds without the dnnl tag,
// CPUs without bf16 instructions, and CLIPMPI_BF16=emulated in the
// environment at start-up give "emulated".
func BF16Path() string { return bf16Path }

const (
	pathEmulated   = "emulated"
	pathAVX512BF16 = "avx512_bf16"
	pathAMX        = "amx"
)

// stored returns the rows and columns of an operand stored for op(X) of
// rows×cols: transposed, cols×rows.
func stored(t Transpose, rows, cols int) (int, int) {
	if t == Trans {
		return cols, rows
	}
	return rows, cols
}

// checkGemm panics, with gonum's messages and in gonum's order, on
// arguments Sgemm would reject.
func checkGemm(tA, tB Transpose, m, n, k, na, lda, nb, ldb, nc, ldc int) {
	if tA != NoTrans && tA != Trans || tB != NoTrans && tB != Trans {
		panic(errTranspose)
	}
	switch {
	case m < 0:
		panic(errMLT0)
	case n < 0:
		panic(errNLT0)
	case k < 0:
		panic(errKLT0)
	}
	ar, ac := stored(tA, m, k)
	br, bc := stored(tB, k, n)
	switch {
	case lda < max(1, ac):
		panic(errLdA)
	case ldb < max(1, bc):
		panic(errLdB)
	case ldc < max(1, n):
		panic(errLdC)
	}
	if m == 0 || n == 0 {
		return
	}
	switch {
	case ar > 0 && na < lda*(ar-1)+ac:
		panic(errShortA)
	case br > 0 && nb < ldb*(br-1)+bc:
		panic(errShortB)
	case nc < ldc*(m-1)+n:
		panic(errShortC)
	}
}

// scaleC sets C = beta*C; beta == 0 writes zeros without reading C.
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	if beta == 1 {
		return
	}
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// freeList holds idle scratch slices, each grown to the largest it
// served, so that steady-state calls do not allocate. Not a sync.Pool: a
// garbage collection would empty that, and a step would allocate again.
type freeList[T any] struct {
	mu   sync.Mutex
	free []*[]T
}

// get returns an idle slice, of at least n elements.
func (l *freeList[T]) get(n int) *[]T {
	var p *[]T
	l.mu.Lock()
	if k := len(l.free); k > 0 {
		p = l.free[k-1]
		l.free = l.free[:k-1]
	}
	l.mu.Unlock()
	if p == nil {
		p = new([]T)
	}
	if cap(*p) < n {
		*p = make([]T, n)
	}
	return p
}

func (l *freeList[T]) put(p *[]T) {
	l.mu.Lock()
	l.free = append(l.free, p)
	l.mu.Unlock()
}

// f32Scratch holds the widened operands of the emulated path.
var f32Scratch freeList[float32]

// gemmBF16Emulated widens the stored m×k (or k×m) region of A and the k×n
// (or n×k) region of B to float32, exactly, with compact leading
// dimensions, and calls Sgemm on them. Arguments are checked and m, n, k > 0.
func gemmBF16Emulated(tA, tB Transpose, m, n, k int, alpha float32, a []BF16, lda int, b []BF16, ldb int, beta float32, c []float32, ldc int) {
	ar, ac := stored(tA, m, k)
	br, bc := stored(tB, k, n)
	need := ar*ac + br*bc
	p := f32Scratch.get(need)
	s := (*p)[:need]
	wa, wb := s[:ar*ac], s[ar*ac:]
	widen(wa, a, ar, ac, lda)
	widen(wb, b, br, bc, ldb)
	Sgemm(tA, tB, m, n, k, alpha, wa, ac, wb, bc, beta, c, ldc)
	f32Scratch.put(p)
}

// widen copies the r×cols matrix src (leading dimension ld) into the
// compact dst as float32.
func widen(dst []float32, src []BF16, r, cols, ld int) {
	for i := range r {
		d, s := dst[i*cols:(i+1)*cols], src[i*ld:i*ld+cols]
		for j, v := range s {
			d[j] = math.Float32frombits(uint32(v) << 16)
		}
	}
}
