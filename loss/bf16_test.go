package loss

import (
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// rounded returns p with its features rounded to bf16: the operands an
// AMPBF16 step multiplies.
func rounded(p *problem) *problem {
	q := *p
	q.img, q.txt = make([]float64, len(p.img)), make([]float64, len(p.txt))
	for i := range p.img {
		q.img[i] = float64(blas.ToBF16(float32(p.img[i])).Float32())
		q.txt[i] = float64(blas.ToBF16(float32(p.txt[i])).Float32())
	}
	return &q
}

// TestBF16 checks AMPBF16 in every algorithm, mode and SigLIP method, at
// world sizes 1 to 4 with odd and even dimensions and tiles that do and do
// not divide the blocks, against the float64 reference on the features
// rounded to bf16. The forward pass multiplies exactly those operands
// (products of bf16 numbers are exact in float32), so the loss agrees to
// float32 rounding; the gradients also carry the bf16 rounding of the
// gradient tiles (relative 2⁻⁹ per entry) and, with SumsBF16, of the text
// gradients' partial sums at every hop. Measured worst, relative to the
// largest value: image gradients 2.8e-3, text gradients 5.4e-3 (with
// SumsBF16), scale gradient 2.1e-5, loss 1.4e-7; the bias gradient, whose
// values are near 0, to 1e-7 absolute. The tolerances leave a factor of
// 1.5 to 7.
func TestBF16(t *testing.T) {
	for _, sh := range []struct{ w, b, d int }{{1, 5, 3}, {2, 4, 8}, {3, 5, 7}, {4, 6, 5}} {
		p := newProblem(uint64(sh.w*17+sh.b), sh.w, sh.b, sh.d, 20)
		p.lg.Bias, p.lg.HasBias = -1.5, true
		q := rounded(p)
		for _, m := range modes {
			ref := solve[float64](t, q, ClipOptions{LocalLoss: m.LocalLoss, GatherWithGrad: m.GatherWithGrad, Algorithm: Naive})
			for _, algo := range Algorithms() {
				for _, tile := range []int{0, 2} {
					for _, sums := range []bool{false, true} {
						opt := m
						opt.Algorithm, opt.Tile, opt.Precision, opt.SumsBF16 = algo, tile, AMPBF16, sums
						t.Run(fmt.Sprintf("w=%d/d=%d/%s/%s/tile=%d/sums_bf16=%v", sh.w, sh.d, m.Mode(), algo, tile, sums), func(t *testing.T) {
							checkBF16(t, solve[float32](t, p, opt), ref)
						})
					}
				}
			}
		}
		ref := sigRef(q)
		for _, impl := range SigLipImpls() {
			for _, tile := range []int{0, 2} {
				for _, sums := range []bool{false, true} {
					opt := SigLipOptions{Impl: impl, Tile: tile, Precision: AMPBF16, SumsBF16: sums}
					t.Run(fmt.Sprintf("w=%d/d=%d/siglip/%s/tile=%d/sums_bf16=%v", sh.w, sh.d, impl, tile, sums), func(t *testing.T) {
						checkBF16(t, solveWith(t, p, sigLoss[float32](p, opt)), ref)
					})
				}
			}
		}
	}
}

func checkBF16(t *testing.T, got, ref *outputs) {
	t.Helper()
	for _, s := range []string{
		diff("loss", got.loss, ref.loss, 1e-6, 0),
		diff("grad scale", got.gs, ref.gs, 1e-4, 0),
		diff("grad bias", got.gb, ref.gb, 1e-4, 1e-7),
		diff("grad image", got.dImg, ref.dImg, 8e-3, 0),
		diff("grad text", got.dTxt, ref.dTxt, 8e-3, 0),
	} {
		if s != "" {
			t.Error(s)
		}
	}
}

// TestBF16Panics checks that AMPBF16 is refused for float64 features.
func TestBF16Panics(t *testing.T) {
	c := mpi.NewGroup(1)[0]
	for name, f := range map[string]func(){
		"clip":    func() { NewClipLoss[float64](c, 4, ClipOptions{Precision: AMPBF16}) },
		"siglip":  func() { NewSigLipLoss[float64](c, 4, SigLipOptions{Precision: AMPBF16}) },
		"unknown": func() { NewClipLoss[float32](c, 4, ClipOptions{Precision: 7}) },
		"sums":    func() { NewClipLoss[float32](c, 4, ClipOptions{SumsBF16: true}) },
	} {
		func() {
			defer func() {
				if r := recover(); r != errPrecision {
					t.Errorf("%s: recovered %v, want %q", name, r, errPrecision)
				}
			}()
			f()
		}()
	}
}

// TestBF16NoAllocations checks that steady-state AMPBF16 steps allocate
// nothing, for every algorithm and SigLIP method, on two ranks.
func TestBF16NoAllocations(t *testing.T) {
	p := newProblem(9, 2, 6, 8, 10)
	var news []func(c mpi.Comm) stepper[float32]
	for _, m := range modes {
		for _, algo := range Algorithms() {
			opt := m
			opt.Algorithm, opt.Tile, opt.Precision, opt.SumsBF16 = algo, 5, AMPBF16, true
			news = append(news, func(c mpi.Comm) stepper[float32] { return NewClipLoss[float32](c, p.d, opt) })
		}
	}
	for _, impl := range SigLipImpls() {
		news = append(news, sigLoss[float32](p, SigLipOptions{Impl: impl, Tile: 3, Precision: AMPBF16, SumsBF16: true}))
	}
	for i, mk := range news {
		if n := stepAllocs(p, mk); n != 0 {
			t.Errorf("loss %d: %v allocations per step, want 0", i, n)
		}
	}
}

// openclipBF16 is OpenCLIP's ClipLoss in one process (the global loss),
// as CPU autocast to bf16 computes it, on the n×d features img and txt:
// the matmul rounds its operands, s·I and T, to bf16, sums in float32 and
// rounds the logits to bf16; cross_entropy runs in float32 (here float64,
// in OpenCLIP's favour) on those logits; the backward matmuls round dS to
// bf16 and return bf16 gradients of s·I and T. It returns the loss, the
// scale gradient and the feature gradients.
func openclipBF16(img, txt []float64, n, d int, s float64) (loss, gs float64, dImg, dTxt []float64) {
	a, bt := make([]float32, n*d), make([]float32, n*d)
	for i := range img {
		a[i] = blas.ToBF16(float32(s * img[i])).Float32()
		bt[i] = blas.ToBF16(float32(txt[i])).Float32()
	}
	const rows, workers = 512, 2
	bf := func(v float32) float32 { return blas.ToBF16(v).Float32() }
	// panels runs f on every panel of rows, each worker on its own share,
	// with its own logit buffer x = the panel's bf16 logits.
	panels := func(f func(w, r0 int, x []float32)) {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				x := make([]float32, rows*n)
				for r0 := w * rows; r0 < n; r0 += workers * rows {
					blas.Sgemm(blas.NoTrans, blas.Trans, rows, n, d, 1, a[r0*d:], d, bt, d, 0, x, n)
					for i := range x {
						x[i] = bf(x[i])
					}
					f(w, r0, x)
				}
			})
		}
		wg.Wait()
	}
	// Pass 1: the bf16 logits' row and column log-sum-exps (columns per
	// worker, merged).
	rowL, diag := make([]float64, n), make([]float64, n)
	var colM, colS [workers][]float64
	for w := range workers {
		colM[w], colS[w] = make([]float64, n), make([]float64, n)
		fill(colM[w], math.Inf(-1))
	}
	panels(func(w, r0 int, x []float32) {
		cm, cs := colM[w], colS[w]
		for i := range rows {
			xi := x[i*n : (i+1)*n]
			m := math.Inf(-1)
			for j, v := range xi {
				z := float64(v)
				m = math.Max(m, z)
				if z > cm[j] {
					cs[j] *= math.Exp(cm[j] - z)
					cm[j] = z
				}
				cs[j] += math.Exp(z - cm[j])
			}
			var sum float64
			for _, v := range xi {
				sum += math.Exp(float64(v) - m)
			}
			rowL[r0+i] = m + math.Log(sum)
			diag[r0+i] = float64(xi[r0+i])
		}
	})
	colL := make([]float64, n)
	for j := range n {
		m := math.Max(colM[0][j], colM[1][j])
		colL[j] = m + math.Log(colS[0][j]*math.Exp(colM[0][j]-m)+colS[1][j]*math.Exp(colM[1][j]-m))
		loss += (rowL[j] - diag[j]) + (colL[j] - diag[j])
	}
	loss /= float64(2 * n)
	// Pass 2: dS in bf16, the gradients of s·I (rounded to bf16) and of T
	// (float32 sums over the panels, rounded at the end).
	c := 1 / float64(2*n)
	dImg, dTxt = make([]float64, n*d), make([]float64, n*d)
	var gB [workers][]float32
	var gsw [workers]float64
	panels(func(w, r0 int, x []float32) {
		if gB[w] == nil {
			gB[w] = make([]float32, n*d)
		}
		for i := range rows {
			xi := x[i*n : (i+1)*n]
			for j, v := range xi {
				z := float64(v)
				g := c * (math.Exp(z-rowL[r0+i]) + math.Exp(z-colL[j]))
				if j == r0+i {
					g -= 2 * c
				}
				xi[j] = bf(float32(g))
			}
		}
		gA := make([]float32, rows*d)
		blas.Sgemm(blas.NoTrans, blas.NoTrans, rows, d, n, 1, x, n, bt, d, 0, gA, d)
		blas.Sgemm(blas.Trans, blas.NoTrans, n, d, rows, 1, x, n, a[r0*d:], d, 1, gB[w], d)
		for k, v := range gA {
			ga := float64(bf(v))
			dImg[r0*d+k] = s * ga
			gsw[w] += ga * img[r0*d+k]
		}
	})
	gs = gsw[0] + gsw[1]
	for k := range dTxt {
		dTxt[k] = float64(bf(gB[0][k] + gB[1][k]))
	}
	return loss, gs, dImg, dTxt
}

// TestBF16AtScale measures AMPBF16 against float64 at N = 32768 and logit
// scale 100 (4 in-process ranks of 8192 rows, d = 32, the global loss:
// OpenCLIP's default), beside OpenCLIP's own amp_bf16 computation on the
// same inputs (openclipBF16), and checks that clipmpi's is the more
// accurate in every output: its logits stay float32, OpenCLIP's are
// rounded to bf16. The inputs are bf16 numbers, as an amp_bf16 model hands
// them to the loss, so that the errors are the computations' own (rounding
// float32 features to bf16 would add a perturbation of the inputs, the same
// in kind for both). The figures are in the package doc.
func TestBF16AtScale(t *testing.T) {
	skipAtScale(t)
	p := rounded(newProblem(101, 4, 8192, 32, 100))
	want := solve[float64](t, p, ClipOptions{Algorithm: Tiled})
	n := p.w * p.b
	ol, ogs, odi, odt := openclipBF16(p.img, p.txt, n, p.d, p.lg.Scale)
	// Every rank's loss and scale gradient are the global ones.
	theirs := scaleErrs(&outputs{loss: []float64{ol}, gs: []float64{ogs}, dImg: odi, dTxt: odt},
		&outputs{loss: want.loss[:1], gs: want.gs[:1], dImg: want.dImg, dTxt: want.dTxt})
	t.Logf("OpenCLIP amp_bf16: relative error loss %.2g, scale grad %.2g, image grads %.2g, text grads %.2g", theirs[0], theirs[1], theirs[2], theirs[3])
	for _, algo := range []Algorithm{Fused, Tiled, Ring} {
		t.Run(algo.String(), func(t *testing.T) {
			e := scaleErrs(solve[float32](t, p, ClipOptions{Algorithm: algo, Precision: AMPBF16}), want)
			t.Logf("clipmpi amp_bf16 %s: relative error loss %.2g, scale grad %.2g, image grads %.2g, text grads %.2g", algo, e[0], e[1], e[2], e[3])
			// Bounds: float32 sums for the loss and scale gradient (1e-8,
			// 1.5e-7 measured), the bf16 rounding of dS (2⁻⁹) for the
			// feature gradients (2.9e-3 measured).
			bound := [4]float64{1e-6, 1e-5, 1e-2, 1e-2}
			for i, what := range []string{"loss", "scale grad", "image grads", "text grads"} {
				if !(e[i] < theirs[i] && e[i] < bound[i]) {
					t.Errorf("%s: relative error %.3g, OpenCLIP's amp_bf16 %.3g, bound %g", what, e[i], theirs[i], bound[i])
				}
			}
		})
	}
}
