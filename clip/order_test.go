package clip

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// TestDataOrder: every epoch visits ⌊n/g⌋ global batches of distinct rows
// (no row twice in an epoch); the order is a function of the seed, epoch
// and batch alone (the same from another instance, whatever was asked
// before); epochs and seeds differ; a batch covers about g/B consecutive
// blocks of B rows.
func TestDataOrder(t *testing.T) {
	for _, c := range []struct{ n, g int }{{41, 12}, {1000, 64}, {10000, 2048}, {5, 5}, {300, 7}} {
		t.Run(fmt.Sprintf("n=%d/g=%d", c.n, c.g), func(t *testing.T) {
			a, b := newDataOrder(7, c.n, c.g), newDataOrder(7, c.n, c.g)
			other := newDataOrder(8, c.n, c.g)
			steps := c.n / c.g
			batch, again := make([]int, c.g), make([]int, c.g)
			var epochs [][]int
			for e := range 3 {
				seen := make(map[int]bool)
				var order []int
				for k := range steps {
					a.batch(batch, e, k)
					// b is asked in another order: epoch 2 first, batches backwards.
					b.batch(again, 2-e, steps-1-k)
					b.batch(again, e, k)
					if !slices.Equal(batch, again) {
						t.Fatalf("epoch %d batch %d: %v, another instance %v", e, k, batch, again)
					}
					blocks := map[int]bool{}
					for _, r := range batch {
						if r < 0 || r >= c.n || seen[r] {
							t.Fatalf("epoch %d batch %d: row %d out of range or seen before in the epoch", e, k, r)
						}
						seen[r] = true
						blocks[r/orderBlock(c.g)] = true
					}
					if bl := c.g / orderBlock(c.g); len(blocks) > bl+2 {
						t.Errorf("epoch %d batch %d: rows from %d blocks of %d, want at most %d", e, k, len(blocks), orderBlock(c.g), bl+2)
					}
					order = append(order, batch...)
				}
				if len(seen) != steps*c.g {
					t.Errorf("epoch %d visits %d rows, want %d", e, len(seen), steps*c.g)
				}
				epochs = append(epochs, order)
			}
			other.batch(batch, 0, 0)
			if c.n > c.g && (slices.Equal(epochs[0], epochs[1]) || slices.Equal(batch, epochs[0][:c.g])) {
				t.Error("two epochs, or two seeds, give the same order")
			}
		})
	}
}

// rowRecorder is a Source that records the rows each ReadRows call asks
// for.
type rowRecorder struct {
	*Memory
	mu    sync.Mutex
	calls [][]int
}

func (r *rowRecorder) ReadRows(img, txt []float32, rows []int) error {
	r.mu.Lock()
	r.calls = append(r.calls, slices.Clone(rows))
	r.mu.Unlock()
	return r.Memory.ReadRows(img, txt, rows)
}

// TestTrainerReadsItsRows: at every step, rank r of W reads exactly the
// r-th slice of the step's global batch (BatchRows) and nothing else, and
// the global batch is the same whatever W.
func TestTrainerReadsItsRows(t *testing.T) {
	cfg := testConfig(Linear, false)
	data := testPairs(cfg.Model, 50)
	const g = 12
	var ref [][]int // the global batches with one rank
	for _, w := range []int{1, 2, 3, 4} {
		recs := make([]*rowRecorder, w)
		batches := make([][][]int, w)
		errs := onRanksWithin(t, w, time.Minute, func(comm mpi.Comm) error {
			c := cfg
			c.BatchSize = g / w
			rec := &rowRecorder{Memory: NewMemory(data.Image, data.Text, data.ImageDim, data.TextDim)}
			recs[comm.Rank()] = rec
			tr, err := NewTrainer[float64](comm, c, loss.NewClipLoss[float64](comm, c.Model.EmbedDim, loss.ClipOptions{LocalLoss: true, GatherWithGrad: true}), rec)
			if err != nil {
				return err
			}
			for tr.Steps() < tr.TotalSteps() {
				batches[comm.Rank()] = append(batches[comm.Rank()], slices.Clone(tr.BatchRows(tr.Steps())))
				if _, err := tr.Step(); err != nil {
					return err
				}
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Fatalf("w=%d: rank %d: %v", w, r, err)
			}
		}
		if ref == nil {
			ref = batches[0]
			if len(ref) != 3*(50/g) {
				t.Fatalf("%d steps, want %d", len(ref), 3*(50/g))
			}
		}
		for r := range w {
			if len(recs[r].calls) != len(ref) {
				t.Fatalf("w=%d: rank %d read %d times in %d steps", w, r, len(recs[r].calls), len(ref))
			}
			for s := range ref {
				if !slices.Equal(batches[r][s], ref[s]) {
					t.Fatalf("w=%d: rank %d: global batch of step %d is %v, with one rank %v", w, r, s, batches[r][s], ref[s])
				}
				if want := ref[s][r*g/w : (r+1)*g/w]; !slices.Equal(recs[r].calls[s], want) {
					t.Fatalf("w=%d: rank %d read %v at step %d, want its slice %v", w, r, recs[r].calls[s], s, want)
				}
			}
		}
	}
}
