package loss

import (
	"runtime"
	"sync/atomic"

	"github.com/clipmpi/clipmpi/blas"
)

// job is work split into blocks 0..n-1 that can run in any order and on any
// goroutine: block i writes only what belongs to block i.
type job interface {
	block(i int)
}

// pool runs jobs on the calling goroutine and up to threads-1 helper
// goroutines, one job at a time. Helpers are started on first need and then
// wait on a channel, so that a run allocates nothing; they end when the
// pool is closed. A pool is not safe for concurrent use (a loss is not).
//
// Blocks are claimed one at a time from state, which holds the run's
// generation and its next unclaimed block; a run ends when all its blocks
// are done, not when every helper has woken: a helper that wakes late finds
// its generation over (or its blocks all claimed) and waits again. Which
// goroutine runs which block varies from run to run; results do not,
// because a block's output depends on the block alone and callers reduce
// per-block partials in block order.
type pool struct {
	threads int
	started int
	wake    chan token    // one token per helper wanted by a run
	done    chan struct{} // the goroutine that finishes a run's last block says so
	closed  bool

	gen   uint32        // the current run (written by the caller only)
	state atomic.Uint64 // gen<<32 | next unclaimed block
	fin   atomic.Int64  // blocks of the current run done

	live atomic.Int32 // helpers running (for tests)
}

// token is a helper's share in one run: the job, its blocks and its
// generation. Sent by value, so that waking allocates nothing.
type token struct {
	job job
	n   int
	gen uint32
}

// newPool returns a pool of the given number of threads (the caller
// included). It panics if threads < 1.
func newPool(threads int) *pool {
	if threads < 1 {
		panic(errThreads)
	}
	return &pool{threads: threads}
}

// resolveThreads returns the thread count an option asks for: n itself, or
// blas.Threads() when n is 0. It panics if n < 0.
func resolveThreads(n int) int {
	if n < 0 {
		panic(errThreads)
	}
	if n == 0 {
		n = blas.Threads()
	}
	return max(n, 1)
}

// run calls j.block(i) for i in [0, n) on up to min(threads, n) goroutines
// and returns when every block is done. A nil pool runs the blocks in order
// on the caller.
func (p *pool) run(n int, j job) {
	helpers := 0
	if p != nil {
		helpers = min(p.threads, n) - 1
	}
	if helpers <= 0 {
		for i := 0; i < n; i++ {
			j.block(i)
		}
		return
	}
	if p.closed {
		panic("loss: internal error: pool used after close")
	}
	if n >= 1<<31 {
		panic("loss: internal error: too many blocks")
	}
	for p.started < helpers {
		if p.wake == nil {
			p.wake = make(chan token, p.threads)
			p.done = make(chan struct{}, 1)
		}
		p.live.Add(1)
		go p.helper(p.wake)
		p.started++
	}
	// Tokens still queued are from runs that are over: drop them, so that
	// this run's tokens find room.
	for len(p.wake) > 0 {
		select {
		case <-p.wake:
		default:
		}
	}
	p.gen++
	p.fin.Store(0)
	p.state.Store(uint64(p.gen) << 32)
	for range helpers {
		select {
		case p.wake <- token{j, n, p.gen}:
		default: // the helpers have tokens enough to find this run
		}
	}
	p.work(j, n, p.gen)
	for p.fin.Load() < int64(n) {
		<-p.done // a signal from this run, or a stale one: check again
	}
}

// work claims and runs blocks of run gen until none is left.
func (p *pool) work(j job, n int, gen uint32) {
	for {
		s := p.state.Load()
		i := int(uint32(s))
		if uint32(s>>32) != gen || i >= n {
			return
		}
		if !p.state.CompareAndSwap(s, s+1) {
			continue
		}
		j.block(i)
		if p.fin.Add(1) == int64(n) {
			select {
			case p.done <- struct{}{}:
			default:
			}
		}
	}
}

// helper is a helper goroutine: one token is one share in a run.
func (p *pool) helper(wake <-chan token) {
	defer p.live.Add(-1)
	for t := range wake {
		p.work(t.job, t.n, t.gen)
	}
}

// close ends the helpers. The pool must not be used afterwards.
func (p *pool) close() {
	if p == nil || p.closed {
		return
	}
	p.closed = true
	if p.wake != nil {
		close(p.wake)
	}
}

// newOwnedPool returns a pool for the loss owner of the given thread count,
// closed once owner is garbage: the helpers then exit. The pool must not
// reference owner.
func newOwnedPool[O any](owner *O, threads int) *pool {
	p := newPool(threads)
	if threads > 1 {
		runtime.AddCleanup(owner, func(p *pool) { p.close() }, p)
	}
	return p
}
