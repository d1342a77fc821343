package loss

import "errors"

// Panic messages for misuse, checked before any work or communication.
const (
	errDim        = "loss: feature dimension must be positive"
	errNilComm    = "loss: nil communicator"
	errLenMatch   = "loss: image and text features differ in length"
	errLenDim     = "loss: feature length is not a multiple of the dimension"
	errGradLen    = "loss: gradient buffer length differs from the features"
	errAlgorithm  = "loss: unknown algorithm"
	errTile       = "loss: tile size must not be negative"
	errSigLipImpl = "loss: unknown SigLIP distribution method"
	errBudget     = "loss: memory budget must not be negative"
	errAutoPlan   = "loss: Plan, Memory and Predict need a concrete algorithm (ResolveClip and ResolveSigLip turn Auto into one)"
	errThreads    = "loss: thread count must not be negative"
	errNoNative   = "loss: internal error: native kernels not compiled in"
	errPrecision  = "loss: unknown precision, amp_bf16 with float64 features, or SumsBF16 without amp_bf16"
)

// Errors a caller can act on. Every rank returns the same error value (the
// decision is made on values all ranks agree on), wrapped with details.
var (
	// ErrShapeMismatch: ranks passed different batch sizes or dimensions,
	// or disagree on the loss configuration or the logit scale and bias.
	ErrShapeMismatch = errors.New("loss: ranks disagree")
	// ErrEmptyBatch: the batch has no rows.
	ErrEmptyBatch = errors.New("loss: empty batch")
	// ErrNonFinite: a feature, the logit scale or the bias is NaN or ±Inf.
	ErrNonFinite = errors.New("loss: non-finite input")
	// ErrNoFit: Auto found no algorithm whose memory fits the budget.
	ErrNoFit = errors.New("loss: no algorithm fits the memory budget")
)
