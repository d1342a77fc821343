// Package loss computes OpenCLIP's contrastive losses across the ranks of an
// mpi.Comm, forward and backward, with exactly OpenCLIP's per-rank results:
//
//   - ClipLoss: softmax cross-entropy in both directions, with OpenCLIP's
//     local_loss and gather_with_grad options (ClipOptions), computed by one of
//     four algorithms (Naive, Fused, Tiled, Ring) that give the same numbers;
//   - SigLipLoss: the pairwise sigmoid loss, with OpenCLIP's four dist_impl
//     methods (Bidir, Shift, Reduce, Gather).
//
// Rank r passes its b rows of image and text features (b×d, row-major) and
// the logit scale and bias (Logit); ForwardBackward returns its loss and the
// scale and bias gradients and writes its feature gradients. Both losses
// work in float32 and float64 (the type parameter), accumulate their
// statistics in float64, and allocate nothing after the first call with the
// largest batch. Plan describes the GEMMs and the memory of a step.
//
// Misuse (lengths that do not fit, a nil communicator) panics with a
// "loss: ..." message before any communication. What a caller can act on —
// ranks that disagree on shapes, element type, options or logit parameters,
// an empty batch, NaN or Inf on any rank — is returned as an error, the same
// on every rank: a call first agrees on all of it with one all-reduce.
//
// A collective or transfer that fails inside a call may fail on some ranks
// only, and the others would wait for ever; Forward and ForwardBackward hand
// such an error to mpi.Fail, which by default prints "mpi: rank R of W:
// CAUSE" once and ends the job (MPI_Abort; on an in-process group, whose
// Abort returns, the failing rank's call returns a *mpi.Failure and every
// other rank's mpi.ErrAborted). A library caller that wants the error back
// installs a hook that returns (mpi.WithFailHook(comm, mpi.ReturnFailure)):
// the failing rank's call then returns a *mpi.Failure and nothing ends;
// the other ranks may still be blocked, so the caller must end the job.
//
// Each algorithm is written once, as a schedule of GEMMs, kernel passes,
// transfers and collectives on named buffers (schedule.go, ring.go), and
// read by three engines: exec computes, a timeline replays it against
// machine rates (Predict), a recorder lists its work and memory (Plan,
// Memory); see docs/ARCHITECTURE.md in the repository.
//
// Inside a rank, the GEMMs run on the BLAS's threads (blas.SetThreads) and
// the elementwise kernels (softmax statistics, gradient and sigmoid tiles,
// finiteness scans, sums over b·d or N·d) on Options.Threads goroutines
// (default blas.Threads()). A kernel splits its tile into row blocks that
// depend only on the shape and adds the blocks' partial sums in block
// order, so results are the same bit for bit for every thread count. In
// float32 the kernels are C when cgo is on: AVX-512, AVX2+FMA or the
// baseline ISA on amd64, chosen at run time, and NEON on arm64; KernelISA
// names the one in use. float64, and float32 without cgo, run them in Go.
//
// float32 accuracy. In float32 the features, logits and gradients are
// float32 and every statistic and sum is float64. Against the float64 path
// at N = 32768 and logit scale 100 (TestFloat32AtScale: 4 ranks of 8192
// rows, d = 32, local_gwg; SigLIP with bias -10), the largest deviation
// relative to the largest float64 value was, for ClipLoss (fused, tiled,
// ring): 8e-8 for the losses, 2.1e-7 for the scale gradients, 2.9e-6 for
// the image and 3.5e-6 for the text gradients (naive, at N = 8192: 2.2e-7,
// 2.5e-7, 4.2e-6, 3.0e-6); for SigLIP (every method): 4.8e-8, 7.5e-9,
// 4.6e-7 and 4.2e-7. The feature gradients' error is that of float32 logits
// at scale 100 (1e-7 relative rounding of s, times |s| up to 100, enters
// exp), not of the length of the sums.
//
// amp_bf16 (Precision AMPBF16, float32 losses): OpenCLIP's default
// arithmetic. GEMM operands are rounded to bf16 once (the caller's
// features at the start of a step, travelling between ranks as bf16; each
// gradient tile by the kernel that writes it) and multiplied by
// blas.GemmBF16 with float32 sums; logits and gradient tiles are float32,
// statistics float64. At N = 32768 and logit scale 100 on bf16 features
// (TestBF16AtScale: 4 ranks of 8192 rows, d = 32, the global loss; fused,
// tiled and ring alike) the deviation from float64 relative to the largest
// value was 1e-8 for the loss, 1.5e-7 for the scale gradient, 2.9e-3 and
// 2.7e-3 for the image and text gradients (the bf16 rounding of the
// gradient tiles); OpenCLIP's own amp_bf16 computation on the same inputs,
// whose logits are rounded to bf16, gave 8.4e-4, 3.8e-3, 5.2e-2 and 7.5e-2.
//
// The references are OpenCLIP's src/open_clip/loss.py (the semantics, checked
// against its outputs in ../test), FlashAttention's and Inf-CL's online
// log-sum-exp over tiles, and Inf-CL's ring (Wang et al. 2024) for moving
// feature blocks instead of gathering them.
package loss
