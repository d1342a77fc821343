package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/slurm"
)

// subcommands are the program's MPI subcommands: they run on every rank
// of mpirun (or as one rank).
var subcommands = map[string]func(mpi.Comm, []string) error{
	"embed": embedCmd,
	"eval":  evalCmd,
}

// mpiCommand runs a subcommand with the MPI lifecycle of a training run:
// MPI, the launch environment checked (slurm.Init: a rank whose
// environment disagrees ends the job), a panic on one rank ends the job,
// the error (the same on every rank) printed once, by the rank that met it
// (reporter), and the ranks agree on the exit status, which it returns.
func mpiCommand(name string, fn func(mpi.Comm, []string) error, args []string) int {
	comm, err := mpi.World()
	if err != nil {
		fmt.Fprintf(os.Stderr, "train %s: %v\n", name, err)
		return 1
	}
	defer mpi.AbortOnPanic(comm)
	if _, err := slurm.Init(comm, blas.SetThreads); err != nil {
		mpi.Fail(comm, fmt.Errorf("train %s: %w", name, err))
		return 1 // only if comm's FailHook returns
	}
	code := 0
	if err := fn(comm, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			err = nil
		} else {
			if reporter(err) == comm.Rank() {
				fmt.Fprintf(os.Stderr, "train %s: %v\n", name, err)
			}
			code = 1
		}
	}
	v := []float64{float64(code)}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		mpi.Fail(comm, fmt.Errorf("train %s: agreeing on the exit status: %w", name, err))
		return 1
	}
	if err := mpi.Finalize(); err != nil {
		fmt.Fprintf(os.Stderr, "train %s: %v\n", name, err)
	}
	return int(v[0])
}

// embedCmd implements `train embed`: it applies the checkpoint's heads to
// the rows of .npy files and writes the normalised features as float32
// .npy files, OUT/image_emb.npy and OUT/text_emb.npy. Under mpirun the rows
// are split over the ranks (Split), each rank reads only its rows and
// writes them into the output file, which rank 0 creates at its full size
// first. Every error is an error on every rank.
func embedCmd(comm mpi.Comm, args []string) error {
	fs := flag.NewFlagSet("train embed", flag.ContinueOnError)
	resume := fs.String("resume", "", "checkpoint whose heads to apply")
	image := fs.String("image-data", "", "image embeddings: a .npy file of [n, image dim] float32 or float16")
	text := fs.String("text-data", "", "text embeddings: a .npy file of [n, text dim]")
	out := fs.String("out", "embeddings", "output directory: image_emb.npy and text_emb.npy, [n, embed dim] float32, rows of unit norm")
	chunk := fs.Int("chunk", 4096, "rows encoded at a time")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: train embed --resume CKPT --image-data X.npy [--text-data Y.npy] [--out DIR]   (under mpirun: rows split over the ranks)\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *resume == "" || (*image == "" && *text == "") || fs.NArg() > 0 || *chunk < 1 {
		fs.Usage()
		return errors.New("want --resume CKPT, --image-data or --text-data (or both), a positive --chunk and no other arguments")
	}
	info, err := clip.ReadCheckpointInfo(comm, *resume)
	if err != nil {
		return err
	}
	if info.DType == "float64" {
		return embed[float64](comm, *resume, *image, *text, *out, *chunk)
	}
	return embed[float32](comm, *resume, *image, *text, *out, *chunk)
}

func embed[T blas.Float](comm mpi.Comm, ckpt, image, text, out string, chunk int) error {
	m, info, err := clip.LoadModel[T](comm, ckpt)
	if err != nil {
		return err
	}
	mc := m.Config()
	w, r := comm.Size(), comm.Rank()
	for _, part := range []struct {
		name, path string
		dim        int
		encode     func(dst, x []T)
	}{{"image", image, mc.ImageDim, m.EncodeImage}, {"text", text, mc.TextDim, m.EncodeText}} {
		if part.path == "" {
			continue
		}
		a, err := clip.OpenNpyArray(part.path)
		if err == nil && a.Dim() != part.dim {
			err = fmt.Errorf("%w: %s has rows of %d values, the model's %s head takes %d", clip.ErrData, part.path, a.Dim(), part.name, part.dim)
		}
		if err = clip.Agree(comm, err); err != nil {
			return err
		}
		dst := filepath.Join(out, part.name+"_emb.npy")
		if r == 0 {
			err = os.MkdirAll(out, 0o755)
			if err == nil {
				err = clip.CreateNpy(dst, a.Rows(), mc.EmbedDim)
			}
		}
		if err = clip.Agree(comm, err); err != nil {
			return err
		}
		lo, hi := clip.Split(a.Rows(), w, r)
		err = embedRows(a, dst, part.name, lo, hi, chunk, mc.EmbedDim, part.encode)
		if err = clip.Agree(comm, err); err != nil {
			return err
		}
		if r == 0 {
			fmt.Printf("embed: wrote %s: %d rows of %d float32, normalised (%s head of %s, step %d; %d ranks, rank 0 rows %d..%d)\n",
				dst, a.Rows(), mc.EmbedDim, part.name, ckpt, info.Step, w, lo, hi-1)
		}
	}
	return nil
}

// embedRows encodes rows lo..hi-1 of a, chunk at a time, and writes them
// into dst. A non-finite input row or feature is an ErrData error naming
// the row.
func embedRows[T blas.Float](a *clip.NpyArray, dst, name string, lo, hi, chunk, e int, encode func(dst, x []T)) error {
	d := a.Dim()
	buf := make([]float32, min(chunk, hi-lo)*d)
	x := make([]T, len(buf))
	z := make([]T, min(chunk, hi-lo)*e)
	z32 := make([]float32, len(z))
	for c := lo; c < hi; c += chunk {
		n := min(chunk, hi-c)
		if err := a.Read(buf[:n*d], c, c+n); err != nil {
			return err
		}
		for i, v := range buf[:n*d] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%w: %s: row %d holds %v (column %d)", clip.ErrData, a.Path(), c+i/d, v, i%d)
			}
			x[i] = T(v)
		}
		encode(z[:n*e], x[:n*d])
		for i, v := range z[:n*e] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%w: the model gives NaN or Inf %s features for row %d of %s (its weights are not finite)", clip.ErrData, name, c+i/e, a.Path())
			}
			z32[i] = float32(v)
		}
		if err := clip.WriteNpyRows(dst, c, z32[:n*e], e); err != nil {
			return err
		}
	}
	return nil
}

// evalSummary is the JSON that `train eval --summary` writes.
type evalSummary struct {
	Checkpoint string             `json:"checkpoint"`
	Step       int                `json:"step"`
	ValData    string             `json:"val_data"`
	ValRows    int                `json:"val_rows"`
	World      int                `json:"world"`
	DType      string             `json:"dtype"`
	Metrics    map[string]float64 `json:"val_metrics"`
}

// evalCmd implements `train eval`: the held-out metrics of a checkpoint's
// model on a data set, computed as the training run computes them
// (clip.Evaluate, in the run's element type, split over the ranks).
func evalCmd(comm mpi.Comm, args []string) error {
	fs := flag.NewFlagSet("train eval", flag.ContinueOnError)
	resume := fs.String("resume", "", "checkpoint to evaluate")
	valData := fs.String("val-data", "", "held-out pairs: a directory of .npy shards or IMAGE.npy,TEXT.npy (as train --val-data)")
	summary := fs.String("summary", "", "write the metrics as JSON to this file")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: train eval --resume CKPT --val-data DIR [--summary FILE]   (under mpirun: rows split over the ranks)\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *resume == "" || *valData == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("want --resume CKPT, --val-data DIR and no other arguments")
	}
	info, err := clip.ReadCheckpointInfo(comm, *resume)
	if err != nil {
		return err
	}
	if info.DType == "float64" {
		return evaluate[float64](comm, *resume, *valData, *summary)
	}
	return evaluate[float32](comm, *resume, *valData, *summary)
}

func evaluate[T blas.Float](comm mpi.Comm, ckpt, valData, summary string) error {
	m, info, err := clip.LoadModel[T](comm, ckpt)
	if err != nil {
		return err
	}
	src, err := clip.OpenNpy(valData)
	if err = clip.Agree(comm, err); err != nil {
		return err
	}
	val, err := clip.LoadShard(comm, src, 0, src.Rows())
	if err != nil {
		return err
	}
	met, err := clip.Evaluate(comm, m, val)
	if err != nil {
		return err
	}
	var outErr error
	if comm.Rank() == 0 {
		fmt.Printf("eval  step %5d  %v\n", info.Step, met)
		fmt.Printf("\n%-28s %10s\n", fmt.Sprintf("%s (n=%d)", valData, met.N), "value")
		for i, v := range met.Values() {
			fmt.Printf("%-28s %10.4f\n", clip.MetricNames[i], v)
		}
		if summary != "" {
			b, err := json.MarshalIndent(evalSummary{
				Checkpoint: ckpt, Step: info.Step, ValData: valData, ValRows: met.N,
				World: comm.Size(), DType: info.DType, Metrics: met.Map(),
			}, "", "  ")
			if err == nil {
				err = os.WriteFile(summary, append(b, '\n'), 0o644)
			}
			outErr = err
		}
	}
	return clip.Agree(comm, outErr)
}
