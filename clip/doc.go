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
// gather_with_grad modes, W ranks with b rows each therefore take the step
// one process takes with W·b rows, up to the rounding of sums taken in
// another order (the tests bound weights and losses after several steps by
// 1e-11 in float64 and 1e-5 in float32). Gradient accumulation is
// GradCache-style: features of all micro-batches are computed first without
// keeping activations, the loss gradient with respect to the features is
// taken once over the whole batch, and each micro-batch's heads are re-run
// and back-propagated, so an accumulated step equals the full-batch step.
//
// Training data are a Source of paired embeddings: .npy files (Npy:
// float32 or float16 of either byte order, shape [n, d]; a pair of files or
// a directory of shards), the built-in Synthetic set with a known
// alignment, or Memory. The order of the rows is a function of the seed,
// the epoch and the global batch only (blocks of rows in a random order,
// shuffled again within each global batch); each step, a rank reads only
// its slice of the global batch. Held-out rows are split over the ranks
// (LoadShard, Pairs), and Evaluate computes OpenCLIP's retrieval metrics
// (recall@1/5/10, mean and median rank, ties counted against the pair) and
// the validation loss across ranks. Save and Load checkpoint everything a
// run needs to continue as if never stopped: weights, optimizer state,
// step and schedule; since the data order does not depend on the number
// of ranks, a checkpoint resumes on any number of ranks that divides its
// global batch. LoadModel reads a checkpoint's model alone.
//
// Conventions are the repository's: destination first; misuse panics with a
// "clip: ..." message before any work; conditions a caller can act on (bad
// files, NaN rows, mismatched checkpoints, ranks that disagree) are errors
// that every rank returns, decided collectively (Agree), never a hang. A
// collective that fails may fail on some ranks only; such errors go to
// mpi.Fail, whose default ends the job with the cause printed once.
package clip
