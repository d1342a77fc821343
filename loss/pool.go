package loss

import (
	"runtime"
	"sync"
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
// Blocks are claimed from an atomic counter, so which goroutine runs which
// block varies from run to run; results do not, because a block's output
// depends on the block alone and callers reduce per-block partials in block
// order.
type pool struct {
	threads int
	started int
	wake    chan struct{}
	done    sync.WaitGroup
	closed  bool

	// The job being run: set before the helpers are woken, read by them
	// until they call done.Done.
	job  job
	n    int
	next atomic.Int64

	live atomic.Int32 // helpers running (for tests)
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
	for p.started < helpers {
		if p.wake == nil {
			p.wake = make(chan struct{}, p.threads)
		}
		p.live.Add(1)
		go p.helper(p.wake)
		p.started++
	}
	p.job, p.n = j, n
	p.next.Store(0)
	p.done.Add(helpers)
	for range helpers {
		p.wake <- struct{}{}
	}
	p.work()
	p.done.Wait()
	p.job = nil
}

// work runs blocks until none is left.
func (p *pool) work() {
	for {
		i := int(p.next.Add(1) - 1)
		if i >= p.n {
			return
		}
		p.job.block(i)
	}
}

// helper is a helper goroutine: one token on wake is one share in a run.
func (p *pool) helper(wake <-chan struct{}) {
	defer p.live.Add(-1)
	for range wake {
		p.work()
		p.done.Done()
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
