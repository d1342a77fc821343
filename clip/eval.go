package clip

import (
	"fmt"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// RecallK are the ranks at which Evaluate measures recall.
var RecallK = [3]int{1, 5, 10}

// Recall is retrieval quality on a held-out set of N pairs:
// ImageToText[i] is the fraction of images whose own text is among the
// RecallK[i] texts most similar to it (cosine of the features), and
// TextToImage[i] the same for texts. Ties count in the pair's favour: a
// query is a hit at K when fewer than K other candidates score strictly
// higher than its own pair, so candidates that tie with it are not counted.
// Chance level is K/N.
type Recall struct {
	N                        int
	ImageToText, TextToImage [3]float64
}

func (r Recall) String() string {
	return fmt.Sprintf("i2t R@1/5/10 %.3f/%.3f/%.3f  t2i R@1/5/10 %.3f/%.3f/%.3f (n=%d)",
		r.ImageToText[0], r.ImageToText[1], r.ImageToText[2],
		r.TextToImage[0], r.TextToImage[1], r.TextToImage[2], r.N)
}

// evalChunk is the query rows scored in one GEMM.
const evalChunk = 256

// Evaluate is collective: it returns image→text and text→image recall at
// RecallK over all ranks' rows of the held-out set val (each rank passes
// its block, as LoadShard gives it). Each rank encodes its rows, the
// features of all ranks are gathered, and each rank ranks its own queries
// against all candidates; hits are summed over ranks. Communication errors
// are returned.
//
// If val's image or text width differs from the model's, it returns an
// error wrapping ErrData that names both, before any communication. Every
// rank returns it: the widths of val are the same on every rank (LoadShard
// agrees on them) and so are the model's (NewTrainer agrees on them), so
// every rank reaches the same answer on its own.
func (t *Trainer[T]) Evaluate(val *Pairs) (Recall, error) {
	return Evaluate(t.comm, t.model, val, t.cfg.BatchSize)
}

// Evaluate is Trainer.Evaluate for any model, encoding chunk rows at a time.
// Every rank must pass a val of the same widths and Total, and the same
// model configuration. It panics if chunk is not positive.
func Evaluate[T blas.Float](comm mpi.Comm, m *Model[T], val *Pairs, chunk int) (Recall, error) {
	c := m.cfg
	if chunk < 1 {
		panic(errBatch)
	}
	if val.ImageDim != c.ImageDim || val.TextDim != c.TextDim {
		return Recall{}, fmt.Errorf("%w: the held-out rows have image and text widths %d and %d, the model %d and %d",
			ErrData, val.ImageDim, val.TextDim, c.ImageDim, c.TextDim)
	}
	w, e := comm.Size(), c.EmbedDim
	if val.Total == 0 {
		return Recall{}, nil
	}
	// Every rank's block is padded to the largest, mb rows.
	mb := (val.Total + w - 1) / w
	zi, zt := make([]T, mb*e), make([]T, mb*e)
	xi, xt := make([]T, chunk*c.ImageDim), make([]T, chunk*c.TextDim)
	for lo := 0; lo < val.Rows; lo += chunk {
		hi := min(lo+chunk, val.Rows)
		for i, v := range val.Image[lo*c.ImageDim : hi*c.ImageDim] {
			xi[i] = T(v)
		}
		for i, v := range val.Text[lo*c.TextDim : hi*c.TextDim] {
			xt[i] = T(v)
		}
		m.EncodeImage(zi[lo*e:hi*e], xi[:(hi-lo)*c.ImageDim])
		m.EncodeText(zt[lo*e:hi*e], xt[:(hi-lo)*c.TextDim])
	}
	allI, allT := make([]T, w*mb*e), make([]T, w*mb*e)
	if err := mpi.Allgather(comm, allI, zi); err != nil {
		return Recall{}, fmt.Errorf("clip: gathering features: %w", err)
	}
	if err := mpi.Allgather(comm, allT, zt); err != nil {
		return Recall{}, fmt.Errorf("clip: gathering features: %w", err)
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
	hits := make([]float64, 2*len(RecallK))
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
				pos := row[own]
				better := 0
				for p, s := range row {
					if s > pos && global[p] >= 0 && p != own {
						better++
					}
				}
				for ki, k := range RecallK {
					if better < k {
						hits[dir*len(RecallK)+ki]++
					}
				}
			}
		}
	}
	if err := comm.AllreduceF64(mpi.Sum, hits, hits); err != nil {
		return Recall{}, fmt.Errorf("clip: summing recall: %w", err)
	}
	rec := Recall{N: val.Total}
	for ki := range RecallK {
		rec.ImageToText[ki] = hits[ki] / float64(val.Total)
		rec.TextToImage[ki] = hits[len(RecallK)+ki] / float64(val.Total)
	}
	return rec, nil
}
