// Package mpitest is the conformance suite that every mpi.Comm
// implementation passes: Self, the in-process group and World under mpirun.
//
// Like mpi4py's tests it works at any world size: every expectation is
// computed from Rank and Size alone, so each rank checks its own results
// without a reference run.
package mpitest

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/clipmpi/clipmpi/mpi"
)

// RunGroup runs fn on every rank of mpi.NewGroup(w), each in its own
// goroutine, and returns when all have returned. If fn panics or calls
// t.FailNow (runtime.Goexit) on some rank, that rank aborts the group so
// that no other rank waits forever; after all ranks have returned RunGroup
// panics with the first rank's panic value and stack. It panics if w < 1.
func RunGroup(w int, fn func(c mpi.Comm)) {
	comms := mpi.NewGroup(w)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first string
	)
	for _, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			finished := false
			defer func() {
				if finished {
					return
				}
				if p := recover(); p != nil {
					mu.Lock()
					if first == "" {
						first = fmt.Sprintf("mpitest: rank %d panicked: %v\n%s", c.Rank(), p, debug.Stack())
					}
					mu.Unlock()
				}
				c.Abort(1)
			}()
			fn(c)
			finished = true
		}()
	}
	wg.Wait()
	if first != "" {
		panic(first)
	}
}

// Conformance runs the suite on c. Every rank of c must call it at the same
// time: each process under mpirun, or each goroutine of RunGroup (sharing
// one t). It covers AllgatherF32/F64, ReduceScatterF32/F64 (blocks of 0, 1,
// 2, 7 and more elements), AllreduceF32/F64 with Sum and Max in place and
// not, Barrier, IsendrecvF32/F64 ring shifts with two requests outstanding
// waited in reverse order, the same completed by Request.Test alone (up to
// 1 MiB, past any eager limit) and by Test on some ranks and Wait on
// others, neighbours waiting for their requests in opposite orders (a
// rank inside Wait must advance its other transfers), MaxRequests
// transfers between the same two ranks matching in the order they were
// started, bit-identical Allreduce results on all ranks,
// that no call modifies its src or keeps aliasing it, and that misuse
// panics with the documented message before communicating (every rank
// commits the same misuse, so the ranks stay in step).
//
// Wrong values are reported with t.Errorf, prefixed "rank r/size:". A
// failed call (a non-nil error) is also printed to standard error; then
// Conformance calls c.Abort(1), so that no rank is left blocked, and
// returns.
func Conformance(t testing.TB, c mpi.Comm) {
	t.Helper()
	s := &suite{t: t, c: c, rank: c.Rank(), size: c.Size()}
	if s.size < 1 || s.rank < 0 || s.rank >= s.size {
		t.Errorf("rank %d of size %d is out of range", s.rank, s.size)
		return
	}
	steps := []func(){
		s.barrier,
		func() { allgather(s, s.c.AllgatherF32) },
		func() { allgather(s, s.c.AllgatherF64) },
		func() { reduceScatter(s, s.c.ReduceScatterF32) },
		func() { reduceScatter(s, s.c.ReduceScatterF64) },
		func() { allreduce(s, s.c.AllreduceF32) },
		func() { allreduce(s, s.c.AllreduceF64) },
		func() { identicalResults(s, s.c.AllreduceF32, s.c.AllgatherF32) },
		func() { identicalResults(s, s.c.AllreduceF64, s.c.AllgatherF64) },
		func() { isendrecv(s, s.c.IsendrecvF32) },
		func() { isendrecv(s, s.c.IsendrecvF64) },
		func() { isendrecvTest(s, s.c.IsendrecvF32) },
		func() { isendrecvTest(s, s.c.IsendrecvF64) },
		func() { crossedWaits(s, s.c.IsendrecvF32) },
		func() { inOrder(s, s.c.IsendrecvF64) },
		s.panics,
		s.barrier,
	}
	for _, step := range steps {
		if s.dead {
			return
		}
		step()
	}
}

type suite struct {
	t          testing.TB
	c          mpi.Comm
	rank, size int
	dead       bool // a call failed; stop
}

// errorf reports a wrong value.
func (s *suite) errorf(format string, args ...any) {
	s.t.Helper()
	s.t.Errorf("rank %d/%d: %s", s.rank, s.size, fmt.Sprintf(format, args...))
}

// ok reports whether err is nil. Otherwise it reports err, aborts the
// communicator and marks the suite dead.
func (s *suite) ok(err error, what string) bool {
	s.t.Helper()
	if err == nil {
		return true
	}
	msg := fmt.Sprintf("rank %d/%d: %s: %v", s.rank, s.size, what, err)
	fmt.Fprintln(os.Stderr, "mpitest:", msg)
	s.t.Error(msg)
	s.dead = true
	s.c.Abort(1)
	return false
}

func (s *suite) barrier() {
	s.ok(s.c.Barrier(), "Barrier")
}

type float interface{ float32 | float64 }

func typeName[T float]() string {
	var z T
	if unsafe.Sizeof(z) == 4 {
		return "F32"
	}
	return "F64"
}

// value is element k of rank r's data in the exact tests: a small integer,
// so that sums over up to 60 ranks are exact in float32 and any summation
// order gives the same bits.
func value(r, k int) float64 { return float64(r*4096 + k%4093 + 1) }

// mixed is element k of rank r's data for Max: integers in [-500, 508]
// whose maximum falls on different ranks for different k.
func mixed(r, k int) float64 { return float64(((r+1)*(k+3)*7919)%1009 - 500) }

// sentinel fills buffers before a call, so that elements left unwritten
// show up.
const sentinel = -12345

func fill[T float](x []T, f func(k int) float64) {
	for k := range x {
		x[k] = T(f(k))
	}
}

// check compares got with want(k) exactly and reports the first mismatch.
func check[T float](s *suite, what string, got []T, want func(k int) float64) {
	s.t.Helper()
	bad, first := 0, -1
	for k, v := range got {
		if v != T(want(k)) {
			if first < 0 {
				first = k
			}
			bad++
		}
	}
	if bad > 0 {
		s.errorf("%s: %d of %d elements wrong; first [%d] = %v, want %v",
			what, bad, len(got), first, got[first], T(want(first)))
	}
}

// disjoint reports an error if a and b share memory.
func disjoint[T float](s *suite, what string, a, b []T) {
	if len(a) == 0 || len(b) == 0 {
		return
	}
	sz := unsafe.Sizeof(a[0])
	pa, pb := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))
	if pa < pb+uintptr(len(b))*sz && pb < pa+uintptr(len(a))*sz {
		s.errorf("%s: result aliases the input", what)
	}
}

// negate overwrites src after a call; a correct implementation copied the
// data, so dst must not change.
func negate[T float](x []T) {
	for k := range x {
		x[k] = -x[k] - 1
	}
}

func allgather[T float](s *suite, fn func(dst, src []T) error) {
	for _, n := range []int{0, 1, 3, 1000, 1 << 15} {
		what := fmt.Sprintf("Allgather%s n=%d", typeName[T](), n)
		src := make([]T, n)
		dst := make([]T, s.size*n)
		fill(src, func(k int) float64 { return value(s.rank, k) })
		fill(dst, func(int) float64 { return sentinel })
		if !s.ok(fn(dst, src), what) {
			return
		}
		want := func(k int) float64 { return value(k/n, k%n) }
		check(s, what, dst, want)
		check(s, what+" src", src, func(k int) float64 { return value(s.rank, k) })
		disjoint(s, what, dst, src)
		negate(src)
		check(s, what+" after changing src", dst, want)
	}
}

func reduceScatter[T float](s *suite, fn func(dst, src []T) error) {
	for _, n := range []int{0, 1, 2, 7, 1000, 1 << 14} {
		what := fmt.Sprintf("ReduceScatter%s block=%d", typeName[T](), n)
		src := make([]T, s.size*n)
		dst := make([]T, n)
		fill(src, func(k int) float64 { return value(s.rank, k) })
		fill(dst, func(int) float64 { return sentinel })
		if !s.ok(fn(dst, src), what) {
			return
		}
		want := func(k int) float64 {
			sum := 0.0
			for r := range s.size {
				sum += value(r, s.rank*n+k)
			}
			return sum
		}
		check(s, what, dst, want)
		check(s, what+" src", src, func(k int) float64 { return value(s.rank, k) })
		negate(src)
		check(s, what+" after changing src", dst, want)
	}
}

func allreduce[T float](s *suite, fn func(op mpi.Op, dst, src []T) error) {
	sizes := []int{0, 1, 5, s.size + 1, 257, 1000, 2*256*s.size + 3, 1 << 15}
	for _, op := range []mpi.Op{mpi.Sum, mpi.Max} {
		f := value
		if op == mpi.Max {
			f = mixed
		}
		for _, n := range sizes {
			want := func(k int) float64 {
				acc := f(0, k)
				for r := 1; r < s.size; r++ {
					if op == mpi.Sum {
						acc += f(r, k)
					} else {
						acc = math.Max(acc, f(r, k))
					}
				}
				return acc
			}
			mine := func(k int) float64 { return f(s.rank, k) }

			what := fmt.Sprintf("Allreduce%s op=%v n=%d", typeName[T](), op, n)
			src := make([]T, n)
			dst := make([]T, n)
			fill(src, mine)
			fill(dst, func(int) float64 { return sentinel })
			if !s.ok(fn(op, dst, src), what) {
				return
			}
			check(s, what, dst, want)
			check(s, what+" src", src, mine)
			negate(src)
			check(s, what+" after changing src", dst, want)

			what += " in place"
			buf := make([]T, n)
			fill(buf, mine)
			if !s.ok(fn(op, buf, buf), what) {
				return
			}
			check(s, what, buf, want)
		}
	}
}

// identicalResults checks that Allreduce gives every rank the same bits
// when rounding makes the result depend on the summation order, by
// gathering everyone's result. It also checks the values, within the
// rounding of size-1 additions.
func identicalResults[T float](s *suite, reduce func(op mpi.Op, dst, src []T) error, gather func(dst, src []T) error) {
	const n = 999
	what := fmt.Sprintf("Allreduce%s bit-identical across ranks", typeName[T]())
	f := func(r, k int) float64 { return math.Sin(float64(r*7919+k)) / 3 }
	src := make([]T, n)
	fill(src, func(k int) float64 { return f(s.rank, k) })
	dst := make([]T, n)
	if !s.ok(reduce(mpi.Sum, dst, src), what) {
		return
	}
	all := make([]T, s.size*n)
	if !s.ok(gather(all, dst), what) {
		return
	}
	for r := range s.size {
		for k, v := range all[r*n : (r+1)*n] {
			if v != dst[k] {
				s.errorf("%s: element %d is %v on rank %d and %v here", what, k, v, r, dst[k])
				return
			}
		}
	}
	// Each of the size-1 additions rounds by at most half an ulp of a
	// partial sum, whose magnitude is at most sum |x_r| <= size/3.
	eps := math.Nextafter(1, 2) - 1
	if typeName[T]() == "F32" {
		eps = float64(math.Nextafter32(1, 2) - 1)
	}
	for k := range n {
		want, mag := 0.0, 0.0
		for r := range s.size {
			x := float64(T(f(r, k)))
			want += x
			mag += math.Abs(x)
		}
		if d := math.Abs(float64(dst[k]) - want); d > float64(s.size)*eps*mag {
			s.errorf("%s: element %d = %v, want %v (|diff| %g)", what, k, dst[k], want, d)
			return
		}
	}
}

// shiftData is what rank r sends in direction dir (0 right, 1 left) at
// element k: the sender's rank and direction in every element.
func shiftData(r, dir, k int) float64 { return value(r, k) + float64(dir)*0.5 }

// shifts are one rank's two outstanding ring shifts of n elements: to the
// right (receiving from the left neighbour into dstR) and to the left.
type shifts[T float] struct {
	left, right            int
	srcR, srcL, dstR, dstL []T
	reqR, reqL             mpi.Request
}

// startShifts fills the sources with shiftData and the destinations with
// the sentinel and starts the right shift, then the left one. It reports
// a failed start and returns false.
func startShifts[T float](s *suite, fn func(dst []T, from int, src []T, to int) (mpi.Request, error), n int, what string) (*shifts[T], bool) {
	x := &shifts[T]{right: (s.rank + 1) % s.size, left: (s.rank + s.size - 1) % s.size,
		srcR: make([]T, n), srcL: make([]T, n), dstR: make([]T, n), dstL: make([]T, n)}
	fill(x.srcR, func(k int) float64 { return shiftData(s.rank, 0, k) })
	fill(x.srcL, func(k int) float64 { return shiftData(s.rank, 1, k) })
	fill(x.dstR, func(int) float64 { return sentinel })
	fill(x.dstL, func(int) float64 { return sentinel })
	var err error
	if x.reqR, err = fn(x.dstR, x.left, x.srcR, x.right); !s.ok(err, what+" right") {
		return nil, false
	}
	if x.reqL, err = fn(x.dstL, x.right, x.srcL, x.left); !s.ok(err, what+" left") {
		return nil, false
	}
	return x, true
}

// checkReceived checks what both shifts delivered.
func (x *shifts[T]) checkReceived(s *suite, what string) {
	check(s, what+" from the left", x.dstR, func(k int) float64 { return shiftData(x.left, 0, k) })
	check(s, what+" from the right", x.dstL, func(k int) float64 { return shiftData(x.right, 1, k) })
}

func isendrecv[T float](s *suite, fn func(dst []T, from int, src []T, to int) (mpi.Request, error)) {
	for _, n := range []int{0, 1, 1000, 1 << 16} {
		what := fmt.Sprintf("Isendrecv%s n=%d", typeName[T](), n)
		// Shift right (receive from the left neighbour), then left; both
		// outstanding, waited in the opposite order.
		x, ok := startShifts(s, fn, n, what)
		if !ok {
			return
		}
		srcR, srcL, dstR, dstL, reqR, reqL := x.srcR, x.srcL, x.dstR, x.dstL, x.reqR, x.reqL
		if !s.ok(reqL.Wait(), what+" left Wait") || !s.ok(reqR.Wait(), what+" right Wait") {
			return
		}
		if !s.ok(reqR.Wait(), what+" second Wait") {
			return
		}
		x.checkReceived(s, what)
		check(s, what+" src", srcR, func(k int) float64 { return shiftData(s.rank, 0, k) })
		disjoint(s, what, dstR, srcL)
		disjoint(s, what, dstL, srcR)
		negate(srcR)
		negate(srcL)
		x.checkReceived(s, what+" after changing src")
	}
}

// testUntilDone calls Test on every request until all are done, and
// returns the first error. It gives up (with an error) after a minute: a
// transfer that Test alone cannot finish would otherwise hang the suite.
func testUntilDone(reqs ...mpi.Request) error {
	deadline := time.Now().Add(time.Minute)
	var first error
	pending := len(reqs)
	done := make([]bool, len(reqs))
	for spins := 0; pending > 0; spins++ {
		for i, q := range reqs {
			if done[i] {
				continue
			}
			ok, err := q.Test()
			if !ok {
				if err != nil && first == nil {
					first = fmt.Errorf("Test returned not done with error %v", err)
				}
				continue
			}
			done[i] = true
			pending--
			if err != nil && first == nil {
				first = err
			}
		}
		if pending > 0 && spins%64 == 63 {
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d requests still not done after a minute of Test calls", pending, len(reqs))
			}
			runtime.Gosched()
		}
	}
	return first
}

// isendrecvTest is isendrecv completed by Test: on every rank by Test
// alone, then by Test on odd ranks and Wait on even ones. After Test has
// reported done, Test and Wait report the same result again.
func isendrecvTest[T float](s *suite, fn func(dst []T, from int, src []T, to int) (mpi.Request, error)) {
	for _, mixed := range []bool{false, true} {
		for _, n := range []int{0, 1, 1000, 1 << 17} {
			what := fmt.Sprintf("Isendrecv%s n=%d completed by Test", typeName[T](), n)
			if mixed {
				what += " on odd ranks, Wait on even ones"
			}
			x, ok := startShifts(s, fn, n, what)
			if !ok {
				return
			}
			reqR, reqL := x.reqR, x.reqL
			var err error
			if mixed && s.rank%2 == 0 {
				err = reqR.Wait()
				if err == nil {
					err = reqL.Wait()
				}
			} else {
				err = testUntilDone(reqR, reqL)
			}
			if !s.ok(err, what) {
				return
			}
			for _, q := range []mpi.Request{reqR, reqL} {
				if done, err := q.Test(); !done || err != nil {
					s.errorf("%s: Test after completion = %v, %v; want true, nil", what, done, err)
				}
				if err := q.Wait(); err != nil {
					s.errorf("%s: Wait after completion = %v", what, err)
				}
			}
			x.checkReceived(s, what)
		}
	}
}

// crossedWaits has every rank start a shift to the right and one to the
// left, then even ranks wait for the right one first and odd ranks for the
// left one first: each rank's first Wait needs its neighbour to complete a
// transfer the neighbour is not waiting for. A rank blocked in Wait must
// still advance its other transfers, as MPI's progress engine does, or
// the ranks deadlock.
func crossedWaits[T float](s *suite, fn func(dst []T, from int, src []T, to int) (mpi.Request, error)) {
	right, left := (s.rank+1)%s.size, (s.rank+s.size-1)%s.size
	const n = 1 << 16 // 256 or 512 KiB: a rendezvous transfer under MPI
	what := fmt.Sprintf("Isendrecv%s n=%d, neighbours waiting in opposite orders", typeName[T](), n)
	srcR, srcL := make([]T, n), make([]T, n)
	dstR, dstL := make([]T, n), make([]T, n)
	fill(srcR, func(k int) float64 { return value(s.rank, k) })
	fill(srcL, func(k int) float64 { return -value(s.rank, k) })
	reqR, err := fn(dstR, left, srcR, right)
	if !s.ok(err, what) {
		return
	}
	reqL, err := fn(dstL, right, srcL, left)
	if !s.ok(err, what) {
		return
	}
	first, second := reqR, reqL
	if s.rank%2 == 1 {
		first, second = reqL, reqR
	}
	if !s.ok(first.Wait(), what) || !s.ok(second.Wait(), what) {
		return
	}
	check(s, what+" from the left", dstR, func(k int) float64 { return value(left, k) })
	check(s, what+" from the right", dstL, func(k int) float64 { return -value(right, k) })
}

// inOrder starts MaxRequests shifts to the right at once, each with its own
// data, and completes them in a scrambled order, half by Test: transfers
// between two ranks match in the order they were started.
func inOrder[T float](s *suite, fn func(dst []T, from int, src []T, to int) (mpi.Request, error)) {
	right, left := (s.rank+1)%s.size, (s.rank+s.size-1)%s.size
	const n = 3000
	what := fmt.Sprintf("Isendrecv%s: %d transfers in flight", typeName[T](), mpi.MaxRequests)
	var reqs [mpi.MaxRequests]mpi.Request
	srcs, dsts := make([][]T, len(reqs)), make([][]T, len(reqs))
	for i := range reqs {
		srcs[i], dsts[i] = make([]T, n), make([]T, n)
		fill(srcs[i], func(k int) float64 { return value(s.rank, k) + float64(i)*0.25 })
		var err error
		if reqs[i], err = fn(dsts[i], left, srcs[i], right); !s.ok(err, what) {
			for _, q := range reqs[:i] {
				q.Wait()
			}
			return
		}
	}
	for j := range reqs {
		i := (j*3 + s.rank) % len(reqs)
		var err error
		if j%2 == 0 {
			err = testUntilDone(reqs[i])
		} else {
			err = reqs[i].Wait()
		}
		if !s.ok(err, what) {
			return
		}
	}
	for i := range reqs {
		check(s, fmt.Sprintf("%s: transfer %d", what, i), dsts[i], func(k int) float64 { return value(left, k) + float64(i)*0.25 })
	}
}

// panics runs every misuse on every rank; each must panic locally with the
// given message before communicating.
func (s *suite) panics() {
	const (
		shortDst = "mpi: len(dst) does not match the layout"
		shortSrc = "mpi: len(src) does not match the layout"
		overlap  = "mpi: dst overlaps src"
		badRank  = "mpi: rank out of range"
		badOp    = "mpi: invalid reduction operator"
	)
	w := s.size
	buf32 := make([]float32, 2*w+4)
	buf64 := make([]float64, 2*w+4)
	cases := []struct {
		name, want string
		f          func()
	}{
		{"AllgatherF32 short dst", shortDst, func() { s.c.AllgatherF32(make([]float32, 2*w+1), make([]float32, 2)) }},
		{"AllgatherF64 long dst", shortDst, func() { s.c.AllgatherF64(make([]float64, 2*w+2), make([]float64, 2)) }},
		{"AllgatherF32 overlap", overlap, func() { s.c.AllgatherF32(buf32[:2*w], buf32[:2]) }},
		{"AllgatherF64 overlap", overlap, func() { s.c.AllgatherF64(buf64[1:2*w+1], buf64[2*w-1:2*w+1]) }},
		{"ReduceScatterF32 short src", shortSrc, func() { s.c.ReduceScatterF32(make([]float32, 2), make([]float32, 2*w+1)) }},
		{"ReduceScatterF64 short src", shortSrc, func() { s.c.ReduceScatterF64(make([]float64, 1), make([]float64, 0)) }},
		{"ReduceScatterF64 overlap", overlap, func() { s.c.ReduceScatterF64(buf64[:2], buf64[:2*w]) }},
		{"AllreduceF32 bad op", badOp, func() { s.c.AllreduceF32(mpi.Op(7), make([]float32, 3), make([]float32, 3)) }},
		{"AllreduceF64 bad op", badOp, func() { s.c.AllreduceF64(mpi.Op(-1), make([]float64, 3), make([]float64, 3)) }},
		{"AllreduceF32 short dst", shortDst, func() { s.c.AllreduceF32(mpi.Sum, make([]float32, 3), make([]float32, 4)) }},
		{"AllreduceF64 partial overlap", overlap, func() { s.c.AllreduceF64(mpi.Max, buf64[:3], buf64[1:4]) }},
		{"AllreduceF32 same start, other length", shortDst, func() { s.c.AllreduceF32(mpi.Sum, buf32[:3], buf32[:4]) }},
		{"IsendrecvF32 from out of range", badRank, func() { s.c.IsendrecvF32(make([]float32, 1), w, make([]float32, 1), 0) }},
		{"IsendrecvF64 to out of range", badRank, func() { s.c.IsendrecvF64(make([]float64, 1), 0, make([]float64, 1), -1) }},
		{"IsendrecvF32 overlap", overlap, func() { s.c.IsendrecvF32(buf32[:2], 0, buf32[1:3], 0) }},
	}
	for _, tc := range cases {
		got := func() (p any) {
			defer func() { p = recover() }()
			tc.f()
			return nil
		}()
		if got == nil {
			s.errorf("%s: did not panic, want %q", tc.name, tc.want)
		} else if got != tc.want {
			s.errorf("%s: panicked with %v, want %q", tc.name, got, tc.want)
		}
	}
}
