//go:build cgo && !purego && (amd64 || arm64)

package loss

/*
#cgo CFLAGS: -O3
#cgo LDFLAGS: -lm
#include <stdint.h>

// Defined in kernels_amd64.c or kernels_arm64.c; isa is one of the isa
// constants of kernels_isa.go.
int clip_isa_max(void);
void clip_max32(int isa, const float *x, long ld, long rows, long cols, int neg, float *rmax, float *cmax);
void clip_expsum32(int isa, const float *x, long ld, long rows, long cols, float A,
	const float *xr, const float *xc, double *racc, double *cacc);
void clip_grad32(int isa, float *di, float *dt, const float *x, long ld, long rows, long cols, long e0,
	float A, const float *xr, const float *wr, const float *xc, const float *wc, float cI, float cT,
	double *cx, double *cb, double *sums);
void clip_sig32(int isa, float *d, const float *x, long ld, long rows, long cols, long e0, float A, float B,
	float c, int backward, double *sums);
int clip_finite32(int isa, const float *x, long n);
void clip_bf16rows32(int isa, const float *x, long ldx, uint16_t *h, long ldh, long rows, long cols);
void clip_stats32(int isa, const float *x, long ld, long rows, long cols, float A, int neg, float *rmax, double *racc,
	float *cmax, double *cacc);
void clip_colmerge32(int isa, long nb, long cols, long stride, const float *pm, const double *ps, float A, int neg,
	float *m, double *s);
*/
import "C"

import (
	"unsafe"

	"github.com/clipmpi/clipmpi/blas"
)

// nativeKernels reports that the C float32 kernels are compiled in.
const nativeKernels = true

// isaMax is the best kernel ISA this CPU runs.
var isaMax = int(C.clip_isa_max())

func ptr32(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(unsafe.SliceData(s)))
}

func ptr64(s []float64) *C.double {
	if len(s) == 0 {
		return nil
	}
	return (*C.double)(unsafe.Pointer(unsafe.SliceData(s)))
}

// The wrappers below take slices the callers have checked (checkTile and
// the lengths stated in kernels.h): C does not check bounds.

func max32(isa int, x []float32, ld, rows, cols int, neg bool, rmax, cmax []float32) {
	_, _ = rmax[rows-1], cmax[cols-1]
	n := C.int(0)
	if neg {
		n = 1
	}
	C.clip_max32(C.int(isa), ptr32(x), C.long(ld), C.long(rows), C.long(cols), n, ptr32(rmax), ptr32(cmax))
}

func expsum32(isa int, x []float32, ld, rows, cols int, a float32, xr, xc []float32, racc, cacc []float64) {
	_, _, _, _ = xr[rows-1], racc[rows-1], xc[cols-1], cacc[cols-1]
	C.clip_expsum32(C.int(isa), ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.float(a),
		ptr32(xr), ptr32(xc), ptr64(racc), ptr64(cacc))
}

func grad32(isa int, di, dt, x []float32, ld, rows, cols, e0 int, a float32, xr, wr, xc, wc []float32, cI, cT float32,
	cx, cb, sums []float64) {
	_, _, _, _, _, _, _ = xr[rows-1], wr[rows-1], xc[cols-1], wc[cols-1], cx[cols-1], cb[cols-1], sums[1]
	C.clip_grad32(C.int(isa), ptr32(di), ptr32(dt), ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.long(e0),
		C.float(a), ptr32(xr), ptr32(wr), ptr32(xc), ptr32(wc), C.float(cI), C.float(cT),
		ptr64(cx), ptr64(cb), ptr64(sums))
}

func sig32(isa int, d, x []float32, ld, rows, cols, e0 int, a, b, c float32, backward bool, sums []float64) {
	_ = sums[2]
	bw := C.int(0)
	if backward {
		bw = 1
	}
	C.clip_sig32(C.int(isa), ptr32(d), ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.long(e0),
		C.float(a), C.float(b), C.float(c), bw, ptr64(sums))
}

func bint(v bool) C.int {
	if v {
		return 1
	}
	return 0
}

func stats32(isa int, x []float32, ld, rows, cols int, a float32, neg bool, rmax []float32, racc []float64,
	cmax []float32, cacc []float64) {
	_, _, _, _ = rmax[rows-1], racc[rows-1], cmax[cols-1], cacc[cols-1]
	C.clip_stats32(C.int(isa), ptr32(x), C.long(ld), C.long(rows), C.long(cols), C.float(a), bint(neg),
		ptr32(rmax), ptr64(racc), ptr32(cmax), ptr64(cacc))
}

// colmerge32 reads nb blocks of cols columns at stride (pm, ps hold
// (nb-1)·stride + cols elements).
func colmerge32(isa, nb, cols, stride int, pm []float32, ps []float64, a float32, neg bool, m []float32, s []float64) {
	_, _, _, _ = pm[(nb-1)*stride+cols-1], ps[(nb-1)*stride+cols-1], m[cols-1], s[cols-1]
	C.clip_colmerge32(C.int(isa), C.long(nb), C.long(cols), C.long(stride), ptr32(pm), ptr64(ps), C.float(a),
		bint(neg), ptr32(m), ptr64(s))
}

func finite32(isa int, x []float32) bool {
	return C.clip_finite32(C.int(isa), ptr32(x), C.long(len(x))) != 0
}

func bf16rows32(isa int, x []float32, ldx int, h []blas.BF16, ldh, rows, cols int) {
	C.clip_bf16rows32(C.int(isa), ptr32(x), C.long(ldx), (*C.uint16_t)(unsafe.Pointer(unsafe.SliceData(h))), C.long(ldh),
		C.long(rows), C.long(cols))
}
