package clip

import (
	"math"

	"github.com/clipmpi/clipmpi/blas"
)

// OptimConfig holds AdamW's hyper-parameters and the learning-rate
// schedule. The defaults of OpenCLIP's ViT training are Beta1 0.9, Beta2
// 0.98, Eps 1e-6.
type OptimConfig struct {
	// LR is the peak learning rate; WD the decoupled weight decay.
	LR    float64 `json:"lr"`
	WD    float64 `json:"wd"`
	Beta1 float64 `json:"beta1"`
	Beta2 float64 `json:"beta2"`
	Eps   float64 `json:"eps"`
	// Warmup is the number of linear warmup steps of the cosine schedule.
	Warmup int `json:"warmup"`
}

// CosineLR is OpenCLIP's cosine_lr schedule at a step (0-based) of a run of
// steps steps: base·(step+1)/warmup during the warmup, then
// base·(1 + cos(π·e/es))/2 with e = step − warmup and es = steps − warmup.
func CosineLR(base float64, warmup, steps, step int) float64 {
	if step < warmup {
		return base * float64(step+1) / float64(warmup)
	}
	e, es := step-warmup, steps-warmup
	if es <= 0 {
		return base
	}
	return 0.5 * (1 + math.Cos(math.Pi*float64(e)/float64(es))) * base
}

// AdamW is torch.optim.AdamW over a model's flat parameter vector, with
// weight decay only on the tensors whose Param.Decay is set (OpenCLIP's
// parameter groups).
//
// The moments m and v are stored in the parameters' element type T, as
// PyTorch stores them, but each update is computed in float64: the stored
// m and v, the gradient and the parameter are widened, the new m and v and
// the parameter's update are computed from those float64 values, and only
// then are the new parameter, m and v rounded to T. In float64 this is
// PyTorch's computation; in float32 it differs from PyTorch's float32
// arithmetic by rounding only (the update uses m and v before they are
// rounded to float32, PyTorch after).
type AdamW[T blas.Float] struct {
	cfg  OptimConfig
	m, v []T
	t    int // steps taken
}

// NewAdamW returns an optimizer with zero moments for n parameters.
func NewAdamW[T blas.Float](cfg OptimConfig, n int) *AdamW[T] {
	return &AdamW[T]{cfg: cfg, m: make([]T, n), v: make([]T, n)}
}

// Steps returns the number of updates taken.
func (o *AdamW[T]) Steps() int { return o.t }

// Step updates params in place from grads with learning rate lr:
//
//	p ← p·(1 − lr·wd)                      (decayed tensors only)
//	m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
//	p ← p − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
//
// It panics if params, grads and the moments differ in length.
func (o *AdamW[T]) Step(params, grads []T, layout []Param, lr float64) {
	if len(params) != len(o.m) || len(grads) != len(o.m) {
		panic(errParamLen)
	}
	o.t++
	c := o.cfg
	bc1 := 1 - math.Pow(c.Beta1, float64(o.t))
	bc2 := math.Sqrt(1 - math.Pow(c.Beta2, float64(o.t)))
	step := lr / bc1
	for _, p := range layout {
		n, decay := p.Size(), 1.0
		if p.Decay {
			decay = 1 - lr*c.WD
		}
		for i := p.Offset; i < p.Offset+n; i++ {
			g := float64(grads[i])
			m := c.Beta1*float64(o.m[i]) + (1-c.Beta1)*g
			v := c.Beta2*float64(o.v[i]) + (1-c.Beta2)*g*g
			o.m[i], o.v[i] = T(m), T(v)
			x := float64(params[i]) * decay
			params[i] = T(x - step*m/(math.Sqrt(v)/bc2+c.Eps))
		}
	}
}
