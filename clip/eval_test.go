package clip

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/loss"
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

// referenceMetrics computes the metrics with plain loops over all n pairs,
// from the definitions: cosine similarity in float64; the rank of query i
// is 1 + the number of j ≠ i whose similarity is ≥ that of pair i; numpy's
// median (the mean of the two middle values for even n), floored; the loss
// is the mean over queries and both directions of
// −log(exp(s·cos_ii) / Σ_j exp(s·cos_ij)), written directly.
func referenceMetrics(img, txt []float64, n, d int, scale float64) Metrics {
	cos := func(a, b []float64) float64 {
		var ab, aa, bb float64
		for k := range a {
			ab += a[k] * b[k]
			aa += a[k] * a[k]
			bb += b[k] * b[k]
		}
		return ab / math.Sqrt(aa*bb)
	}
	m := Metrics{N: n}
	var lossSum float64
	for dir, ret := range []*Retrieval{&m.ImageToText, &m.TextToImage} {
		q, keys := img, txt
		if dir == 1 {
			q, keys = txt, img
		}
		ranks := make([]int, n)
		for i := range n {
			pos := cos(q[i*d:(i+1)*d], keys[i*d:(i+1)*d])
			ranks[i] = 1
			var den float64
			for j := range n {
				c := cos(q[i*d:(i+1)*d], keys[j*d:(j+1)*d])
				den += math.Exp(scale * c)
				if j != i && c >= pos {
					ranks[i]++
				}
			}
			lossSum += -math.Log(math.Exp(scale*pos) / den)
		}
		sum := 0
		for _, r := range ranks {
			sum += r
			for k, K := range RecallK {
				if r <= K {
					ret.R[k] += 1 / float64(n)
				}
			}
		}
		ret.MeanRank = float64(sum) / float64(n)
		sort.Ints(ranks)
		med := float64(ranks[n/2])
		if n%2 == 0 {
			med = float64(ranks[n/2-1]+ranks[n/2]) / 2
		}
		ret.MedianRank = math.Floor(med)
	}
	m.Loss = lossSum / float64(2*n)
	return m
}

// evalOnRanks evaluates model(d) on the pairs (img, txt), n rows of width
// d, split over w in-process ranks with the block layout of LoadShard, and
// returns each rank's metrics.
func evalOnRanks(t *testing.T, img, txt []float64, n, d, w int, model func() *Model[float64]) []Metrics {
	t.Helper()
	got := make([]Metrics, w)
	errs := onRanksWithin(t, w, time.Minute, func(comm mpi.Comm) error {
		lo, hi := Split(n, w, comm.Rank())
		p := &Pairs{Rows: hi - lo, ImageDim: d, TextDim: d, Offset: lo, Total: n,
			Image: make([]float32, (hi-lo)*d), Text: make([]float32, (hi-lo)*d)}
		for i := range p.Image {
			p.Image[i], p.Text[i] = float32(img[lo*d+i]), float32(txt[lo*d+i])
		}
		var err error
		got[comm.Rank()], err = Evaluate(comm, model(), p)
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return got
}

// checkMetrics compares metrics: the rank statistics exactly (they count),
// the loss to a relative tolerance.
func checkMetrics(t *testing.T, what string, got, want Metrics, lossTol float64) {
	t.Helper()
	gv, wv := got.Values(), want.Values()
	for i, name := range MetricNames {
		tol := 1e-12 // means of integers: a division's rounding
		if name == "clip_val_loss" {
			tol = lossTol * math.Abs(wv[i])
		}
		if math.Abs(gv[i]-wv[i]) > tol || math.IsNaN(gv[i]) || got.N != want.N {
			t.Errorf("%s: %s = %v, want %v\n  got  %v\n  want %v", what, name, gv[i], wv[i], got, want)
			return
		}
	}
}

// TestEvaluate: distributed metrics (uneven blocks, padding, query chunks
// of evalChunk) equal a brute-force single-process computation on
// continuous random data, where no two similarities tie.
func TestEvaluate(t *testing.T) {
	const d = 8
	for _, c := range []struct {
		n, w  int
		noise float64
	}{{11, 3, 1.5}, {11, 1, 1.5}, {600, 2, 0.3}, {3, 4, 2}, {700, 3, 1}} {
		rng := rand.New(rand.NewPCG(uint64(c.n), 1))
		img, txt := make([]float64, c.n*d), make([]float64, c.n*d)
		for i := range img {
			img[i] = float64(float32(rng.NormFloat64()))
			txt[i] = float64(float32(img[i] + c.noise*rng.NormFloat64())) // recall between chance and 1
		}
		want := referenceMetrics(img, txt, c.n, d, 1)
		// The features are the normalised inputs, rounded differently
		// from the reference's cosines: a pair of similarities within
		// 1e-15 could rank differently; with these seeds none do, so the
		// counts must agree exactly.
		for r, got := range evalOnRanks(t, img, txt, c.n, d, c.w, func() *Model[float64] { return identityModel(d) }) {
			checkMetrics(t, "n="+itoa(c.n)+" w="+itoa(c.w)+" rank "+itoa(r), got, want, 1e-12)
		}
		if c.n > 3 && (want.ImageToText.R[0] < 0.05 || want.ImageToText.R[0] > 0.95) {
			t.Errorf("test data gives recall %v: not a discriminating case", want)
		}
	}
}

// exactRows returns n rows of width 8 whose normalisation and dot products
// are exact in floating point: each row has either one nonzero entry ±1
// (norm 1) or four entries ±1 (norm 2), so every cosine is a multiple of
// 1/4 whatever the order of summation. Similarities tie often.
func exactRows(rng *rand.Rand, n int) []float64 {
	const d = 8
	v := make([]float64, n*d)
	for i := range n {
		row := v[i*d : (i+1)*d]
		k := 1
		if rng.IntN(2) == 0 {
			k = 4
		}
		for _, j := range rng.Perm(d)[:k] {
			row[j] = float64(1 - 2*rng.IntN(2))
		}
	}
	return v
}

// TestEvaluateTies: with deliberate ties and duplicated rows, a tie with the
// positive counts against it, as the brute-force reference says, on 1 to 4
// ranks; and hand-computed cases.
func TestEvaluateTies(t *testing.T) {
	const d = 8
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{5, 40, 301} {
		img := exactRows(rng, n)
		txt := append([]float64(nil), img...)
		// Some texts are another pair's: those texts are duplicates, and
		// their images tie with their own texts.
		for i := 0; i+1 < n; i += 3 {
			copy(txt[i*d:(i+1)*d], txt[(i+1)*d:(i+2)*d])
		}
		// Some images are duplicated too.
		for i := 2; i+2 < n; i += 7 {
			copy(img[i*d:(i+1)*d], img[(i+2)*d:(i+3)*d])
		}
		want := referenceMetrics(img, txt, n, d, 1)
		if n > 5 && (want.ImageToText.R[0] == 0 || want.ImageToText.R[0] == 1) {
			t.Fatalf("n=%d: the reference gives R@1 %v: not a discriminating case", n, want.ImageToText.R[0])
		}
		for _, w := range []int{1, 2, 3, 4} {
			for r, got := range evalOnRanks(t, img, txt, n, d, w, func() *Model[float64] { return identityModel(d) }) {
				checkMetrics(t, "ties n="+itoa(n)+" w="+itoa(w)+" rank "+itoa(r), got, want, 1e-12)
			}
		}
	}

	// By hand: 4 pairs, every image and text the same vector. Every other
	// candidate ties with the positive: rank 4 for every query, recall 0
	// at 1 (and 1 at 5 and 10, since 4 ≤ 5), loss ln 4.
	same := make([]float64, 4*d)
	for i := range 4 {
		same[i*d] = 1
	}
	got := evalOnRanks(t, same, same, 4, d, 2, func() *Model[float64] { return identityModel(d) })[0]
	hand := Metrics{N: 4, Loss: math.Log(4),
		ImageToText: Retrieval{R: [3]float64{0, 1, 1}, MeanRank: 4, MedianRank: 4},
		TextToImage: Retrieval{R: [3]float64{0, 1, 1}, MeanRank: 4, MedianRank: 4}}
	checkMetrics(t, "all equal", got, hand, 1e-15)

	// By hand: 4 one-hot pairs e0, e1, e2, e3, and text 3 replaced by e0.
	// image→text: image 0 ties with text 3 (both e0): rank 2; images 1, 2
	// rank 1; image 3 (e3) scores 0 with every text: rank 4. Ranks
	// 1, 1, 2, 4: R@1 = 1/2, mean 2, median floor(1.5) = 1.
	// text→image: text 3 (e0) scores 1 with image 0 and 0 with its own
	// image 3, as with images 1 and 2, which tie: rank 4; the others rank
	// 1. Ranks 1, 1, 1, 4: R@1 = 3/4, mean 7/4, median 1.
	img := make([]float64, 4*d)
	for i := range 4 {
		img[i*d+i] = 1
	}
	txt := append([]float64(nil), img...)
	txt[3*d+3], txt[3*d] = 0, 1
	got = evalOnRanks(t, img, txt, 4, d, 3, func() *Model[float64] { return identityModel(d) })[1]
	e := math.E
	hand = Metrics{N: 4,
		ImageToText: Retrieval{R: [3]float64{0.5, 1, 1}, MeanRank: 2, MedianRank: 1},
		TextToImage: Retrieval{R: [3]float64{0.75, 1, 1}, MeanRank: 1.75, MedianRank: 1},
		// Scale 1 (the identity model's log scale is 0). Rows of the
		// logits (image→text): image 0: e0·(e0,e1,e2,e0) = 1,0,0,1;
		// images 1, 2: a 1 on their own; image 3: all 0.
		// −log p: 2·(−log(e/(e+3))) for images 1, 2, −log(e/(2e+2)) for
		// image 0, −log(1/4) for image 3. Text→image columns: text 0:
		// 1,0,0,0; texts 1, 2 likewise; text 3 (e0): 1,0,0,0 with its
		// own image 3 at 0: −log(1/(e+3)).
		Loss: (2*-math.Log(e/(e+3)) - math.Log(e/(2*e+2)) + math.Log(4) +
			3*-math.Log(e/(e+3)) - math.Log(1/(e+3))) / 8,
	}
	checkMetrics(t, "one-hot", got, hand, 1e-14)
}

// TestEvaluateCollapsed: a collapsed model, whose features are all equal,
// ranks every pair last among 1000: recall@1 = 0 (ties do not count in the
// pair's favour), mean and median rank 1000, loss ln 1000, the chance
// loss. NaN weights are an error on every rank.
func TestEvaluateCollapsed(t *testing.T) {
	const n = 1000
	cfg := ModelConfig{ImageDim: 6, TextDim: 5, EmbedDim: 4, Head: Linear, InitLogitScale: ClipInitLogitScale}
	src := NewSynthetic(SyntheticConfig{Latent: 3, ImageDim: 6, TextDim: 5, Noise: 0.3, Seed: 9}, 0, n)
	for _, c := range []struct {
		name string
		set  func(m *Model[float32])
		want error
	}{
		{"all parameters zero", func(m *Model[float32]) { clear(m.Params()) }, nil},
		{"weights zero, biases equal", func(m *Model[float32]) {
			for _, p := range m.Layout() {
				for i := range p.Size() {
					v := float32(0)
					if strings.HasSuffix(p.Name, ".bias") {
						v = 0.25 * float32(1+i)
					}
					m.Params()[p.Offset+i] = v
				}
			}
		}, nil},
		{"NaN weights", func(m *Model[float32]) { m.Params()[3] = float32(math.NaN()) }, loss.ErrNonFinite},
		{"Inf logit scale", func(m *Model[float32]) { m.Params()[len(m.Params())-1] = float32(math.Inf(1)) }, loss.ErrNonFinite},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := make([]Metrics, 2)
			errs := onRanksWithin(t, 2, time.Minute, func(comm mpi.Comm) error {
				val, err := LoadShard(comm, src, 0, n)
				if err != nil {
					return err
				}
				m := NewModel[float32](cfg, 1)
				c.set(m)
				got[comm.Rank()], err = Evaluate(comm, m, val)
				return err
			})
			for r, err := range errs {
				if c.want != nil {
					if !errors.Is(err, c.want) || !strings.Contains(err.Error(), "evaluation:") {
						t.Errorf("rank %d: %v, want %v", r, err, c.want)
					}
					continue
				}
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
				g := got[r]
				for _, ret := range []Retrieval{g.ImageToText, g.TextToImage} {
					if ret.R != [3]float64{0, 0, 0} || ret.MeanRank != n || ret.MedianRank != n {
						t.Errorf("rank %d: %v, want R@1/5/10 0 and ranks %d (every pair ranked last)", r, g, n)
					}
				}
				// Every logit is equal: the loss is ln n at any scale.
				if math.Abs(g.Loss-math.Log(n)) > 1e-12 {
					t.Errorf("rank %d: loss %v, want ln %d = %v", r, g.Loss, n, math.Log(n))
				}
			}
		})
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
			_, err := Evaluate(comm, identityModel(d), p)
			return err
		})
		for r, err := range errs {
			if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("widths %d/%d: rank %d: %v, want ErrData saying %q", c.img, c.txt, r, err, c.want)
			}
		}
	}
}

// TestMetricNames: Values and Map follow MetricNames, OpenCLIP's names.
func TestMetricNames(t *testing.T) {
	m := Metrics{N: 7, Loss: 11,
		ImageToText: Retrieval{R: [3]float64{1, 2, 3}, MeanRank: 4, MedianRank: 5},
		TextToImage: Retrieval{R: [3]float64{6, 7, 8}, MeanRank: 9, MedianRank: 10}}
	want := map[string]float64{
		"image_to_text_R@1": 1, "image_to_text_R@5": 2, "image_to_text_R@10": 3,
		"image_to_text_mean_rank": 4, "image_to_text_median_rank": 5,
		"text_to_image_R@1": 6, "text_to_image_R@5": 7, "text_to_image_R@10": 8,
		"text_to_image_mean_rank": 9, "text_to_image_median_rank": 10,
		"clip_val_loss": 11,
	}
	got := m.Map()
	if len(got) != len(want) || len(MetricNames) != len(want) {
		t.Fatalf("%d metrics, %d names, want %d", len(got), len(MetricNames), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
