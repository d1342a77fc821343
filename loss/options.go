package loss

import (
	"fmt"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
)

// Algorithm selects how the distributed loss is computed. Every algorithm
// gives the same loss and gradients (OpenCLIP's, in every mode) up to
// floating-point rounding; they differ in flops, memory and communication.
type Algorithm int

const (
	// Fused computes one b×N logit block per rank (S_r = s·I_r·T_allᵀ),
	// completes the text-to-image log-sum-exp with an all-reduce of column
	// statistics, and keeps S_r for backward: 3 GEMMs of 2·b·N·d flops.
	// It is the default.
	Fused Algorithm = iota
	// Naive is OpenCLIP's computation as written: all-gather both feature
	// sets, build logits_per_image and logits_per_text (N×N in the global
	// modes, b×N in the local ones), and back-propagate through all-gather.
	// It is the reference the others are tested against.
	Naive
	// Tiled is Fused streamed over column tiles with an online
	// log-sum-exp; tiles are recomputed in backward (4 GEMMs), so memory per
	// rank is O(b·tile + N·d) instead of O(b·N).
	Tiled
	// Ring passes text blocks around a ring of ranks with non-blocking
	// send/receive while the current block's GEMM runs; text-gradient
	// partials travel home the same way. No rank holds all N rows.
	Ring
	// Auto lets the loss choose, at its first call, the algorithm the cost
	// model (Predict) says is fastest among those whose Memory fits
	// MemoryBudget; see ResolveClip. It is not in Algorithms.
	Auto
)

var algorithmNames = [...]string{Fused: "fused", Naive: "naive", Tiled: "tiled", Ring: "ring", Auto: "auto"}

// Algorithms lists every algorithm, the naive reference included (Auto
// is a choice among them, not one of them).
func Algorithms() []Algorithm { return []Algorithm{Naive, Fused, Tiled, Ring} }

// String returns the algorithm's name as ParseAlgorithm accepts it.
func (a Algorithm) String() string { return nameOf(algorithmNames[:], "Algorithm", int(a)) }

// ParseAlgorithm returns the algorithm with the given name
// ("naive", "fused", "tiled", "ring" or "auto").
func ParseAlgorithm(name string) (Algorithm, error) {
	i, err := parseName(algorithmNames[:], "algorithm", name)
	return Algorithm(i), err
}

// nameOf returns names[i], or type(i) when i is out of range.
func nameOf(names []string, typ string, i int) string {
	if i < 0 || i >= len(names) {
		return fmt.Sprintf("%s(%d)", typ, i)
	}
	return names[i]
}

// parseName returns the index of name in names, or an error naming what
// was parsed and listing the names.
func parseName(names []string, what, name string) (int, error) {
	for i, n := range names {
		if n == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("loss: unknown %s %q (want %s)", what, name, strings.Join(names, ", "))
}

// Precision is the arithmetic of the GEMMs, named as OpenCLIP's --precision
// names it.
type Precision int

const (
	// FP32 multiplies in the features' own type, float32 or float64.
	FP32 Precision = iota
	// AMPBF16 is OpenCLIP's amp_bf16 for float32 features: GEMM operands
	// rounded to bfloat16 (nearest even) once, products summed in float32
	// (blas.GemmBF16); logits and gradient tiles stay float32, statistics
	// float64. Features travel between ranks in bf16, gradient sums in
	// float32.
	AMPBF16
)

var precisionNames = [...]string{FP32: "fp32", AMPBF16: "amp_bf16"}

// String returns the precision's name as ParsePrecision accepts it.
func (p Precision) String() string { return nameOf(precisionNames[:], "Precision", int(p)) }

// ParsePrecision returns the precision named "fp32" or "amp_bf16" ("bf16"
// is taken for amp_bf16).
func ParsePrecision(name string) (Precision, error) {
	if name == "bf16" {
		return AMPBF16, nil
	}
	i, err := parseName(precisionNames[:], "precision", name)
	return Precision(i), err
}

// checkPrecision panics unless p is known and, for AMPBF16, T is float32,
// and unless sums in bf16 come with AMPBF16.
func checkPrecision[T blas.Float](p Precision, sums bool) {
	if p < FP32 || p > AMPBF16 || p == AMPBF16 && !blas.Is32[T]() || sums && p != AMPBF16 {
		panic(errPrecision)
	}
}

// ClipOptions are OpenCLIP's ClipLoss options plus the algorithm.
//
// The zero value is OpenCLIP's default: the global loss without gradient
// through the all-gather, computed with the Fused algorithm.
type ClipOptions struct {
	// LocalLoss is OpenCLIP's local_loss: each rank's loss uses only its
	// own rows against all columns.
	LocalLoss bool
	// GatherWithGrad is OpenCLIP's gather_with_grad: gradients flow back
	// through the all-gather (a SUM reduce-scatter).
	GatherWithGrad bool
	// Algorithm picks the computation (default Fused).
	Algorithm Algorithm
	// Tile is the column tile width of the Tiled and Ring algorithms;
	// 0 picks a default.
	Tile int
	// Precision is the GEMMs' arithmetic (default FP32).
	Precision Precision
	// SumsBF16, with AMPBF16, sends the ring methods' text-gradient
	// partial sums (Fused with several ranks, Ring; SigLIP's Bidir and
	// Shift) in bf16 too, rounded at every hop, which halves what a ring
	// step moves; collectives' sums stay float32.
	SumsBF16 bool
	// MemoryBudget bounds, in bytes per rank, the memory (as Memory counts
	// it) of the algorithm Auto chooses; 0 means the memory available on
	// the node (node.MemoryBudget: MemAvailable, or less where a memory
	// cgroup says so, divided by the ranks on the node). Other algorithms
	// ignore it.
	MemoryBudget int64
	// Rates are the machine rates Auto's cost model uses; the zero value
	// has them measured once, at the first call (MeasureRates). Other
	// algorithms ignore them.
	Rates Rates
	// Threads is the number of threads this rank's elementwise kernels
	// (softmax statistics, gradient tiles, finiteness scans, sums over
	// b·d or N·d) run on; 0 means blas.Threads() when the loss is made.
	// Results are the same bit for bit for every value, so ranks may
	// differ. The GEMMs run on the BLAS's own threads (blas.SetThreads).
	Threads int
}

// Mode names the OpenCLIP mode of the options: "global", "global_gwg",
// "local" or "local_gwg".
func (o ClipOptions) Mode() string {
	m := "global"
	if o.LocalLoss {
		m = "local"
	}
	if o.GatherWithGrad {
		m += "_gwg"
	}
	return m
}

// ParseMode returns the options for a mode named as Mode names it.
func ParseMode(mode string) (ClipOptions, error) {
	for _, o := range []ClipOptions{{}, {GatherWithGrad: true}, {LocalLoss: true}, {LocalLoss: true, GatherWithGrad: true}} {
		if o.Mode() == mode {
			return o, nil
		}
	}
	return ClipOptions{}, fmt.Errorf("loss: unknown mode %q (want global, global_gwg, local or local_gwg)", mode)
}

// Logit is the logit scale and optional bias as the loss receives them:
// Scale is already exponentiated (OpenCLIP's logit_scale.exp()).
type Logit struct {
	Scale float64
	// Bias is added to every logit when HasBias is set.
	Bias    float64
	HasBias bool
}

// Result is what one rank gets back from a forward and backward pass.
type Result struct {
	// Loss is this rank's loss (see the mode table in the package doc).
	Loss float64
	// GradScale is d loss / d Scale, this rank's replica.
	GradScale float64
	// GradBias is d loss / d Bias, this rank's replica; 0 without a bias.
	GradBias float64
}
