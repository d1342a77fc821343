//go:build !cgo || purego || !(amd64 || arm64)

package loss

import "github.com/clipmpi/clipmpi/blas"

// nativeKernels reports that the C float32 kernels are compiled in: not
// without cgo, with the purego tag, or on other architectures, where the Go
// kernels run for both element types.
const nativeKernels = false

// isaMax is the best kernel ISA: the Go kernels.
const isaMax = isaGo

func max32(isa int, x []float32, ld, rows, cols int, neg bool, rmax, cmax []float32) {
	panic(errNoNative)
}

func expsum32(isa int, x []float32, ld, rows, cols int, a float32, xr, xc []float32, racc, cacc []float64) {
	panic(errNoNative)
}

func grad32(isa int, di, dt, x []float32, ld, rows, cols, e0 int, a float32, xr, wr, xc, wc []float32, cI, cT float32,
	cx, cb, sums []float64) {
	panic(errNoNative)
}

func sig32(isa int, d, x []float32, ld, rows, cols, e0 int, a, b, c float32, backward bool, sums []float64) {
	panic(errNoNative)
}

func finite32(isa int, x []float32) bool { panic(errNoNative) }

func stats32(isa int, x []float32, ld, rows, cols int, a float32, neg bool, rmax []float32, racc []float64,
	cmax []float32, cacc []float64) {
	panic(errNoNative)
}

func colmerge32(isa, nb, cols, stride int, pm []float32, ps []float64, a float32, neg bool, m []float32, s []float64) {
	panic(errNoNative)
}

func bf16rows32(isa int, x []float32, ldx int, h []blas.BF16, ldh, rows, cols int) {
	panic(errNoNative)
}
