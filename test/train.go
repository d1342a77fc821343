package test

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// TrainSpec is a small training run for the integration tests.
type TrainSpec struct {
	Cfg clip.Config
	// Loss names the loss: a ClipLoss mode ("local_gwg", "global_gwg",
	// "global", "local") or "siglip".
	Loss string
	// Src holds the training rows 0..Rows-1.
	Src  clip.Source
	Rows int
	// With ResumeAt > 0, the run stops after ResumeAt steps, saves a
	// checkpoint to Checkpoint, and continues in a new trainer loaded
	// from it.
	ResumeAt   int
	Checkpoint string
}

// TrainResult is what a run produced on one rank.
type TrainResult struct {
	Losses []float64
	Params []float64
}

// TrainSmall is the model and schedule of the integration tests: small
// widths, a learning rate high enough that the weights move far in a few
// steps, weight decay on.
func TrainSmall(head clip.HeadKind, batch, epochs int) clip.Config {
	init := clip.ClipInitLogitScale
	return clip.Config{
		Model:     clip.ModelConfig{ImageDim: 6, TextDim: 5, EmbedDim: 4, Head: head, Hidden: 8, InitLogitScale: init},
		Optim:     clip.OptimConfig{LR: 2e-2, WD: 0.1, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, Warmup: 2},
		BatchSize: batch, AccumFreq: 1, Epochs: epochs, Seed: 11,
	}
}

// TrainSynthetic is the synthetic set of the integration tests, with the
// widths of TrainSmall.
func TrainSynthetic(rows int) *clip.Synthetic {
	return clip.NewSynthetic(clip.SyntheticConfig{Latent: 3, ImageDim: 6, TextDim: 5, Noise: 0.3, Seed: 4}, 0, rows)
}

// NewTrainLoss returns the loss a spec names, over comm.
func NewTrainLoss[T blas.Float](comm mpi.Comm, dim int, name string) (clip.Loss[T], error) {
	if name == "siglip" {
		return loss.NewSigLipLoss[T](comm, dim, loss.SigLipOptions{}), nil
	}
	opt, err := loss.ParseMode(name)
	if err != nil {
		return nil, err
	}
	return loss.NewClipLoss[T](comm, dim, opt), nil
}

// RunTrain is collective: it trains on rows 0..Rows-1 of the spec's data
// every step of the schedule (with a checkpoint and a fresh trainer at
// ResumeAt) and returns the losses and the final weights.
func RunTrain[T blas.Float](comm mpi.Comm, s TrainSpec) (*TrainResult, error) {
	data := clip.Range(s.Src, 0, s.Rows)
	newTrainer := func() (*clip.Trainer[T], error) {
		l, err := NewTrainLoss[T](comm, s.Cfg.Model.EmbedDim, s.Loss)
		if err != nil {
			return nil, err
		}
		return clip.NewTrainer(comm, s.Cfg, l, data)
	}
	tr, err := newTrainer()
	if err != nil {
		return nil, err
	}
	res := &TrainResult{}
	for tr.Steps() < tr.TotalSteps() {
		if s.ResumeAt > 0 && tr.Steps() == s.ResumeAt {
			if err := tr.Save(s.Checkpoint); err != nil {
				return nil, err
			}
			// A fresh trainer, at the initial weights until it loads.
			fresh, err := newTrainer()
			if err != nil {
				return nil, err
			}
			if err := fresh.Load(s.Checkpoint); err != nil {
				return nil, err
			}
			tr = fresh
		}
		st, err := tr.Step()
		if err != nil {
			return nil, err
		}
		res.Losses = append(res.Losses, st.Loss)
	}
	if _, err := tr.Step(); !errors.Is(err, clip.ErrDone) {
		return nil, fmt.Errorf("a step past the schedule returned %v, want ErrDone", err)
	}
	for _, v := range tr.Model().Params() {
		res.Params = append(res.Params, float64(v))
	}
	return res, nil
}

// CompareTrain says how two runs differ: the largest absolute difference
// of their weights and of their losses, as an error when either exceeds
// tol, nil otherwise.
func CompareTrain(got, want *TrainResult, tol float64) error {
	if len(got.Params) != len(want.Params) || len(got.Losses) != len(want.Losses) {
		return fmt.Errorf("%d weights and %d losses, want %d and %d", len(got.Params), len(got.Losses), len(want.Params), len(want.Losses))
	}
	dp, dl := MaxDiff(got.Params, want.Params), MaxDiff(got.Losses, want.Losses)
	if dp > tol || dl > tol || math.IsNaN(dp) || math.IsNaN(dl) {
		return fmt.Errorf("weights differ by up to %.3g and losses by %.3g (tolerance %.3g); losses %v, want %v", dp, dl, tol, got.Losses, want.Losses)
	}
	return nil
}

// MaxDiff returns the largest |a[i] − b[i]|.
func MaxDiff(a, b []float64) float64 {
	m := 0.0
	for i := range a {
		d := math.Abs(a[i] - b[i])
		if math.IsNaN(d) {
			return d
		}
		m = max(m, d)
	}
	return m
}

// TrainDataCase is a malformed data set for the error tests: Setup writes
// it into dir and returns the path to open.
type TrainDataCase struct {
	Name  string
	Setup func(dir string) (string, error)
	Batch int
	// Want is a piece of the error message every rank must print.
	Want string
}

// TrainDataCases are the data errors a user can make. The files are the
// set TrainSynthetic(rows) in shards of 10 rows.
func TrainDataCases(rows int) []TrainDataCase {
	write := func(dir string, mutate func(s int, img, txt []float32) ([]float32, []float32, int, int, bool)) error {
		src := TrainSynthetic(rows)
		for s := 0; s*10 < rows; s++ {
			n := min(10, rows-s*10)
			img, txt := make([]float32, n*6), make([]float32, n*5)
			src.Read(img, txt, s*10, s*10+n)
			ni, nt, half := n, n, false
			if mutate != nil {
				img, txt, ni, nt, half = mutate(s, img, txt)
			}
			if err := clip.WriteNpy(filepath.Join(dir, fmt.Sprintf("image-%05d.npy", s)), img, ni, 6, half); err != nil {
				return err
			}
			if err := clip.WriteNpy(filepath.Join(dir, fmt.Sprintf("text-%05d.npy", s)), txt, nt, 5, half); err != nil {
				return err
			}
		}
		return nil
	}
	return []TrainDataCase{
		{"NaN in a row", func(dir string) (string, error) {
			return dir, write(dir, func(s int, img, txt []float32) ([]float32, []float32, int, int, bool) {
				if s == rows/10-1 {
					img[3*6+2] = float32(math.NaN()) // row 3 of the last shard, read in some step
				}
				return img, txt, len(img) / 6, len(txt) / 5, true
			})
		}, 2, fmt.Sprintf("image-%05d.npy: row 3 of the image embeddings holds NaN", rows/10-1)},
		{"row counts differ", func(dir string) (string, error) {
			return dir, write(dir, func(s int, img, txt []float32) ([]float32, []float32, int, int, bool) {
				if s == 0 {
					return img, txt[:9*5], 10, 9, false
				}
				return img, txt, len(img) / 6, len(txt) / 5, false
			})
		}, 2, "has 10 rows but"},
		{"too few rows for the batch", func(dir string) (string, error) {
			return dir, write(dir, nil)
		}, rows, "fewer than one global batch"},
		{"no such directory", func(dir string) (string, error) {
			return filepath.Join(dir, "missing"), nil
		}, 2, "no such file or directory"},
	}
}

// RunTrainData is collective: it opens path, makes a trainer and takes
// the steps of one epoch, as the train program does, and returns the first
// error.
func RunTrainData(comm mpi.Comm, path string, batch int) error {
	src, err := clip.OpenNpy(path)
	if err = clip.Agree(comm, err); err != nil {
		return err
	}
	cfg := TrainSmall(clip.Linear, batch, 1)
	tr, err := clip.NewTrainer(comm, cfg, loss.NewClipLoss[float32](comm, cfg.Model.EmbedDim, loss.ClipOptions{}), src)
	if err != nil {
		return err
	}
	for {
		if _, err := tr.Step(); err != nil {
			if errors.Is(err, clip.ErrDone) {
				return nil
			}
			return err
		}
	}
}

// TrainGradients is collective: it loads comm's rows of the spec's data,
// makes a trainer and returns the gradients of one Trainer.Gradients call
// on all of them (averaged over ranks, as DDP does) and the model's layout.
func TrainGradients[T blas.Float](comm mpi.Comm, s TrainSpec) ([]float64, []clip.Param, error) {
	data, err := clip.LoadShard(comm, s.Src, 0, s.Rows)
	if err != nil {
		return nil, nil, err
	}
	l, err := NewTrainLoss[T](comm, s.Cfg.Model.EmbedDim, s.Loss)
	if err != nil {
		return nil, nil, err
	}
	tr, err := clip.NewTrainer(comm, s.Cfg, l, clip.Range(s.Src, 0, s.Rows))
	if err != nil {
		return nil, nil, err
	}
	img, txt := make([]T, len(data.Image)), make([]T, len(data.Text))
	for i, v := range data.Image {
		img[i] = T(v)
	}
	for i, v := range data.Text {
		txt[i] = T(v)
	}
	if _, err := tr.Gradients(img, txt); err != nil {
		return nil, nil, err
	}
	g := make([]float64, len(tr.Model().Grads()))
	for i, v := range tr.Model().Grads() {
		g[i] = float64(v)
	}
	return g, tr.Model().Layout(), nil
}

// TrainUntil is collective: it trains the spec's run on comm for its first
// k steps, saves a checkpoint to path (rank 0 writes it) and returns the
// losses of those steps.
func TrainUntil[T blas.Float](comm mpi.Comm, s TrainSpec, k int, path string) (*TrainResult, error) {
	l, err := NewTrainLoss[T](comm, s.Cfg.Model.EmbedDim, s.Loss)
	if err != nil {
		return nil, err
	}
	tr, err := clip.NewTrainer(comm, s.Cfg, l, clip.Range(s.Src, 0, s.Rows))
	if err != nil {
		return nil, err
	}
	res := &TrainResult{}
	for tr.Steps() < k {
		st, err := tr.Step()
		if err != nil {
			return nil, err
		}
		res.Losses = append(res.Losses, st.Loss)
	}
	return res, tr.Save(path)
}

// ResumeTrain is collective: it continues the run of the checkpoint at
// path on comm, whatever number of ranks wrote it: the spec's batch size
// is replaced by the one that keeps the checkpoint's global batch on
// comm's ranks with the spec's accumulation (CheckpointInfo.BatchSizeFor,
// whose error it returns). It takes the remaining steps and returns their
// losses and the final weights.
func ResumeTrain[T blas.Float](comm mpi.Comm, s TrainSpec, path string) (*TrainResult, error) {
	info, err := clip.ReadCheckpointInfo(comm, path)
	if err != nil {
		return nil, err
	}
	if s.Cfg.BatchSize, err = info.BatchSizeFor(comm.Size(), s.Cfg.AccumFreq); err != nil {
		return nil, err
	}
	l, err := NewTrainLoss[T](comm, s.Cfg.Model.EmbedDim, s.Loss)
	if err != nil {
		return nil, err
	}
	tr, err := clip.NewTrainer(comm, s.Cfg, l, clip.Range(s.Src, 0, s.Rows))
	if err != nil {
		return nil, err
	}
	if err := tr.Load(path); err != nil {
		return nil, err
	}
	res := &TrainResult{}
	for tr.Steps() < tr.TotalSteps() {
		st, err := tr.Step()
		if err != nil {
			return nil, err
		}
		res.Losses = append(res.Losses, st.Loss)
	}
	for _, v := range tr.Model().Params() {
		res.Params = append(res.Params, float64(v))
	}
	return res, nil
}

// ElasticSpec is the run of the elastic-resume tests with W ranks: a
// global batch of 12 rows (batch size 12/(W·accum) per rank), 41 rows
// (3 steps an epoch, the last 5 rows of each epoch's order left out), 3
// epochs: 9 steps.
func ElasticSpec(w, accum int) TrainSpec {
	s := TrainSpec{Cfg: TrainSmall(clip.MLP, 12/(w*accum), 3), Loss: "local_gwg", Src: TrainSynthetic(41), Rows: 41}
	s.Cfg.AccumFreq = accum
	return s
}
