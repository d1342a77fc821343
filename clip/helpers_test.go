package clip

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

func init() { loss.Warn = func(string) {} }

// onRanks runs fn on every rank of a fresh in-process group of size w and
// returns each rank's error.
func onRanks(w int, fn func(c mpi.Comm) error) []error {
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					errs[r] = fmt.Errorf("panic: %v", p)
					c.Abort(1)
				}
			}()
			errs[r] = fn(c)
		}()
	}
	wg.Wait()
	return errs
}

// onRanksWithin is onRanks that fails the test at once if the ranks do not
// all return within d: a rank left waiting in a collective that the others
// skipped would hang the test binary otherwise.
func onRanksWithin(t *testing.T, w int, d time.Duration, fn func(c mpi.Comm) error) []error {
	t.Helper()
	done := make(chan []error, 1)
	go func() { done <- onRanks(w, fn) }()
	select {
	case errs := <-done:
		return errs
	case <-time.After(d):
		t.Fatalf("the %d ranks did not all return within %v: a hang", w, d)
		return nil
	}
}

// testConfig is a small model and run.
func testConfig(head HeadKind, bias bool) Config {
	return Config{
		Model: ModelConfig{
			ImageDim: 6, TextDim: 5, EmbedDim: 4, Head: head, Hidden: 7,
			InitLogitScale: ClipInitLogitScale, LogitBias: bias, InitLogitBias: SigLipInitLogitBias,
		},
		Optim:     OptimConfig{LR: 1e-2, WD: 0.1, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, Warmup: 2},
		BatchSize: 6, AccumFreq: 1, Epochs: 3, Seed: 5,
	}
}

// pairs returns rows lo..hi-1 of a synthetic set as one rank's Pairs.
func testPairs(cfg ModelConfig, n int) *Pairs {
	src := NewSynthetic(SyntheticConfig{Latent: 3, ImageDim: cfg.ImageDim, TextDim: cfg.TextDim, Noise: 0.3, Seed: 9}, 0, n)
	p := &Pairs{Rows: n, ImageDim: cfg.ImageDim, TextDim: cfg.TextDim, Total: n,
		Image: make([]float32, n*cfg.ImageDim), Text: make([]float32, n*cfg.TextDim)}
	src.Read(p.Image, p.Text, 0, n)
	return p
}

func toT[T float32 | float64](v []float32) []T {
	out := make([]T, len(v))
	for i, x := range v {
		out[i] = T(x)
	}
	return out
}

func randVec(rng *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

func maxAbs(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, math.Abs(x))
	}
	return m
}

// memOf returns all rows of p (Rows = Total) as a Source.
func memOf(p *Pairs) Source { return NewMemory(p.Image, p.Text, p.ImageDim, p.TextDim) }
