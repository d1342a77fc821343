package mpi_test

import (
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/mpi"
)

// A stepMaker allocates one rank's float32 buffers for w ranks and n
// elements and returns the step to benchmark and the bytes it moves (as
// b.SetBytes counts them: the size of the result on one rank; both
// directions for Isendrecv).
type stepMaker func(w, rank, n int) (step func(c mpi.Comm) error, bytes int64)

func allgatherStep(w, rank, n int) (func(mpi.Comm) error, int64) {
	src, dst := make([]float32, n), make([]float32, w*n)
	return func(c mpi.Comm) error { return c.AllgatherF32(dst, src) }, int64(4 * w * n)
}

func reduceScatterStep(w, rank, n int) (func(mpi.Comm) error, int64) {
	src, dst := make([]float32, w*n), make([]float32, n)
	return func(c mpi.Comm) error { return c.ReduceScatterF32(dst, src) }, int64(4 * w * n)
}

func allreduceStep(w, rank, n int) (func(mpi.Comm) error, int64) {
	buf := make([]float32, n)
	return func(c mpi.Comm) error { return c.AllreduceF32(mpi.Sum, buf, buf) }, int64(4 * n)
}

func isendrecvStep(w, rank, n int) (func(mpi.Comm) error, int64) {
	srcR, srcL := make([]float32, n), make([]float32, n)
	dstR, dstL := make([]float32, n), make([]float32, n)
	right, left := (rank+1)%w, (rank+w-1)%w
	return func(c mpi.Comm) error {
		qR, err := c.IsendrecvF32(dstR, left, srcR, right)
		if err != nil {
			return err
		}
		qL, err := c.IsendrecvF32(dstL, right, srcL, left)
		if err != nil {
			return err
		}
		if err := qL.Wait(); err != nil {
			return err
		}
		return qR.Wait()
	}, int64(8 * n)
}

func BenchmarkAllgather(b *testing.B)     { benchAll(b, allgatherStep) }
func BenchmarkReduceScatter(b *testing.B) { benchAll(b, reduceScatterStep) }
func BenchmarkAllreduce(b *testing.B)     { benchAll(b, allreduceStep) }
func BenchmarkIsendrecv(b *testing.B)     { benchAll(b, isendrecvStep) }

var benchSizes = []int{1 << 10, 1 << 20}

// benchAll runs mk on Self, on groups of 2 and 4 goroutine ranks, and on
// World when launched by mpirun. World needs -test.benchtime=Nx so that
// every rank runs the same number of iterations:
//
//	mpirun -np 2 /tmp/mpi.test -test.run '^$' -test.bench . -test.benchtime 100x
func benchAll(b *testing.B, mk stepMaker) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("impl=self/w=1/n=%d", n), func(b *testing.B) {
			benchRank(b, mpi.Self(), mk, n)
		})
	}
	for _, w := range []int{2, 4} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("impl=group/w=%d/n=%d", w, n), func(b *testing.B) {
				benchGroup(b, w, mk, n)
			})
		}
	}
	if !mpi.Enabled || !underMpirun() {
		return
	}
	c, err := mpi.World()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("impl=world/w=%d/n=%d", c.Size(), n), func(b *testing.B) {
			if bt := flag.Lookup("test.benchtime"); bt == nil || !strings.HasSuffix(bt.Value.String(), "x") {
				b.Skip("World needs -test.benchtime=Nx, so that every rank runs the same number of iterations")
			}
			benchRank(b, c, mk, n)
		})
	}
}

// benchRank times mk's step on one rank of c.
func benchRank(b *testing.B, c mpi.Comm, mk stepMaker, n int) {
	step, bytes := mk(c.Size(), c.Rank(), n)
	if err := step(c); err != nil {
		c.Abort(1)
		b.Fatal(err)
	}
	b.SetBytes(bytes)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := step(c); err != nil {
			c.Abort(1)
			b.Fatal(err)
		}
	}
}

// benchGroup times rank 0 of a group while ranks 1..w-1 run the same
// number of steps in their own goroutines.
func benchGroup(b *testing.B, w int, mk stepMaker, n int) {
	comms := mpi.NewGroup(w)
	var wg sync.WaitGroup
	for r := 1; r < w; r++ {
		step, _ := mk(w, r, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range b.N + 1 {
				if err := step(comms[r]); err != nil {
					comms[r].Abort(1)
					return
				}
			}
		}()
	}
	benchRank(b, comms[0], mk, n)
	b.StopTimer()
	wg.Wait()
}
