package clip

import "errors"

// Panic messages for misuse, checked before any work or communication.
const (
	errNilComm    = "clip: nil communicator"
	errNilLoss    = "clip: nil loss"
	errNilData    = "clip: nil training data"
	errDims       = "clip: dimensions must be positive"
	errHidden     = "clip: MLP hidden width must be positive"
	errHead       = "clip: unknown head kind"
	errBatch      = "clip: batch size and accumulation must be positive"
	errBatchLen   = "clip: batch length does not match the configured rows and dimensions"
	errFeatureLen = "clip: feature buffer has the wrong length"
	errParamLen   = "clip: parameter vectors differ in length"
	errEpochs     = "clip: epochs must be positive"
	errRows       = "clip: row range out of bounds"
	errBufLen     = "clip: destination buffer has the wrong length"
)

// Errors a caller can act on. Functions that are collective return the same
// error on every rank: the one that failed first in rank order, wrapped in a
// *RankError that names it; errors.Is finds these values on every rank.
var (
	// ErrData: a data file is missing, unreadable or malformed, the image
	// and text sets disagree in rows, a dtype is not float32 or float16, a
	// row holds NaN or ±Inf, or there are too few rows for the batch.
	ErrData = errors.New("clip: bad data")
	// ErrCheckpoint: a checkpoint is corrupt, truncated, or was written by
	// a run whose model, data layout or schedule differs from this one.
	ErrCheckpoint = errors.New("clip: bad checkpoint")
	// ErrConfig: the ranks were given different configurations, or a
	// setting is NaN.
	ErrConfig = errors.New("clip: ranks disagree on the configuration")
	// ErrDone: the trainer has taken every step of its schedule.
	ErrDone = errors.New("clip: training finished")
)
