package test

import (
	"fmt"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// ClipOptions returns the loss options of a clip case with the algorithm.
func (c *Case) ClipOptions(algo loss.Algorithm, tile int) loss.ClipOptions {
	return loss.ClipOptions{
		LocalLoss:      c.LocalLoss != nil && *c.LocalLoss,
		GatherWithGrad: c.GatherWithGrad != nil && *c.GatherWithGrad,
		Algorithm:      algo,
		Tile:           tile,
	}
}

// Logit returns the case's logit scale and bias.
func (c *Case) Logit() loss.Logit {
	lg := loss.Logit{Scale: c.LogitScale}
	if c.LogitBias != nil {
		lg.Bias, lg.HasBias = *c.LogitBias, true
	}
	return lg
}

// RunClip computes rank comm.Rank() of the clip case c in float64 with the
// given algorithm and tile, and returns how its outputs differ from the
// golden ones (nil when they agree within the README's tolerances). It is
// collective over comm, whose size must be the case's world size.
func RunClip(comm mpi.Comm, c *Case, algo loss.Algorithm, tile int) ([]string, error) {
	return runRank(comm, c, loss.NewClipLoss[float64](comm, c.Dim, c.ClipOptions(algo, tile)), clipTols)
}

// RunClipBF16 is RunClip in float32 with loss.AMPBF16 (default tile),
// compared at the bf16 tolerances.
func RunClipBF16(comm mpi.Comm, c *Case, algo loss.Algorithm) ([]string, error) {
	o := c.ClipOptions(algo, 0)
	o.Precision = loss.AMPBF16
	return runRank(comm, c, asF64[*loss.ClipLoss[float32]]{loss.NewClipLoss[float32](comm, c.Dim, o)}, bf16Tols(c, BF16Abs))
}

// tols are the tolerances of a comparison: relative to each array's
// largest magnitude, and, when bias > 0, absolute for the bias gradient
// (ClipLoss's, whose golden value is rounding noise around 0).
type tols struct{ rel, abs, bias float64 }

var (
	clipTols = tols{RelTol, 0, ClipBiasAbs}
	sigTols  = tols{RelTol, 0, 0}
)

// bf16Tols are case c's tolerances in AMPBF16; bias as in tols.
func bf16Tols(c *Case, bias float64) tols { return tols{BF16Tol(c.LogitScale), BF16Abs, bias} }

// asF64 runs a float32 loss behind the float64 lossFunc.
type asF64[L interface {
	ForwardBackward(dImg, dTxt, img, txt []float32, lg loss.Logit) (loss.Result, error)
	Forward(img, txt []float32, lg loss.Logit) (float64, error)
}] struct{ l L }

func f32(s []float64) []float32 {
	t := make([]float32, len(s))
	for i, v := range s {
		t[i] = float32(v)
	}
	return t
}

func (a asF64[L]) ForwardBackward(dImg, dTxt, img, txt []float64, lg loss.Logit) (loss.Result, error) {
	di, dt := make([]float32, len(dImg)), make([]float32, len(dTxt))
	res, err := a.l.ForwardBackward(di, dt, f32(img), f32(txt), lg)
	for i := range di {
		dImg[i], dTxt[i] = float64(di[i]), float64(dt[i])
	}
	return res, err
}

func (a asF64[L]) Forward(img, txt []float64, lg loss.Logit) (float64, error) {
	return a.l.Forward(f32(img), f32(txt), lg)
}

// lossFunc is what ClipLoss and SigLipLoss have in common, in float64.
type lossFunc interface {
	ForwardBackward(dImg, dTxt, img, txt []float64, lg loss.Logit) (loss.Result, error)
	Forward(img, txt []float64, lg loss.Logit) (float64, error)
}

// runRank runs rank comm.Rank() of case c with l, forward and backward and
// forward only, and compares with the golden outputs.
func runRank(comm mpi.Comm, c *Case, l lossFunc, tol tols) ([]string, error) {
	if comm.Size() != c.WorldSize {
		return nil, fmt.Errorf("case needs %d ranks, communicator has %d", c.WorldSize, comm.Size())
	}
	rk := c.Ranks[comm.Rank()]
	return runOn(l, Flatten(rk.Image), Flatten(rk.Text), c.Logit(), rk.Outputs, tol)
}

// runSingle runs the case's single_process computation with l (over one
// rank) on all ranks' rows concatenated.
func runSingle(c *Case, l lossFunc, tol tols) ([]string, error) {
	var img, txt []float64
	for _, rk := range c.Ranks {
		img = append(img, Flatten(rk.Image)...)
		txt = append(txt, Flatten(rk.Text)...)
	}
	return runOn(l, img, txt, c.Logit(), c.Single, tol)
}

func runOn(l lossFunc, img, txt []float64, lg loss.Logit, want Outputs, tol tols) ([]string, error) {
	dImg, dTxt := make([]float64, len(img)), make([]float64, len(txt))
	res, err := l.ForwardBackward(dImg, dTxt, img, txt, lg)
	if err != nil {
		return nil, err
	}
	fwd, err := l.Forward(img, txt, lg)
	if err != nil {
		return nil, err
	}
	return compareOutputs(res, fwd, dImg, dTxt, want, tol), nil
}

// compareOutputs lists the differences between a result and golden outputs.
func compareOutputs(res loss.Result, fwdLoss float64, dImg, dTxt []float64, want Outputs, tol tols) []string {
	var bad []string
	add := func(s string) {
		if s != "" {
			bad = append(bad, s)
		}
	}
	add(MismatchAbsRel("loss", []float64{res.Loss}, []float64{want.Loss}, tol.rel, tol.abs))
	add(MismatchAbsRel("Forward loss", []float64{fwdLoss}, []float64{want.Loss}, tol.rel, tol.abs))
	add(MismatchAbsRel("grad_image_features", dImg, Flatten(want.GradImage), tol.rel, tol.abs))
	add(MismatchAbsRel("grad_text_features", dTxt, Flatten(want.GradText), tol.rel, tol.abs))
	add(MismatchAbsRel("grad_logit_scale", []float64{res.GradScale}, []float64{want.GradScale}, tol.rel, tol.abs))
	if want.GradBias != nil {
		if tol.bias > 0 {
			add(MismatchAbs("grad_logit_bias", res.GradBias, *want.GradBias, tol.bias))
		} else {
			add(MismatchAbsRel("grad_logit_bias", []float64{res.GradBias}, []float64{*want.GradBias}, tol.rel, tol.abs))
		}
	}
	return bad
}

// RunClipSingle computes the case's single_process outputs: all ranks' rows
// concatenated on one rank (W = 1).
func RunClipSingle(c *Case, algo loss.Algorithm, tile int) ([]string, error) {
	return runSingle(c, loss.NewClipLoss[float64](mpi.Self(), c.Dim, c.ClipOptions(algo, tile)), clipTols)
}
