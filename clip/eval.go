package clip

import (
	"fmt"
	"math"
	"slices"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// RecallK are the ranks at which Evaluate measures recall.
var RecallK = [3]int{1, 5, 10}

// Retrieval is the quality of one retrieval direction over N queries, as
// OpenCLIP's get_clip_metrics reports it. The rank of a query is 1 + the
// number of other candidates whose cosine similarity with the query is
// greater than or equal to that of its own pair: a tie counts against the
// pair, so a model whose features are all equal ranks every pair last
// (rank N), and recall@1 is 0, not 1.
type Retrieval struct {
	// R[i] is recall at RecallK[i]: the fraction of queries of rank ≤ K.
	R [3]float64
	// MeanRank is the mean rank; MedianRank the median rank rounded down
	// (OpenCLIP's floor(median(rank − 1)) + 1).
	MeanRank, MedianRank float64
}

// Metrics are the held-out metrics of a model on N pairs: image→text and
// text→image retrieval and the validation loss.
//
// Loss is OpenCLIP's clip_val_loss formula, the mean of the image→text and
// text→image cross-entropies of the logits scale·cos over the held-out
// pairs, at the model's logit scale (and without its bias, as OpenCLIP's
// evaluation for SigLIP models too), with all N pairs as one batch.
// (OpenCLIP averages it over the batches of its evaluation loader, so its
// value there depends on the evaluation batch size; this one does not.)
// Chance level of recall at K is K/N, of the loss ln N.
type Metrics struct {
	N                        int
	ImageToText, TextToImage Retrieval
	Loss                     float64
}

// MetricNames are the names of Metrics.Values, OpenCLIP's: the metrics of
// get_clip_metrics and clip_val_loss.
var MetricNames = []string{
	"image_to_text_mean_rank", "image_to_text_median_rank",
	"image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10",
	"text_to_image_mean_rank", "text_to_image_median_rank",
	"text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10",
	"clip_val_loss",
}

// Values returns the metrics in the order of MetricNames.
func (m Metrics) Values() []float64 {
	v := make([]float64, 0, len(MetricNames))
	for _, r := range []Retrieval{m.ImageToText, m.TextToImage} {
		v = append(v, r.MeanRank, r.MedianRank)
		v = append(v, r.R[:]...)
	}
	return append(v, m.Loss)
}

// Map returns the metrics by their names (MetricNames).
func (m Metrics) Map() map[string]float64 {
	out := make(map[string]float64, len(MetricNames))
	for i, v := range m.Values() {
		out[MetricNames[i]] = v
	}
	return out
}

func (m Metrics) String() string {
	return fmt.Sprintf("i2t R@1/5/10 %.3f/%.3f/%.3f rank %.1f/%.0f  t2i R@1/5/10 %.3f/%.3f/%.3f rank %.1f/%.0f  loss %.4f (n=%d)",
		m.ImageToText.R[0], m.ImageToText.R[1], m.ImageToText.R[2], m.ImageToText.MeanRank, m.ImageToText.MedianRank,
		m.TextToImage.R[0], m.TextToImage.R[1], m.TextToImage.R[2], m.TextToImage.MeanRank, m.TextToImage.MedianRank,
		m.Loss, m.N)
}

// evalChunk is the rows encoded, and the queries scored, in one GEMM. It
// is a constant, so that the metrics of a model do not depend on the batch
// size of the run that evaluates it.
const evalChunk = 256

// Evaluate is collective: it returns the held-out metrics (Metrics) of the
// trainer's model over all ranks' rows of val (each rank passes its block,
// as LoadShard gives it). See the function Evaluate.
func (t *Trainer[T]) Evaluate(val *Pairs) (Metrics, error) {
	return Evaluate(t.comm, t.model, val)
}

// Evaluate is collective: it returns the held-out metrics of model m over
// all ranks' rows of val (each rank passes its block, as LoadShard gives
// it). Each rank encodes its rows, the features of all ranks are gathered,
// each rank ranks its own queries against all candidates, and the ranks
// and loss terms are combined over ranks: every rank returns the same
// Metrics. Every rank must pass a val of the same widths and Total, and the
// same model configuration.
//
// Errors, the same on every rank: val's image or text width differs from
// the model's (ErrData, naming both, before any communication: the widths
// are the same on every rank); the model gives NaN or ±Inf features or
// logit scale for some held-out row (loss.ErrNonFinite, naming the row:
// its weights are not finite); communication errors.
func Evaluate[T blas.Float](comm mpi.Comm, m *Model[T], val *Pairs) (Metrics, error) {
	c := m.cfg
	if val.ImageDim != c.ImageDim || val.TextDim != c.TextDim {
		return Metrics{}, fmt.Errorf("%w: the held-out rows have image and text widths %d and %d, the model %d and %d",
			ErrData, val.ImageDim, val.TextDim, c.ImageDim, c.TextDim)
	}
	w, e := comm.Size(), c.EmbedDim
	if val.Total == 0 {
		return Metrics{}, nil
	}
	// Every rank's block is padded to the largest, mb rows.
	mb := (val.Total + w - 1) / w
	zi, zt := make([]T, mb*e), make([]T, mb*e)
	xi, xt := make([]T, evalChunk*c.ImageDim), make([]T, evalChunk*c.TextDim)
	for lo := 0; lo < val.Rows; lo += evalChunk {
		hi := min(lo+evalChunk, val.Rows)
		for i, v := range val.Image[lo*c.ImageDim : hi*c.ImageDim] {
			xi[i] = T(v)
		}
		for i, v := range val.Text[lo*c.TextDim : hi*c.TextDim] {
			xt[i] = T(v)
		}
		m.EncodeImage(zi[lo*e:hi*e], xi[:(hi-lo)*c.ImageDim])
		m.EncodeText(zt[lo*e:hi*e], xt[:(hi-lo)*c.TextDim])
	}
	scale := m.Logit().Scale
	var bad error
	if math.IsNaN(scale) || math.IsInf(scale, 0) {
		bad = fmt.Errorf("%w: evaluation: the model's logit scale is %v", loss.ErrNonFinite, scale)
	}
	for i := 0; i < val.Rows && bad == nil; i++ {
		for _, f := range []struct {
			name string
			z    []T
		}{{"image", zi}, {"text", zt}} {
			if !isFinite(f.z[i*e : (i+1)*e]) {
				bad = fmt.Errorf("%w: evaluation: the model gives NaN or Inf %s features for held-out row %d (its weights are not finite)",
					loss.ErrNonFinite, f.name, val.Offset+i)
				break
			}
		}
	}
	if err := Agree(comm, bad); err != nil {
		return Metrics{}, err
	}
	allI, allT := make([]T, w*mb*e), make([]T, w*mb*e)
	if err := mpi.Allgather(comm, allI, zi); err != nil {
		return Metrics{}, mpi.Fail(comm, fmt.Errorf("clip: gathering features: %w", err))
	}
	if err := mpi.Allgather(comm, allT, zt); err != nil {
		return Metrics{}, mpi.Fail(comm, fmt.Errorf("clip: gathering features: %w", err))
	}
	// global[p] is the global row of padded slot p, -1 for padding.
	global := make([]int, w*mb)
	for q := range w {
		lo, hi := Split(val.Total, w, q)
		for s := range mb {
			global[q*mb+s] = -1
			if lo+s < hi {
				global[q*mb+s] = lo + s
			}
		}
	}
	// ranks[dir*mb+i]: the rank of this rank's query i in direction dir
	// (0 for padding); lossSum[dir]: the sum of its queries' cross-entropies.
	ranks := make([]float64, 2*mb)
	lossSum := make([]float64, 2)
	sims := make([]T, evalChunk*w*mb)
	r := comm.Rank()
	for dir, pair := range [2][2][]T{{zi, allT}, {zt, allI}} {
		q, keys := pair[0], pair[1]
		for lo := 0; lo < val.Rows; lo += evalChunk {
			hi := min(lo+evalChunk, val.Rows)
			n := hi - lo
			blas.Gemm(blas.NoTrans, blas.Trans, n, w*mb, e, 1, q[lo*e:hi*e], e, keys, e, 0, sims[:n*w*mb], w*mb)
			for i := range n {
				row := sims[i*w*mb : (i+1)*w*mb]
				own := r*mb + lo + i // this query's pair among the candidates
				pos := float64(row[own])
				atLeast := 0
				hiSim := math.Inf(-1)
				for p, s := range row {
					if global[p] >= 0 {
						hiSim = max(hiSim, float64(s))
						if p != own && float64(s) >= pos {
							atLeast++
						}
					}
				}
				// −log softmax of the own pair's logit, stably.
				var sum float64
				for p, s := range row {
					if global[p] >= 0 {
						sum += math.Exp(scale * (float64(s) - hiSim))
					}
				}
				lossSum[dir] += scale*(hiSim-pos) + math.Log(sum)
				ranks[dir*mb+lo+i] = float64(1 + atLeast)
			}
		}
	}
	all := make([]float64, 2*w*mb)
	if err := mpi.Allgather(comm, all, ranks); err != nil {
		return Metrics{}, mpi.Fail(comm, fmt.Errorf("clip: gathering ranks: %w", err))
	}
	if err := comm.AllreduceF64(mpi.Sum, lossSum, lossSum); err != nil {
		return Metrics{}, mpi.Fail(comm, fmt.Errorf("clip: summing the validation loss: %w", err))
	}
	n := float64(val.Total)
	met := Metrics{N: val.Total, Loss: (lossSum[0] + lossSum[1]) / (2 * n)}
	for dir, ret := range []*Retrieval{&met.ImageToText, &met.TextToImage} {
		got := make([]float64, 0, val.Total)
		for q := range w {
			for s := range mb {
				if global[q*mb+s] >= 0 {
					got = append(got, all[q*2*mb+dir*mb+s])
				}
			}
		}
		*ret = retrieval(got)
	}
	return met, nil
}

// retrieval returns the recall at RecallK, mean and median of the ranks of
// a direction's queries (1-based), as OpenCLIP's get_clip_metrics computes
// them from preds = rank − 1: mean(preds) + 1, floor(median(preds)) + 1 and
// mean(preds < K). It sorts ranks.
func retrieval(ranks []float64) Retrieval {
	var r Retrieval
	n := len(ranks)
	if n == 0 {
		return r
	}
	slices.Sort(ranks)
	var sum float64
	for _, v := range ranks {
		sum += v
		for ki, k := range RecallK {
			if v <= float64(k) {
				r.R[ki]++
			}
		}
	}
	for ki := range r.R {
		r.R[ki] /= float64(n)
	}
	r.MeanRank = sum / float64(n)
	med := ranks[n/2]
	if n%2 == 0 {
		med = (ranks[n/2-1] + ranks[n/2]) / 2
	}
	r.MedianRank = math.Floor(med)
	return r
}
