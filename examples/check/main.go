// Command check runs the distributed ClipLoss on built-in synthetic features
// in all four OpenCLIP modes and checks every rank's loss and gradients
// against a single-process computation of the same ranks (an in-process
// group running the naive OpenCLIP algorithm in float64). It prints a table
// and exits non-zero on any mismatch.
//
//	mpirun -np 2 ./check [-b 512] [-d 256] [-algo fused] [-dtype float32]
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

func main() {
	b := flag.Int("b", 512, "rows per rank")
	d := flag.Int("d", 256, "feature dimension")
	algoName := flag.String("algo", "fused", "loss algorithm: naive, fused, tiled or ring")
	dtype := flag.String("dtype", "float32", "element type of the distributed run: float32 or float64")
	steps := flag.Int("steps", 5, "timed steps per mode")
	scale := flag.Float64("scale", 1/0.07, "logit scale (exponentiated)")
	seed := flag.Uint64("seed", 1, "data seed")
	flag.Parse()

	comm, err := mpi.World()
	if err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
		os.Exit(1)
	}
	code := run(comm, *b, *d, *algoName, *dtype, *steps, *scale, *seed)
	// Every rank agrees on the exit status, so mpirun sees the failure.
	v := []float64{float64(code)}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		mpi.Fail(comm, fmt.Errorf("check: agreeing on the exit status: %w", err))
		os.Exit(1)
	}
	if err := mpi.Finalize(); err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
	}
	os.Exit(int(v[0]))
}

func run(comm mpi.Comm, b, d int, algoName, dtype string, steps int, scale float64, seed uint64) int {
	algo, err := loss.ParseAlgorithm(algoName)
	if err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
		return 2
	}
	loss.Warn = func(string) {} // the local mode's warning is the point of one row here
	w, r := comm.Size(), comm.Rank()
	if r == 0 {
		fmt.Printf("clipmpi check: W=%d ranks, b=%d rows per rank (N=%d), d=%d, %s, algorithm %s\n", w, b, w*b, d, dtype, algo)
		fmt.Printf("backends: blas=%s (threads per rank %d), mpi=%v\n", blas.Backend(), blas.Threads(), mpi.Enabled)
		fmt.Printf("reference: the same %d ranks in one process, naive OpenCLIP algorithm, float64\n\n", w)
		fmt.Printf("%-11s %14s %14s %12s %10s  %s\n", "mode", "loss(rank0)", "mean loss", "max rel dev", "step ms", "status")
	}
	img, txt := synthetic(seed, w*b, d)
	tol := 1e-9 // float64: the same math summed in another order
	if dtype == "float32" {
		tol = 1e-4 // float32 features and logits; statistics in float64
	}
	failed := false
	for _, mode := range []string{"global", "global_gwg", "local", "local_gwg"} {
		opt, _ := loss.ParseMode(mode)
		ref := reference(w, b, d, img, txt, scale, opt)
		opt.Algorithm = algo
		var got *rankOut
		var ms float64
		switch dtype {
		case "float32":
			got, ms, err = distributed[float32](comm, b, d, img, txt, scale, opt, steps)
		case "float64":
			got, ms, err = distributed[float64](comm, b, d, img, txt, scale, opt, steps)
		default:
			err = fmt.Errorf("unknown dtype %q", dtype)
		}
		if err != nil {
			if r == 0 {
				fmt.Fprintf(os.Stderr, "check: %s: %v\n", mode, err)
			}
			return 1
		}
		dev := got.deviation(ref[r])
		v := []float64{dev, got.loss}
		if err := comm.AllreduceF64(mpi.Max, v[:1], v[:1]); err != nil {
			mpi.Fail(comm, fmt.Errorf("check: %w", err))
			return 1
		}
		if err := comm.AllreduceF64(mpi.Sum, v[1:], v[1:]); err != nil {
			mpi.Fail(comm, fmt.Errorf("check: %w", err))
			return 1
		}
		status := "ok"
		if !(v[0] <= tol) {
			status = fmt.Sprintf("MISMATCH (tolerance %g)", tol)
			failed = true
		}
		if r == 0 {
			fmt.Printf("%-11s %14.8f %14.8f %12.2e %10.2f  %s\n", mode, got.loss, v[1]/float64(w), v[0], ms, status)
		}
	}
	if failed {
		if r == 0 {
			fmt.Println("\nFAIL: distributed results differ from the single-process computation")
		}
		return 1
	}
	if r == 0 {
		fmt.Println("\nall modes match the single-process computation")
	}
	return 0
}

// rankOut is one rank's loss and gradients, in float64.
type rankOut struct {
	loss, gs   float64
	dImg, dTxt []float64
}

// deviation is the largest difference between o and ref, each output
// relative to the largest magnitude of ref's corresponding output.
func (o *rankOut) deviation(ref *rankOut) float64 {
	rel := func(got, want []float64) float64 {
		var m, dmax float64
		for i := range want {
			m = math.Max(m, math.Abs(want[i]))
			dmax = math.Max(dmax, math.Abs(got[i]-want[i]))
		}
		if m == 0 {
			return dmax
		}
		return dmax / m
	}
	return max(rel([]float64{o.loss}, []float64{ref.loss}), rel([]float64{o.gs}, []float64{ref.gs}),
		rel(o.dImg, ref.dImg), rel(o.dTxt, ref.dTxt))
}

// synthetic returns n unit-norm image and text features of dimension d that
// share latent factors, so matching pairs are similar.
func synthetic(seed uint64, n, d int) (img, txt []float64) {
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	img, txt = make([]float64, n*d), make([]float64, n*d)
	for i := 0; i < n; i++ {
		var si, st float64
		for k := 0; k < d; k++ {
			z := rnd.NormFloat64()
			a, c := z+1.5*rnd.NormFloat64(), z+1.5*rnd.NormFloat64()
			img[i*d+k], txt[i*d+k] = a, c
			si += a * a
			st += c * c
		}
		si, st = math.Sqrt(si), math.Sqrt(st)
		for k := 0; k < d; k++ {
			img[i*d+k] /= si
			txt[i*d+k] /= st
		}
	}
	return img, txt
}

// reference computes every rank's outputs with W goroutine ranks in this
// process, naive algorithm, float64.
func reference(w, b, d int, img, txt []float64, scale float64, opt loss.ClipOptions) []*rankOut {
	opt.Algorithm = loss.Naive
	out := make([]*rankOut, w)
	var wg sync.WaitGroup
	for _, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, bd := c.Rank(), b*d
			o := &rankOut{dImg: make([]float64, bd), dTxt: make([]float64, bd)}
			l := loss.NewClipLoss[float64](c, d, opt)
			res, err := l.ForwardBackward(o.dImg, o.dTxt, img[r*bd:(r+1)*bd], txt[r*bd:(r+1)*bd], loss.Logit{Scale: scale})
			if err != nil {
				panic(err) // same data on every rank: cannot fail
			}
			o.loss, o.gs = res.Loss, res.GradScale
			out[r] = o
		}()
	}
	wg.Wait()
	return out
}

// distributed runs this rank's share over comm and returns its outputs and
// the median step time in milliseconds.
func distributed[T blas.Float](comm mpi.Comm, b, d int, img, txt []float64, scale float64, opt loss.ClipOptions, steps int) (*rankOut, float64, error) {
	r, bd := comm.Rank(), b*d
	im, tx := make([]T, bd), make([]T, bd)
	for i := range im {
		im[i], tx[i] = T(img[r*bd+i]), T(txt[r*bd+i])
	}
	di, dt := make([]T, bd), make([]T, bd)
	l := loss.NewClipLoss[T](comm, d, opt)
	var res loss.Result
	times := make([]float64, 0, steps)
	for s := 0; s <= steps; s++ { // step 0 warms up
		t0 := time.Now()
		var err error
		if res, err = l.ForwardBackward(di, dt, im, tx, loss.Logit{Scale: scale}); err != nil {
			return nil, 0, err
		}
		if s > 0 {
			times = append(times, float64(time.Since(t0).Microseconds())/1e3)
		}
	}
	sort.Float64s(times)
	o := &rankOut{loss: res.Loss, gs: res.GradScale, dImg: make([]float64, bd), dTxt: make([]float64, bd)}
	for i := range di {
		o.dImg[i], o.dTxt[i] = float64(di[i]), float64(dt[i])
	}
	med := 0.0
	if len(times) > 0 {
		med = times[len(times)/2]
	}
	return o, med, nil
}
