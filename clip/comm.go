package clip

import (
	"errors"
	"fmt"
	"math"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// RankError is an error that one rank met, as every rank of a collective
// call reports it: Rank is the lowest rank that failed and Err its error
// (on the other ranks, an error with the same message that unwraps to the
// same sentinel: ErrData, ErrCheckpoint, ...).
type RankError struct {
	Rank int
	Err  error
}

func (e *RankError) Error() string { return fmt.Sprintf("rank %d: %v", e.Rank, e.Err) }

// Unwrap returns Err.
func (e *RankError) Unwrap() error { return e.Err }

// remoteError is another rank's error: its message, and the sentinel it
// wrapped so that errors.Is works on every rank.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// sentinels are the errors whose identity Agree carries across ranks, by
// index + 1 (0: none of them).
var sentinels = []error{
	ErrData, ErrCheckpoint, ErrConfig, ErrDone,
	loss.ErrShapeMismatch, loss.ErrEmptyBatch, loss.ErrNonFinite,
}

// maxMessage bounds the bytes of an error message that Agree carries to the
// other ranks; a longer message reaches them cut, ending in "...".
const maxMessage = 1024

// Agree is collective: every rank passes its own outcome, and every rank
// returns nil if all passed nil, and otherwise the error of the lowest rank
// that failed, as a *RankError (with one rank, err itself). An err that
// mpi.OutOfStep recognises (a failure that went through mpi.Fail, whose
// hook returned) is returned at once: the ranks are out of step, and
// agreeing could wait for ever. It costs two
// all-reduces when some rank failed, one otherwise. If the communication
// itself fails, the ranks are out of step, and the error goes to mpi.Fail
// (by default the job ends; Agree returns only if comm's FailHook returns,
// with its error).
func Agree(comm mpi.Comm, err error) error {
	if comm.Size() == 1 || mpi.OutOfStep(err) {
		return err
	}
	w, r := comm.Size(), comm.Rank()
	// flag[0] = W - rank on a failing rank, so the maximum names the lowest.
	flag := []float64{0}
	if err != nil {
		flag[0] = float64(w - r)
	}
	if cerr := comm.AllreduceF64(mpi.Max, flag, flag); cerr != nil {
		return mpi.Fail(comm, fmt.Errorf("clip: agreeing on an error: %w", cerr))
	}
	if flag[0] == 0 {
		return nil
	}
	first := w - int(flag[0])
	// The first failing rank sends its sentinel index and message; the
	// others add zeros.
	msg := make([]float64, 2+maxMessage)
	if r == first {
		for i, s := range sentinels {
			if errors.Is(err, s) {
				msg[0] = float64(i + 1)
				break
			}
		}
		text := err.Error()
		if len(text) > maxMessage {
			text = text[:maxMessage-3] + "..."
		}
		msg[1] = float64(len(text))
		for i := range len(text) {
			msg[2+i] = float64(text[i])
		}
	}
	if cerr := comm.AllreduceF64(mpi.Sum, msg, msg); cerr != nil {
		return mpi.Fail(comm, fmt.Errorf("clip: agreeing on an error: %w", cerr))
	}
	if r == first {
		return &RankError{Rank: first, Err: err}
	}
	text := make([]byte, int(msg[1]))
	for i := range text {
		text[i] = byte(msg[2+i])
	}
	re := &remoteError{msg: string(text)}
	if k := int(msg[0]); k > 0 {
		re.kind = sentinels[k-1]
	}
	return &RankError{Rank: first, Err: re}
}

// agreeInts is agreeValues for integers, which must be exact in float64
// (|v| ≤ 2⁵³).
func agreeInts(comm mpi.Comm, what string, names []string, vals []int) error {
	f := make([]float64, len(vals))
	for i, v := range vals {
		f[i] = float64(v)
	}
	return agreeValues(comm, what, names, f)
}

// agreeValues is collective: it returns an ErrConfig error naming the
// first value that is NaN on some rank, else the first on which the ranks
// disagree (names[i] for vals[i]), and nil if every rank passed the same
// values, none of them NaN. Every rank returns the same answer. It costs
// one all-reduce (with one rank, none: only NaN is checked), whose failure
// goes to mpi.Fail.
//
// The ranks compare max(v) with −max(−v); a NaN would make MPI's maximum
// depend on the order of the operands, so it is flagged apart and takes
// no part in the comparison.
func agreeValues(comm mpi.Comm, what string, names []string, vals []float64) error {
	n := len(vals)
	buf := make([]float64, 3*n) // max(v), max(−v), max(v is NaN)
	for i, v := range vals {
		if math.IsNaN(v) {
			buf[i], buf[n+i], buf[2*n+i] = math.Inf(-1), math.Inf(-1), 1
		} else {
			buf[i], buf[n+i] = v, -v
		}
	}
	if comm.Size() > 1 {
		if err := comm.AllreduceF64(mpi.Max, buf, buf); err != nil {
			return mpi.Fail(comm, fmt.Errorf("clip: comparing %s across ranks: %w", what, err))
		}
	}
	for i := range n {
		if buf[2*n+i] != 0 {
			return fmt.Errorf("%w: %s: %s is NaN on some rank", ErrConfig, what, names[i])
		}
	}
	for i := range n {
		if hi, lo := buf[i], -buf[n+i]; hi != lo {
			return fmt.Errorf("%w: %s: %s ranges from %g to %g over the ranks", ErrConfig, what, names[i], lo, hi)
		}
	}
	return nil
}

// broadcast is collective: every rank's buf becomes rank 0's, exactly
// (the other ranks contribute zeros to a sum, and x + 0 = x). A failure,
// which may reach some ranks only, goes to mpi.Fail with what.
func broadcast[T blas.Float](comm mpi.Comm, what string, buf []T) error {
	if comm.Size() == 1 {
		return nil
	}
	if comm.Rank() != 0 {
		clear(buf)
	}
	if err := mpi.Allreduce(comm, mpi.Sum, buf, buf); err != nil {
		return mpi.Fail(comm, fmt.Errorf("clip: sharing %s: %w", what, err))
	}
	return nil
}
