// Package clip trains CLIP-style projection heads across the ranks of a
// communicator: LiT-style alignment of image and text embeddings that a
// frozen encoder already produced, at global batch sizes that one process
// cannot hold.
//
// A Model is two projection heads (image and text; linear, or a two-layer
// MLP with GELU) from the input embeddings to a shared space, each followed
// by L2 normalisation, plus a learnable logit scale stored as its logarithm
// (OpenCLIP's logit_scale, initialised to ln(1/0.07), clamped to [0, ln 100]
// after every step) and an optional logit bias (SigLIP). All parameters live
// in one flat vector, so that gradient averaging, the optimizer and
// checkpoints each handle one array. Forward and backward are written by
// hand and checked against finite differences.
//
// A Trainer runs data-parallel steps with DDP semantics: every rank starts
// from rank 0's weights, computes the loss over the global batch with a Loss
// (loss.ClipLoss, or any type with the same two methods), back-propagates
// through its own rows, and averages the parameter gradients over ranks
// before AdamW (OpenCLIP's exclusion of gains, biases and the logit scale
// from weight decay) under a cosine schedule with linear warmup. In the
// gather_with_grad modes, W ranks with b rows each therefore take exactly
// the step one process takes with W·b rows. Gradient accumulation is
// GradCache-style: features of all micro-batches are computed first without
// keeping activations, the loss gradient with respect to the features is
// taken once over the whole batch, and each micro-batch's heads are re-run
// and back-propagated, so an accumulated step equals the full-batch step.
//
// Data are paired embeddings (Pairs): .npy files (float32 or float16, shape
// [n, d]; a pair of files or a directory of shards) of which each rank reads
// only its own rows, or the built-in Synthetic set with a known alignment.
// Evaluate computes image→text and text→image recall@1/5/10 across ranks.
// Save and Load checkpoint everything a run needs to continue as if never
// stopped: weights, optimizer state, step, schedule and the shuffle RNG.
//
// Conventions are the repository's: destination first; misuse panics with a
// "clip: ..." message before any work; conditions a caller can act on (bad
// files, NaN rows, mismatched checkpoints, ranks that disagree) are errors
// that every rank returns, decided collectively (Agree), never a hang. A
// collective that fails may fail on some ranks only; such errors go to
// mpi.Fail, whose default ends the job with the cause printed once.
package clip
