//go:build mpi

package mpi

import (
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestWorldOverlap measures how much of a ring exchange (IsendrecvF32 to
// both neighbours, both outstanding) hides behind work done between
// Isendrecv and Wait, for each way of driving MPI. It chose p2pDefault. It
// runs only when asked:
//
//	go test -c -tags mpi -o /tmp/mpi.test ./mpi
//	mpirun -np 2 -x CLIPMPI_OVERLAP=1 /tmp/mpi.test -test.run TestWorldOverlap -test.v
//
// Three kinds of work: "spin", a compute loop on every core MPI could use;
// "spin+test", the same loop in pieces of 0.25 ms with Request.Test on both
// requests between pieces; and "sleep", which leaves the core idle, as a
// GEMM on other cores would.
// overlap = (comm + work - both) / min(comm, work): 1 means the exchange
// was entirely hidden, 0 that it ran after the work. Times are medians
// over reps, modes interleaved, of the slowest rank.
func TestWorldOverlap(t *testing.T) {
	if os.Getenv("CLIPMPI_OVERLAP") == "" || os.Getenv("OMPI_COMM_WORLD_SIZE") == "" {
		t.Skip("set CLIPMPI_OVERLAP=1 and run under mpirun to measure overlap")
	}
	cc, err := World()
	if err != nil {
		t.Fatal(err)
	}
	c := cc.(*worldComm)
	if c.serial {
		t.Skip("MPI_THREAD_SERIALIZED: only modeIsend is possible")
	}
	defer c.setMode(c.mode)
	w, r := c.size, c.rank
	right, left := (r+1)%w, (r+w-1)%w
	const reps = 31
	modes := []p2pMode{modeIsend, modeWaitall, modeSendrecv}

	work := make([]float32, 8192) // 32 KiB: stays in L1/L2
	spin := func(iters int) {
		for range iters {
			for i := range work {
				work[i] = work[i]*0.999 + 0.001
			}
		}
	}
	// slowest returns the largest d over the ranks.
	slowest := func(d time.Duration) float64 {
		x := []float64{d.Seconds()}
		if err := c.AllreduceF64(Max, x, x); err != nil {
			t.Fatal(err)
		}
		return x[0]
	}
	timeit := func(f func()) float64 {
		if err := c.Barrier(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		f()
		return slowest(time.Since(t0))
	}
	median := func(x []float64) time.Duration {
		slices.Sort(x)
		return time.Duration(x[len(x)/2] * 1e9)
	}

	for _, n := range []int{1 << 14, 1 << 18, 1 << 21} {
		srcR, srcL := make([]float32, n), make([]float32, n)
		dstR, dstL := make([]float32, n), make([]float32, n)
		var qR, qL Request
		exchange := func(between func()) {
			var err error
			qR, err = c.IsendrecvF32(dstR, left, srcR, right)
			if err != nil {
				t.Fatal(err)
			}
			qL, err = c.IsendrecvF32(dstL, right, srcL, left)
			if err != nil {
				t.Fatal(err)
			}
			between()
			if err := qL.Wait(); err != nil {
				t.Fatal(err)
			}
			if err := qR.Wait(); err != nil {
				t.Fatal(err)
			}
		}
		// Size the work like the exchange in modeIsend, the same on every
		// rank.
		c.setMode(modeIsend)
		exchange(func() {})
		tx := make([]float64, reps)
		for i := range tx {
			tx[i] = timeit(func() { exchange(func() {}) })
		}
		d := median(tx)
		t0 := time.Now()
		spin(100)
		per := slowest(time.Since(t0) / 100)
		iters := max(1, int(slowest(d)/per))
		piece := max(1, int(0.25e-3/per)) // iterations in 0.25 ms

		for _, kind := range []string{"spin", "spin+test", "sleep"} {
			between := func() { spin(iters) }
			switch kind {
			case "spin+test":
				between = func() {
					for done := 0; done < iters; done += piece {
						spin(min(piece, iters-done))
						qR.Test()
						qL.Test()
					}
				}
			case "sleep":
				// Nanosleep blocks the thread for d; time.Sleep may
				// oversleep by up to a millisecond.
				ts := syscall.NsecToTimespec(int64(d))
				between = func() { syscall.Nanosleep(&ts, nil) }
			}
			tWork := make([]float64, reps)
			tComm := make([][]float64, len(modes))
			tBoth := make([][]float64, len(modes))
			for i := range reps {
				tWork[i] = timeit(between)
				for m, mode := range modes {
					c.setMode(mode)
					tComm[m] = append(tComm[m], timeit(func() { exchange(func() {}) }))
					tBoth[m] = append(tBoth[m], timeit(func() { exchange(between) }))
				}
			}
			wk := median(tWork)
			for m, mode := range modes {
				cm, both := median(tComm[m]), median(tBoth[m])
				ov := float64(cm+wk-both) / float64(min(cm, wk))
				if r == 0 {
					t.Logf("n=%7d (%4.1f MiB each way) work=%-5s mode=%-8v comm %9v work %9v both %9v overlap %5.2f",
						n, float64(4*n)/(1<<20), kind, mode, cm, wk, both, ov)
				}
			}
		}
	}
}

// TestWorldMainThread: MPI_Init_thread ran on the package's locked thread,
// which MPI_Is_thread_main recognises, and a test goroutine's thread is
// not MPI's main thread. (Finalize, called from TestMain's goroutine, runs
// MPI_Finalize on the locked thread and fails if MPI disagrees.)
func TestWorldMainThread(t *testing.T) {
	if os.Getenv("OMPI_COMM_WORLD_SIZE") == "" {
		t.Skip("not launched by mpirun (OMPI_COMM_WORLD_SIZE unset)")
	}
	if _, err := World(); err != nil {
		t.Fatal(err)
	}
	var main bool
	mainThread.do(func() { main = isMainThread() })
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if here := isMainThread(); !main || here {
		t.Errorf("MPI_Is_thread_main: %v on the init thread, %v on a test goroutine's thread; want true, false", main, here)
	}
}
