// Command faultprog runs the distributed ClipLoss (or, with -loss siglip,
// SigLipLoss) forward and backward in a loop for a while, and can inject a
// fault on one rank: the cluster tests (scripts/cluster) and the fault
// suite (scripts/faults.sh) use it to check that every failure ends the job
// quickly and clearly.
//
//	mpirun -np 2 faultprog -seconds 60 -pidfile /tmp/fp     # a long job to kill or cut
//	mpirun -np 2 faultprog -fault shape -fault-rank 1 -fault-after 1s
//	mpirun -np 3 faultprog -algo ring -fault isendrecv -fault-rank 1
//
// Faults, injected on -fault-rank once -fault-after has passed:
//
//	shape      the rank's batch grows by one row (loss.ErrShapeMismatch)
//	dim        the rank's feature dimension grows by one (loss.ErrShapeMismatch)
//	nan        one image feature becomes NaN (loss.ErrNonFinite)
//	inf        one text feature becomes +Inf (loss.ErrNonFinite)
//	exit       the rank exits with status 7 without a word to the others
//	isendrecv  the rank's next non-blocking send/receive fails to start
//	           (mpitest.FaultComm), as a broken link would on that rank
//	           only: the ring algorithms (-algo ring; SigLIP's bidir and
//	           shift) make one every step
//	panic      the rank panics
//
// The faulty rank prints "faultprog: rank R injects FAULT at unixnano=T"
// first, so a harness can time the job's end from the injection. A loss
// error (the same on every rank) makes every rank print "faultprog: rank R
// of W: step S: ERROR" and exit with status 3 after MPI_Finalize. A failure
// that only the faulty rank sees (isendrecv, panic, and an environment
// that disagrees with MPI at start) goes to mpi.Fail: that rank prints
// "mpi: rank R of W: CAUSE" and MPI_Abort ends the job. Each rank writes its pid to
// PIDFILE.rank<R> and prints "faultprog: rank R of W pid P on HOST
// (LAUNCH ENV; T BLAS threads, C CPUs usable)", C being the CPUs its
// affinity mask allows, then one line a second from rank 0.
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
	"github.com/clipmpi/clipmpi/slurm"
)

func main() {
	seconds := flag.Float64("seconds", 10, "run the loss in a loop for this long")
	b := flag.Int("b", 64, "rows per rank")
	d := flag.Int("d", 32, "feature dimension")
	lossName := flag.String("loss", "clip", "loss: clip or siglip")
	algoName := flag.String("algo", "fused", "ClipLoss algorithm: naive, fused, tiled or ring; SigLipLoss dist_impl: bidir, shift, reduce or gather")
	fault := flag.String("fault", "none", "fault to inject: none, shape, dim, nan, inf, exit, isendrecv or panic")
	faultRank := flag.Int("fault-rank", 1, "rank that injects the fault")
	faultAfter := flag.Duration("fault-after", time.Second, "inject the fault once this much time has passed since the first step")
	pidfile := flag.String("pidfile", "", "write this rank's pid to PIDFILE.rank<R>")
	pause := flag.Duration("pause", 5*time.Millisecond, "sleep between steps (a long job that leaves the CPUs to others)")
	flag.Parse()

	comm, err := mpi.World()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faultprog:", err)
		os.Exit(1)
	}
	defer mpi.AbortOnPanic(comm)
	r, w := comm.Rank(), comm.Size()
	env, err := slurm.Init(comm, blas.SetThreads)
	if err != nil {
		// Only this rank may know: the others are on their way into the
		// first collective.
		mpi.Fail(comm, err)
		os.Exit(4)
	}
	host, _ := os.Hostname()
	if *pidfile != "" {
		if err := os.WriteFile(fmt.Sprintf("%s.rank%d", *pidfile, r), fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644); err != nil {
			mpi.Fail(comm, err)
			os.Exit(1)
		}
	}
	threads, _ := env.Threads(runtime.NumCPU())
	fmt.Printf("faultprog: rank %d of %d pid %d on %s (%s; %d BLAS threads, %d CPUs usable)\n", r, w, os.Getpid(), host, env, threads, runtime.NumCPU())

	code := run(comm, *seconds, *b, *d, *lossName, *algoName, *fault, *faultRank, *faultAfter, *pause)
	if err := mpi.Finalize(); err != nil {
		fmt.Fprintln(os.Stderr, "faultprog:", err)
	}
	os.Exit(code)
}

// stepper is what ClipLoss and SigLipLoss have in common.
type stepper interface {
	ForwardBackward(dImg, dTxt, img, txt []float32, lg loss.Logit) (loss.Result, error)
}

func run(comm mpi.Comm, seconds float64, b, d int, lossName, algoName, fault string, faultRank int, faultAfter, pause time.Duration) int {
	r, w := comm.Rank(), comm.Size()
	var newLoss func(c mpi.Comm, d int) stepper
	switch lossName {
	case "clip":
		algo, err := loss.ParseAlgorithm(algoName)
		if err != nil {
			fmt.Fprintln(os.Stderr, "faultprog:", err)
			return 2
		}
		opt := loss.ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: algo}
		newLoss = func(c mpi.Comm, d int) stepper { return loss.NewClipLoss[float32](c, d, opt) }
	case "siglip":
		impl, err := loss.ParseSigLipImpl(algoName)
		if err != nil {
			fmt.Fprintln(os.Stderr, "faultprog:", err)
			return 2
		}
		newLoss = func(c mpi.Comm, d int) stepper {
			return loss.NewSigLipLoss[float32](c, d, loss.SigLipOptions{Impl: impl})
		}
	default:
		fmt.Fprintf(os.Stderr, "faultprog: unknown loss %q (want clip or siglip)\n", lossName)
		return 2
	}
	switch fault {
	case "none", "shape", "dim", "nan", "inf", "exit", "isendrecv", "panic":
	default:
		fmt.Fprintf(os.Stderr, "faultprog: unknown fault %q\n", fault)
		return 2
	}
	injects := fault != "none" && r == faultRank
	// The loss talks through fc, which fails an Isendrecv when told to.
	fc := &mpitest.FaultComm{Comm: comm, OnlyIsendrecv: true}
	rng := rand.New(rand.NewPCG(uint64(r), 1))
	features := func(rows, dim int) (img, txt []float32) {
		img, txt = make([]float32, rows*dim), make([]float32, rows*dim)
		for i := range img {
			img[i], txt[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
		}
		return img, txt
	}
	l := newLoss(fc, d)
	img, txt := features(b, d)
	dImg, dTxt := make([]float32, len(img)), make([]float32, len(txt))
	lg := loss.Logit{Scale: 1 / 0.07}
	if lossName == "siglip" {
		lg = loss.Logit{Scale: 10, Bias: -10, HasBias: true}
	}

	start := time.Now()
	end := start.Add(time.Duration(seconds * float64(time.Second)))
	nextLog := start.Add(time.Second)
	injected := false
	stop := make([]float64, 1)
	for step := 0; ; step++ {
		// Every rank stops at the same step: when any rank's time is up.
		now := time.Now()
		stop[0] = 0
		if !now.Before(end) {
			stop[0] = 1
		}
		if err := comm.AllreduceF64(mpi.Max, stop, stop); err != nil {
			mpi.Fail(comm, fmt.Errorf("faultprog: step %d: %w", step, err))
			return 1
		}
		if stop[0] != 0 {
			if r == 0 {
				fmt.Printf("faultprog: done after %d steps in %.1f s\n", step, now.Sub(start).Seconds())
			}
			return 0
		}
		if injects && !injected && now.Sub(start) >= faultAfter {
			injected = true
			fmt.Printf("faultprog: rank %d injects %s at unixnano=%d\n", r, fault, time.Now().UnixNano())
			os.Stdout.Sync()
			switch fault {
			case "shape":
				img, txt = features(b+1, d)
				dImg, dTxt = make([]float32, len(img)), make([]float32, len(txt))
			case "dim":
				l = newLoss(fc, d+1)
				img, txt = features(b, d+1)
				dImg, dTxt = make([]float32, len(img)), make([]float32, len(txt))
			case "nan":
				img[len(img)/2] = float32(math.NaN())
			case "inf":
				txt[len(txt)/3] = float32(math.Inf(1))
			case "exit":
				os.Exit(7)
			case "isendrecv":
				fc.FailAt = fc.Calls + 1
			case "panic":
				panic(fmt.Sprintf("faultprog: injected panic at step %d", step))
			}
		}
		res, err := l.ForwardBackward(dImg, dTxt, img, txt, lg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "faultprog: rank %d of %d: step %d: %v\n", r, w, step, err)
			return 3
		}
		if r == 0 && !now.Before(nextLog) {
			fmt.Printf("faultprog: step %d, %.1f s, loss %.4f\n", step, now.Sub(start).Seconds(), res.Loss)
			nextLog = nextLog.Add(time.Second)
		}
		time.Sleep(pause)
	}
}
