//go:build !cgo || purego

package loss

// nativeKernels reports that the vectorised float32 kernels are compiled in;
// without cgo the generic Go kernels run for both element types.
const nativeKernels = false

type kernelScratch struct{}

func (k *kernelScratch) stats32(x []float32, ld, rows, cols int, scale, bias float64, rowM, rowS, colM, colS []float64) {
	panic("loss: native kernels not compiled in")
}

func (k *kernelScratch) grad32(di, dt, x []float32, ld, rows, cols, j0, diag0 int, scale, bias, cI, cT float64,
	rowM, rowL, colM, colL, colX, colB []float64) (sumX, sumB float64) {
	panic("loss: native kernels not compiled in")
}

func (k *kernelScratch) sig32(d, x []float32, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	panic("loss: native kernels not compiled in")
}
