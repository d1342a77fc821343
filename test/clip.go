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
	return runRank(comm, c, loss.NewClipLoss[float64](comm, c.Dim, c.ClipOptions(algo, tile)), true)
}

// lossFunc is what ClipLoss and SigLipLoss have in common, in float64.
type lossFunc interface {
	ForwardBackward(dImg, dTxt, img, txt []float64, lg loss.Logit) (loss.Result, error)
	Forward(img, txt []float64, lg loss.Logit) (float64, error)
}

// runRank runs rank comm.Rank() of case c with l, forward and backward and
// forward only, and compares with the golden outputs.
func runRank(comm mpi.Comm, c *Case, l lossFunc, clipBias bool) ([]string, error) {
	if comm.Size() != c.WorldSize {
		return nil, fmt.Errorf("case needs %d ranks, communicator has %d", c.WorldSize, comm.Size())
	}
	rk := c.Ranks[comm.Rank()]
	return runOn(l, Flatten(rk.Image), Flatten(rk.Text), c.Logit(), rk.Outputs, clipBias)
}

// runSingle runs the case's single_process computation with l (over one
// rank) on all ranks' rows concatenated.
func runSingle(c *Case, l lossFunc, clipBias bool) ([]string, error) {
	var img, txt []float64
	for _, rk := range c.Ranks {
		img = append(img, Flatten(rk.Image)...)
		txt = append(txt, Flatten(rk.Text)...)
	}
	return runOn(l, img, txt, c.Logit(), c.Single, clipBias)
}

func runOn(l lossFunc, img, txt []float64, lg loss.Logit, want Outputs, clipBias bool) ([]string, error) {
	dImg, dTxt := make([]float64, len(img)), make([]float64, len(txt))
	res, err := l.ForwardBackward(dImg, dTxt, img, txt, lg)
	if err != nil {
		return nil, err
	}
	fwd, err := l.Forward(img, txt, lg)
	if err != nil {
		return nil, err
	}
	return compareOutputs(res, fwd, dImg, dTxt, want, clipBias), nil
}

// compareOutputs lists the differences between a result and golden outputs.
// clipBias selects the absolute tolerance for ClipLoss's bias gradient.
func compareOutputs(res loss.Result, fwdLoss float64, dImg, dTxt []float64, want Outputs, clipBias bool) []string {
	var bad []string
	add := func(s string) {
		if s != "" {
			bad = append(bad, s)
		}
	}
	add(Mismatch("loss", []float64{res.Loss}, []float64{want.Loss}, RelTol))
	add(Mismatch("Forward loss", []float64{fwdLoss}, []float64{want.Loss}, RelTol))
	add(Mismatch("grad_image_features", dImg, Flatten(want.GradImage), RelTol))
	add(Mismatch("grad_text_features", dTxt, Flatten(want.GradText), RelTol))
	add(Mismatch("grad_logit_scale", []float64{res.GradScale}, []float64{want.GradScale}, RelTol))
	if want.GradBias != nil {
		if clipBias {
			add(MismatchAbs("grad_logit_bias", res.GradBias, *want.GradBias, ClipBiasAbs))
		} else {
			add(Mismatch("grad_logit_bias", []float64{res.GradBias}, []float64{*want.GradBias}, RelTol))
		}
	}
	return bad
}

// RunClipSingle computes the case's single_process outputs: all ranks' rows
// concatenated on one rank (W = 1).
func RunClipSingle(c *Case, algo loss.Algorithm, tile int) ([]string, error) {
	return runSingle(c, loss.NewClipLoss[float64](mpi.Self(), c.Dim, c.ClipOptions(algo, tile)), true)
}
