//go:build linux

package main

import (
	"flag"
	"fmt"
	"math"
	"path/filepath"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// nanRows writes the training set with NaN rows where rank R reads at step
// K (see the package doc). The rows come from a trainer on one rank whose
// batch is the whole global batch: the order depends only on the seed, the
// number of rows and the global batch, and rank R of W takes the R-th of W
// slices of it.
func nanRows(args []string) error {
	fs := flag.NewFlagSet("nanrows", flag.ContinueOnError)
	dir := fs.String("train", "", "training set (a directory of shards or IMAGE.npy,TEXT.npy)")
	out := fs.String("out", "", "directory to write image.npy and text.npy into")
	world := fs.Int("world", 2, "ranks of the run")
	rank := fs.Int("rank", 1, "rank that meets the NaN rows")
	batch := fs.Int("batch", 64, "--batch-size of the run (rows per rank)")
	step := fs.Int("step", 3, "step (0-based) at which the rank reads them")
	seed := fs.Uint64("seed", 0, "--seed of the run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rank < 0 || *rank >= *world || *batch < 1 || *step < 0 {
		return fmt.Errorf("nanrows: want 0 <= rank < world, batch >= 1, step >= 0")
	}
	src, err := clip.OpenNpy(*dir)
	if err != nil {
		return err
	}
	n, di, dt := src.Rows(), src.ImageDim(), src.TextDim()
	g := *world * *batch
	cfg := clip.Config{
		Model: clip.ModelConfig{ImageDim: di, TextDim: dt, EmbedDim: 4, Head: clip.Linear, InitLogitScale: clip.ClipInitLogitScale},
		Optim: clip.OptimConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6},
		// Enough epochs for any step.
		BatchSize: g, AccumFreq: 1, Epochs: *step + 1, Seed: *seed,
	}
	tr, err := clip.NewTrainer[float32](mpi.Self(), cfg, loss.NewClipLoss[float32](mpi.Self(), 4, loss.ClipOptions{}), src)
	if err != nil {
		return err
	}
	if *step >= tr.TotalSteps() {
		return fmt.Errorf("nanrows: step %d, but %d rows give %d steps", *step, n, tr.TotalSteps())
	}
	rows := tr.BatchRows(*step)[*rank**batch : (*rank+1)**batch]
	img, txt := make([]float32, n*di), make([]float32, n*dt)
	if err := src.Read(img, txt, 0, n); err != nil {
		return err
	}
	nan := float32(math.NaN())
	for _, r := range rows {
		img[r*di] = nan
	}
	if err := clip.WriteNpy(filepath.Join(*out, "image.npy"), img, n, di, false); err != nil {
		return err
	}
	if err := clip.WriteNpy(filepath.Join(*out, "text.npy"), txt, n, dt, false); err != nil {
		return err
	}
	fmt.Printf("clustertool: %d NaN rows for rank %d of %d at step %d (epoch %d), e.g. row %d\n",
		len(rows), *rank, *world, *step, *step/tr.StepsPerEpoch(), rows[0])
	return nil
}
