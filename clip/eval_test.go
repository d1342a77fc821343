package clip

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/mpi"
)

// identityModel is a linear model whose heads are the identity: its
// features are the normalised inputs.
func identityModel(d int) *Model[float64] {
	m := NewModel[float64](ModelConfig{ImageDim: d, TextDim: d, EmbedDim: d, Head: Linear}, 1)
	clear(m.Params())
	for _, p := range m.Layout() {
		if p.Name == "image.proj.weight" || p.Name == "text.proj.weight" {
			for i := range d {
				m.Params()[p.Offset+i*d+i] = 1
			}
		}
	}
	return m
}

// referenceRecall ranks by cosine with plain loops over all n pairs.
func referenceRecall(img, txt []float64, n, d int) Recall {
	cos := func(a, b []float64) float64 {
		var ab, aa, bb float64
		for k := range a {
			ab += a[k] * b[k]
			aa += a[k] * a[k]
			bb += b[k] * b[k]
		}
		return ab / math.Sqrt(aa*bb)
	}
	r := Recall{N: n}
	for i := range n {
		for dir := range 2 {
			q, keys := img, txt
			if dir == 1 {
				q, keys = txt, img
			}
			pos := cos(q[i*d:(i+1)*d], keys[i*d:(i+1)*d])
			better := 0
			for j := range n {
				if j != i && cos(q[i*d:(i+1)*d], keys[j*d:(j+1)*d]) > pos {
					better++
				}
			}
			for k, K := range RecallK {
				if better < K {
					if dir == 0 {
						r.ImageToText[k] += 1 / float64(n)
					} else {
						r.TextToImage[k] += 1 / float64(n)
					}
				}
			}
		}
	}
	return r
}

// TestEvaluate: distributed recall (uneven blocks, padding, query chunks)
// equals a brute-force single-process computation.
func TestEvaluate(t *testing.T) {
	const d = 8
	for _, c := range []struct {
		n, w, chunk int
		noise       float64
	}{{11, 3, 2, 1.5}, {11, 1, 5, 1.5}, {600, 2, 128, 0.3}, {3, 4, 1, 2}} {
		rng := rand.New(rand.NewPCG(uint64(c.n), 1))
		img, txt := make([]float64, c.n*d), make([]float64, c.n*d)
		for i := range img {
			img[i] = rng.NormFloat64()
			txt[i] = img[i] + c.noise*rng.NormFloat64() // recall between chance and 1
		}
		want := referenceRecall(img, txt, c.n, d)
		got := make([]Recall, c.w)
		errs := onRanks(c.w, func(comm mpi.Comm) error {
			lo, hi := Split(c.n, c.w, comm.Rank())
			p := &Pairs{Rows: hi - lo, ImageDim: d, TextDim: d, Offset: lo, Total: c.n,
				Image: make([]float32, (hi-lo)*d), Text: make([]float32, (hi-lo)*d)}
			for i := range p.Image {
				p.Image[i], p.Text[i] = float32(img[lo*d+i]), float32(txt[lo*d+i])
			}
			var err error
			got[comm.Rank()], err = Evaluate(comm, identityModel(d), p, c.chunk)
			return err
		})
		// The features are float32-rounded inputs: a pair whose cosines tie
		// to within 1e-7 could rank differently; with these seeds none do,
		// so the counts must agree exactly.
		for r, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
			for k := range RecallK {
				if math.Abs(got[r].ImageToText[k]-want.ImageToText[k]) > 1e-12 || math.Abs(got[r].TextToImage[k]-want.TextToImage[k]) > 1e-12 || got[r].N != c.n {
					t.Errorf("n=%d w=%d rank %d: %v, brute force %v", c.n, c.w, r, got[r], want)
					break
				}
			}
		}
		if c.n > 3 && (want.ImageToText[0] < 0.05 || want.ImageToText[0] > 0.95) {
			t.Errorf("test data gives recall %v: not a discriminating case", want)
		}
	}
}

// TestEvaluateWidths: held-out rows of other widths than the model's are an
// ErrData error naming both widths, on every rank, and no rank is left
// waiting in a collective.
func TestEvaluateWidths(t *testing.T) {
	const d = 8
	for _, c := range []struct {
		img, txt int
		want     string
	}{
		{d + 1, d, "image and text widths 9 and 8, the model 8 and 8"},
		{d, d - 3, "image and text widths 8 and 5, the model 8 and 8"},
	} {
		errs := onRanksWithin(t, 2, 30*time.Second, func(comm mpi.Comm) error {
			p := &Pairs{Rows: 3, ImageDim: c.img, TextDim: c.txt, Offset: 3 * comm.Rank(), Total: 6,
				Image: make([]float32, 3*c.img), Text: make([]float32, 3*c.txt)}
			_, err := Evaluate(comm, identityModel(d), p, 4)
			return err
		})
		for r, err := range errs {
			if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("widths %d/%d: rank %d: %v, want ErrData saying %q", c.img, c.txt, r, err, c.want)
			}
		}
	}
}
