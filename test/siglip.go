package test

import (
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// SigLipOptions returns the loss options of a siglip case: its dist_impl,
// or impl when override is set, and its chunk size as the tile.
func (c *Case) SigLipOptions(impl loss.SigLipImpl, override bool) (loss.SigLipOptions, error) {
	opt := loss.SigLipOptions{Impl: impl}
	if !override && c.SigLipDistImpl != nil {
		m, err := loss.ParseSigLipImpl(*c.SigLipDistImpl)
		if err != nil {
			return opt, err
		}
		opt.Impl = m
	}
	if c.SigLipChunkSize != nil {
		opt.Tile = *c.SigLipChunkSize
	}
	return opt, nil
}

// RunSigLip computes rank comm.Rank() of the siglip case c in float64 with
// the case's dist_impl (or impl when override is set; every method gives
// the same numbers) and returns how its outputs differ from the golden ones.
func RunSigLip(comm mpi.Comm, c *Case, impl loss.SigLipImpl, override bool) ([]string, error) {
	opt, err := c.SigLipOptions(impl, override)
	if err != nil {
		return nil, err
	}
	return runRank(comm, c, loss.NewSigLipLoss[float64](comm, c.Dim, opt), sigTols)
}

// RunSigLipBF16 is RunSigLip (the method impl) in float32 with
// loss.AMPBF16, compared at the bf16 tolerances.
func RunSigLipBF16(comm mpi.Comm, c *Case, impl loss.SigLipImpl) ([]string, error) {
	opt, err := c.SigLipOptions(impl, true)
	if err != nil {
		return nil, err
	}
	opt.Precision = loss.AMPBF16
	return runRank(comm, c, asF64[*loss.SigLipLoss[float32]]{loss.NewSigLipLoss[float32](comm, c.Dim, opt)}, bf16Tols(c, 0))
}

// RunSigLipSingle computes the case's single_process outputs on one rank.
func RunSigLipSingle(c *Case) ([]string, error) {
	opt, err := c.SigLipOptions(0, false)
	if err != nil {
		return nil, err
	}
	return runSingle(c, loss.NewSigLipLoss[float64](mpi.Self(), c.Dim, opt), sigTols)
}
