// The float32 kernels of the softmax cross-entropy and of SigLIP, in C.
//
// Each body is an always-inline function that loops over a rows×cols tile
// (leading dimension ld); kernels_amd64.c compiles it for AVX-512, for
// AVX2+FMA and for the baseline ISA, kernels_arm64.c once for AArch64 (NEON
// through the compiler's auto-vectorisation). The Go side (kernels.go) splits
// a tile into row blocks and reduces the blocks' partial results in block
// order, so these functions see one block at a time and write, never add to,
// their outputs.
//
// Exponentials are taken in base 2 and float32: logits enter as
// t = A·(x - x*) with A = scale·log2(e) and x* a float32 value of x at the
// maximum (the row's, the column's), so that the subtraction is exact or
// nearly so and t carries float32's relative precision; what the maximum
// and the log-sum contribute beyond that is folded into per-row and
// per-column weights computed in float64 by the caller. Sums are float64.
//
// The argument R of the bodies is a compile-time constant: 1 where the ISA
// rounds to nearest in vector registers (SSE4.1/AVX, AArch64), 0 for x86-64's
// baseline, which truncates instead.

// Reassociating the float64 accumulations is what lets the loops vectorise
// (cgo's flag allow-list has no -f flags for this, hence the pragma).
#pragma GCC optimize ("no-math-errno", "no-trapping-math", "no-signed-zeros", "associative-math")

#include <math.h>
#include <stdint.h>
#include <string.h>

#define KINL static inline __attribute__((always_inline))

// fexp2 is 2^t in float32 for t ≤ 1/2: t = k + f with k an integer and
// |f| ≤ 1/2, 2^f from a degree-6 minimax polynomial (relative error 1.5e-8,
// 1e-7 with float32 rounding), 2^k put into the exponent bits. t < -126
// (2^t below float32's normal range) gives 0. Branch-free, so that loops
// calling it vectorise. The coefficients were fitted for this file (Remez
// exchange on the relative error, p(0) = 1).
KINL float fexp2(const int R, float t) {
	float tc = t < -126.0f ? -126.0f : t;
	float kf;
	if (R)
		kf = __builtin_rintf(tc);
	else
		kf = (float)(int32_t)(tc - 0.5f); // truncation: rounds to nearest for tc ≤ 1/2
	float f = tc - kf;
	float p = 1.555079361e-04f;
	p = p * f + 1.339015318e-03f;
	p = p * f + 9.617890231e-03f;
	p = p * f + 5.550355464e-02f;
	p = p * f + 2.402265072e-01f;
	p = p * f + 6.931471825e-01f;
	p = p * f + 1.0f;
	int32_t bits = ((int32_t)kf + 127) << 23;
	bits = t < -126.0f ? 0 : bits;
	float s;
	memcpy(&s, &bits, 4);
	return p * s;
}

// ftz flushes a gradient entry below 2^-100 to 0. Entries c·p near
// float32's normal limit, and their products with features in the GEMMs
// that read the gradient tile, are subnormal, and on Intel CPUs every
// operation on a subnormal takes a microcode assist: at N = 32768 and logit
// scale 100 a step took 5 to 60 times longer. With c ≥ 2^-25 (N up to 2^24)
// the entries dropped have p < 2^-75, and their sum is below 2^-51 of the
// row's (Σ p = 1), far under float32's rounding of the GEMM; products of
// what is kept with features above 2^-26 stay normal.
KINL float ftz(float g) { return __builtin_fabsf(g) < 0x1p-100f ? 0.0f : g; }

// flog2p1u is log2(1 + v) given u = v/(2+v) in [0, 1/3] (v in [0, 1]):
// 2·atanh(u)/ln 2, the series summed to u^15 (truncation below 5e-9
// relative), so that it keeps its relative precision for tiny v.
KINL float flog2p1u(float u) {
	float u2 = u * u;
	float p = 1.0f / 15;
	p = p * u2 + 1.0f / 13;
	p = p * u2 + 1.0f / 11;
	p = p * u2 + 1.0f / 9;
	p = p * u2 + 1.0f / 7;
	p = p * u2 + 1.0f / 5;
	p = p * u2 + 1.0f / 3;
	p = p * u2 + 1.0f;
	return 2.8853900817779268f * u * p; // 2/ln 2
}

// flog2p1 is log2(1 + v) for v in [0, 1].
KINL float flog2p1(float v) { return flog2p1u(v / (2.0f + v)); }

// max_body writes the row maxima rmax[i] = max_j x_ij and the column maxima
// cmax[j] = max_i x_ij of the tile, or the minima when neg is set (a
// negative logit scale turns the largest logit into the smallest x). x must
// be finite (max reductions vectorise only when NaN need not be ordered).
__attribute__((optimize("finite-math-only"))) KINL void max_body(const float *x, long ld, long rows, long cols,
		int neg, float *rmax, float *cmax) {
	for (long j = 0; j < cols; j++)
		cmax[j] = x[j];
	for (long i = 0; i < rows; i++) {
		const float *xr = x + i * ld;
		float m = xr[0];
		if (neg) {
			for (long j = 0; j < cols; j++) {
				float v = xr[j];
				m = v < m ? v : m;
				cmax[j] = v < cmax[j] ? v : cmax[j];
			}
		} else {
			for (long j = 0; j < cols; j++) {
				float v = xr[j];
				m = v > m ? v : m;
				cmax[j] = v > cmax[j] ? v : cmax[j];
			}
		}
		rmax[i] = m;
	}
}

// expsum_body writes racc[i] = Σ_j 2^(A·(x_ij - xr_i)) and
// cacc[j] = Σ_i 2^(A·(x_ij - xc_j)). Rows go four at a time: their column
// terms are added in float32 (four terms of equal sign) before the float64
// column sum, which halves the float64 traffic.
KINL void expsum_body(const int R, const float *x, long ld, long rows, long cols, float A,
		const float *xr, const float *xc, double *racc, double *cacc) {
	for (long j = 0; j < cols; j++)
		cacc[j] = 0;
	long i = 0;
	for (; i + 4 <= rows; i += 4) {
		const float *x0 = x + i * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
		float m0 = xr[i], m1 = xr[i + 1], m2 = xr[i + 2], m3 = xr[i + 3];
		double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
		for (long j = 0; j < cols; j++) {
			float c = xc[j];
			float v0 = x0[j], v1 = x1[j], v2 = x2[j], v3 = x3[j];
			s0 += (double)fexp2(R, A * (v0 - m0));
			s1 += (double)fexp2(R, A * (v1 - m1));
			s2 += (double)fexp2(R, A * (v2 - m2));
			s3 += (double)fexp2(R, A * (v3 - m3));
			float t = (fexp2(R, A * (v0 - c)) + fexp2(R, A * (v1 - c))) + (fexp2(R, A * (v2 - c)) + fexp2(R, A * (v3 - c)));
			cacc[j] += (double)t;
		}
		racc[i] = s0;
		racc[i + 1] = s1;
		racc[i + 2] = s2;
		racc[i + 3] = s3;
	}
	for (; i < rows; i++) {
		const float *x0 = x + i * ld;
		float m0 = xr[i];
		double s0 = 0;
		for (long j = 0; j < cols; j++) {
			float v0 = x0[j];
			s0 += (double)fexp2(R, A * (v0 - m0));
			cacc[j] += (double)fexp2(R, A * (v0 - xc[j]));
		}
		racc[i] = s0;
	}
}

// stats_body is max_body then expsum_body on one block, whose rows are
// offset by their own maxima and whose columns by the block's column maxima
// (the block, a few hundred KiB, is still in cache for the second pass):
// rmax, racc per row; cmax, cacc per column, for colmerge_body to combine
// with the other blocks'.
KINL void stats_body(const int R, const float *x, long ld, long rows, long cols, float A, int neg,
		float *rmax, double *racc, float *cmax, double *cacc) {
	max_body(x, ld, rows, cols, neg, rmax, cmax);
	expsum_body(R, x, ld, rows, cols, A, rmax, cmax, racc, cacc);
}

// colmerge_body combines nb blocks' column statistics (pm: maxima, or
// minima when neg, and ps: sums of 2^(A·(x - pm)); block b's at b·stride)
// into m[j], the overall maximum, and s[j] = Σ_b ps_b·2^(A·(pm_b - m)),
// added in block order. The rescaling exponent is taken in float64 and
// rounded once, as the elements' are.
__attribute__((optimize("finite-math-only"))) KINL void colmerge_body(const int R, long nb, long cols, long stride,
		const float *pm, const double *ps, float A, int neg, float *m, double *s) {
	for (long j = 0; j < cols; j++)
		m[j] = pm[j];
	for (long b = 1; b < nb; b++) {
		const float *p = pm + b * stride;
		if (neg) {
			for (long j = 0; j < cols; j++)
				m[j] = p[j] < m[j] ? p[j] : m[j];
		} else {
			for (long j = 0; j < cols; j++)
				m[j] = p[j] > m[j] ? p[j] : m[j];
		}
	}
	for (long j = 0; j < cols; j++)
		s[j] = 0;
	for (long b = 0; b < nb; b++) {
		const float *p = pm + b * stride;
		const double *q = ps + b * stride;
		for (long j = 0; j < cols; j++)
			s[j] += q[j] * (double)fexp2(R, (float)((double)A * ((double)p[j] - (double)m[j])));
	}
}

// grad_row4 is grad_body's inner loop over four rows: it reads row r of x
// from x_r, or from d_r when IN (in place), writes the image direction (or
// the sum) to d_r and, when SPLIT, the column direction to t_r. The
// pointers are restrict parameters so that the compiler knows the rows
// apart (ld is not known at compile time).
KINL void grad_row4(const int R, const int IN, const int SPLIT,
		const float *restrict x0, const float *restrict x1, const float *restrict x2, const float *restrict x3,
		float *restrict d0, float *restrict d1, float *restrict d2, float *restrict d3,
		float *restrict t0, float *restrict t1, float *restrict t2, float *restrict t3,
		long cols, float A, const float *xr, const float *wr, const float *restrict xc, const float *restrict wc,
		double *restrict cx, double *restrict cb, double *rs) {
	float m0 = xr[0], m1 = xr[1], m2 = xr[2], m3 = xr[3];
	float w0 = wr[0], w1 = wr[1], w2 = wr[2], w3 = wr[3];
	double rx = 0, rb = 0;
	for (long j = 0; j < cols; j++) {
		float c = xc[j], w = wc[j];
		float v0 = IN ? d0[j] : x0[j], v1 = IN ? d1[j] : x1[j], v2 = IN ? d2[j] : x2[j], v3 = IN ? d3[j] : x3[j];
		float gi0 = ftz(w0 * fexp2(R, A * (v0 - m0)));
		float gi1 = ftz(w1 * fexp2(R, A * (v1 - m1)));
		float gi2 = ftz(w2 * fexp2(R, A * (v2 - m2)));
		float gi3 = ftz(w3 * fexp2(R, A * (v3 - m3)));
		float gt0 = ftz(w * fexp2(R, A * (v0 - c)));
		float gt1 = ftz(w * fexp2(R, A * (v1 - c)));
		float gt2 = ftz(w * fexp2(R, A * (v2 - c)));
		float gt3 = ftz(w * fexp2(R, A * (v3 - c)));
		// Only the sums over the four rows are wanted: four terms of
		// each in float32, then float64, as for the columns.
		rx += (double)((gi0 * v0 + gi1 * v1) + (gi2 * v2 + gi3 * v3));
		rb += (double)((gi0 + gi1) + (gi2 + gi3));
		float tx = (gt0 * v0 + gt1 * v1) + (gt2 * v2 + gt3 * v3);
		float tb = (gt0 + gt1) + (gt2 + gt3);
		cx[j] += (double)tx;
		cb[j] += (double)tb;
		if (SPLIT) {
			d0[j] = gi0;
			d1[j] = gi1;
			d2[j] = gi2;
			d3[j] = gi3;
			t0[j] = gt0;
			t1[j] = gt1;
			t2[j] = gt2;
			t3[j] = gt3;
		} else {
			d0[j] = gi0 + gt0;
			d1[j] = gi1 + gt1;
			d2[j] = gi2 + gt2;
			d3[j] = gi3 + gt3;
		}
	}
	rs[0] = rx;
	rs[1] = rb;
}

// grad_row1 is grad_row4 for one row.
KINL void grad_row1(const int R, const int IN, const int SPLIT, const float *restrict x, float *restrict d,
		float *restrict t, long cols, float A, float m, float wi, const float *restrict xc,
		const float *restrict wc, double *restrict cx, double *restrict cb, double *rs) {
	double rx = 0, rb = 0;
	for (long j = 0; j < cols; j++) {
		float v = IN ? d[j] : x[j];
		float gi = ftz(wi * fexp2(R, A * (v - m)));
		float gt = ftz(wc[j] * fexp2(R, A * (v - xc[j])));
		rx += (double)(gi * v);
		rb += (double)gi;
		cx[j] += (double)(gt * v);
		cb[j] += (double)gt;
		if (SPLIT) {
			d[j] = gi;
			t[j] = gt;
		} else {
			d[j] = gi + gt;
		}
	}
	rs[0] = rx;
	rs[1] = rb;
}

// grad_rows dispatches rows i.. (four, or one when n is 1) to the variant
// for the aliasing at hand.
KINL void grad_rows(const int R, const int IN, const int SPLIT, long n, const float *x, float *d, float *t, long ld,
		long cols, float A, const float *xr, const float *wr, const float *xc, const float *wc,
		double *cx, double *cb, double *rs) {
	if (n == 4)
		grad_row4(R, IN, SPLIT, x, x + ld, x + 2 * ld, x + 3 * ld, d, d + ld, d + 2 * ld, d + 3 * ld,
			t, SPLIT ? t + ld : t, SPLIT ? t + 2 * ld : t, SPLIT ? t + 3 * ld : t,
			cols, A, xr, wr, xc, wc, cx, cb, rs);
	else
		grad_row1(R, IN, SPLIT, x, d, t, cols, A, xr[0], wr[0], xc, wc, cx, cb, rs);
}

// grad_body forms the logit gradient of the tile: with
// gi = wr_i·2^(A·(x_ij - xr_i)) and gt = wc_j·2^(A·(x_ij - xc_j)) (the
// weights carry the coefficients cI, cT and the log-sums), minus cI and cT
// at the positive pair, column e0+i of row i (when inside the tile), it
// writes di = gi + gt, or di = gi and dt = gt when dt is not NULL; di may
// be x. It overwrites cx[j] = Σ_i gt·x and cb[j] = Σ_i gt and writes
// sums[0] = Σ gi·x, sums[1] = Σ gi, everything taken with the positive
// pairs' -cI and -cT included.
KINL void grad_body(const int R, float *di, float *dt, const float *x, long ld, long rows, long cols, long e0,
		float A, const float *xr, const float *wr, const float *xc, const float *wc, float cI, float cT,
		double *cx, double *cb, double *sums) {
	double sx = 0, sb = 0, rs[2];
	int in = di == x;
	for (long j = 0; j < cols; j++) {
		cx[j] = 0;
		cb[j] = 0;
	}
	for (long i = 0; i < rows;) {
		// The positive pairs' x, read before di (which may be x) is written.
		float xe[4];
		long n = rows - i >= 4 ? 4 : 1;
		for (long r = 0; r < n; r++) {
			long e = e0 + i + r;
			xe[r] = e >= 0 && e < cols ? x[(i + r) * ld + e] : 0;
		}
		const float *xi = x + i * ld;
		float *dii = di + i * ld, *dti = dt ? dt + i * ld : 0;
		if (in && dt)
			grad_rows(R, 1, 1, n, xi, dii, dti, ld, cols, A, xr + i, wr + i, xc, wc, cx, cb, rs);
		else if (in)
			grad_rows(R, 1, 0, n, xi, dii, dti, ld, cols, A, xr + i, wr + i, xc, wc, cx, cb, rs);
		else if (dt)
			grad_rows(R, 0, 1, n, xi, dii, dti, ld, cols, A, xr + i, wr + i, xc, wc, cx, cb, rs);
		else
			grad_rows(R, 0, 0, n, xi, dii, dti, ld, cols, A, xr + i, wr + i, xc, wc, cx, cb, rs);
		sx += rs[0];
		sb += rs[1];
		// The positive pairs: subtract cI and cT.
		for (long r = 0; r < n; r++) {
			long e = e0 + i + r;
			if (e < 0 || e >= cols)
				continue;
			float v = xe[r];
			long at = (i + r) * ld + e;
			sx -= (double)cI * v;
			sb -= (double)cI;
			cx[e] -= (double)cT * v;
			cb[e] -= (double)cT;
			if (dt) {
				di[at] -= cI;
				dt[at] -= cT;
			} else {
				di[at] -= cI + cT;
			}
		}
		i += n;
	}
	sums[0] = sx;
	sums[1] = sb;
}

// sig_term is one SigLIP entry: with label y (±1) and logit x (in units of
// A = scale·log2(e), B = bias·log2(e)), u2 = -y·(A·x + B) is the margin in
// bits; it returns softplus(u)/ln 2 = max(u2, 0) + log2(1 + 2^-|u2|) and
// sets *g = -c·y·σ(u). One division serves v/(2+v) and 1/(1+v).
KINL float sig_term(const int R, float v, float y, float A, float B, float c, float *g) {
	float u = -y * (A * v + B);
	float au = u < 0 ? -u : u;
	float ev = fexp2(R, -au);
	float q = 1.0f / ((1.0f + ev) * (2.0f + ev));
	float sg = (u >= 0 ? 1.0f : ev) * (2.0f + ev) * q;
	*g = -c * y * sg;
	return (u > 0 ? u : 0.0f) + flog2p1u(ev * (1.0f + ev) * q);
}

// sig_rows4 is sig_body's loop over four rows, every entry taken as a
// negative (y = -1): the rows' terms are added in float32 before the
// float64 sums (only the tile's sums are wanted). It reads row r from x_r,
// or from d_r when IN, and with backward writes its gradient to d_r.
KINL void sig_rows4(const int R, const int IN, int backward,
		const float *restrict x0, const float *restrict x1, const float *restrict x2, const float *restrict x3,
		float *restrict d0, float *restrict d1, float *restrict d2, float *restrict d3,
		long cols, float A, float B, float c, double *rs) {
	double rl = 0, rx = 0, rb = 0;
	if (backward) {
		for (long j = 0; j < cols; j++) {
			float v0 = IN ? d0[j] : x0[j], v1 = IN ? d1[j] : x1[j], v2 = IN ? d2[j] : x2[j], v3 = IN ? d3[j] : x3[j];
			float g0, g1, g2, g3;
			float l0 = sig_term(R, v0, -1.0f, A, B, c, &g0);
			float l1 = sig_term(R, v1, -1.0f, A, B, c, &g1);
			float l2 = sig_term(R, v2, -1.0f, A, B, c, &g2);
			float l3 = sig_term(R, v3, -1.0f, A, B, c, &g3);
			rl += (double)((l0 + l1) + (l2 + l3));
			rx += (double)((g0 * v0 + g1 * v1) + (g2 * v2 + g3 * v3));
			rb += (double)((g0 + g1) + (g2 + g3));
			d0[j] = g0;
			d1[j] = g1;
			d2[j] = g2;
			d3[j] = g3;
		}
	} else {
		for (long j = 0; j < cols; j++) {
			float v0 = IN ? d0[j] : x0[j], v1 = IN ? d1[j] : x1[j], v2 = IN ? d2[j] : x2[j], v3 = IN ? d3[j] : x3[j];
			float g;
			rl += (double)((sig_term(R, v0, -1.0f, A, B, c, &g) + sig_term(R, v1, -1.0f, A, B, c, &g)) +
				(sig_term(R, v2, -1.0f, A, B, c, &g) + sig_term(R, v3, -1.0f, A, B, c, &g)));
		}
	}
	rs[0] = rl;
	rs[1] = rx;
	rs[2] = rb;
}

// sig_row1 is sig_rows4 for one row.
KINL void sig_row1(const int R, const int IN, int backward, const float *restrict x, float *restrict d, long cols,
		float A, float B, float c, double *rs) {
	double rl = 0, rx = 0, rb = 0;
	for (long j = 0; j < cols; j++) {
		float v = IN ? d[j] : x[j];
		float g;
		rl += (double)sig_term(R, v, -1.0f, A, B, c, &g);
		if (backward) {
			rx += (double)(g * v);
			rb += (double)g;
			d[j] = g;
		}
	}
	rs[0] = rl;
	rs[1] = rx;
	rs[2] = rb;
}

// sig_rows dispatches rows i.. (four, or one when n is 1).
KINL void sig_rows(const int R, const int IN, int backward, long n, const float *x, float *d, long ld, long cols,
		float A, float B, float c, double *rs) {
	if (n == 4)
		sig_rows4(R, IN, backward, x, x + ld, x + 2 * ld, x + 3 * ld, d, d + ld, d + 2 * ld, d + 3 * ld,
			cols, A, B, c, rs);
	else
		sig_row1(R, IN, backward, x, d, cols, A, B, c, rs);
}

// sig_body turns the tile of SigLIP logits z = scale·x + bias into its loss
// and, with backward, its gradient d = -c·y·σ(-y·z), written to d (which may
// be x), with y = +1 at column e0+i of row i and -1 elsewhere. In base 2,
// with A = scale·log2(e) and B = bias·log2(e), u2 = -y·(A·x + B) is the
// margin in bits: softplus(u) = ln 2·(max(u2, 0) + log2(1 + 2^-|u2|)).
// sums[0] receives Σ softplus(u)/ln 2, sums[1] = Σ d·x, sums[2] = Σ d.
// The loops take every entry as a negative; the positive pairs are
// corrected afterwards.
KINL void sig_body(const int R, float *d, const float *x, long ld, long rows, long cols, long e0, float A, float B,
		float c, int backward, double *sums) {
	double l = 0, sx = 0, sb = 0, rs[3];
	int in = d == x;
	for (long i = 0; i < rows;) {
		long n = rows - i >= 4 ? 4 : 1;
		// The positive pairs' x, read before d (which may be x) is written.
		float xe[4];
		for (long r = 0; r < n; r++) {
			long e = e0 + i + r;
			xe[r] = e >= 0 && e < cols ? x[(i + r) * ld + e] : 0;
		}
		float *di = backward ? d + i * ld : (float *)0;
		if (in)
			sig_rows(R, 1, backward, n, d + i * ld, d + i * ld, ld, cols, A, B, c, rs);
		else
			sig_rows(R, 0, backward, n, x + i * ld, di, ld, cols, A, B, c, rs);
		l += rs[0];
		sx += rs[1];
		sb += rs[2];
		for (long r = 0; r < n; r++) {
			long e = e0 + i + r;
			if (e < 0 || e >= cols)
				continue;
			float gn, gp, v = xe[r];
			float ln = sig_term(R, v, -1.0f, A, B, c, &gn);
			float lp = sig_term(R, v, 1.0f, A, B, c, &gp);
			l += (double)lp - (double)ln;
			if (backward) {
				sx += (double)(gp * v) - (double)(gn * v);
				sb += (double)gp - (double)gn;
				d[(i + r) * ld + e] = gp;
			}
		}
		i += n;
	}
	sums[0] = l;
	sums[1] = sx;
	sums[2] = sb;
}

// bf16_body writes the rows×cols tile x (leading dimension ldx) rounded to
// bfloat16, nearest even, into h (leading dimension ldh).
KINL void bf16_body(const float *x, long ldx, uint16_t *h, long ldh, long rows, long cols) {
	for (long i = 0; i < rows; i++) {
		const float *xi = x + i * ldx;
		uint16_t *hi = h + i * ldh;
		for (long j = 0; j < cols; j++) {
			uint32_t u;
			memcpy(&u, xi + j, 4);
			hi[j] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
		}
	}
}

// finite_body reports whether none of x[0..n) is NaN or ±Inf (exponent
// bits all ones), with integer operations, so that it vectorises whatever
// the floating-point flags.
KINL int finite_body(const float *x, long n) {
	int32_t bad = 0;
	for (long i = 0; i < n; i++) {
		int32_t bits;
		memcpy(&bits, x + i, 4);
		bad |= (bits & 0x7f800000) == 0x7f800000;
	}
	return !bad;
}
