package clip

import (
	"path/filepath"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// BenchmarkTrainerStep compares what Step adds to a step, the rows of one
// rank's slice of a global batch read (BatchRows, ReadRows, the
// finiteness check), with the step itself (StepBatch), at make run's
// shape per rank: 1024 rows of 64 and 48 values, linear heads to 64, from
// the synthetic set (rows generated), float16 .npy shards (pread) and
// memory.
func BenchmarkTrainerStep(b *testing.B) {
	cfg := Config{
		Model:     ModelConfig{ImageDim: 64, TextDim: 48, EmbedDim: 64, Head: Linear, InitLogitScale: ClipInitLogitScale},
		Optim:     OptimConfig{LR: 2e-3, WD: 0.1, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, Warmup: 20},
		BatchSize: 1024, AccumFreq: 1, Epochs: 1000, Seed: 1,
	}
	syn := NewSynthetic(DefaultSynthetic, 0, 32768)
	dir := b.TempDir()
	for s := range 4 {
		img, txt := make([]float32, 8192*64), make([]float32, 8192*48)
		syn.Read(img, txt, s*8192, (s+1)*8192)
		if err := WriteNpy(filepath.Join(dir, "image-"+string(rune('0'+s))+".npy"), img, 8192, 64, true); err != nil {
			b.Fatal(err)
		}
		if err := WriteNpy(filepath.Join(dir, "text-"+string(rune('0'+s))+".npy"), txt, 8192, 48, true); err != nil {
			b.Fatal(err)
		}
	}
	npy, err := OpenNpy(dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, src := range []struct {
		name string
		s    Source
	}{{"synthetic", syn}, {"npy-float16", npy}, {"memory", func() Source {
		img, txt := make([]float32, 32768*64), make([]float32, 32768*48)
		syn.Read(img, txt, 0, 32768)
		return NewMemory(img, txt, 64, 48)
	}()}} {
		tr, err := NewTrainer[float32](mpi.Self(), cfg, loss.NewClipLoss[float32](mpi.Self(), 64, loss.ClipOptions{Algorithm: loss.Fused}), src.s)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("read/"+src.name, func(b *testing.B) {
			for i := range b.N {
				rows := tr.BatchRows(i % tr.TotalSteps())
				if err := ReadRows(tr.train, tr.xi, tr.xt, rows); err != nil {
					b.Fatal(err)
				}
				if err := checkRows(tr.train, tr.xi, tr.xt, rows); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	tr, _ := NewTrainer[float32](mpi.Self(), cfg, loss.NewClipLoss[float32](mpi.Self(), 64, loss.ClipOptions{Algorithm: loss.Fused}), syn)
	img, txt := make([]float32, 1024*64), make([]float32, 1024*48)
	syn.Read(img, txt, 0, 1024)
	b.Run("stepbatch", func(b *testing.B) {
		for range b.N {
			if _, err := tr.StepBatch(img, txt); err != nil {
				b.Fatal(err)
			}
		}
	})
}
