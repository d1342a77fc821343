//go:build mpi

package mpi

/*
#cgo pkg-config: ompi
#include <stddef.h>
#include <mpi.h>

// cm_init initialises MPI asking for MPI_THREAD_MULTIPLE, or, if MPI is
// already initialised, queries the level it was given.
static int cm_init(int *provided, int *here) {
	int flag = 0;
	int rc = MPI_Initialized(&flag);
	if (rc != MPI_SUCCESS) return rc;
	if (flag) {
		*here = 0;
		return MPI_Query_thread(provided);
	}
	*here = 1;
	return MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, provided);
}

static int cm_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static int cm_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }

// cm_setup makes MPI_COMM_WORLD return errors instead of aborting, and
// duplicates it into *p2p, the communicator for point-to-point traffic,
// so that our messages never match anyone else's on MPI_COMM_WORLD.
static int cm_setup(MPI_Comm *p2p) {
	int rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	if (rc != MPI_SUCCESS) return rc;
	rc = MPI_Comm_dup(MPI_COMM_WORLD, p2p);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Comm_set_errhandler(*p2p, MPI_ERRORS_RETURN);
}

// cm_dup_fortran duplicates the communicator whose Fortran handle is f
// (MPI_COMM_WORLD if f < 0) into *out, which returns errors: the caller's
// communicator and its error handler are left as they are.
static int cm_dup_fortran(int f, MPI_Comm *out) {
	MPI_Comm c = f < 0 ? MPI_COMM_WORLD : MPI_Comm_f2c((MPI_Fint)f);
	// An invalid handle gives an invalid C handle without calling an
	// error handler (MPI 4.1, 19.3.4); Open MPI's is NULL.
	if (c == MPI_COMM_NULL || c == NULL) return MPI_ERR_COMM;
	int rc = MPI_Comm_dup(c, out);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
}

static int cm_world_fortran(void) { return (int)MPI_Comm_c2f(MPI_COMM_WORLD); }

static int cm_comm_info(MPI_Comm c, int *rank, int *size) {
	int rc = MPI_Comm_rank(c, rank);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Comm_size(c, size);
}

static int cm_comm_free(MPI_Comm *c) { return MPI_Comm_free(c); }

static int cm_finalized(void) {
	int flag = 0;
	MPI_Finalized(&flag);
	return flag;
}

static int cm_barrier(MPI_Comm c) { return MPI_Barrier(c); }

static MPI_Comm cm_comm_world(void) { return MPI_COMM_WORLD; }

static int cm_error_string(int code, char *buf, int *len) {
	return MPI_Error_string(code, buf, len);
}

static MPI_Datatype cm_type(int f64) { return f64 ? MPI_DOUBLE : MPI_FLOAT; }

static int cm_allgather(void *dst, void *src, int n, int f64, MPI_Comm c) {
	return MPI_Allgather(src, n, cm_type(f64), dst, n, cm_type(f64), c);
}

static int cm_reduce_scatter(void *dst, void *src, int n, int f64, MPI_Comm c) {
	return MPI_Reduce_scatter_block(src, dst, n, cm_type(f64), MPI_SUM, c);
}

static int cm_allreduce(void *dst, void *src, int n, int f64, int max, int inplace, MPI_Comm c) {
	return MPI_Allreduce(inplace ? MPI_IN_PLACE : src, dst, n, cm_type(f64),
		max ? MPI_MAX : MPI_SUM, c);
}

// cm_isendrecv starts a receive of ndst values from rank from into dst and
// a send of nsrc values from src to rank to; reqs[0] is the receive,
// reqs[1] the send.
static int cm_isendrecv(void *dst, int ndst, int from, void *src, int nsrc, int to,
		int f64, MPI_Comm comm, MPI_Request *reqs) {
	int rc = MPI_Irecv(dst, ndst, cm_type(f64), from, 0, comm, &reqs[0]);
	if (rc != MPI_SUCCESS) return rc;
	rc = MPI_Isend(src, nsrc, cm_type(f64), to, 0, comm, &reqs[1]);
	if (rc != MPI_SUCCESS) {
		MPI_Cancel(&reqs[0]);
		MPI_Wait(&reqs[0], MPI_STATUS_IGNORE);
	}
	return rc;
}

// cm_waitall completes the two requests of cm_isendrecv and stores the
// number of values received in *got.
static int cm_waitall(MPI_Request *reqs, int f64, int *got) {
	MPI_Status st[2];
	int rc = MPI_Waitall(2, reqs, st);
	if (rc == MPI_ERR_IN_STATUS) {
		for (int i = 0; i < 2; i++) {
			if (st[i].MPI_ERROR != MPI_SUCCESS && st[i].MPI_ERROR != MPI_ERR_PENDING) {
				return st[i].MPI_ERROR;
			}
		}
	}
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Get_count(&st[0], cm_type(f64), got);
}

// cm_testall tests the two requests of cm_isendrecv without blocking:
// *flag is 1 if both have completed (and are freed), and then *got is the
// number of values received.
static int cm_testall(MPI_Request *reqs, int f64, int *flag, int *got) {
	MPI_Status st[2];
	int rc = MPI_Testall(2, reqs, flag, st);
	if (rc == MPI_ERR_IN_STATUS) {
		*flag = 1;
		for (int i = 0; i < 2; i++) {
			if (st[i].MPI_ERROR != MPI_SUCCESS && st[i].MPI_ERROR != MPI_ERR_PENDING) {
				return st[i].MPI_ERROR;
			}
		}
	}
	if (rc != MPI_SUCCESS || !*flag) return rc;
	return MPI_Get_count(&st[0], cm_type(f64), got);
}

// cm_isendrecv_wait posts and completes the exchange in one call, so that
// MPI holds the buffer addresses only while Go has handed them to C.
static int cm_isendrecv_wait(void *dst, int ndst, int from, void *src, int nsrc, int to,
		int f64, MPI_Comm comm, MPI_Request *reqs, int *got) {
	int rc = cm_isendrecv(dst, ndst, from, src, nsrc, to, f64, comm, reqs);
	if (rc != MPI_SUCCESS) return rc;
	return cm_waitall(reqs, f64, got);
}

// cm_sendrecv is the blocking counterpart of cm_isendrecv + cm_waitall.
static int cm_sendrecv(void *dst, int ndst, int from, void *src, int nsrc, int to,
		int f64, MPI_Comm comm, int *got) {
	MPI_Status st;
	int rc = MPI_Sendrecv(src, nsrc, cm_type(f64), to, 0, dst, ndst, cm_type(f64), from, 0, comm, &st);
	if (rc != MPI_SUCCESS) return rc;
	return MPI_Get_count(&st, cm_type(f64), got);
}

static int cm_abort(MPI_Comm c, int code) { return MPI_Abort(c, code); }

static int cm_is_thread_main(int *flag) { return MPI_Is_thread_main(flag); }

static int cm_finalize(void) { return MPI_Finalize(); }
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	empi "github.com/emer/empi/mpi"
)

// Enabled reports whether this package was built with MPI (build tag mpi).
const Enabled = true

// World returns the communicator of all processes started together by
// mpirun (or srun), MPI_COMM_WORLD. The first call initialises MPI with
// MPI_Init_thread asking for MPI_THREAD_MULTIPLE and sets
// MPI_ERRORS_RETURN, so that a failed call returns an error naming it
// ("mpi: MPI_Allgather: MPI_ERR_...: ...") instead of killing the job.
// Later calls return the same Comm (or the same error). If MPI was already
// initialised by someone else, World uses it and Finalize leaves it alone.
//
// IsendrecvF32 posts MPI_Irecv and MPI_Isend and returns; Request.Test is
// MPI_Testall and Request.Wait MPI_Waitall. Open MPI moves a large message
// only while the process is inside an MPI call, so a caller that computes
// meanwhile calls Test between pieces of its work (see p2pDefault for the
// measurement). No thread polls in the background: every core stays with
// the computation. If MPI provides only MPI_THREAD_SERIALIZED, World
// accepts it and every MPI call is made under one mutex; nothing else in
// the process may then call MPI concurrently. A lower level is an error.
//
// Collectives use emer/empi where it fits (Allgather, Allreduce, Barrier,
// Rank, Size) and this package's own cgo for the rest
// (MPI_Reduce_scatter_block, MPI_IN_PLACE, empty buffers, MPI_Isend/Irecv,
// MPI_Abort). Point-to-point traffic runs on a duplicate of
// MPI_COMM_WORLD, so it never matches other messages on MPI_COMM_WORLD.
//
// AllreduceF32 gives every rank the same bits with Open MPI's algorithms
// (the conformance suite checks it); the MPI standard only recommends it.
// Buffers longer than 2^31-1 elements (an MPI count) make the call panic.
// Abort calls MPI_Abort, which ends every rank with exit status code (1
// if code is 0 mod 256).
//
// World and Finalize may be called from any goroutine: MPI_Init_thread and
// MPI_Finalize run on an OS thread of their own (see mainThread).
func World() (Comm, error) {
	world.mu.Lock()
	defer world.mu.Unlock()
	if world.finalized {
		return nil, errors.New("mpi: World called after Finalize")
	}
	if world.c == nil && world.err == nil {
		world.c, world.err = newWorld()
	}
	if world.err != nil {
		return nil, world.err
	}
	return world.c, nil
}

// Finalize completes the use of MPI: it stops the background goroutines
// (those of the test-only point-to-point modes, if any started),
// frees the communicators of CommFromFortran that Free has not freed
// (newest first) and World's, and calls MPI_Finalize if this package
// initialised MPI, on the OS thread that called MPI_Init_thread
// (mainThread), from whichever goroutine Finalize is called. It must be
// called once by every rank, after every
// Request was waited for, and no Comm method may be called afterwards.
// Finalize before any World or CommFromFortran does nothing and returns
// nil; so does a Finalize after MPI was finalised by someone else, apart
// from stopping the goroutines.
func Finalize() error {
	world.mu.Lock()
	defer world.mu.Unlock()
	if !world.initDone || world.finalized {
		return nil
	}
	world.finalized = true
	gone := C.cm_finalized() != 0
	var err error
	for i := len(world.dups) - 1; i >= 0; i-- {
		if e := world.dups[i].free(gone); err == nil {
			err = e
		}
	}
	world.dups = nil
	if c := world.c; c != nil {
		c.stop()
	}
	if !world.initHere || gone {
		return err
	}
	if world.c != nil {
		if e := callError("MPI_Comm_free", C.cm_comm_free(&world.c.p2p)); err == nil {
			err = e
		}
	}
	mainThread.do(func() {
		if !isMainThread() {
			if err == nil {
				err = errors.New("mpi: MPI_Finalize: not on the thread that called MPI_Init_thread")
			}
			return
		}
		if e := callError("MPI_Finalize", C.cm_finalize()); err == nil {
			err = e
		}
	})
	mainThread.stop()
	return err
}

// mainThread is the OS thread on which World or CommFromFortran calls
// MPI_Init_thread (when MPI is not yet initialised) and
// Finalize calls MPI_Finalize. MPI calls the thread that initialised it
// the main thread, and MPI_Finalize must be called on it. Go moves
// goroutines between OS threads at will, and main.main is not locked to
// the process's first thread, so a program whose main goroutine calls
// World and, later, Finalize would in general make the two calls on
// different threads. Locking the caller (runtime.LockOSThread in World)
// would pin the program's main goroutine to one thread for the whole run
// and still break when Finalize is called from another goroutine (a test
// binary calls World in a test's goroutine and Finalize in TestMain).
// Instead a goroutine of this package locks itself to a thread for the
// life of MPI and runs both calls there; the only cost is one OS thread
// that sleeps in between. Every other MPI call may come from any thread:
// World requires MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE, not
// MPI_THREAD_FUNNELED.
var mainThread locked

// locked runs functions on one goroutine locked to its OS thread.
type locked struct {
	run chan func()
}

// start starts the goroutine, if it is not running.
func (l *locked) start() {
	if l.run != nil {
		return
	}
	l.run = make(chan func())
	go func(run chan func()) {
		// Never unlocked: when the goroutine returns, its thread exits.
		runtime.LockOSThread()
		for f := range run {
			f()
		}
	}(l.run)
}

// do runs f on the locked thread and returns when f has returned.
func (l *locked) do(f func()) {
	done := make(chan struct{})
	l.run <- func() {
		defer close(done)
		f()
	}
	<-done
}

// stop ends the goroutine, and with it its thread.
func (l *locked) stop() {
	close(l.run)
	l.run = nil
}

// isMainThread reports whether the calling thread is MPI's main thread
// (MPI_Is_thread_main).
func isMainThread() bool {
	var flag C.int
	if C.cm_is_thread_main(&flag) != C.MPI_SUCCESS {
		return false
	}
	return flag != 0
}

var world struct {
	mu        sync.Mutex
	c         *worldComm
	err       error
	finalized bool
	initDone  bool         // initMPI ran
	initErr   error        // what it returned
	initHere  bool         // initMPI called MPI_Init_thread
	provided  C.int        // the thread level MPI provides
	dups      []*worldComm // live communicators of CommFromFortran, oldest first
}

// initMPI initialises MPI once (MPI_Init_thread asking for
// MPI_THREAD_MULTIPLE) unless someone else did, and checks the thread
// level. world.mu must be held.
func initMPI() error {
	if world.finalized {
		return errors.New("mpi: MPI used after Finalize")
	}
	if world.initDone {
		return world.initErr
	}
	world.initDone = true
	var provided, here C.int
	var rc C.int
	mainThread.start()
	mainThread.do(func() { rc = C.cm_init(&provided, &here) })
	if here == 0 {
		mainThread.stop() // someone else initialised MPI and finalises it
	}
	if rc != C.MPI_SUCCESS {
		world.initErr = callError("MPI_Init_thread", rc)
		return world.initErr
	}
	world.initHere = here != 0
	world.provided = provided
	if provided < C.cm_thread_serialized() {
		world.initErr = fmt.Errorf("mpi: MPI_Init_thread: MPI provides thread level %d, need MPI_THREAD_SERIALIZED (%d) or better",
			provided, C.cm_thread_serialized())
	}
	return world.initErr
}

// WorldFortran returns the Fortran handle of MPI_COMM_WORLD
// (MPI_Comm_c2f), initialising MPI as World does if nobody has.
func WorldFortran() (int, error) {
	world.mu.Lock()
	defer world.mu.Unlock()
	if err := initMPI(); err != nil {
		return 0, err
	}
	return int(C.cm_world_fortran()), nil
}

// CommFromFortran returns a communicator over a duplicate of the MPI
// communicator whose Fortran handle is f: what MPI_Comm_c2f returns in C,
// mpi4py's Comm.py2f() in Python. It is collective over that
// communicator (MPI_Comm_dup). It initialises MPI as World does if nobody
// has; if MPI is already initialised, it must provide
// MPI_THREAD_SERIALIZED or better, as for World.
//
// The duplicate returns errors (MPI_ERRORS_RETURN) and carries all of the
// Comm's traffic, so it never matches the caller's messages on f; the
// caller's communicator and its error handler are left as they are, and f
// may be freed once CommFromFortran has returned. The Comm behaves as
// World's does (threading, Requests, errors), and Abort calls MPI_Abort on
// the duplicate, which ends the whole job. Free releases it; Finalize
// releases those still live. It returns an error if f is not a valid
// handle (MPI_Comm_f2c gives MPI_COMM_NULL) or MPI fails.
func CommFromFortran(f int) (Comm, error) {
	world.mu.Lock()
	defer world.mu.Unlock()
	if err := initMPI(); err != nil {
		return nil, err
	}
	if f < 0 || f > math.MaxInt32 {
		return nil, fmt.Errorf("mpi: %d is not a Fortran communicator handle", f)
	}
	var dup C.MPI_Comm
	if rc := C.cm_dup_fortran(C.int(f), &dup); rc != C.MPI_SUCCESS {
		return nil, callError("MPI_Comm_dup", rc)
	}
	var rank, size C.int
	if rc := C.cm_comm_info(dup, &rank, &size); rc != C.MPI_SUCCESS {
		C.cm_comm_free(&dup)
		return nil, callError("MPI_Comm_rank", rc)
	}
	c := newComm(dup, dup, nil, int(rank), int(size))
	c.dup = true
	world.dups = append(world.dups, c)
	return c, nil
}

// Free releases a communicator that CommFromFortran returned: it stops
// its background goroutine and frees its duplicate (MPI_Comm_free, which
// is collective). Any other Comm, or one already freed, is left alone and
// Free returns nil. No Request of c may be outstanding, and c may not be
// used afterwards.
func Free(c Comm) error {
	wc, ok := c.(*worldComm)
	if !ok || !wc.dup {
		return nil
	}
	world.mu.Lock()
	defer world.mu.Unlock()
	for i, d := range world.dups {
		if d == wc {
			world.dups = append(world.dups[:i], world.dups[i+1:]...)
			return wc.free(C.cm_finalized() != 0)
		}
	}
	return nil
}

// free stops c's goroutine and, unless MPI is finalised (gone), frees its
// duplicate.
func (c *worldComm) free(gone bool) error {
	c.stop()
	if gone {
		return nil
	}
	return callError("MPI_Comm_free", C.cm_comm_free(&c.comm))
}

// stop ends c's background goroutine, if any, and unpins its buffers.
func (c *worldComm) stop() {
	if c.work != nil {
		close(c.work)
		<-c.stopped
		c.work = nil
	}
	c.pins.release()
}

// p2pMode is how IsendrecvF32, Test and Wait drive MPI.
type p2pMode uint8

const (
	// modeIsend posts MPI_Irecv and MPI_Isend; Test is MPI_Testall and
	// Wait MPI_Waitall. Open MPI moves large (rendezvous) messages only
	// inside MPI calls, so the transfer advances while the caller computes
	// only if it calls Test now and then.
	modeIsend p2pMode = iota
	// modeWaitall hands the exchange to a background goroutine that posts
	// MPI_Irecv and MPI_Isend and sits in MPI_Waitall, all in one C call,
	// which drives the transfer while the caller computes, at the price of
	// a thread that polls; Wait waits for that goroutine and Test looks
	// whether it has finished. Requests are posted in the order they were
	// started, each when the one before it has completed. MPI holds the
	// buffers' addresses only during that C call, so nothing needs
	// pinning. Kept for comparison (TestWorldOverlap).
	modeWaitall
	// modeSendrecv hands the buffers to a background goroutine that calls
	// MPI_Sendrecv; Wait waits for it. Kept for comparison.
	modeSendrecv
)

func (m p2pMode) String() string {
	switch m {
	case modeIsend:
		return "isend"
	case modeWaitall:
		return "waitall"
	case modeSendrecv:
		return "sendrecv"
	}
	return "invalid"
}

// p2pDefault is the mode World uses. TestWorldOverlap measures the
// fraction of a ring exchange (both directions, 2 ranks) hidden behind
// work done between Isendrecv and Wait: "sleep" leaves the core idle,
// "spin" keeps every core computing, and "spin+test" computes the same
// work in pieces of about 0.25 ms with a Test call between them. Measured
// with one rank on each of two network-namespace hosts joined by a TCP
// link shaped to 2 Gbit/s each way with a 5 ms queue (as bench-net's,
// scripts/cluster/benchnet.sh), Open MPI 4.1.4, on 2 cores that other jobs
// also used; two runs:
//
//	                 spin            spin+test        sleep
//	                 1 MiB  8 MiB    1 MiB  8 MiB     1 MiB  8 MiB
//	modeIsend        -0.31   0.14     1.01   0.83     -0.11  -0.17
//	                  0.22   0.25     0.87   1.23      0.40  -0.04
//	modeWaitall       0.18   0.38    -0.14   0.54      0.97   1.12
//	                  0.33   0.53     0.31   0.60      0.79   1.21
//
// Without an MPI call little moves (modeIsend under spin and sleep: what
// the sockets' buffers take). A background thread polling in MPI_Waitall
// hides everything on an idle core, but with every core computing it
// competes with the computation for a core. Test calls between pieces of
// work move the data on the caller's own thread, a few microseconds each;
// in shared memory, where the copy itself is the CPU's work, nothing can
// hide. So World posts the requests and relies on Test: no thread polls,
// and the losses call Test between GEMM panels (loss/exchange.go).
var p2pDefault = modeIsend

func newWorld() (*worldComm, error) {
	if err := initMPI(); err != nil {
		return nil, err
	}
	var p2p C.MPI_Comm
	if rc := C.cm_setup(&p2p); rc != C.MPI_SUCCESS {
		return nil, callError("MPI_Comm_dup", rc)
	}
	empi.LogErrors = false
	e, err := empi.NewComm(nil)
	if err != nil {
		return nil, empiError("MPI_Comm_group", err)
	}
	return newComm(C.cm_comm_world(), p2p, e, e.Rank(), e.Size()), nil
}

// newComm returns a Comm whose collectives run on comm (through e when
// not nil) and point-to-point transfers on p2p, and starts its background
// goroutine with MPI_THREAD_MULTIPLE.
func newComm(comm, p2p C.MPI_Comm, e *empi.Comm, rank, size int) *worldComm {
	c := &worldComm{e: e, comm: comm, p2p: p2p, rank: rank, size: size,
		serial: world.provided < C.cm_thread_multiple()}
	c.mode = modeIsend
	if !c.serial && p2pDefault != modeIsend {
		c.setMode(p2pDefault)
	}
	for i := range c.reqs {
		c.reqs[i].c = c
		c.reqs[i].done = make(chan struct{}, 1)
	}
	return c
}

// worldComm is World's communicator (collectives through emer/empi on
// MPI_COMM_WORLD, e != nil) or one of CommFromFortran (every call through
// this package's cgo on the duplicate, dup set).
type worldComm struct {
	e          *empi.Comm // nil: call MPI on comm directly
	comm       C.MPI_Comm // the collectives' communicator
	dup        bool       // comm is a duplicate made by CommFromFortran
	rank, size int
	p2p        C.MPI_Comm
	serial     bool       // only MPI_THREAD_SERIALIZED: mu guards every MPI call
	mu         sync.Mutex // used only if serial
	mode       p2pMode
	work       chan *worldRequest // to the background goroutine; nil until a mode needs it
	stopped    chan struct{}      // closed when it has returned
	reqs       [MaxRequests]worldRequest
	pins       pinCache
}

// setMode switches later Isendrecv calls to mode m, starting the
// background goroutine the first time a mode needs it. It panics if m
// needs MPI_THREAD_MULTIPLE and MPI does not provide it.
func (c *worldComm) setMode(m p2pMode) {
	if m != modeIsend && c.serial {
		panic("mpi: " + m.String() + " needs MPI_THREAD_MULTIPLE")
	}
	if m != modeIsend && c.work == nil {
		c.work = make(chan *worldRequest, MaxRequests)
		c.stopped = make(chan struct{})
		go c.worker()
	}
	c.mode = m
}

func (c *worldComm) lock() {
	if c.serial {
		c.mu.Lock()
	}
}

func (c *worldComm) unlock() {
	if c.serial {
		c.mu.Unlock()
	}
}

// callErr is a failed MPI call.
type callErr struct {
	call, msg string
}

func (e *callErr) Error() string { return "mpi: " + e.call + ": " + e.msg }

// callError returns nil if rc is MPI_SUCCESS, or an error naming call and
// carrying MPI's error string.
func callError(call string, rc C.int) error {
	if rc == C.MPI_SUCCESS {
		return nil
	}
	var buf [C.MPI_MAX_ERROR_STRING]C.char
	var n C.int
	msg := fmt.Sprintf("MPI error %d", int(rc))
	if C.cm_error_string(rc, &buf[0], &n) == C.MPI_SUCCESS && n > 0 {
		msg = C.GoStringN(&buf[0], n)
	}
	return &callErr{call: call, msg: msg}
}

// empiError rewrites an error of emer/empi ("MPI Error: <code> <context>
// <message>") as one naming call.
func empiError(call string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if f := strings.SplitN(msg, " ", 5); len(f) == 5 && f[0] == "MPI" && f[1] == "Error:" {
		msg = f[4]
	}
	return &callErr{call: call, msg: msg}
}

// checkCount panics if n does not fit an MPI count.
func checkCount(n int) {
	if n > math.MaxInt32 {
		panic(errTooLong)
	}
}

// ptr returns the address of s[0], or nil if s is empty.
func ptr[T float](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}

func isF64[T float]() C.int {
	var z T
	if unsafe.Sizeof(z) == 8 {
		return 1
	}
	return 0
}

func (c *worldComm) Rank() int { return c.rank }
func (c *worldComm) Size() int { return c.size }

func (c *worldComm) Barrier() error {
	c.lock()
	defer c.unlock()
	if c.e == nil {
		return callError("MPI_Barrier", C.cm_barrier(c.comm))
	}
	return empiError("MPI_Barrier", c.e.Barrier())
}

func (c *worldComm) AllgatherF32(dst, src []float32) error {
	checkAllgather(c.size, dst, src)
	checkCount(len(src))
	if len(src) == 0 || c.e == nil {
		return worldAllgather(c, dst, src)
	}
	c.lock()
	defer c.unlock()
	return empiError("MPI_Allgather", c.e.AllGatherF32(dst, src))
}

func (c *worldComm) AllgatherF64(dst, src []float64) error {
	checkAllgather(c.size, dst, src)
	checkCount(len(src))
	if len(src) == 0 || c.e == nil {
		return worldAllgather(c, dst, src)
	}
	c.lock()
	defer c.unlock()
	return empiError("MPI_Allgather", c.e.AllGatherF64(dst, src))
}

// worldAllgather calls MPI_Allgather itself: on a communicator of
// CommFromFortran, or with empty buffers, which emer/empi cannot do (an
// empty src still calls MPI_Allgather, with count 0, so that ranks that
// disagree on the length get an MPI error rather than a hang).
func worldAllgather[T float](c *worldComm, dst, src []T) error {
	c.lock()
	defer c.unlock()
	rc := C.cm_allgather(ptr(dst), ptr(src), C.int(len(src)), isF64[T](), c.comm)
	runtime.KeepAlive(dst)
	runtime.KeepAlive(src)
	return callError("MPI_Allgather", rc)
}

func (c *worldComm) ReduceScatterF32(dst, src []float32) error {
	return worldReduceScatter(c, dst, src)
}

func (c *worldComm) ReduceScatterF64(dst, src []float64) error {
	return worldReduceScatter(c, dst, src)
}

func worldReduceScatter[T float](c *worldComm, dst, src []T) error {
	checkReduceScatter(c.size, dst, src)
	checkCount(len(dst))
	c.lock()
	defer c.unlock()
	rc := C.cm_reduce_scatter(ptr(dst), ptr(src), C.int(len(dst)), isF64[T](), c.comm)
	runtime.KeepAlive(dst)
	runtime.KeepAlive(src)
	return callError("MPI_Reduce_scatter_block", rc)
}

func (c *worldComm) AllreduceF32(op Op, dst, src []float32) error {
	inPlace := checkAllreduce(op, dst, src)
	checkCount(len(dst))
	if inPlace || len(dst) == 0 || c.e == nil {
		return worldAllreduce(c, op, dst, src, inPlace)
	}
	c.lock()
	defer c.unlock()
	return empiError("MPI_Allreduce", c.e.AllReduceF32(empiOp(op), dst, src))
}

func (c *worldComm) AllreduceF64(op Op, dst, src []float64) error {
	inPlace := checkAllreduce(op, dst, src)
	checkCount(len(dst))
	if inPlace || len(dst) == 0 || c.e == nil {
		return worldAllreduce(c, op, dst, src, inPlace)
	}
	c.lock()
	defer c.unlock()
	return empiError("MPI_Allreduce", c.e.AllReduceF64(empiOp(op), dst, src))
}

func empiOp(op Op) empi.Op {
	if op == Max {
		return empi.OpMax
	}
	return empi.OpSum
}

// worldAllreduce calls MPI_Allreduce itself: on a communicator of
// CommFromFortran, in place (MPI_IN_PLACE) or with empty buffers, which
// emer/empi cannot do.
func worldAllreduce[T float](c *worldComm, op Op, dst, src []T, inPlace bool) error {
	var max, in C.int
	if op == Max {
		max = 1
	}
	if inPlace {
		in = 1
	}
	c.lock()
	defer c.unlock()
	rc := C.cm_allreduce(ptr(dst), ptr(src), C.int(len(dst)), isF64[T](), max, in, c.comm)
	runtime.KeepAlive(dst)
	runtime.KeepAlive(src)
	return callError("MPI_Allreduce", rc)
}

func (c *worldComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (Request, error) {
	return worldIsendrecv(c, dst, from, src, to)
}

func (c *worldComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (Request, error) {
	return worldIsendrecv(c, dst, from, src, to)
}

// worldIsendrecv starts the exchange. In the modes that post MPI_Irecv and
// MPI_Isend, MPI keeps the buffer addresses after the call returns, so
// both buffers are pinned (runtime.Pinner, through c.pins) at least until
// Wait; the Go collector does not move heap objects today, but pinning is
// what the cgo rules ask for. In modeSendrecv the background goroutine
// passes them to C for the duration of one blocking call.
func worldIsendrecv[T float](c *worldComm, dst []T, from int, src []T, to int) (Request, error) {
	checkIsendrecv(c.size, dst, from, src, to)
	checkCount(len(dst))
	checkCount(len(src))
	r := c.request()
	r.mode = c.mode
	r.dst, r.ndst, r.from = ptr(dst), C.int(len(dst)), C.int(from)
	r.src, r.nsrc, r.to = ptr(src), C.int(len(src)), C.int(to)
	r.f64 = isF64[T]()
	if r.mode != modeIsend {
		// The background goroutine posts and completes the exchange in
		// one C call: nothing to pin.
		r.busy = true
		c.work <- r
		return r, nil
	}
	if len(dst) > 0 {
		c.pins.pin(unsafe.Pointer(&dst[0]))
	}
	if len(src) > 0 {
		c.pins.pin(unsafe.Pointer(&src[0]))
	}
	c.lock()
	rc := C.cm_isendrecv(r.dst, r.ndst, r.from, r.src, r.nsrc, r.to, r.f64, c.p2p, &r.reqs[0])
	c.unlock()
	if rc != C.MPI_SUCCESS {
		r.release()
		err := callError("MPI_Isend/MPI_Irecv", rc)
		return &failedRequest{err}, err
	}
	r.busy = true
	return r, nil
}

// request returns a free request slot, or panics.
func (c *worldComm) request() *worldRequest {
	for i := range c.reqs {
		if !c.reqs[i].busy {
			return &c.reqs[i]
		}
	}
	panic(errTooManyRequests)
}

// worker completes requests handed to it, one at a time in the order they
// were started.
func (c *worldComm) worker() {
	defer close(c.stopped)
	for r := range c.work {
		if r.mode == modeSendrecv {
			r.err = r.sendrecv()
		} else {
			r.err = r.postWaitall()
		}
		r.done <- struct{}{}
	}
}

// failedRequest is returned with an error; Wait returns the same error.
type failedRequest struct{ err error }

func (r *failedRequest) Wait() error { return r.err }

func (r *failedRequest) Test() (bool, error) { return true, r.err }

// worldRequest is a Comm's reusable request slot.
type worldRequest struct {
	c    *worldComm
	busy bool
	err  error
	mode p2pMode
	done chan struct{} // from the background goroutine; capacity 1

	reqs       [2]C.MPI_Request
	dst, src   unsafe.Pointer
	ndst, nsrc C.int
	from, to   C.int
	f64        C.int
	got        C.int // values received
	flag       C.int // MPI_Testall's
}

// Wait completes the request. Calling it again returns the same result
// until the slot is reused by a later Isendrecv on the same Comm.
func (r *worldRequest) Wait() error {
	if !r.busy {
		return r.err
	}
	var err error
	if r.mode == modeIsend {
		r.c.lock()
		err = r.waitall()
		r.c.unlock()
	} else {
		<-r.done
		err = r.err
	}
	return r.complete(err)
}

// Test completes the request if it can without blocking.
func (r *worldRequest) Test() (bool, error) {
	if !r.busy {
		return true, r.err
	}
	if r.mode != modeIsend {
		select {
		case <-r.done:
			return true, r.complete(r.err)
		default:
			return false, nil
		}
	}
	r.c.lock()
	rc := C.cm_testall(&r.reqs[0], r.f64, &r.flag, &r.got)
	r.c.unlock()
	if rc == C.MPI_SUCCESS && r.flag == 0 {
		return false, nil
	}
	err := callError("MPI_Testall", rc)
	if err == nil {
		err = r.checkGot(r.got)
	}
	return true, r.complete(err)
}

// complete frees the slot with result err.
func (r *worldRequest) complete(err error) error {
	r.release()
	r.busy = false
	r.err = err
	return err
}

func (r *worldRequest) release() {
	r.dst, r.src = nil, nil
}

// pinSlots is how many buffers stay pinned in modeIsend (the only mode in
// which MPI keeps Go addresses after a cgo call returns): at least the
// 2·MaxRequests of the requests in flight, with room for the few buffers a
// loss alternates between, so that steady-state steps pin nothing new.
const pinSlots = 4 * MaxRequests

// pinCache keeps the buffers handed to non-blocking calls pinned after
// their request completes. A loss passes the same few buffers every step,
// and a runtime.Pinner that starts pinning again after Unpin allocates, so
// pinning per request would allocate every step. Each slot pins one buffer
// with its own Pinner; a new buffer takes the least recently used slot,
// which cannot be one of the 2·MaxRequests buffers of requests in flight.
// A pinned buffer is kept alive until its slot is reused or Finalize.
type pinCache struct {
	clock uint64
	slots [pinSlots]struct {
		p    unsafe.Pointer
		pin  runtime.Pinner
		used uint64
	}
}

func (pc *pinCache) pin(p unsafe.Pointer) {
	pc.clock++
	lru := 0
	for i := range pc.slots {
		e := &pc.slots[i]
		if e.p == p {
			e.used = pc.clock
			return
		}
		if e.used < pc.slots[lru].used {
			lru = i
		}
	}
	e := &pc.slots[lru]
	if e.p != nil {
		e.pin.Unpin()
	}
	e.pin.Pin(p)
	e.p, e.used = p, pc.clock
}

// release unpins every buffer.
func (pc *pinCache) release() {
	for i := range pc.slots {
		if pc.slots[i].p != nil {
			pc.slots[i].pin.Unpin()
			pc.slots[i].p = nil
		}
	}
}

// waitall and sendrecv count into r.got: a local variable whose address
// goes to C would escape and cost an allocation per call.

func (r *worldRequest) waitall() error {
	if err := callError("MPI_Waitall", C.cm_waitall(&r.reqs[0], r.f64, &r.got)); err != nil {
		return err
	}
	return r.checkGot(r.got)
}

func (r *worldRequest) postWaitall() error {
	rc := C.cm_isendrecv_wait(r.dst, r.ndst, r.from, r.src, r.nsrc, r.to, r.f64, r.c.p2p, &r.reqs[0], &r.got)
	if err := callError("MPI_Isend/MPI_Irecv/MPI_Waitall", rc); err != nil {
		return err
	}
	return r.checkGot(r.got)
}

func (r *worldRequest) sendrecv() error {
	if err := callError("MPI_Sendrecv", C.cm_sendrecv(r.dst, r.ndst, r.from, r.src, r.nsrc, r.to, r.f64, r.c.p2p, &r.got)); err != nil {
		return err
	}
	return r.checkGot(r.got)
}

// checkGot reports a message shorter than the receive buffer, which MPI
// accepts silently.
func (r *worldRequest) checkGot(got C.int) error {
	if got != r.ndst {
		return fmt.Errorf("mpi: Isendrecv: rank %d sent %d values, rank %d expected %d",
			int(r.from), int(got), r.c.rank, int(r.ndst))
	}
	return nil
}

// Abort calls MPI_Abort on the communicator (MPI_COMM_WORLD for World),
// which ends every rank with exit status code (1 if code is 0 mod 256);
// Open MPI ends every process of the job. It does not return.
func (c *worldComm) Abort(code int) {
	status := exitStatus(code)
	fmt.Fprintf(os.Stderr, "mpi: rank %d calls MPI_Abort(%d)\n", c.rank, status)
	C.cm_abort(c.comm, C.int(status))
	os.Exit(status)
}
