//go:build cgo && !purego

// The float32 kernels of kernels.h for arm64, compiled once for AArch64,
// whose baseline has NEON: -O3 vectorises the loops for it. The isa
// argument is ignored (there is one level, 1).

#include "kernels.h"

int clip_isa_max(void) { return 1; }

void clip_max32(int isa, const float *x, long ld, long rows, long cols, int neg, float *rmax, float *cmax) {
	max_body(x, ld, rows, cols, neg, rmax, cmax);
}

void clip_expsum32(int isa, const float *x, long ld, long rows, long cols, float A, const float *xr, const float *xc,
		double *racc, double *cacc) {
	expsum_body(1, x, ld, rows, cols, A, xr, xc, racc, cacc);
}

void clip_grad32(int isa, float *di, float *dt, const float *x, long ld, long rows, long cols, long e0, float A,
		const float *xr, const float *wr, const float *xc, const float *wc, float cI, float cT,
		double *cx, double *cb, double *sums) {
	grad_body(1, di, dt, x, ld, rows, cols, e0, A, xr, wr, xc, wc, cI, cT, cx, cb, sums);
}

void clip_sig32(int isa, float *d, const float *x, long ld, long rows, long cols, long e0, float A, float B, float c,
		int backward, double *sums) {
	sig_body(1, d, x, ld, rows, cols, e0, A, B, c, backward, sums);
}

int clip_finite32(int isa, const float *x, long n) { return finite_body(x, n); }

void clip_bf16rows32(int isa, const float *x, long ldx, uint16_t *h, long ldh, long rows, long cols) {
	bf16_body(x, ldx, h, ldh, rows, cols);
}

void clip_stats32(int isa, const float *x, long ld, long rows, long cols, float A, int neg, float *rmax, double *racc,
		float *cmax, double *cacc) {
	stats_body(1, x, ld, rows, cols, A, neg, rmax, racc, cmax, cacc);
}

void clip_colmerge32(int isa, long nb, long cols, long stride, const float *pm, const double *ps, float A, int neg,
		float *m, double *s) {
	colmerge_body(1, nb, cols, stride, pm, ps, A, neg, m, s);
}
