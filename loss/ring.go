package loss

import (
	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// ringClip is the Ring algorithm; until it lands it runs the Fused
// computation so that every algorithm name is usable.
type ringClip[T blas.Float] struct {
	comm mpi.Comm
	tile int
	blk  blockClip[T]
}

func (a *ringClip[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	a.blk.comm = a.comm
	return a.blk.run(dImg, dTxt, img, txt, lg, st)
}
