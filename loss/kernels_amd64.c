//go:build cgo && !purego

// The float32 kernels of kernels.h for amd64, compiled three times: for
// AVX-512 (F, BW, DQ, VL; 512-bit vectors), for AVX2+FMA and for the
// baseline ISA (SSE2). clip_isa_max says which this CPU runs; the Go side
// passes the level to use (kernels_isa.go: 1 baseline, 2 AVX2, 3 AVX-512).

#include <immintrin.h>

#include "kernels.h"

#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))
#define TAVX2 __attribute__((target("avx2,fma")))
#define TBASE

#define VARIANTS(T, S, R) \
T static void max_##S(const float *x, long ld, long rows, long cols, int neg, float *rmax, float *cmax) { \
	max_body(x, ld, rows, cols, neg, rmax, cmax); \
} \
T static void expsum_##S(const float *x, long ld, long rows, long cols, float A, const float *xr, const float *xc, \
		double *racc, double *cacc) { \
	expsum_body(R, x, ld, rows, cols, A, xr, xc, racc, cacc); \
} \
T static void grad_##S(float *di, float *dt, const float *x, long ld, long rows, long cols, long e0, float A, \
		const float *xr, const float *wr, const float *xc, const float *wc, float cI, float cT, \
		double *cx, double *cb, double *sums) { \
	grad_body(R, di, dt, x, ld, rows, cols, e0, A, xr, wr, xc, wc, cI, cT, cx, cb, sums); \
} \
T static void sig_##S(float *d, const float *x, long ld, long rows, long cols, long e0, float A, float B, float c, \
		int backward, double *sums) { \
	sig_body(R, d, x, ld, rows, cols, e0, A, B, c, backward, sums); \
} \
T static void bf16_##S(const float *x, long ldx, uint16_t *h, long ldh, long rows, long cols) { \
	bf16_body(x, ldx, h, ldh, rows, cols); \
} \
T static int finite_##S(const float *x, long n) { \
	return finite_body(x, n); \
} \
T static void stats_##S(const float *x, long ld, long rows, long cols, float A, int neg, float *rmax, double *racc, \
		float *cmax, double *cacc) { \
	stats_body(R, x, ld, rows, cols, A, neg, rmax, racc, cmax, cacc); \
} \
T static void colmerge_##S(long nb, long cols, long stride, const float *pm, const double *ps, float A, int neg, \
		float *m, double *s) { \
	colmerge_body(R, nb, cols, stride, pm, ps, A, neg, m, s); \
}

VARIANTS(T512, avx512, 1)
VARIANTS(TAVX2, avx2, 1)
VARIANTS(TBASE, base, 0)

int clip_isa_max(void) {
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
			__builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
			__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return 3;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return 2;
	return 1;
}

#define PICK(isa, f) ((isa) >= 3 ? f##_avx512 : (isa) == 2 ? f##_avx2 : f##_base)

// The kernels run with subnormals flushed to zero (MXCSR's FTZ and DAZ,
// set for the call on the calling thread and restored after): exponentials
// near 2^-126 times a small weight would otherwise take a microcode assist
// per operation on Intel CPUs (see ftz in kernels.h, which keeps them out
// of the gradient tiles that the GEMMs read).
#define FLUSHED(call) do { \
	unsigned int csr_ = _mm_getcsr(); \
	_mm_setcsr(csr_ | 0x8040); \
	call; \
	_mm_setcsr(csr_); \
} while (0)

void clip_max32(int isa, const float *x, long ld, long rows, long cols, int neg, float *rmax, float *cmax) {
	PICK(isa, max)(x, ld, rows, cols, neg, rmax, cmax);
}

void clip_expsum32(int isa, const float *x, long ld, long rows, long cols, float A, const float *xr, const float *xc,
		double *racc, double *cacc) {
	FLUSHED(PICK(isa, expsum)(x, ld, rows, cols, A, xr, xc, racc, cacc));
}

void clip_grad32(int isa, float *di, float *dt, const float *x, long ld, long rows, long cols, long e0, float A,
		const float *xr, const float *wr, const float *xc, const float *wc, float cI, float cT,
		double *cx, double *cb, double *sums) {
	FLUSHED(PICK(isa, grad)(di, dt, x, ld, rows, cols, e0, A, xr, wr, xc, wc, cI, cT, cx, cb, sums));
}

void clip_sig32(int isa, float *d, const float *x, long ld, long rows, long cols, long e0, float A, float B, float c,
		int backward, double *sums) {
	FLUSHED(PICK(isa, sig)(d, x, ld, rows, cols, e0, A, B, c, backward, sums));
}

void clip_bf16rows32(int isa, const float *x, long ldx, uint16_t *h, long ldh, long rows, long cols) {
	PICK(isa, bf16)(x, ldx, h, ldh, rows, cols);
}

int clip_finite32(int isa, const float *x, long n) {
	return PICK(isa, finite)(x, n);
}

void clip_stats32(int isa, const float *x, long ld, long rows, long cols, float A, int neg, float *rmax, double *racc,
		float *cmax, double *cacc) {
	FLUSHED(PICK(isa, stats)(x, ld, rows, cols, A, neg, rmax, racc, cmax, cacc));
}

void clip_colmerge32(int isa, long nb, long cols, long stride, const float *pm, const double *ps, float A, int neg,
		float *m, double *s) {
	FLUSHED(PICK(isa, colmerge)(nb, cols, stride, pm, ps, A, neg, m, s));
}
