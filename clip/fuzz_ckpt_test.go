package clip

import (
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// fuzzTempFile returns the path of a file named name in a fresh directory
// for one fuzz target, on /dev/shm where it exists (the targets write a
// file per input: memory is faster than disk), removed when f ends.
func fuzzTempFile(f *testing.F, pattern, name string) string {
	root := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		root = "/dev/shm"
	}
	dir, err := os.MkdirTemp(root, pattern)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// allocatedSince returns the bytes allocated since before (TotalAlloc).
func allocatedSince(before *runtime.MemStats) uint64 {
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// FuzzCheckpoint: any bytes, as a checkpoint file, give an error wrapping
// ErrCheckpoint or a checkpoint whose header makes sense (positive sizes, a
// valid model configuration, progress within the schedule) from every
// reader: ReadCheckpointInfo, LoadModel and a trainer's Load. No reader
// panics, and none allocates more than a small multiple of the file's size
// (a header that promises huge widths or lengths is an error, not an
// allocation). With fixCRC the last 4 bytes are replaced by the CRC-32C of
// the rest, so that mutations reach the header and the values behind the
// checksum.
func FuzzCheckpoint(f *testing.F) {
	path := fuzzTempFile(f, "clipmpi-fuzz-ckpt", "x.ckpt")
	// The trainer of the seed corpus's checkpoints (testdata/fuzz).
	cfg := testConfig(Linear, false)
	cfg.BatchSize = 4
	data := memOf(testPairs(cfg.Model, 12))
	tr, err := NewTrainer[float32](mpi.Self(), cfg, loss.NewClipLoss[float32](mpi.Self(), cfg.Model.EmbedDim, loss.ClipOptions{}), data)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte, fixCRC bool) {
		if fixCRC && len(b) >= 4 {
			b = append([]byte(nil), b...) // the fuzzer's input must stay as it is
			body := b[:len(b)-4]
			sum := crc32.Checksum(body, crcTable)
			b[len(b)-4], b[len(b)-3], b[len(b)-2], b[len(b)-1] = byte(sum), byte(sum>>8), byte(sum>>16), byte(sum>>24)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		budget := uint64(64*len(b) + 1<<20)

		info, err := ReadCheckpointInfo(mpi.Self(), path)
		if err != nil {
			if !errors.Is(err, ErrCheckpoint) {
				t.Fatalf("ReadCheckpointInfo: %v, want ErrCheckpoint", err)
			}
		} else {
			if info.World < 1 || info.BatchSize < 1 || info.AccumFreq < 1 || info.GlobalBatch < 1 ||
				info.Epochs < 1 || info.Step < 0 || info.Step > info.TotalSteps {
				t.Fatalf("ReadCheckpointInfo accepted %+v", info)
			}
			if _, err := info.BatchSizeFor(1, 1); err != nil {
				t.Fatalf("BatchSizeFor(1, 1) of %+v: %v", info, err)
			}
		}
		m, _, err := LoadModel[float32](mpi.Self(), path)
		if err != nil && !errors.Is(err, ErrCheckpoint) {
			t.Fatalf("LoadModel: %v, want ErrCheckpoint", err)
		}
		if err == nil && !isFinite(m.params) {
			t.Fatal("LoadModel: non-finite parameters")
		}
		if err := tr.Load(path); err != nil && !errors.Is(err, ErrCheckpoint) {
			t.Fatalf("Load: %v, want ErrCheckpoint", err)
		}
		if got := allocatedSince(&before); got > budget {
			t.Fatalf("reading a %d-byte file allocated %d bytes", len(b), got)
		}
	})
}

// TestModelNumParams: numParams counts NewModel's parameters.
func TestModelNumParams(t *testing.T) {
	for _, c := range []ModelConfig{
		{ImageDim: 6, TextDim: 5, EmbedDim: 4, Head: Linear},
		{ImageDim: 6, TextDim: 5, EmbedDim: 4, Head: Linear, LogitBias: true},
		{ImageDim: 1, TextDim: 9, EmbedDim: 3, Head: MLP, Hidden: 7},
		{ImageDim: 64, TextDim: 48, EmbedDim: 64, Head: MLP, Hidden: 256, LogitBias: true},
	} {
		if got, want := c.numParams(), len(NewModel[float32](c, 0).params); got != want {
			t.Errorf("%+v: numParams %d, NewModel has %d", c, got, want)
		}
	}
	for _, c := range []ModelConfig{{}, {ImageDim: 1, TextDim: 1, EmbedDim: 1, Head: MLP}, {ImageDim: 1, TextDim: 1, EmbedDim: 1, Head: 7}} {
		if n := c.numParams(); n != -1 {
			t.Errorf("%+v: numParams %d, want -1", c, n)
		}
	}
}
