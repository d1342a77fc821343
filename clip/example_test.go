package clip_test

import (
	"fmt"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// Train linear heads on the built-in synthetic set in one process. Under
// mpirun, pass mpi.World() instead of mpi.Self(): each rank reads only the
// rows of its slice of each global batch, and holds only its block of the
// held-out rows, and the steps are those of one process with all of them.
func Example() {
	comm := mpi.Self()
	cfg := clip.DefaultSynthetic
	train := clip.NewSynthetic(cfg, 0, 4096) // or clip.OpenNpy("DIR")
	val, err := clip.LoadShard(comm, clip.NewSynthetic(cfg, 4096, 500), 0, 500)
	if err != nil {
		panic(err)
	}
	run := clip.Config{
		Model: clip.ModelConfig{
			ImageDim: cfg.ImageDim, TextDim: cfg.TextDim, EmbedDim: 32,
			Head: clip.Linear, InitLogitScale: clip.ClipInitLogitScale,
		},
		Optim:     clip.OptimConfig{LR: 2e-3, WD: 0.1, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, Warmup: 10},
		BatchSize: 256, AccumFreq: 2, Epochs: 8, Seed: 1,
	}
	l := loss.NewClipLoss[float32](comm, run.Model.EmbedDim, loss.ClipOptions{LocalLoss: true, GatherWithGrad: true})
	tr, err := clip.NewTrainer(comm, run, l, train)
	if err != nil {
		panic(err)
	}
	before, _ := tr.Evaluate(val)
	for {
		if _, err := tr.Step(); err == clip.ErrDone {
			break
		} else if err != nil {
			panic(err)
		}
	}
	after, _ := tr.Evaluate(val)
	fmt.Printf("%d steps of %d pairs\n", tr.Steps(), tr.GlobalBatch())
	fmt.Println("recall@1 before, near chance (1/500):", before.ImageToText.R[0] < 0.01)
	fmt.Println("recall@1 after, above 0.5:", after.ImageToText.R[0] > 0.5, after.TextToImage.R[0] > 0.5)
	// Output:
	// 64 steps of 512 pairs
	// recall@1 before, near chance (1/500): true
	// recall@1 after, above 0.5: true true
}
