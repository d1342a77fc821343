package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/mpi"
)

// writeShard writes rows of the synthetic set with the given widths as one
// shard (image-00000.npy, text-00000.npy) into a new directory under dir.
func writeShard(t *testing.T, dir string, rows, imageDim, textDim int) string {
	t.Helper()
	d := filepath.Join(dir, fmt.Sprintf("set-%d-%dx%d", rows, imageDim, textDim))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	src := clip.NewSynthetic(clip.SyntheticConfig{Latent: 2, ImageDim: imageDim, TextDim: textDim, Noise: 0.1, Seed: 1}, 0, rows)
	img, txt := make([]float32, rows*imageDim), make([]float32, rows*textDim)
	if err := src.Read(img, txt, 0, rows); err != nil {
		t.Fatal(err)
	}
	if err := clip.WriteNpy(filepath.Join(d, "image-00000.npy"), img, rows, imageDim, false); err != nil {
		t.Fatal(err)
	}
	if err := clip.WriteNpy(filepath.Join(d, "text-00000.npy"), txt, rows, textDim, false); err != nil {
		t.Fatal(err)
	}
	return d
}

// dataOnRanks runs data on every rank of an in-process group of size w,
// with the options opts(rank), and returns each rank's error. It fails the
// test if the ranks do not all return within 30 s: one rank left waiting
// in a collective that another skipped.
func dataOnRanks(t *testing.T, w int, opts func(rank int) *options) []error {
	t.Helper()
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, errs[r] = data(c, opts(r))
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the ranks did not all return within 30 s: a hang")
	}
	return errs
}

// TestDataValWidths: a --val-data set whose widths differ from the
// training set's is an ErrData error on every rank that names both.
func TestDataValWidths(t *testing.T) {
	dir := t.TempDir()
	train := writeShard(t, dir, 20, 6, 5)
	for _, c := range []struct {
		val  string
		want string
	}{
		{writeShard(t, dir, 8, 7, 5), "has image and text widths 7 and 5, the training set " + train + " 6 and 5"},
		{writeShard(t, dir, 8, 6, 4), "has image and text widths 6 and 4, the training set " + train + " 6 and 5"},
	} {
		errs := dataOnRanks(t, 2, func(int) *options {
			return &options{trainData: train, valData: c.val, valSize: 1}
		})
		for r, err := range errs {
			if !errors.Is(err, clip.ErrData) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("rank %d: %v; want an ErrData error saying %q", r, err, c.want)
			}
		}
	}
	// The control: a held-out set of the same widths loads.
	val := writeShard(t, dir, 8, 6, 5)
	errs := dataOnRanks(t, 2, func(int) *options {
		return &options{trainData: train, valData: val, valSize: 1}
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: held-out set of the same widths: %v", r, err)
		}
	}
}

// TestDataValSizeAgreed: when the ranks see training sets of different
// sizes (say, different copies of the files), a --val-size that only some
// ranks' sets are too small for is an error on every rank, and no rank
// goes on to load rows while another has returned.
func TestDataValSizeAgreed(t *testing.T) {
	dir := t.TempDir()
	small, large := writeShard(t, dir, 10, 6, 5), writeShard(t, dir, 20, 6, 5)
	for _, smallRank := range []int{0, 1} {
		errs := dataOnRanks(t, 2, func(r int) *options {
			o := &options{trainData: large, valSize: 15}
			if r == smallRank {
				o.trainData = small
			}
			return o
		})
		want := fmt.Sprintf("rank %d: clip: bad data: --val-size 15 must be in [1, 10) to hold out rows of %s", smallRank, small)
		for r, err := range errs {
			if !errors.Is(err, clip.ErrData) || !strings.Contains(err.Error(), want) {
				t.Errorf("set of 10 rows on rank %d: rank %d: %v; want an ErrData error saying %q", smallRank, r, err, want)
			}
		}
	}
}
