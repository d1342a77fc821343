// Package mpi is the small set of collectives clipmpi needs, behind one
// interface with three implementations:
//
//   - World: the real MPI_COMM_WORLD (build tag mpi, cgo OpenMPI through
//     github.com/emer/empi plus our own cgo for what empi lacks), and
//     CommFromFortran, a duplicate of any MPI communicator given by its
//     Fortran handle (MPI_Comm_c2f, mpi4py's py2f()), for callers that
//     own MPI (the C ABI in capi/);
//   - Self: a one-rank communicator that copies where MPI would;
//   - NewGroup: W goroutine ranks in one process, for plain go test.
//
// All buffers are dense and row-major. Destination comes first, as in Go's
// copy(dst, src); MPI's C API is send-first, so each method says which
// argument MPI calls sendbuf.
//
// Every method is collective unless it says otherwise: all ranks of the
// communicator must call it, in the same order, with buffer lengths that
// follow the stated layout. A method panics with an "mpi: ..." message on
// local misuse (wrong lengths, a rank out of range) before it communicates.
// Communication failures are returned as errors. Such an error may reach
// only some of the ranks, leaving the others waiting: code that cannot
// bring every rank to the same error hands it to Fail, which by default
// ends the job (see Fail for the policy).
package mpi

// Op is a reduction operator for Allreduce.
type Op int

const (
	// Sum adds element-wise.
	Sum Op = iota
	// Max takes the element-wise maximum.
	Max
)

// String returns the name of the operator, "sum" or "max".
func (op Op) String() string {
	switch op {
	case Sum:
		return "sum"
	case Max:
		return "max"
	}
	return "invalid"
}

// Comm is a communicator: a fixed set of Size ranks, of which the caller is
// Rank.
//
// A Comm is used by one goroutine at a time; the one exception is a pending
// Request, which may progress while its owner computes (see Isendrecv).
type Comm interface {
	// Rank returns the caller's rank in [0, Size).
	Rank() int
	// Size returns the number of ranks.
	Size() int

	// Barrier returns when every rank has entered it.
	Barrier() error

	// AllgatherF32 gathers equal blocks: rank i's src lands in
	// dst[i*len(src) : (i+1)*len(src)] on every rank. len(dst) must be
	// Size()*len(src) and dst must not overlap src. (MPI: sendbuf=src.)
	AllgatherF32(dst, src []float32) error
	// AllgatherF64 is AllgatherF32 for float64.
	AllgatherF64(dst, src []float64) error

	// ReduceScatterF32 sums src element-wise over all ranks and gives rank i
	// the i-th block: dst = sum over ranks of src[i*len(dst) : (i+1)*len(dst)].
	// len(src) must be Size()*len(dst) and dst must not overlap src
	// (MPI_Reduce_scatter_block with MPI_SUM; sendbuf=src).
	ReduceScatterF32(dst, src []float32) error
	// ReduceScatterF64 is ReduceScatterF32 for float64.
	ReduceScatterF64(dst, src []float64) error

	// AllreduceF32 reduces src element-wise with op over all ranks into dst
	// on every rank. len(dst) must equal len(src); dst may be src itself
	// (in place, MPI_IN_PLACE) but must not otherwise overlap it.
	AllreduceF32(op Op, dst, src []float32) error
	// AllreduceF64 is AllreduceF32 for float64.
	AllreduceF64(op Op, dst, src []float64) error

	// IsendrecvF32 starts sending src to rank `to` while receiving
	// len(dst) values from rank `from` into dst, and returns at once. It is
	// not collective: the ranks `to` and `from` must post matching calls
	// (a ring shift is the usual pattern). Neither buffer may be touched
	// until Wait returns; the caller may compute on other memory meanwhile.
	// The sender's len(src) must equal the receiver's len(dst).
	// (MPI: sendbuf=src.)
	//
	// Transfers between two ranks match in the order they were started,
	// whatever the order of the Waits. At most MaxRequests requests may
	// be outstanding on one Comm; starting another panics. It also panics
	// if from or to is out of range or dst overlaps src. On error the
	// returned Request is not nil, holds no buffer, and its Wait and Test
	// return the same error.
	//
	// Progress: World moves the data only while the process is inside an
	// MPI call on the Comm. A caller that computes between Isendrecv and
	// Wait calls Test on its pending requests every millisecond or so (for
	// example between GEMM tiles): each Test advances every transfer of
	// the Comm and returns at once. No thread polls in the background.
	IsendrecvF32(dst []float32, from int, src []float32, to int) (Request, error)
	// IsendrecvF64 is IsendrecvF32 for float64.
	IsendrecvF64(dst []float64, from int, src []float64, to int) (Request, error)

	// Abort ends every rank of the communicator with a non-zero exit
	// status (code, or 1 if code is 0). For the in-process group it marks
	// the group aborted so that every pending and later call returns
	// ErrAborted, and returns.
	Abort(code int)
}

// Request is a pending non-blocking operation.
//
// Implementations recycle a Comm's MaxRequests request objects so that
// Isendrecv allocates nothing: once Wait has returned, or Test has returned
// done, the Request may be reused by the Comm's next Isendrecv, so do not
// keep it past that call.
//
// Every outstanding Request must be completed (by Wait, or by Test
// returning done) before its buffers are reused or dropped, also when
// another call has failed: a Request that failed to start (Isendrecv
// returned an error) is already complete.
type Request interface {
	// Wait blocks until the operation has completed and its buffers may be
	// reused. Calling Wait more than once returns the first result.
	Wait() error
	// Test advances the operation (and, under MPI, every pending transfer
	// of the Comm) without blocking and reports whether it has completed.
	// Once it reports done, the Request is complete as after Wait: err is
	// the result Wait would return, the buffers may be reused, and later
	// calls of Test and Wait return the same result. While not done, err
	// is nil.
	Test() (done bool, err error)
}
