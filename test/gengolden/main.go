// Command gengolden writes ClipLoss cases in the golden format of
// test/testdata/golden/README.md for world sizes and shapes the shipped
// cases lack, computed by clipmpi's naive (OpenCLIP-as-written) algorithm
// in float64 with in-process ranks.
//
// They are not OpenCLIP's numbers: they exercise the harness (make
// test-golden with W up to 8, shapes that straddle tiles) and check that the
// fast algorithms and real MPI agree with the reference. The truth is the
// cases produced by OpenCLIP itself.
//
//	go run ./test/gengolden -out DIR [-worlds 3,5,8] [-b 3] [-d 5]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/test"
)

func main() {
	out := flag.String("out", "", "directory to write the cases into (created)")
	worlds := flag.String("worlds", "3,5,8", "comma-separated world sizes")
	b := flag.Int("b", 3, "rows per rank")
	d := flag.Int("d", 5, "feature dimension")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "gengolden: -out is required")
		os.Exit(2)
	}
	loss.Warn = func(string) {}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gengolden:", err)
		os.Exit(1)
	}
	for _, ws := range strings.Split(*worlds, ",") {
		w, err := strconv.Atoi(ws)
		if err != nil || w < 1 {
			fmt.Fprintf(os.Stderr, "gengolden: bad world size %q\n", ws)
			os.Exit(2)
		}
		for _, local := range []bool{false, true} {
			for _, gwg := range []bool{false, true} {
				c := generate(w, *b, *d, local, gwg)
				raw, _ := json.MarshalIndent(c, "", " ")
				if err := os.WriteFile(filepath.Join(*out, c.Name+".json"), raw, 0o644); err != nil {
					fmt.Fprintln(os.Stderr, "gengolden:", err)
					os.Exit(1)
				}
			}
		}
	}
}

func generate(w, b, d int, local, gwg bool) *test.Case {
	rnd := rand.New(rand.NewPCG(uint64(w*1000+b*10+d), 3))
	c := &test.Case{
		Name:     fmt.Sprintf("clip_W%d_local%d_gwg%d_b%d_d%d_synthetic_scale10", w, b2i(local), b2i(gwg), b, d),
		LossKind: "clip", WorldSize: w, LocalLoss: &local, GatherWithGrad: &gwg,
		LogitScale: 10, BatchPerRank: b, Dim: d, Ranks: make([]test.Rank, w),
	}
	feat := func() [][]float64 {
		m := make([][]float64, b)
		for i := range m {
			m[i] = make([]float64, d)
			for k := range m[i] {
				m[i][k] = rnd.NormFloat64() / 2
			}
		}
		return m
	}
	for r := range c.Ranks {
		c.Ranks[r].Image, c.Ranks[r].Text = feat(), feat()
	}
	opt := loss.ClipOptions{LocalLoss: local, GatherWithGrad: gwg, Algorithm: loss.Naive}
	var wg sync.WaitGroup
	for _, comm := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rk := &c.Ranks[comm.Rank()]
			rk.Outputs = solve(comm, rk.Image, rk.Text, d, opt)
		}()
	}
	wg.Wait()
	var img, txt [][]float64
	for _, rk := range c.Ranks {
		img, txt = append(img, rk.Image...), append(txt, rk.Text...)
	}
	c.Single = solve(mpi.Self(), img, txt, d, opt)
	return c
}

func solve(comm mpi.Comm, img, txt [][]float64, d int, opt loss.ClipOptions) test.Outputs {
	fi, ft := test.Flatten(img), test.Flatten(txt)
	di, dt := make([]float64, len(fi)), make([]float64, len(ft))
	res, err := loss.NewClipLoss[float64](comm, d, opt).ForwardBackward(di, dt, fi, ft, loss.Logit{Scale: 10})
	if err != nil {
		panic(err)
	}
	return test.Outputs{Loss: res.Loss, GradImage: rows(di, d), GradText: rows(dt, d), GradScale: res.GradScale}
}

func rows(s []float64, d int) [][]float64 {
	m := make([][]float64, len(s)/d)
	for i := range m {
		m[i] = s[i*d : (i+1)*d]
	}
	return m
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
