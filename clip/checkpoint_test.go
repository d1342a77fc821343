package clip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

func newTestTrainer(t *testing.T, comm mpi.Comm, cfg Config, data *Pairs) *Trainer[float32] {
	t.Helper()
	tr, err := NewTrainer[float32](comm, cfg, loss.NewClipLoss[float32](comm, cfg.Model.EmbedDim, loss.ClipOptions{LocalLoss: true, GatherWithGrad: true}), memOf(data))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestCheckpointRoundTrip: a trainer loaded from a checkpoint holds the
// same state and takes the same next steps as the one that wrote it, and
// the write leaves no temporary file behind.
func TestCheckpointRoundTrip(t *testing.T) {
	cfg := testConfig(MLP, true)
	cfg.BatchSize = 4 // 3 steps per epoch of 12 rows: the checkpoint falls mid-epoch
	data := testPairs(cfg.Model, 12)
	a := newTestTrainer(t, mpi.Self(), cfg, data)
	for range 4 {
		if _, err := a.Step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "x.ckpt")
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(path); err != nil { // replacing an existing file
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries after Save, want the checkpoint only", len(ents))
	}
	b := newTestTrainer(t, mpi.Self(), cfg, data)
	if err := b.Load(path); err != nil {
		t.Fatal(err)
	}
	if b.Steps() != 4 || b.opt.t != 4 || !slices.Equal(a.model.params, b.model.params) ||
		!slices.Equal(a.opt.m, b.opt.m) || !slices.Equal(a.opt.v, b.opt.v) {
		t.Fatal("loaded state differs from the saved one")
	}
	for range a.TotalSteps() - 4 {
		sa, err1 := a.Step()
		sb, err2 := b.Step()
		if err1 != nil || err2 != nil || sa != sb {
			t.Fatalf("after loading: %+v (%v), uninterrupted %+v (%v)", sb, err2, sa, err1)
		}
	}
	if _, err := b.Step(); !errors.Is(err, ErrDone) {
		t.Errorf("step after the last: %v, want ErrDone", err)
	}
}

// TestCheckpointStaleTemp: a temporary file left by a save that was killed
// (here with the mode 0600 that os.CreateTemp gave it) is replaced by the
// next save, which leaves only the checkpoint, with mode 0644 less the
// umask, readable.
func TestCheckpointStaleTemp(t *testing.T) {
	cfg := testConfig(Linear, false)
	data := testPairs(cfg.Model, 12)
	tr := newTestTrainer(t, mpi.Self(), cfg, data)
	if _, err := tr.Step(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "latest.ckpt")
	// The cluster tests (scripts/cluster/multihost.sh) find the leftover of
	// a killed save by this pattern.
	if ok, _ := filepath.Match(".latest.ckpt.tmp-*", filepath.Base(tempPath(path))); !ok {
		t.Errorf("temporary file %s does not match .latest.ckpt.tmp-*", tempPath(path))
	}
	stale := make([]byte, 1<<16) // longer than the checkpoint
	if err := os.WriteFile(tempPath(path), stale, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tr.Save(path); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "latest.ckpt" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q after Save, want the checkpoint only", names)
	}
	// The mode a file created with 0644 gets under this process's umask.
	ref := filepath.Join(t.TempDir(), "ref")
	f, err := os.OpenFile(ref, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	want, _ := os.Stat(ref)
	if fi, err := os.Stat(path); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != want.Mode().Perm() {
		t.Errorf("checkpoint mode %v, want %v", fi.Mode().Perm(), want.Mode().Perm())
	}
	if err := newTestTrainer(t, mpi.Self(), cfg, data).Load(path); err != nil {
		t.Errorf("loading the checkpoint written over a stale temporary file: %v", err)
	}
}

// asVersion1 rewrites a checkpoint as version 1 wrote it: the version
// field 1, the progress fields rng_epoch and rng_batch in the header, and
// no global_batch or order (version 3's).
func asVersion1(t *testing.T, b []byte, perEpoch int) []byte {
	t.Helper()
	le := binary.LittleEndian
	n := int(le.Uint32(b[12:]))
	var hdr map[string]any
	dec := json.NewDecoder(bytes.NewReader(b[16 : 16+n]))
	dec.UseNumber()
	if err := dec.Decode(&hdr); err != nil {
		t.Fatal(err)
	}
	pr := hdr["progress"].(map[string]any)
	step, _ := pr["step"].(json.Number).Int64()
	pr["rng_epoch"], pr["rng_batch"] = int(step)/perEpoch, int(step)%perEpoch
	delete(hdr, "global_batch")
	delete(hdr, "order")
	h, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte(ckptMagic), le.AppendUint32(nil, 1)...)
	out = le.AppendUint32(out, uint32(len(h)))
	out = append(append(out, h...), b[16+n:len(b)-4]...)
	return le.AppendUint32(out, crc32.Checksum(out, crcTable))
}

// TestCheckpointVersion1: a checkpoint of format version 1, whose header
// also holds the unused rng_epoch and rng_batch, still loads.
func TestCheckpointVersion1(t *testing.T) {
	cfg := testConfig(MLP, true)
	cfg.BatchSize = 4
	data := testPairs(cfg.Model, 12)
	a := newTestTrainer(t, mpi.Self(), cfg, data)
	for range 4 {
		if _, err := a.Step(); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "v1.ckpt")
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != ckptVersion {
		t.Errorf("Save wrote version %d, want %d", v, ckptVersion)
	}
	if err := os.WriteFile(path, asVersion1(t, b, a.StepsPerEpoch()), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newTestTrainer(t, mpi.Self(), cfg, data)
	if err := c.Load(path); err != nil {
		t.Fatal(err)
	}
	if c.Steps() != 4 || !slices.Equal(a.model.params, c.model.params) || !slices.Equal(a.opt.v, c.opt.v) {
		t.Error("a version-1 checkpoint loaded other state than was saved")
	}
}

// TestCheckpointErrors: corrupt, truncated, foreign and mismatched
// checkpoints are ErrCheckpoint errors on every rank that say which.
func TestCheckpointErrors(t *testing.T) {
	cfg := testConfig(Linear, false)
	data := testPairs(cfg.Model, 12)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.ckpt")
	tr := newTestTrainer(t, mpi.Self(), cfg, data)
	tr.Step()
	if err := tr.Save(good); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	variant := func(name string, f func([]byte) []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, f(slices.Clone(b)), 0o644)
		return p
	}
	other := cfg
	other.Model.EmbedDim = 5
	for _, c := range []struct {
		name string
		path string
		cfg  Config
		w    int
		want string
	}{
		{"flipped byte", variant("flip", func(b []byte) []byte { b[len(b)-40] ^= 1; return b }), cfg, 1, "corrupt: CRC-32C"},
		{"truncated", variant("trunc", func(b []byte) []byte { return b[:len(b)-9] }), cfg, 1, "truncated"},
		{"not a checkpoint", variant("junk", func([]byte) []byte { return []byte("PK\x03\x04 a zip file") }), cfg, 1, "not a clipmpi checkpoint"},
		{"newer version", variant("v4", func(b []byte) []byte { b[8] = ckptVersion + 1; return b }), cfg, 1, "format version 4, this program reads versions 1 to 3"},
		{"missing", filepath.Join(dir, "none.ckpt"), cfg, 1, "no such file"},
		{"other model", good, other, 1, `model.embed_dim: 4 vs 5`},
		// Two ranks with the same batch size: another global batch.
		{"other global batch", good, cfg, 2, "global_batch: 6 vs 12"},
	} {
		t.Run(c.name, func(t *testing.T) {
			errs := onRanks(c.w, func(comm mpi.Comm) error {
				tr, err := NewTrainer[float32](comm, c.cfg, loss.NewClipLoss[float32](comm, c.cfg.Model.EmbedDim, loss.ClipOptions{}), memOf(testPairs(c.cfg.Model, 12)))
				if err != nil {
					return err
				}
				return tr.Load(c.path)
			})
			for r, err := range errs {
				if !errors.Is(err, ErrCheckpoint) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("rank %d: %v, want ErrCheckpoint saying %q", r, err, c.want)
				}
			}
		})
	}
}

// TestSaveErrorOnEveryRank: when rank 0 cannot write, every rank learns it.
func TestSaveErrorOnEveryRank(t *testing.T) {
	cfg := testConfig(Linear, false)
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "x.ckpt")
	errs := onRanks(2, func(comm mpi.Comm) error {
		tr, err := NewTrainer[float32](comm, cfg, loss.NewClipLoss[float32](comm, 4, loss.ClipOptions{}), memOf(testPairs(cfg.Model, 12)))
		if err != nil {
			return err
		}
		return tr.Save(path)
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 0: clip: writing checkpoint") {
			t.Errorf("rank %d: %v, want rank 0's write error", r, err)
		}
	}
}
