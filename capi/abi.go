//go:build cgo

package main

/*
#include "abi.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"unsafe"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/slurm"
)

// abiVersion is CLIPMPI_ABI_VERSION of clipmpi.h. 2: the options'
// precision field.
const abiVersion = 2

// Return codes of clipmpi.h.
const (
	codeOK        = 0
	codeInvalid   = 1
	codeDisagree  = 2
	codeEmpty     = 3
	codeNonFinite = 4
	codeMPI       = 5
	codeLaunch    = 6
	codeUsage     = 7
	codeInternal  = 8
	codeNoFit     = 9
)

// Element types and reject reasons of clipmpi.h.
const (
	dtypeF32 = 1
	dtypeF64 = 2

	rejectDtype    = 1
	rejectDevice   = 2
	rejectShape    = 3
	rejectArgument = 4
)

var dtypeNames = map[int]string{dtypeF32: "float32", dtypeF64: "float64"}

var rejectNames = map[int]string{rejectDtype: "element type", rejectDevice: "device",
	rejectShape: "shape", rejectArgument: "argument"}

// maxBcast is the largest clipmpi_comm_bcast.
const maxBcast = 1 << 20

// apiError is an error with its return code.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// finish sets the thread's message and returns the code of err (nil: OK).
func finish(err *apiError) C.int {
	if err == nil {
		C.cm_set_error(nil, 0)
		return codeOK
	}
	msg := err.msg
	if msg == "" {
		msg = "clipmpi: error"
	}
	cs := C.CString(msg)
	C.cm_set_error(cs, C.size_t(len(msg)))
	C.free(unsafe.Pointer(cs))
	return C.int(err.code)
}

// guard turns a panic into a return code: misuse that the Go API answers
// with a panic ("loss: ...", "mpi: ...", "blas: ...", "clipmpi: ...") is
// CLIPMPI_ERR_USAGE, anything else CLIPMPI_ERR_INTERNAL with the stack.
// Deferred by every exported function that calls into Go code that may
// panic.
func guard(rc *C.int) {
	p := recover()
	if p == nil {
		return
	}
	msg := fmt.Sprint(p)
	for _, prefix := range []string{"loss: ", "mpi: ", "blas: ", "clipmpi: "} {
		if strings.HasPrefix(msg, prefix) {
			*rc = finish(errorf(codeUsage, "%s", msg))
			return
		}
	}
	*rc = finish(errorf(codeInternal, "clipmpi: internal error (please report): %s\n%s", msg, debug.Stack()))
}

// commObj is a communicator handle: MPI_COMM_WORLD's duplicate or one of
// clipmpi_comm_from_fortran.
type commObj struct {
	c     mpi.Comm
	world bool
	v     []float64 // agreement vector
	freed bool
}

// lossObj is a loss handle.
type lossObj struct {
	comm  *commObj
	dtype int
	dim   int
	f32   lossAPI[float32] // exactly one of f32, f64 is set
	f64   lossAPI[float64]
}

// lossAPI is what ClipLoss and SigLipLoss have in common.
type lossAPI[T blas.Float] interface {
	Forward(img, txt []T, lg loss.Logit) (float64, error)
	ForwardBackward(dImg, dTxt, img, txt []T, lg loss.Logit) (loss.Result, error)
}

// lib is the library's state. Handles are small integers cast to the
// opaque pointer types; a freed handle is never reused.
var lib struct {
	mu        sync.Mutex
	initDone  bool
	initErr   *apiError
	finalized bool
	world     *commObj
	next      uintptr
	comms     map[uintptr]*commObj
	losses    map[uintptr]*lossObj
	buildInfo *C.cm_cchar
}

func init() {
	lib.comms = map[uintptr]*commObj{}
	lib.losses = map[uintptr]*lossObj{}
	lib.buildInfo = (*C.cm_cchar)(unsafe.Pointer(C.CString(fmt.Sprintf("clipmpi abi %d; mpi=%v; blas=%s; bf16=%s",
		abiVersion, mpi.Enabled, blas.Backend(), blas.BF16Path()))))
}

func usable() *apiError {
	if lib.finalized {
		return errorf(codeUsage, "clipmpi: called after clipmpi_finalize")
	}
	return nil
}

// initWorld initialises MPI if needed, duplicates MPI_COMM_WORLD and checks
// the launch environment, once. lib.mu must be held.
func initWorld() *apiError {
	if err := usable(); err != nil {
		return err
	}
	if lib.initDone {
		return lib.initErr
	}
	lib.initDone = true
	var c mpi.Comm
	var err error
	if mpi.Enabled {
		var f int
		if f, err = mpi.WorldFortran(); err == nil {
			c, err = mpi.CommFromFortran(f)
		}
	} else {
		c, err = mpi.World() // one rank; an error if launched as several
	}
	if err != nil {
		code := codeMPI
		if !mpi.Enabled {
			code = codeLaunch
		}
		lib.initErr = errorf(code, "clipmpi: %v", err)
		return lib.initErr
	}
	if e, err := slurm.FromEnv(); err != nil {
		lib.initErr = errorf(codeLaunch, "clipmpi: reading the launch environment: %v", err)
	} else if err := e.Check(c); err != nil {
		lib.initErr = errorf(codeLaunch, "clipmpi: %v", err)
	}
	lib.world = &commObj{c: c, world: true}
	return lib.initErr
}

// commOf returns the communicator of handle p (nil: the world). lib.mu
// must be held.
func commOf(p *C.clipmpi_comm) (*commObj, *apiError) {
	if p == nil {
		if err := initWorld(); err != nil {
			return nil, err
		}
		return lib.world, nil
	}
	if err := usable(); err != nil {
		return nil, err
	}
	c := lib.comms[uintptr(C.cm_comm_handle(p))]
	if c == nil {
		return nil, errorf(codeUsage, "clipmpi: invalid or freed communicator handle")
	}
	return c, nil
}

func lossOf(p *C.clipmpi_loss) (*lossObj, *apiError) {
	if err := usable(); err != nil {
		return nil, err
	}
	l := lib.losses[uintptr(C.cm_loss_handle(p))]
	if l == nil {
		return nil, errorf(codeUsage, "clipmpi: invalid or freed loss handle")
	}
	return l, nil
}

func newHandle() uintptr {
	lib.next++
	return lib.next
}

// agree is the collective check that precedes every step: each rank
// contributes the reason it cannot take part (0 if it can) and the values
// keys that all ranks must share. One MAX all-reduce of
// [reason per rank..., key, -key...] gives everyone the same verdict: an
// invalid argument on any rank (CLIPMPI_ERR_INVALID, naming the ranks;
// detail is this rank's own description), or keys that differ
// (CLIPMPI_ERR_DISAGREE, what names them). A rank that rejects passes
// keys as -MaxFloat64 pairs, which change nothing. A communication error
// goes to the failure policy (mpi.Fail: by default the job ends).
func (c *commObj) agree(reason int, detail, what string, keys ...float64) *apiError {
	w, r := c.c.Size(), c.c.Rank()
	n := w + 2*len(keys)
	if cap(c.v) < n {
		c.v = make([]float64, n)
	}
	v := c.v[:n]
	for i := range v {
		v[i] = 0
	}
	v[r] = float64(reason)
	for i, k := range keys {
		if reason != 0 {
			v[w+2*i], v[w+2*i+1] = -math.MaxFloat64, -math.MaxFloat64
		} else {
			v[w+2*i], v[w+2*i+1] = k, -k
		}
	}
	if err := c.c.AllreduceF64(mpi.Max, v, v); err != nil {
		err = mpi.Fail(c.c, fmt.Errorf("clipmpi: agreeing on the arguments: %w", err))
		return errorf(codeMPI, "%v", err)
	}
	var bad []string
	for q := 0; q < w; q++ {
		if v[q] == 0 {
			continue
		}
		s := fmt.Sprintf("rank %d (%s)", q, rejectNames[int(v[q])])
		if q == r && detail != "" {
			s += ": " + detail
		}
		bad = append(bad, s)
	}
	if len(bad) > 0 {
		return errorf(codeInvalid, "clipmpi: invalid input on %s", strings.Join(bad, "; "))
	}
	for i := range keys {
		if v[w+2*i] != -v[w+2*i+1] {
			return errorf(codeDisagree, "clipmpi: ranks disagree on %s", what)
		}
	}
	return nil
}

// lossError maps an error of package loss to a code.
func lossError(err error) *apiError {
	code := codeMPI
	switch {
	case errors.Is(err, loss.ErrShapeMismatch):
		code = codeDisagree
	case errors.Is(err, loss.ErrEmptyBatch):
		code = codeEmpty
	case errors.Is(err, loss.ErrNonFinite):
		code = codeNonFinite
	case errors.Is(err, loss.ErrNoFit):
		code = codeNoFit
	}
	return errorf(code, "%v", err)
}

//export clipmpi_abi_version
func clipmpi_abi_version() C.int { return abiVersion }

//export clipmpi_build_info
func clipmpi_build_info() *C.cm_cchar { return lib.buildInfo }

//export clipmpi_init
func clipmpi_init() (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	return finish(initWorld())
}

//export clipmpi_finalize
func clipmpi_finalize() (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if lib.finalized {
		return finish(nil)
	}
	lib.finalized = true
	clear(lib.losses)
	for _, c := range lib.comms {
		c.freed = true
	}
	clear(lib.comms)
	lib.world = nil
	if err := mpi.Finalize(); err != nil {
		return finish(errorf(codeMPI, "clipmpi: %v", err))
	}
	return finish(nil)
}

//export clipmpi_abort
func clipmpi_abort(code C.int32_t, message *C.cm_cchar) {
	msg := ""
	if message != nil {
		msg = C.GoString(message)
	}
	lib.mu.Lock()
	var c mpi.Comm
	if lib.world != nil {
		c = lib.world.c
	}
	for _, o := range lib.comms {
		if c == nil {
			c = o.c
		}
	}
	lib.mu.Unlock()
	if c == nil {
		fmt.Fprintf(os.Stderr, "clipmpi: %s\n", msg)
		os.Exit(exitStatus(int(code)))
	}
	fmt.Fprintf(os.Stderr, "clipmpi: rank %d of %d: %s\n", c.Rank(), c.Size(), msg)
	c.Abort(int(code))
	os.Exit(exitStatus(int(code))) // Abort of an in-process communicator returns
}

func exitStatus(code int) int {
	if s := code & 0xff; s != 0 {
		return s
	}
	return 1
}

//export clipmpi_comm_from_fortran
func clipmpi_comm_from_fortran(out **C.clipmpi_comm, handle C.int64_t) (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if err := usable(); err != nil {
		return finish(err)
	}
	if out == nil {
		return finish(errorf(codeUsage, "clipmpi_comm_from_fortran: out is NULL"))
	}
	c, err := mpi.CommFromFortran(int(handle))
	if err != nil {
		return finish(errorf(codeMPI, "clipmpi: communicator %d: %v", int64(handle), err))
	}
	h := newHandle()
	lib.comms[h] = &commObj{c: c}
	*out = C.cm_comm_ptr(C.uintptr_t(h))
	return finish(nil)
}

//export clipmpi_comm_free
func clipmpi_comm_free(p *C.clipmpi_comm) (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if p == nil {
		return finish(usable())
	}
	c, err := commOf(p)
	if err != nil {
		return finish(err)
	}
	for _, l := range lib.losses {
		if l.comm == c {
			return finish(errorf(codeUsage, "clipmpi_comm_free: a loss made on this communicator is still live; free it first"))
		}
	}
	delete(lib.comms, uintptr(C.cm_comm_handle(p)))
	c.freed = true
	if err := mpi.Free(c.c); err != nil {
		return finish(errorf(codeMPI, "clipmpi: %v", err))
	}
	return finish(nil)
}

//export clipmpi_comm_rank
func clipmpi_comm_rank(p *C.clipmpi_comm, rank, size *C.int32_t) (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	c, err := commOf(p)
	if err != nil {
		return finish(err)
	}
	if rank != nil {
		*rank = C.int32_t(c.c.Rank())
	}
	if size != nil {
		*size = C.int32_t(c.c.Size())
	}
	return finish(nil)
}

//export clipmpi_comm_bcast
func clipmpi_comm_bcast(p *C.clipmpi_comm, buf unsafe.Pointer, nbytes C.int64_t, root C.int32_t) (rc C.int) {
	defer guard(&rc)
	c, err := lockedComm(p)
	if err != nil {
		return finish(err)
	}
	reason, detail := 0, ""
	switch {
	case nbytes < 0 || nbytes > maxBcast:
		reason, detail = rejectArgument, fmt.Sprintf("nbytes = %d is outside [0, %d]", int64(nbytes), maxBcast)
	case int(root) < 0 || int(root) >= c.c.Size():
		reason, detail = rejectArgument, fmt.Sprintf("root %d is not a rank of %d", int(root), c.c.Size())
	case buf == nil && nbytes > 0:
		reason, detail = rejectArgument, "buf is NULL"
	}
	if err := c.agree(reason, detail, "the size and root of clipmpi_comm_bcast", float64(nbytes), float64(root)); err != nil {
		return finish(err)
	}
	b := unsafe.Slice((*byte)(buf), int(nbytes))
	v := make([]float64, len(b))
	if c.c.Rank() == int(root) {
		for i, x := range b {
			v[i] = float64(x)
		}
	}
	if err := c.c.AllreduceF64(mpi.Max, v, v); err != nil {
		return finish(errorf(codeMPI, "%v", mpi.Fail(c.c, err)))
	}
	for i := range b {
		b[i] = byte(v[i])
	}
	return finish(nil)
}

// lockedComm returns the communicator of p under lib.mu and releases the
// lock: collective calls must not hold it while they wait for other ranks.
func lockedComm(p *C.clipmpi_comm) (*commObj, *apiError) {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	return commOf(p)
}

//export clipmpi_reject_step
func clipmpi_reject_step(p *C.clipmpi_comm, reason C.int32_t, detail *C.cm_cchar) (rc C.int) {
	defer guard(&rc)
	c, err := lockedComm(p)
	if err != nil {
		return finish(err)
	}
	r := int(reason)
	if rejectNames[r] == "" {
		r = rejectArgument
	}
	d := ""
	if detail != nil {
		d = C.GoString(detail)
	}
	if err := c.agree(r, d, "forward versus forward_backward", 0); err != nil {
		return finish(err)
	}
	return finish(errorf(codeInternal, "clipmpi_reject_step: the agreement passed"))
}

// newLoss registers a loss made by mk for dtype on comm p; blasThreads > 0
// sets the process's BLAS threads.
func newLoss(out **C.clipmpi_loss, p *C.clipmpi_comm, dtype C.int32_t, dim C.int64_t, blasThreads C.int32_t,
	mk func(c mpi.Comm, l *lossObj)) C.int {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if out == nil {
		return finish(errorf(codeUsage, "clipmpi: out is NULL"))
	}
	c, err := commOf(p)
	if err != nil {
		return finish(err)
	}
	if dtype != dtypeF32 && dtype != dtypeF64 {
		return finish(errorf(codeUsage, "clipmpi: dtype %d: want CLIPMPI_FLOAT32 (1) or CLIPMPI_FLOAT64 (2)", int(dtype)))
	}
	if dim < 1 || int64(dim) > math.MaxInt32 {
		return finish(errorf(codeUsage, "clipmpi: dimension %d: want 1 to 2^31-1", int64(dim)))
	}
	if blasThreads < 0 {
		return finish(errorf(codeUsage, "clipmpi: blas_threads %d must not be negative", int(blasThreads)))
	}
	if blasThreads > 0 {
		blas.SetThreads(int(blasThreads))
	}
	l := &lossObj{comm: c, dtype: int(dtype), dim: int(dim)}
	mk(c.c, l)
	h := newHandle()
	lib.losses[h] = l
	*out = C.cm_loss_ptr(C.uintptr_t(h))
	return finish(nil)
}

//export clipmpi_clip_new
func clipmpi_clip_new(out **C.clipmpi_loss, p *C.clipmpi_comm, dtype C.int32_t, dim C.int64_t, opt *C.cm_cclip_options) (rc C.int) {
	defer guard(&rc)
	var o C.clipmpi_clip_options
	if C.cm_read_clip_options(opt, &o) != 0 {
		return finish(errorf(codeUsage, "clipmpi_clip_new: opt->struct_size %d is too small; use clipmpi_clip_options_init", int64(opt.struct_size)))
	}
	co := loss.ClipOptions{LocalLoss: o.local_loss != 0, GatherWithGrad: o.gather_with_grad != 0, Tile: int(o.tile),
		MemoryBudget: int64(o.memory_budget), Threads: int(o.threads)}
	prec, perr := precisionOf(o.precision, dtype)
	if perr != nil {
		return finish(perr)
	}
	co.Precision = prec
	if err := parseRates(o.rates_json, &co.Rates); err != nil {
		return finish(err)
	}
	if o.algorithm != nil {
		a, err := loss.ParseAlgorithm(C.GoString(o.algorithm))
		if err != nil {
			return finish(errorf(codeUsage, "%v", err))
		}
		co.Algorithm = a
	}
	return newLoss(out, p, dtype, dim, o.blas_threads, func(c mpi.Comm, l *lossObj) {
		if l.dtype == dtypeF32 {
			l.f32 = loss.NewClipLoss[float32](c, l.dim, co)
		} else {
			l.f64 = loss.NewClipLoss[float64](c, l.dim, co)
		}
	})
}

//export clipmpi_siglip_new
func clipmpi_siglip_new(out **C.clipmpi_loss, p *C.clipmpi_comm, dtype C.int32_t, dim C.int64_t, opt *C.cm_csiglip_options) (rc C.int) {
	defer guard(&rc)
	var o C.clipmpi_siglip_options
	if C.cm_read_siglip_options(opt, &o) != 0 {
		return finish(errorf(codeUsage, "clipmpi_siglip_new: opt->struct_size %d is too small; use clipmpi_siglip_options_init", int64(opt.struct_size)))
	}
	so := loss.SigLipOptions{Tile: int(o.tile), MemoryBudget: int64(o.memory_budget), Threads: int(o.threads)}
	prec, perr := precisionOf(o.precision, dtype)
	if perr != nil {
		return finish(perr)
	}
	so.Precision = prec
	if err := parseRates(o.rates_json, &so.Rates); err != nil {
		return finish(err)
	}
	if o.dist_impl != nil {
		m, err := loss.ParseSigLipImpl(C.GoString(o.dist_impl))
		if err != nil {
			return finish(errorf(codeUsage, "%v", err))
		}
		so.Impl = m
	}
	return newLoss(out, p, dtype, dim, o.blas_threads, func(c mpi.Comm, l *lossObj) {
		if l.dtype == dtypeF32 {
			l.f32 = loss.NewSigLipLoss[float32](c, l.dim, so)
		} else {
			l.f64 = loss.NewSigLipLoss[float64](c, l.dim, so)
		}
	})
}

// precisionOf reads an options struct's precision (NULL: fp32) for a loss
// of element type dtype.
func precisionOf(name *C.cm_cchar, dtype C.int32_t) (loss.Precision, *apiError) {
	if name == nil {
		return loss.FP32, nil
	}
	return parsePrecision(C.GoString(name), int(dtype))
}

// parsePrecision returns the precision named name ("fp32", "amp_bf16" or
// "bf16") for a loss of element type dtype: CLIPMPI_ERR_USAGE for another
// name, and for amp_bf16 with CLIPMPI_FLOAT64 (its GEMMs round float32
// operands to bf16). Any other dtype is newLoss's to reject.
func parsePrecision(name string, dtype int) (loss.Precision, *apiError) {
	p, err := loss.ParsePrecision(name)
	if err != nil {
		return loss.FP32, errorf(codeUsage, "%v", err)
	}
	if p == loss.AMPBF16 && dtype == dtypeF64 {
		return loss.FP32, errorf(codeUsage, "clipmpi: precision %q needs CLIPMPI_FLOAT32 features "+
			"(OpenCLIP's amp_bf16 rounds float32 GEMM operands to bf16); this loss is CLIPMPI_FLOAT64: "+
			"use precision \"fp32\" or float32 features", name)
	}
	return p, nil
}

// parseRates reads the cost model's rates from JSON (nil: leave r as it
// is, to be measured).
func parseRates(js *C.cm_cchar, r *loss.Rates) *apiError {
	if js == nil {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(C.GoString(js)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return errorf(codeUsage, "clipmpi: rates_json: %v", err)
	}
	return nil
}

//export clipmpi_loss_free
func clipmpi_loss_free(p *C.clipmpi_loss) (rc C.int) {
	defer guard(&rc)
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if p == nil {
		return finish(usable())
	}
	if _, err := lossOf(p); err != nil {
		return finish(err)
	}
	delete(lib.losses, uintptr(C.cm_loss_handle(p)))
	return finish(nil)
}

// stepArgs are one forward or forward_backward call's arguments.
type stepArgs struct {
	rows                 int64
	img, txt, gImg, gTxt unsafe.Pointer
	backward             bool
	lg                   loss.Logit
	outNil               bool
}

// run checks a step's arguments, agrees on them with the other ranks and
// runs the loss of element type T (dtype), whose elements are size bytes.
func run[T blas.Float](l *lossObj, fn lossAPI[T], dtype int, a stepArgs) (loss.Result, *apiError) {
	var zero T
	size := int64(unsafe.Sizeof(zero))
	reason, detail := 0, ""
	n := a.rows * int64(l.dim)
	switch {
	case l.dtype != dtype:
		reason, detail = rejectDtype, fmt.Sprintf("the loss was made for %s and called with %s buffers", dtypeNames[l.dtype], dtypeNames[dtype])
	case a.rows < 0:
		reason, detail = rejectArgument, fmt.Sprintf("rows = %d is negative", a.rows)
	case a.rows > math.MaxInt64/int64(l.dim)/size:
		reason, detail = rejectArgument, fmt.Sprintf("rows = %d times dim = %d is too large", a.rows, l.dim)
	case n > 0 && (a.img == nil || a.txt == nil):
		reason, detail = rejectArgument, "image or text is NULL"
	case a.backward && n > 0 && (a.gImg == nil || a.gTxt == nil):
		reason, detail = rejectArgument, "grad_image or grad_text is NULL"
	case a.outNil:
		reason, detail = rejectArgument, "the output pointer is NULL"
	case a.backward && n > 0 && overlapping(n*size, a.gImg, a.gTxt, a.img, a.txt):
		reason, detail = rejectArgument, "the gradient buffers overlap each other or the features"
	}
	if err := l.comm.agree(reason, detail, "forward versus forward_backward", b2f(a.backward)); err != nil {
		return loss.Result{}, err
	}
	img := unsafe.Slice((*T)(a.img), int(n))
	txt := unsafe.Slice((*T)(a.txt), int(n))
	if !a.backward {
		v, err := fn.Forward(img, txt, a.lg)
		if err != nil {
			return loss.Result{}, lossError(err)
		}
		return loss.Result{Loss: v}, nil
	}
	gImg := unsafe.Slice((*T)(a.gImg), int(n))
	gTxt := unsafe.Slice((*T)(a.gTxt), int(n))
	res, err := fn.ForwardBackward(gImg, gTxt, img, txt, a.lg)
	if err != nil {
		return loss.Result{}, lossError(err)
	}
	return res, nil
}

// overlapping reports whether the first buffer or the second, of n bytes
// each, overlaps any other of the four.
func overlapping(n int64, gImg, gTxt, img, txt unsafe.Pointer) bool {
	over := func(a, b unsafe.Pointer) bool {
		pa, pb := uintptr(a), uintptr(b)
		return pa < pb+uintptr(n) && pb < pa+uintptr(n)
	}
	return over(gImg, gTxt) || over(gImg, img) || over(gImg, txt) || over(gTxt, img) || over(gTxt, txt)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func logit(scale, bias C.double, hasBias C.int32_t) loss.Logit {
	return loss.Logit{Scale: float64(scale), Bias: float64(bias), HasBias: hasBias != 0}
}

// step runs a forward or forward_backward call on loss handle p.
func step(p *C.clipmpi_loss, dtype int, a stepArgs) (loss.Result, *apiError) {
	lib.mu.Lock()
	l, err := lossOf(p)
	lib.mu.Unlock()
	if err != nil {
		return loss.Result{}, err
	}
	if dtype == dtypeF32 {
		return run(l, l.f32, dtype, a)
	}
	return run(l, l.f64, dtype, a)
}

func writeResult(out *C.clipmpi_result, r loss.Result) {
	out.loss = C.double(r.Loss)
	out.grad_logit_scale = C.double(r.GradScale)
	out.grad_logit_bias = C.double(r.GradBias)
}

//export clipmpi_forward_backward_f32
func clipmpi_forward_backward_f32(p *C.clipmpi_loss, rows C.int64_t, img, txt *C.cm_cfloat, gImg, gTxt *C.float,
	scale, bias C.double, hasBias C.int32_t, out *C.clipmpi_result) (rc C.int) {
	defer guard(&rc)
	r, err := step(p, dtypeF32, stepArgs{rows: int64(rows), img: unsafe.Pointer(img), txt: unsafe.Pointer(txt),
		gImg: unsafe.Pointer(gImg), gTxt: unsafe.Pointer(gTxt), backward: true, lg: logit(scale, bias, hasBias), outNil: out == nil})
	if err == nil {
		writeResult(out, r)
	}
	return finish(err)
}

//export clipmpi_forward_backward_f64
func clipmpi_forward_backward_f64(p *C.clipmpi_loss, rows C.int64_t, img, txt *C.cm_cdouble, gImg, gTxt *C.double,
	scale, bias C.double, hasBias C.int32_t, out *C.clipmpi_result) (rc C.int) {
	defer guard(&rc)
	r, err := step(p, dtypeF64, stepArgs{rows: int64(rows), img: unsafe.Pointer(img), txt: unsafe.Pointer(txt),
		gImg: unsafe.Pointer(gImg), gTxt: unsafe.Pointer(gTxt), backward: true, lg: logit(scale, bias, hasBias), outNil: out == nil})
	if err == nil {
		writeResult(out, r)
	}
	return finish(err)
}

//export clipmpi_forward_f32
func clipmpi_forward_f32(p *C.clipmpi_loss, rows C.int64_t, img, txt *C.cm_cfloat,
	scale, bias C.double, hasBias C.int32_t, out *C.double) (rc C.int) {
	defer guard(&rc)
	r, err := step(p, dtypeF32, stepArgs{rows: int64(rows), img: unsafe.Pointer(img), txt: unsafe.Pointer(txt),
		lg: logit(scale, bias, hasBias), outNil: out == nil})
	if err == nil {
		*out = C.double(r.Loss)
	}
	return finish(err)
}

//export clipmpi_forward_f64
func clipmpi_forward_f64(p *C.clipmpi_loss, rows C.int64_t, img, txt *C.cm_cdouble,
	scale, bias C.double, hasBias C.int32_t, out *C.double) (rc C.int) {
	defer guard(&rc)
	r, err := step(p, dtypeF64, stepArgs{rows: int64(rows), img: unsafe.Pointer(img), txt: unsafe.Pointer(txt),
		lg: logit(scale, bias, hasBias), outNil: out == nil})
	if err == nil {
		*out = C.double(r.Loss)
	}
	return finish(err)
}
