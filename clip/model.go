package clip

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
)

// HeadKind selects the projection head of each modality.
type HeadKind int

const (
	// Linear is z = normalize(x·W + b).
	Linear HeadKind = iota
	// MLP is z = normalize(gelu(x·W1 + b1)·W2 + b2), with the exact (erf)
	// GELU of PyTorch's nn.GELU().
	MLP
)

// String returns the name of the head as ParseHead accepts it.
func (k HeadKind) String() string {
	switch k {
	case Linear:
		return "linear"
	case MLP:
		return "mlp"
	}
	return "invalid"
}

// MarshalText returns the name of the head.
func (k HeadKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText sets the head from its name.
func (k *HeadKind) UnmarshalText(b []byte) error {
	h, err := ParseHead(string(b))
	*k = h
	return err
}

// ParseHead returns the head kind with the given name ("linear" or "mlp").
func ParseHead(name string) (HeadKind, error) {
	switch strings.ToLower(name) {
	case "linear":
		return Linear, nil
	case "mlp":
		return MLP, nil
	}
	return 0, fmt.Errorf("clip: unknown head %q (want linear or mlp)", name)
}

// Initial logit parameters, as OpenCLIP sets them.
var (
	// ClipInitLogitScale is CLIP's ln(1/0.07).
	ClipInitLogitScale = math.Log(1 / 0.07)
	// SigLipInitLogitScale is SigLIP's ln 10.
	SigLipInitLogitScale = math.Log(10)
	// MaxLogitScale is the upper clamp of the log scale, ln 100; the lower
	// one is 0.
	MaxLogitScale = math.Log(100)
)

// SigLipInitLogitBias is SigLIP's initial logit bias.
const SigLipInitLogitBias = -10.0

// ModelConfig describes a Model.
type ModelConfig struct {
	// ImageDim and TextDim are the widths of the input embeddings.
	ImageDim int `json:"image_dim"`
	TextDim  int `json:"text_dim"`
	// EmbedDim is the width of the shared space.
	EmbedDim int `json:"embed_dim"`
	// Head is the projection head of both modalities.
	Head HeadKind `json:"head"`
	// Hidden is the MLP's hidden width (ignored by Linear heads).
	Hidden int `json:"hidden"`
	// InitLogitScale is the initial log logit scale (ClipInitLogitScale
	// or SigLipInitLogitScale).
	InitLogitScale float64 `json:"init_logit_scale"`
	// LogitBias adds a learnable logit bias, initialised to InitLogitBias.
	LogitBias     bool    `json:"logit_bias"`
	InitLogitBias float64 `json:"init_logit_bias"`
}

// Param is one named tensor in a Model's flat parameter vector: elements
// Offset .. Offset+Size()-1, row-major in Shape. Weight matrices are stored
// [in, out] (the transpose of PyTorch's nn.Linear.weight), so a head is
// x·W. Decay reports whether AdamW applies weight decay, decided as
// OpenCLIP does: tensors of fewer than two dimensions (biases, gains, the
// logit scale and bias) and names containing "bn", "ln", "bias" or
// "logit_scale" are excluded.
type Param struct {
	Name   string
	Shape  []int
	Offset int
	Decay  bool
}

// Size returns the number of elements of the tensor.
func (p Param) Size() int {
	n := 1
	for _, s := range p.Shape {
		n *= s
	}
	return n
}

func decays(name string, shape []int) bool {
	if len(shape) < 2 {
		return false
	}
	for _, s := range []string{"bn", "ln", "bias", "logit_scale"} {
		if strings.Contains(name, s) {
			return false
		}
	}
	return true
}

// Model is the trainable part of a dual encoder: an image head, a text head,
// the log logit scale and the optional logit bias, in one flat parameter
// vector with a gradient vector of the same layout.
//
// A Model owns the workspaces of its heads; it is not safe for concurrent
// use.
type Model[T blas.Float] struct {
	cfg    ModelConfig
	params []T
	grads  []T
	layout []Param
	image  head[T]
	text   head[T]
	scale  int // index of the log logit scale in params
	bias   int // index of the logit bias, -1 without one
}

// numParams returns the number of parameters of NewModel(c)'s layout
// without making the model, or -1 if c is not a valid configuration (NewModel
// would panic). Widths up to 2^24 cannot overflow it.
func (c ModelConfig) numParams() int {
	if c.ImageDim < 1 || c.TextDim < 1 || c.EmbedDim < 1 || (c.Head != Linear && c.Head != MLP) || (c.Head == MLP && c.Hidden < 1) {
		return -1
	}
	n := 1 // the logit scale
	if c.LogitBias {
		n++
	}
	for _, in := range []int{c.ImageDim, c.TextDim} {
		if c.Head == Linear {
			n += in*c.EmbedDim + c.EmbedDim
		} else {
			n += in*c.Hidden + c.Hidden + c.Hidden*c.EmbedDim + c.EmbedDim
		}
	}
	return n
}

// NewModel returns a model with PyTorch's nn.Linear initialisation (weights
// and biases uniform in ±1/sqrt(fan_in)) drawn from seed, the logit scale
// and bias at their configured initial values, and zero gradients. The same
// seed gives the same weights in every process.
//
// It panics if a dimension is not positive, or an MLP's Hidden is not.
func NewModel[T blas.Float](cfg ModelConfig, seed uint64) *Model[T] {
	if cfg.ImageDim < 1 || cfg.TextDim < 1 || cfg.EmbedDim < 1 {
		panic(errDims)
	}
	switch cfg.Head {
	case Linear:
	case MLP:
		if cfg.Hidden < 1 {
			panic(errHidden)
		}
	default:
		panic(errHead)
	}
	m := &Model[T]{cfg: cfg, bias: -1}
	add := func(name string, shape ...int) {
		off := 0
		if n := len(m.layout); n > 0 {
			off = m.layout[n-1].Offset + m.layout[n-1].Size()
		}
		m.layout = append(m.layout, Param{Name: name, Shape: shape, Offset: off, Decay: decays(name, shape)})
	}
	for _, mod := range []struct {
		name string
		in   int
	}{{"image", cfg.ImageDim}, {"text", cfg.TextDim}} {
		if cfg.Head == Linear {
			add(mod.name+".proj.weight", mod.in, cfg.EmbedDim)
			add(mod.name+".proj.bias", cfg.EmbedDim)
		} else {
			add(mod.name+".fc1.weight", mod.in, cfg.Hidden)
			add(mod.name+".fc1.bias", cfg.Hidden)
			add(mod.name+".fc2.weight", cfg.Hidden, cfg.EmbedDim)
			add(mod.name+".fc2.bias", cfg.EmbedDim)
		}
	}
	add("logit_scale")
	if cfg.LogitBias {
		add("logit_bias")
	}
	last := m.layout[len(m.layout)-1]
	n := last.Offset + last.Size()
	m.params = make([]T, n)
	m.grads = make([]T, n)

	per := 2
	if cfg.Head == MLP {
		per = 4
	}
	m.image = newHead(m, m.layout[0:per], cfg.ImageDim, cfg.Hidden, cfg.EmbedDim, cfg.Head == MLP)
	m.text = newHead(m, m.layout[per:2*per], cfg.TextDim, cfg.Hidden, cfg.EmbedDim, cfg.Head == MLP)
	m.scale = m.layout[2*per].Offset
	if cfg.LogitBias {
		m.bias = m.layout[2*per+1].Offset
	}

	rng := rand.New(rand.NewPCG(seed, 0x636c6970)) // "clip"
	for _, p := range m.layout[:2*per] {
		fanIn := p.Shape[0] // weights are [in, out]
		if len(p.Shape) == 1 {
			// A bias gets the bound of its layer's weight, the tensor
			// before it.
			fanIn = m.paramByOffset(p.Offset - 1).Shape[0]
		}
		bound := 1 / math.Sqrt(float64(fanIn))
		for i := range p.Size() {
			m.params[p.Offset+i] = T((2*rng.Float64() - 1) * bound)
		}
	}
	m.params[m.scale] = T(cfg.InitLogitScale)
	if m.bias >= 0 {
		m.params[m.bias] = T(cfg.InitLogitBias)
	}
	return m
}

func (m *Model[T]) paramByOffset(i int) Param {
	for _, p := range m.layout {
		if i >= p.Offset && i < p.Offset+p.Size() {
			return p
		}
	}
	panic("clip: offset outside the parameters")
}

// Config returns the configuration the model was made with.
func (m *Model[T]) Config() ModelConfig { return m.cfg }

// Params returns the flat parameter vector (not a copy); Layout says where
// each tensor lies in it.
func (m *Model[T]) Params() []T { return m.params }

// Grads returns the flat gradient vector, laid out as Params.
func (m *Model[T]) Grads() []T { return m.grads }

// Layout returns the tensors of the parameter vector, in order.
func (m *Model[T]) Layout() []Param { return m.layout }

// Logit returns the logit scale and bias as a loss receives them: the scale
// exponentiated (OpenCLIP's logit_scale.exp()).
func (m *Model[T]) Logit() loss.Logit {
	lg := loss.Logit{Scale: math.Exp(float64(m.params[m.scale]))}
	if m.bias >= 0 {
		lg.Bias, lg.HasBias = float64(m.params[m.bias]), true
	}
	return lg
}

// clampScale clamps the log logit scale to [0, ln 100], as OpenCLIP does
// after every optimizer step.
func (m *Model[T]) clampScale() {
	s := float64(m.params[m.scale])
	m.params[m.scale] = T(min(max(s, 0), MaxLogitScale))
}

// EncodeImage writes the normalised image features of the rows of x
// (n×ImageDim, row-major) into dst (n×EmbedDim). It keeps the activations
// for the next BackwardImage. It panics on lengths that do not match.
func (m *Model[T]) EncodeImage(dst, x []T) { m.image.forward(dst, x) }

// EncodeText is EncodeImage for the text head.
func (m *Model[T]) EncodeText(dst, x []T) { m.text.forward(dst, x) }

// BackwardImage adds to Grads the gradient of the image head's parameters,
// given dz, the gradient with respect to the features z that the last
// EncodeImage(z, x) wrote, for the same x. It panics on lengths that do not
// match the last EncodeImage.
func (m *Model[T]) BackwardImage(dz, z, x []T) { m.image.backward(dz, z, x) }

// BackwardText is BackwardImage for the text head.
func (m *Model[T]) BackwardText(dz, z, x []T) { m.text.backward(dz, z, x) }

// head is one modality's projection head with its workspaces. Its tensors
// are views into the model's parameter and gradient vectors.
type head[T blas.Float] struct {
	in, hidden, out int
	mlp             bool
	// Layer 1 (the only one of a linear head) and layer 2.
	w1, b1, w2, b2     []T
	gw1, gb1, gw2, gb2 []T
	// Workspaces of the last forward: pre-activations h and activations a
	// (n×hidden, MLP only), and the norms ‖y‖ of the outputs before
	// normalisation (n), in float64 whatever T is: the comparison with
	// normEps must not depend on T's rounding (float32(1e12) < 1e12).
	h, a []T
	norm []float64
	dA   []T // n×hidden, MLP backward
	dy   []T // n×out, backward
	n    int // rows of the last forward
}

func newHead[T blas.Float](m *Model[T], ps []Param, in, hidden, out int, mlp bool) head[T] {
	view := func(v []T, p Param) []T { return v[p.Offset : p.Offset+p.Size() : p.Offset+p.Size()] }
	h := head[T]{in: in, hidden: hidden, out: out, mlp: mlp, n: -1}
	h.w1, h.gw1 = view(m.params, ps[0]), view(m.grads, ps[0])
	h.b1, h.gb1 = view(m.params, ps[1]), view(m.grads, ps[1])
	if mlp {
		h.w2, h.gw2 = view(m.params, ps[2]), view(m.grads, ps[2])
		h.b2, h.gb2 = view(m.params, ps[3]), view(m.grads, ps[3])
	}
	return h
}

// grow returns s with length n, reusing its storage when it is large
// enough.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// normEps is F.normalize's eps: a row's norm is taken as max(‖y‖, eps).
const normEps = 1e-12

func (h *head[T]) forward(z, x []T) {
	if len(x)%h.in != 0 {
		panic(errBatchLen)
	}
	n := len(x) / h.in
	if len(z) != n*h.out {
		panic(errFeatureLen)
	}
	h.n = n
	if n == 0 {
		return
	}
	if !h.mlp {
		affine(z, x, h.w1, h.b1, n, h.in, h.out)
	} else {
		h.h = grow(h.h, n*h.hidden)
		h.a = grow(h.a, n*h.hidden)
		affine(h.h, x, h.w1, h.b1, n, h.in, h.hidden)
		for i, v := range h.h {
			h.a[i] = T(gelu(float64(v)))
		}
		affine(z, h.a, h.w2, h.b2, n, h.hidden, h.out)
	}
	// z = y / max(‖y‖, eps), row by row, in place.
	h.norm = grow(h.norm, n)
	for i := range n {
		row := z[i*h.out : (i+1)*h.out]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		h.norm[i] = math.Sqrt(ss)
		inv := 1 / max(h.norm[i], normEps)
		for j, v := range row {
			row[j] = T(float64(v) * inv)
		}
	}
}

// affine computes y = x·w + b for x n×in, w in×out, b of length out.
func affine[T blas.Float](y, x, w, b []T, n, in, out int) {
	blas.Gemm(blas.NoTrans, blas.NoTrans, n, out, in, 1, x, in, w, out, 0, y, out)
	for i := range n {
		row := y[i*out : (i+1)*out]
		for j := range row {
			row[j] += b[j]
		}
	}
}

func (h *head[T]) backward(dz, z, x []T) {
	n := h.n
	if n < 0 || len(x) != n*h.in || len(z) != n*h.out || len(dz) != n*h.out {
		panic(errFeatureLen)
	}
	if n == 0 {
		return
	}
	// Through the normalisation: with y = z·‖y‖ (‖y‖ ≥ eps),
	// dy = (dz − z·(z·dz)) / ‖y‖; below eps z = y/eps and dy = dz/eps
	// (PyTorch's clamp_min(eps) passes the gradient where ‖y‖ ≥ eps).
	h.dy = grow(h.dy, n*h.out)
	for i := range n {
		zr, dzr, dyr := z[i*h.out:(i+1)*h.out], dz[i*h.out:(i+1)*h.out], h.dy[i*h.out:(i+1)*h.out]
		inv := 1 / max(h.norm[i], normEps)
		var dot float64
		if h.norm[i] >= normEps {
			for j := range zr {
				dot += float64(zr[j]) * float64(dzr[j])
			}
		}
		for j := range zr {
			dyr[j] = T((float64(dzr[j]) - float64(zr[j])*dot) * inv)
		}
	}
	if !h.mlp {
		affineBackward(h.gw1, h.gb1, h.dy, x, n, h.in, h.out)
		return
	}
	affineBackward(h.gw2, h.gb2, h.dy, h.a, n, h.hidden, h.out)
	// dA = dy·W2ᵀ, then dH = dA ∘ gelu'(H), in place.
	h.dA = grow(h.dA, n*h.hidden)
	blas.Gemm(blas.NoTrans, blas.Trans, n, h.hidden, h.out, 1, h.dy, h.out, h.w2, h.out, 0, h.dA, h.hidden)
	for i, v := range h.h {
		h.dA[i] = T(float64(h.dA[i]) * geluGrad(float64(v)))
	}
	affineBackward(h.gw1, h.gb1, h.dA, x, n, h.in, h.hidden)
}

// affineBackward adds xᵀ·dy to gw and the column sums of dy to gb.
func affineBackward[T blas.Float](gw, gb, dy, x []T, n, in, out int) {
	blas.Gemm(blas.Trans, blas.NoTrans, in, out, n, 1, x, in, dy, out, 1, gw, out)
	for i := range n {
		row := dy[i*out : (i+1)*out]
		for j, v := range row {
			gb[j] += v
		}
	}
}

// gelu is x·Φ(x), PyTorch's exact GELU.
func gelu(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

// geluGrad is Φ(x) + x·φ(x).
func geluGrad(x float64) float64 {
	return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*math.Exp(-0.5*x*x)/math.Sqrt(2*math.Pi)
}
