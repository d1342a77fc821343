package mpi

import (
	"fmt"
	"sync"
)

// NewGroup returns the w ranks of an in-process communicator: element r is
// rank r, to be used by its own goroutine. It exists so that plain go test
// can run any number of ranks without MPI.
//
// Collectives behave as under MPI and give every rank the same bits:
// AllreduceF32 and ReduceScatterF32 reduce each element in rank order
// ((src_0 op src_1) op src_2 ...), computed once and copied to all ranks.
// In steady state no call allocates.
//
// Two barriers frame every collective (three for Allreduce): ranks publish
// their slice headers, wait, read each other's buffers, and wait again
// before any buffer may be reused. Buffers of different ranks must not
// overlap. If the ranks call different collectives, or the same one with
// different lengths, every rank returns the same error instead of reading
// out of bounds.
//
// IsendrecvF32 posts src on a channel to rank to and returns. Completing it
// takes two stages: receive from rank from, copy into dst and acknowledge;
// and receive the acknowledgement of its own send. Wait does them, and
// meanwhile those of the rank's other pending requests whose partners are
// ready; Test does those of every pending request that need no waiting.
// So, as under MPI, a rank inside Wait or Test advances all its transfers. Requests match in the order they were
// started, as MPI's non-overtaking rule says, whatever the order of the
// Waits. A rank whose partner sent a different number or type of values
// gets an error from Wait. Each rank may have MaxRequests requests
// outstanding.
//
// Abort on any rank marks the group aborted: every blocked and later call on
// every rank returns ErrAborted (Isendrecv returns a Request whose Wait
// does too). Rank and Size keep working.
//
// NewGroup panics if w < 1.
func NewGroup(w int) []Comm {
	if w < 1 {
		panic(errBadSize)
	}
	g := &group{
		w:    w,
		done: make(chan struct{}),
		hdr:  make([]header, w),
		s32:  make([]slot[float32], w),
		s64:  make([]slot[float64], w),
		data: make([]chan message, w*w*MaxRequests),
		ack:  make([]chan struct{}, w*w*MaxRequests),
		wake: make([]chan struct{}, w),
	}
	for r := range g.wake {
		g.wake[r] = make(chan struct{}, 1)
	}
	g.cond.L = &g.mu
	for i := range g.data {
		g.data[i] = make(chan message, 1)
		g.ack[i] = make(chan struct{}, 1)
	}
	comms := make([]Comm, w)
	for r := range comms {
		c := &groupComm{
			g:       g,
			rank:    r,
			sendSeq: make([]int, w),
			recvSeq: make([]int, w),
		}
		for i := range c.reqs {
			c.reqs[i].c = c
		}
		comms[r] = c
	}
	return comms
}

// kind names a collective, so that ranks can check they all called the
// same one.
type kind uint8

const (
	kindBarrier kind = iota
	kindAllgatherF32
	kindAllgatherF64
	kindReduceScatterF32
	kindReduceScatterF64
	kindAllreduceF32
	kindAllreduceF64
)

func (k kind) String() string {
	switch k {
	case kindBarrier:
		return "Barrier"
	case kindAllgatherF32:
		return "AllgatherF32"
	case kindAllgatherF64:
		return "AllgatherF64"
	case kindReduceScatterF32:
		return "ReduceScatterF32"
	case kindReduceScatterF64:
		return "ReduceScatterF64"
	case kindAllreduceF32:
		return "AllreduceF32"
	case kindAllreduceF64:
		return "AllreduceF64"
	}
	return "invalid"
}

// header is what a rank publishes about its collective call.
type header struct {
	kind kind
	op   Op
	n    int // the length all ranks must agree on
}

// slot holds one rank's buffers during a collective.
type slot[T float] struct {
	dst, src []T
}

// message is one point-to-point send: exactly one of f32 and f64 is used.
type message struct {
	f32   []float32
	f64   []float64
	isF64 bool
}

func (m *message) describe() (n int, typ string) {
	if m.isF64 {
		return len(m.f64), "float64"
	}
	return len(m.f32), "float32"
}

type group struct {
	w int

	// Cyclic barrier; aborted is also guarded by mu.
	mu      sync.Mutex
	cond    sync.Cond
	count   int
	gen     uint64
	aborted bool
	done    chan struct{} // closed by Abort

	// Written by rank r only before the first barrier of a collective,
	// read by everyone between the first and the last.
	hdr []header
	s32 []slot[float32]
	s64 []slot[float64]

	// Point-to-point: index (from*w+to)*MaxRequests + seq%MaxRequests,
	// capacity 1 each. With at most MaxRequests outstanding per rank a
	// channel is always empty when its next message or ack is sent.
	data []chan message
	ack  []chan struct{}
	// wake[r] is signalled (without blocking; capacity 1) after a message
	// or an acknowledgement is posted to rank r, so that a Wait of rank r
	// blocks on one channel whatever it waits for.
	wake []chan struct{}
}

// signal wakes rank r's Wait, if it is blocked.
func (g *group) signal(r int) {
	select {
	case g.wake[r] <- struct{}{}:
	default:
	}
}

// wait is the cyclic barrier. It returns ErrAborted if the group is, or
// becomes, aborted before every rank has arrived.
func (g *group) wait() error {
	g.mu.Lock()
	if g.aborted {
		g.mu.Unlock()
		return ErrAborted
	}
	gen := g.gen
	g.count++
	if g.count == g.w {
		g.count = 0
		g.gen++
		g.mu.Unlock()
		g.cond.Broadcast()
		return nil
	}
	for gen == g.gen && !g.aborted {
		g.cond.Wait()
	}
	passed := gen != g.gen
	g.mu.Unlock()
	if !passed {
		return ErrAborted
	}
	return nil
}

func (g *group) abort() {
	g.mu.Lock()
	if !g.aborted {
		g.aborted = true
		close(g.done)
	}
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *group) isAborted() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

func (g *group) channel(from, to, seq int) int {
	return (from*g.w+to)*MaxRequests + seq%MaxRequests
}

// groupComm is one rank of a group.
type groupComm struct {
	g    *group
	rank int

	sendSeq []int // messages started to each rank
	recvSeq []int // receives started from each rank
	reqs    [MaxRequests]groupRequest
}

func (c *groupComm) Rank() int { return c.rank }
func (c *groupComm) Size() int { return c.g.w }

func (c *groupComm) Abort(code int) { c.g.abort() }

// enter publishes h, waits for every rank, and checks that all published
// the same header. On a mismatch every rank waits once more and returns
// the same error, so the ranks stay in step.
func (c *groupComm) enter(h header) error {
	g := c.g
	g.hdr[c.rank] = h
	if err := g.wait(); err != nil {
		return err
	}
	for r := 1; r < g.w; r++ {
		if g.hdr[r] != g.hdr[0] {
			err := mismatchError(g.hdr[0], r, g.hdr[r])
			if werr := g.wait(); werr != nil {
				return werr
			}
			return err
		}
	}
	return nil
}

// leave is the last barrier of a collective. After it nobody reads the
// rank's slot, so the rank clears it and the group keeps no reference to
// the caller's buffers. After an abort other ranks may still be reading, so
// the slot is left alone.
func leave[T float](c *groupComm, slots []slot[T]) error {
	if err := c.g.wait(); err != nil {
		return err
	}
	slots[c.rank] = slot[T]{}
	return nil
}

func mismatchError(h0 header, r int, hr header) error {
	return fmt.Errorf("mpi: group ranks disagree: rank 0 called %v(op=%v, n=%d), rank %d called %v(op=%v, n=%d)",
		h0.kind, h0.op, h0.n, r, hr.kind, hr.op, hr.n)
}

func (c *groupComm) Barrier() error {
	if err := c.enter(header{kind: kindBarrier}); err != nil {
		return err
	}
	return c.g.wait()
}

func (c *groupComm) AllgatherF32(dst, src []float32) error {
	return groupAllgather(c, c.g.s32, kindAllgatherF32, dst, src)
}

func (c *groupComm) AllgatherF64(dst, src []float64) error {
	return groupAllgather(c, c.g.s64, kindAllgatherF64, dst, src)
}

func groupAllgather[T float](c *groupComm, slots []slot[T], k kind, dst, src []T) error {
	checkAllgather(c.g.w, dst, src)
	n := len(src)
	slots[c.rank] = slot[T]{dst: dst, src: src}
	if err := c.enter(header{kind: k, n: n}); err != nil {
		return err
	}
	for r := range slots {
		copy(dst[r*n:(r+1)*n], slots[r].src)
	}
	return leave(c, slots)
}

func (c *groupComm) ReduceScatterF32(dst, src []float32) error {
	return groupReduceScatter(c, c.g.s32, kindReduceScatterF32, dst, src)
}

func (c *groupComm) ReduceScatterF64(dst, src []float64) error {
	return groupReduceScatter(c, c.g.s64, kindReduceScatterF64, dst, src)
}

func groupReduceScatter[T float](c *groupComm, slots []slot[T], k kind, dst, src []T) error {
	checkReduceScatter(c.g.w, dst, src)
	n := len(dst)
	slots[c.rank] = slot[T]{dst: dst, src: src}
	if err := c.enter(header{kind: k, n: n}); err != nil {
		return err
	}
	lo := c.rank * n
	copy(dst, slots[0].src[lo:lo+n])
	for r := 1; r < len(slots); r++ {
		accumulate(Sum, dst, slots[r].src[lo:lo+n])
	}
	return leave(c, slots)
}

func (c *groupComm) AllreduceF32(op Op, dst, src []float32) error {
	return groupAllreduce(c, c.g.s32, kindAllreduceF32, op, dst, src)
}

func (c *groupComm) AllreduceF64(op Op, dst, src []float64) error {
	return groupAllreduce(c, c.g.s64, kindAllreduceF64, op, dst, src)
}

// chunk returns the range of elements of an n-vector that rank r of w
// reduces in Allreduce.
func chunk(n, w, r int) (lo, hi int) {
	return r * n / w, (r + 1) * n / w
}

// reduceTile is the number of elements groupAllreduce folds at a time on
// the stack, so that an in-place rank reads its own src before it writes.
const reduceTile = 256

// groupAllreduce is a reduce-scatter into each rank's own chunk of dst
// followed by an all-gather of the chunks. Only rank r reads or writes
// chunk r of any rank's buffers in the first phase, so in-place calls are
// safe; in the second phase rank r reads chunk j of rank j's dst and
// writes the other chunks of its own.
func groupAllreduce[T float](c *groupComm, slots []slot[T], k kind, op Op, dst, src []T) error {
	checkAllreduce(op, dst, src)
	g := c.g
	n := len(dst)
	slots[c.rank] = slot[T]{dst: dst, src: src}
	if err := c.enter(header{kind: k, op: op, n: n}); err != nil {
		return err
	}
	lo, hi := chunk(n, g.w, c.rank)
	var tile [reduceTile]T
	for off := lo; off < hi; off += reduceTile {
		end := min(off+reduceTile, hi)
		acc := tile[:end-off]
		copy(acc, slots[0].src[off:end])
		for r := 1; r < g.w; r++ {
			accumulate(op, acc, slots[r].src[off:end])
		}
		copy(dst[off:end], acc)
	}
	if err := g.wait(); err != nil {
		return err
	}
	for r := range slots {
		if r != c.rank {
			lo, hi := chunk(n, g.w, r)
			copy(dst[lo:hi], slots[r].dst[lo:hi])
		}
	}
	return leave(c, slots)
}

func (c *groupComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (Request, error) {
	checkIsendrecv(c.g.w, dst, from, src, to)
	r := c.request()
	r.dst32, r.isF64 = dst, false
	return c.post(r, from, message{f32: src}, to)
}

func (c *groupComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (Request, error) {
	checkIsendrecv(c.g.w, dst, from, src, to)
	r := c.request()
	r.dst64, r.isF64 = dst, true
	return c.post(r, from, message{f64: src, isF64: true}, to)
}

// request returns a free request slot, or panics.
func (c *groupComm) request() *groupRequest {
	for i := range c.reqs {
		if !c.reqs[i].busy {
			return &c.reqs[i]
		}
	}
	panic(errTooManyRequests)
}

func (c *groupComm) post(r *groupRequest, from int, m message, to int) (Request, error) {
	g := c.g
	if g.isAborted() {
		r.reset()
		return abortedRequest{}, ErrAborted
	}
	r.from = from
	r.recv = g.channel(from, c.rank, c.recvSeq[from])
	r.send = g.channel(c.rank, to, c.sendSeq[to])
	c.recvSeq[from]++
	c.sendSeq[to]++
	select {
	case g.data[r.send] <- m:
		g.signal(to)
	case <-g.done:
		r.reset()
		return abortedRequest{}, ErrAborted
	}
	r.busy, r.received, r.acked = true, false, false
	r.err = nil
	return r, nil
}

// groupRequest is a rank's reusable request slot. It completes in two
// stages, in either order: the receive (take the partner's message, copy
// it into dst, acknowledge it) and the acknowledgement of its own send.
type groupRequest struct {
	c          *groupComm
	busy       bool
	received   bool  // the receive stage is done
	acked      bool  // the partner acknowledged the send
	rerr       error // the receive stage's result
	err        error // the result, once complete
	from       int   // for error messages
	recv, send int   // channel indices
	dst32      []float32
	dst64      []float64
	isF64      bool
}

func (r *groupRequest) reset() {
	r.dst32, r.dst64 = nil, nil
}

// Wait completes the request. Calling it again returns the same result
// until the slot is reused by a later Isendrecv on the same Comm. While it
// waits, it does the stages of the rank's other pending requests as their
// partners become ready, as an MPI progress engine would, so that a rank
// blocked here never holds up another rank's transfer.
func (r *groupRequest) Wait() error {
	if !r.busy {
		return r.err
	}
	c := r.c
	for {
		if c.g.isAborted() {
			return r.complete(ErrAborted)
		}
		c.progress()
		if r.received && r.acked {
			return r.complete(r.rerr)
		}
		c.await()
	}
}

// Test does the stages of every pending request of the rank that need no
// waiting, and completes r if both of its stages are done.
func (r *groupRequest) Test() (bool, error) {
	if !r.busy {
		return true, r.err
	}
	c := r.c
	if c.g.isAborted() {
		return true, r.complete(ErrAborted)
	}
	c.progress()
	if r.received && r.acked {
		return true, r.complete(r.rerr)
	}
	return false, nil
}

// progress does, without blocking, every stage of the rank's pending
// requests whose partner is ready.
func (c *groupComm) progress() {
	g := c.g
	for i := range c.reqs {
		q := &c.reqs[i]
		if !q.busy {
			continue
		}
		if !q.received {
			select {
			case m := <-g.data[q.recv]:
				q.take(&m)
			default:
			}
		}
		if !q.acked {
			select {
			case <-g.ack[q.send]:
				q.acked = true
			default:
			}
		}
	}
}

// await blocks until a message or an acknowledgement may have been posted
// to the rank since its last progress, or the group is aborted.
func (c *groupComm) await() {
	select {
	case <-c.g.wake[c.rank]:
	case <-c.g.done:
	}
}

// take delivers the partner's message and acknowledges it: the receive
// stage.
func (r *groupRequest) take(m *message) {
	g := r.c.g
	r.received = true
	r.rerr = r.deliver(m)
	select {
	case g.ack[r.recv] <- struct{}{}:
		g.signal(r.from)
	case <-g.done:
		r.rerr = ErrAborted
	}
}

// complete frees the slot with result err.
func (r *groupRequest) complete(err error) error {
	r.busy, r.received, r.acked = false, false, false
	r.err, r.rerr = err, nil
	r.reset()
	return err
}

// deliver copies m into the request's dst, or returns an error if the
// sender's type or length does not match.
func (r *groupRequest) deliver(m *message) error {
	n, typ := m.describe()
	if m.isF64 == r.isF64 {
		if r.isF64 && n == len(r.dst64) {
			copy(r.dst64, m.f64)
			return nil
		}
		if !r.isF64 && n == len(r.dst32) {
			copy(r.dst32, m.f32)
			return nil
		}
	}
	want, wantTyp := len(r.dst32), "float32"
	if r.isF64 {
		want, wantTyp = len(r.dst64), "float64"
	}
	return fmt.Errorf("mpi: Isendrecv: rank %d sent %d %s values, rank %d expected %d %s",
		r.from, n, typ, r.c.rank, want, wantTyp)
}
