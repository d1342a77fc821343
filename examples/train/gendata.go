package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/clipmpi/clipmpi/clip"
)

// genData writes the built-in synthetic set as .npy shards:
// OUT/train/{image,text}-NNNNN.npy and OUT/val/{image,text}-NNNNN.npy, the
// rows the training program makes itself when no files are given.
func genData(args []string) error {
	cfg := clip.DefaultSynthetic
	fs := flag.NewFlagSet("train gen-data", flag.ContinueOnError)
	out := fs.String("out", "data", "output directory")
	rows := fs.Int("rows", 16384, "training rows (as train --synth-rows)")
	val := fs.Int("val-size", 1000, "held-out rows (as train --val-size)")
	shards := fs.Int("shards", 4, "shards of the training rows")
	dtype := fs.String("dtype", "float32", "float32 or float16")
	nanRow := fs.Int("nan-row", -1, "put a NaN into this training row (to see the error)")
	fs.IntVar(&cfg.Latent, "synth-latent", cfg.Latent, "latent factors shared by a pair")
	fs.IntVar(&cfg.ImageDim, "synth-image-dim", cfg.ImageDim, "width of image embeddings")
	fs.IntVar(&cfg.TextDim, "synth-text-dim", cfg.TextDim, "width of text embeddings")
	fs.Float64Var(&cfg.Noise, "synth-noise", cfg.Noise, "noise (the signal has unit variance per coordinate)")
	fs.Uint64Var(&cfg.Seed, "synth-seed", cfg.Seed, "seed")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *rows < 1 || *val < 1 || *shards < 1 || *shards > *rows {
		return errors.New("--rows and --val-size must be positive and --shards in [1, rows]")
	}
	half := false
	switch *dtype {
	case "float32":
	case "float16":
		half = true
	default:
		return fmt.Errorf("--dtype %q: want float32 or float16", *dtype)
	}
	for _, part := range []struct {
		dir         string
		start, n, k int
	}{{"train", 0, *rows, *shards}, {"val", *rows, *val, 1}} {
		dir := filepath.Join(*out, part.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		src := clip.NewSynthetic(cfg, part.start, part.n)
		for s := range part.k {
			lo, hi := clip.Split(part.n, part.k, s)
			img := make([]float32, (hi-lo)*cfg.ImageDim)
			txt := make([]float32, (hi-lo)*cfg.TextDim)
			if err := src.Read(img, txt, lo, hi); err != nil {
				return err
			}
			if part.dir == "train" && *nanRow >= lo && *nanRow < hi {
				img[(*nanRow-lo)*cfg.ImageDim] = float32(math.NaN())
			}
			for _, f := range []struct {
				name string
				data []float32
				dim  int
			}{{"image", img, cfg.ImageDim}, {"text", txt, cfg.TextDim}} {
				path := filepath.Join(dir, fmt.Sprintf("%s-%05d.npy", f.name, s))
				if err := clip.WriteNpy(path, f.data, hi-lo, f.dim, half); err != nil {
					return err
				}
			}
		}
		fmt.Printf("wrote %s: %d rows in %d shards of %s (image %d, text %d wide)\n", dir, part.n, part.k, *dtype, cfg.ImageDim, cfg.TextDim)
	}
	fmt.Printf("train on them: train --train-data %s --val-data %s\n", filepath.Join(*out, "train"), filepath.Join(*out, "val"))
	return nil
}
