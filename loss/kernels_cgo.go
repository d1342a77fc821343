//go:build cgo && !purego

package loss

/*
#cgo CFLAGS: -O3
#cgo LDFLAGS: -lm

// Vectorised float32 kernels of the softmax cross-entropy. The bodies are
// compiled twice: for AVX2+FMA (chosen at run time when the CPU has them) and
// for the baseline ISA. They compute what kernels.go's generic versions do,
// with a float32 exp and float64 accumulators.

// Reassociating the float64 accumulations is what lets the loops vectorise
// (cgo's flag allow-list has no -f flags for this, hence the pragma).
#pragma GCC optimize ("no-math-errno", "no-trapping-math", "no-signed-zeros", "associative-math")

#include <math.h>
#include <stdint.h>
#include <string.h>

// fexp is exp for x <= 0 in float32: Cody-Waite range reduction to
// |r| <= ln2/2 and a degree-7 Taylor polynomial (relative error below 2e-7,
// near float32's epsilon); x < -87 (exp(x) < 2e-38, float32's normal range)
// gives 0. Written without branches so that loops calling it vectorise.
static inline __attribute__((always_inline)) float fexp(float x) {
	float xc = x < -87.0f ? -87.0f : x;
	float k = __builtin_rintf(xc * 1.44269504088896341f);
	float r = xc - k * 0.693145751953125f;
	r = r - k * 1.428606765330187045e-06f;
	float p = 1.0f / 5040;
	p = p * r + 1.0f / 720;
	p = p * r + 1.0f / 120;
	p = p * r + 1.0f / 24;
	p = p * r + 1.0f / 6;
	p = p * r + 0.5f;
	p = p * r + 1.0f;
	p = p * r + 1.0f;
	int32_t bits = ((int32_t)k + 127) << 23;
	float s;
	memcpy(&s, &bits, 4);
	float res = p * s;
	return x < -87.0f ? 0.0f : res;
}

static inline __attribute__((always_inline)) void stats_body(const float *x, long ld, long rows, long cols,
		double scale, double bias, double *rowM, double *rowS, double *colM, double *colS, double *tmax) {
	// Logits are formed in float64 in every pass (as the Go kernels do), so
	// the maxima are exactly the values the exponentials are offset by.
	for (long j = 0; j < cols; j++) {
		colM[j] = -INFINITY;
		colS[j] = 0;
	}
	for (long i = 0; i < rows; i++) {
		const float *xr = x + i * ld;
		double mx = -INFINITY;
		for (long j = 0; j < cols; j++) {
			double s = scale * xr[j] + bias;
			mx = s > mx ? s : mx;
			colM[j] = s > colM[j] ? s : colM[j];
		}
		tmax[i] = mx;
	}
	for (long i = 0; i < rows; i++) {
		const float *xr = x + i * ld;
		double m = rowM[i], sum = rowS[i];
		if (tmax[i] > m) {
			sum *= exp(m - tmax[i]);
			m = tmax[i];
		}
		double acc = 0;
		for (long j = 0; j < cols; j++) {
			double s = scale * xr[j] + bias;
			acc += (double)fexp((float)(s - m));
			colS[j] += (double)fexp((float)(s - colM[j]));
		}
		rowM[i] = m;
		rowS[i] = sum + acc;
	}
}

static inline __attribute__((always_inline)) void grad_body(float *di, float *dt, const float *x, long ld,
		long rows, long cols, long e0, double scale, double bias, float cI, float cT,
		const double *rowM, const double *rowL, const double *colM, const double *colL,
		double *colX, double *colB, double *sums) {
	double sx = 0, sb = 0;
	for (long i = 0; i < rows; i++) {
		const float *xr = x + i * ld;
		float *dir = di + i * ld;
		float *dtr = dt ? dt + i * ld : 0;
		double m = rowM[i], l = rowL[i];
		double rx = 0, rb = 0;
		// di may alias x: read the positive pair's x before it is overwritten.
		long e = e0 + i;
		int has_e = e >= 0 && e < cols;
		float xe = has_e ? xr[e] : 0;
		if (dtr) {
			for (long j = 0; j < cols; j++) {
				float xv = xr[j];
				double s = scale * xv + bias;
				float gi = cI * fexp((float)((s - m) - l));
				float gt = cT * fexp((float)((s - colM[j]) - colL[j]));
				rx += (double)gi * xv;
				rb += (double)gi;
				colX[j] += (double)gt * xv;
				colB[j] += (double)gt;
				dir[j] = gi;
				dtr[j] = gt;
			}
		} else {
			for (long j = 0; j < cols; j++) {
				float xv = xr[j];
				double s = scale * xv + bias;
				float gi = cI * fexp((float)((s - m) - l));
				float gt = cT * fexp((float)((s - colM[j]) - colL[j]));
				rx += (double)gi * xv;
				rb += (double)gi;
				colX[j] += (double)gt * xv;
				colB[j] += (double)gt;
				dir[j] = gi + gt;
			}
		}
		// The positive pair: subtract c·E from each direction.
		if (has_e) {
			float xv = xe;
			double s = scale * xv + bias;
			float gi = cI * fexp((float)((s - m) - l)) - cI;
			float gt = cT * fexp((float)((s - colM[e]) - colL[e])) - cT;
			rx -= (double)cI * xv;
			rb -= (double)cI;
			colX[e] -= (double)cT * xv;
			colB[e] -= (double)cT;
			if (dtr) {
				dir[e] = gi;
				dtr[e] = gt;
			} else {
				dir[e] = gi + gt;
			}
		}
		sx += rx;
		sb += rb;
	}
	sums[0] = sx;
	sums[1] = sb;
}

__attribute__((target("avx2,fma"))) static void stats_avx2(const float *x, long ld, long rows, long cols,
		double scale, double bias, double *rowM, double *rowS, double *colM, double *colS, double *tmax) {
	stats_body(x, ld, rows, cols, scale, bias, rowM, rowS, colM, colS, tmax);
}
static void stats_base(const float *x, long ld, long rows, long cols,
		double scale, double bias, double *rowM, double *rowS, double *colM, double *colS, double *tmax) {
	stats_body(x, ld, rows, cols, scale, bias, rowM, rowS, colM, colS, tmax);
}
__attribute__((target("avx2,fma"))) static void grad_avx2(float *di, float *dt, const float *x, long ld,
		long rows, long cols, long e0, double scale, double bias, float cI, float cT,
		const double *rowM, const double *rowL, const double *colM, const double *colL,
		double *colX, double *colB, double *sums) {
	grad_body(di, dt, x, ld, rows, cols, e0, scale, bias, cI, cT, rowM, rowL, colM, colL, colX, colB, sums);
}
static void grad_base(float *di, float *dt, const float *x, long ld,
		long rows, long cols, long e0, double scale, double bias, float cI, float cT,
		const double *rowM, const double *rowL, const double *colM, const double *colL,
		double *colX, double *colB, double *sums) {
	grad_body(di, dt, x, ld, rows, cols, e0, scale, bias, cI, cT, rowM, rowL, colM, colL, colX, colB, sums);
}

// flog1p is log(1 + t) for t in [0, 1]: 2·atanh(u) with u = t/(2+t) in
// [0, 1/3], summed to u^15 (truncation below 5e-9 relative).
static inline __attribute__((always_inline)) float flog1p(float t) {
	float u = t / (2.0f + t);
	float u2 = u * u;
	float p = 1.0f / 15;
	p = p * u2 + 1.0f / 13;
	p = p * u2 + 1.0f / 11;
	p = p * u2 + 1.0f / 9;
	p = p * u2 + 1.0f / 7;
	p = p * u2 + 1.0f / 5;
	p = p * u2 + 1.0f / 3;
	p = p * u2 + 1.0f;
	return 2.0f * u * p;
}

static inline __attribute__((always_inline)) void sig_body(float *d, const float *x, long ld, long rows,
		long cols, long e0, double scale, double bias, float c, int backward, double *sums) {
	double loss = 0, sx = 0, sb = 0;
	for (long i = 0; i < rows; i++) {
		const float *xr = x + i * ld;
		float *dr = d + i * ld;
		long e = e0 + i;
		double rl = 0, rx = 0, rb = 0;
		for (long j = 0; j < cols; j++) {
			float xv = xr[j];
			float y = j == e ? 1.0f : -1.0f;
			float u = (float)(-(double)y * (scale * xv + bias));
			float au = u < 0 ? -u : u;
			float ex = fexp(-au);
			rl += (double)((u > 0 ? u : 0.0f) + flog1p(ex));
			if (backward) {
				float sg = (u >= 0 ? 1.0f : ex) / (1.0f + ex);
				float g = -c * y * sg;
				rx += (double)g * xv;
				rb += (double)g;
				dr[j] = g;
			}
		}
		loss += rl;
		sx += rx;
		sb += rb;
	}
	sums[0] = loss;
	sums[1] = sx;
	sums[2] = sb;
}

__attribute__((target("avx2,fma"))) static void sig_avx2(float *d, const float *x, long ld, long rows,
		long cols, long e0, double scale, double bias, float c, int backward, double *sums) {
	sig_body(d, x, ld, rows, cols, e0, scale, bias, c, backward, sums);
}
static void sig_base(float *d, const float *x, long ld, long rows,
		long cols, long e0, double scale, double bias, float c, int backward, double *sums) {
	sig_body(d, x, ld, rows, cols, e0, scale, bias, c, backward, sums);
}

static void clip_sig32(int avx2, float *d, const float *x, long ld, long rows,
		long cols, long e0, double scale, double bias, float c, int backward, double *sums) {
	(avx2 ? sig_avx2 : sig_base)(d, x, ld, rows, cols, e0, scale, bias, c, backward, sums);
}

static int have_avx2(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static void clip_stats32(int avx2, const float *x, long ld, long rows, long cols,
		double scale, double bias, double *rowM, double *rowS, double *colM, double *colS, double *tmax) {
	(avx2 ? stats_avx2 : stats_base)(x, ld, rows, cols, scale, bias, rowM, rowS, colM, colS, tmax);
}

static void clip_grad32(int avx2, float *di, float *dt, const float *x, long ld,
		long rows, long cols, long e0, double scale, double bias, float cI, float cT,
		const double *rowM, const double *rowL, const double *colM, const double *colL,
		double *colX, double *colB, double *sums) {
	(avx2 ? grad_avx2 : grad_base)(di, dt, x, ld, rows, cols, e0, scale, bias, cI, cT, rowM, rowL, colM, colL, colX, colB, sums);
}
*/
import "C"

import "unsafe"

// nativeKernels reports that the vectorised float32 kernels are compiled in.
const nativeKernels = true

var avx2 = C.have_avx2()

// kernelScratch is per-loss scratch the native kernels need.
type kernelScratch struct {
	tmax []float64 // rows
	out  [3]float64
}

func ptr32(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

func ptr64(s []float64) *C.double {
	if len(s) == 0 {
		return nil
	}
	return (*C.double)(unsafe.Pointer(&s[0]))
}

// stats32 is statsTile for float32 in C. Slices are checked by the caller.
func (k *kernelScratch) stats32(x []float32, ld, rows, cols int, scale, bias float64, rowM, rowS, colM, colS []float64) {
	k.tmax = grow(k.tmax, rows)
	C.clip_stats32(avx2, ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.double(scale), C.double(bias),
		ptr64(rowM), ptr64(rowS), ptr64(colM), ptr64(colS), ptr64(k.tmax))
}

// grad32 is gradTile for float32 in C.
func (k *kernelScratch) grad32(di, dt, x []float32, ld, rows, cols, j0, diag0 int, scale, bias, cI, cT float64,
	rowM, rowL, colM, colL, colX, colB []float64) (sumX, sumB float64) {
	var dtp *C.float
	if dt != nil {
		dtp = ptr32(dt)
	}
	C.clip_grad32(avx2, ptr32(di), dtp, ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.long(diag0-j0),
		C.double(scale), C.double(bias), C.float(cI), C.float(cT),
		ptr64(rowM), ptr64(rowL), ptr64(colM), ptr64(colL), ptr64(colX), ptr64(colB),
		(*C.double)(unsafe.Pointer(&k.out[0])))
	return k.out[0], k.out[1]
}

// sig32 is sigTile for float32 in C. The positive pair of row i is column
// e0+i (which may lie outside the tile).
func (k *kernelScratch) sig32(d, x []float32, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	bw := C.int(0)
	if backward {
		bw = 1
	}
	C.clip_sig32(avx2, ptr32(d), ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.long(max(min(e0, 1<<40), -1<<40)),
		C.double(scale), C.double(bias), C.float(c), bw, (*C.double)(unsafe.Pointer(&k.out[0])))
	return k.out[0], k.out[1], k.out[2]
}
