package mpi

import "errors"

// ErrAborted is returned by every call on an in-process group after one of
// its ranks called Abort.
var ErrAborted = errors.New("mpi: communicator aborted")

// Panic messages for local misuse, checked before any communication.
const (
	errShortDst = "mpi: len(dst) does not match the layout"
	errShortSrc = "mpi: len(src) does not match the layout"
	errOverlap  = "mpi: dst overlaps src"
	errBadRank  = "mpi: rank out of range"
	errBadOp    = "mpi: invalid reduction operator"
	errBadSize  = "mpi: group size must be at least 1"

	errTooManyRequests = "mpi: more than MaxRequests requests outstanding on one Comm"
	errTooLong         = "mpi: buffer longer than an MPI count (2^31-1 elements)"
)
