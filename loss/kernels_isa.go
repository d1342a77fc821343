package loss

// Kernel instruction sets, in increasing order. isaC is the C kernels
// compiled for the architecture's baseline (x86-64's SSE2; AArch64's NEON);
// isaAVX2 and isaAVX512 exist on amd64 only.
const (
	isaGo     = 0 // the Go kernels
	isaC      = 1
	isaAVX2   = 2
	isaAVX512 = 3
)

var isaNames = [...]string{isaGo: "go", isaC: "c", isaAVX2: "avx2", isaAVX512: "avx512"}

// kernelISA is the instruction set the float32 kernels run with: the best
// the CPU has. Tests lower it (setKernelISA) to check each against the Go
// kernels; it must not change while a kernel runs.
var kernelISA = isaMax

// KernelISA names the instruction set of the float32 kernels in use: "go"
// (the Go kernels: no cgo, the purego tag, or an architecture other than
// amd64 and arm64), "c" (C compiled for the baseline ISA: SSE2 on amd64,
// NEON on arm64), "avx2" (AVX2 and FMA) or "avx512" (AVX-512F/BW/DQ/VL).
// float64 always runs the Go kernels.
func KernelISA() string { return isaNames[kernelISA] }
