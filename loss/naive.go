package loss

import (
	"fmt"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// naiveClip is OpenCLIP's ClipLoss as written, with autograd's backward
// done by hand; it is the reference the fast algorithms are tested against.
//
// Global modes (and W = 1): every rank gathers both feature sets and builds
// the N×N logits_per_image S = s·I_all·T_allᵀ; logits_per_text is Sᵀ. One
// GEMM forward, two backward (dI_all = s·dX·T_all, dT_all = s·dXᵀ·I_all with
// dX = dS + dUᵀ), all of N·N·d. Without gather_with_grad rank r keeps its own
// rows (OpenCLIP puts the local tensor back into the gathered list); with it
// the gradients go through all-gather's backward, a SUM reduce-scatter.
//
// Local modes: S_r = s·I_r·T_allᵀ and U_r = s·T_r·I_allᵀ, both b×N with
// labels r·b + i; two GEMMs forward and two (direct paths) or four
// (gather_with_grad) backward.
type naiveClip[T blas.Float] struct {
	comm mpi.Comm
	k    kernels[T]

	iall, tall []T // N×d gathered features
	x, y       []T // logits_per_image and logits_per_text before scaling
	gi, gt     []T // N×d gradient sources for reduce-scatter
	own        []T // b×d reduce-scatter destination
	m1, l1     []float64
	m2, l2     []float64
}

func (a *naiveClip[T]) run(dImg, dTxt, img, txt []T, lg Logit, st *clipStep) (Result, error) {
	b, n, d, r := st.b, st.n, st.d, st.rank
	scale, bias := lg.Scale, 0.0
	if lg.HasBias {
		bias = lg.Bias
	}
	a.iall, a.tall = grow(a.iall, n*d), grow(a.tall, n*d)
	if err := mpi.Allgather(a.comm, a.iall, img); err != nil {
		return Result{}, fmt.Errorf("loss: gathering image features: %w", err)
	}
	if err := mpi.Allgather(a.comm, a.tall, txt); err != nil {
		return Result{}, fmt.Errorf("loss: gathering text features: %w", err)
	}
	if st.local {
		return a.local(dImg, dTxt, img, txt, scale, bias, st)
	}

	// Global: X = I_all·T_allᵀ (N×N) and its transpose Y.
	a.x, a.y = grow(a.x, n*n), grow(a.y, n*n)
	blas.Gemm(blas.NoTrans, blas.Trans, n, n, d, 1, a.iall, d, a.tall, d, 0, a.x, n)
	transpose(&a.k, a.y, a.x, n, false)
	a.m1, a.l1 = grow(a.m1, n), grow(a.l1, n)
	a.m2, a.l2 = grow(a.m2, n), grow(a.l2, n)
	rowStats(&a.k, a.x, n, n, n, scale, bias, a.m1, a.l1)
	rowStats(&a.k, a.y, n, n, n, scale, bias, a.m2, a.l2)
	loss := (rowLoss(a.x, n, n, 0, scale, bias, a.m1, a.l1) + rowLoss(a.y, n, n, 0, scale, bias, a.m2, a.l2)) / float64(2*n)
	if !st.backward {
		return Result{Loss: loss}, nil
	}
	c := 1 / float64(2*n)
	sx1, sb1 := rowGrad(&a.k, a.x, n, n, n, 0, scale, bias, c, a.m1, a.l1)
	sx2, sb2 := rowGrad(&a.k, a.y, n, n, n, 0, scale, bias, c, a.m2, a.l2)
	transpose(&a.k, a.x, a.y, n, true) // dX = dS + dUᵀ
	a.gi, a.gt = grow(a.gi, n*d), grow(a.gt, n*d)
	blas.Gemm(blas.NoTrans, blas.NoTrans, n, d, n, T(scale), a.x, n, a.tall, d, 0, a.gi, d)
	blas.Gemm(blas.Trans, blas.NoTrans, n, d, n, T(scale), a.x, n, a.iall, d, 0, a.gt, d)
	if st.gwg {
		if err := mpi.ReduceScatter(a.comm, dImg, a.gi); err != nil {
			return Result{}, fmt.Errorf("loss: all-gather backward (images): %w", err)
		}
		if err := mpi.ReduceScatter(a.comm, dTxt, a.gt); err != nil {
			return Result{}, fmt.Errorf("loss: all-gather backward (texts): %w", err)
		}
	} else {
		copy(dImg, a.gi[r*b*d:(r+1)*b*d])
		copy(dTxt, a.gt[r*b*d:(r+1)*b*d])
	}
	return Result{Loss: loss, GradScale: sx1 + sx2, GradBias: sb1 + sb2}, nil
}

// local is the local_loss branch with W > 1.
func (a *naiveClip[T]) local(dImg, dTxt, img, txt []T, scale, bias float64, st *clipStep) (Result, error) {
	b, n, d, r := st.b, st.n, st.d, st.rank
	a.x, a.y = grow(a.x, b*n), grow(a.y, b*n)
	blas.Gemm(blas.NoTrans, blas.Trans, b, n, d, 1, img, d, a.tall, d, 0, a.x, n)
	blas.Gemm(blas.NoTrans, blas.Trans, b, n, d, 1, txt, d, a.iall, d, 0, a.y, n)
	a.m1, a.l1 = grow(a.m1, b), grow(a.l1, b)
	a.m2, a.l2 = grow(a.m2, b), grow(a.l2, b)
	rowStats(&a.k, a.x, n, b, n, scale, bias, a.m1, a.l1)
	rowStats(&a.k, a.y, n, b, n, scale, bias, a.m2, a.l2)
	loss := (rowLoss(a.x, n, b, r*b, scale, bias, a.m1, a.l1) + rowLoss(a.y, n, b, r*b, scale, bias, a.m2, a.l2)) / float64(2*b)
	if !st.backward {
		return Result{Loss: loss}, nil
	}
	c := 1 / float64(2*b)
	sx1, sb1 := rowGrad(&a.k, a.x, n, b, n, r*b, scale, bias, c, a.m1, a.l1) // dS
	sx2, sb2 := rowGrad(&a.k, a.y, n, b, n, r*b, scale, bias, c, a.m2, a.l2) // dU
	// Direct paths: image_features @ all_text_features.T and
	// text_features @ all_image_features.T.
	blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, n, T(scale), a.x, n, a.tall, d, 0, dImg, d)
	blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, n, T(scale), a.y, n, a.iall, d, 0, dTxt, d)
	if st.gwg {
		// Through the gathered tensors: every rank's dUᵀ·T_r lands on the
		// image rows it came from, and dSᵀ·I_r on the text rows.
		a.gi, a.gt = grow(a.gi, n*d), grow(a.gt, n*d)
		blas.Gemm(blas.Trans, blas.NoTrans, n, d, b, T(scale), a.y, n, txt, d, 0, a.gi, d)
		blas.Gemm(blas.Trans, blas.NoTrans, n, d, b, T(scale), a.x, n, img, d, 0, a.gt, d)
		a.own = grow(a.own, b*d)
		if err := mpi.ReduceScatter(a.comm, a.own, a.gi); err != nil {
			return Result{}, fmt.Errorf("loss: all-gather backward (images): %w", err)
		}
		addTo(&a.k, dImg, a.own)
		if err := mpi.ReduceScatter(a.comm, a.own, a.gt); err != nil {
			return Result{}, fmt.Errorf("loss: all-gather backward (texts): %w", err)
		}
		addTo(&a.k, dTxt, a.own)
	}
	return Result{Loss: loss, GradScale: sx1 + sx2, GradBias: sb1 + sb2}, nil
}
