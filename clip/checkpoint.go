package clip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/clipmpi/clipmpi/blas"
)

// A checkpoint file is
//
//	"CLIPCKPT"  uint32 version  uint32 n  header (n bytes of JSON)
//	uint64 m  m float64 values: parameters, AdamW's m, AdamW's v
//	uint32 CRC-32C of everything before it
//
// little-endian. The header records the run (model, data layout, schedule)
// and its progress (step, optimizer steps; see ckptProgress).
//
// Version 2 dropped the progress fields rng_epoch and rng_batch of version
// 1, which no reader used; a version-1 file reads as version 2, those
// fields ignored.
const (
	ckptMagic   = "CLIPCKPT"
	ckptVersion = 2
	// ckptOldest is the oldest version Load reads.
	ckptOldest = 1
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ckptHeader is the JSON header of a checkpoint. Every field but those of
// ckptProgress must equal the resuming run's.
type ckptHeader struct {
	DType      string       `json:"dtype"`
	Model      ModelConfig  `json:"model"`
	Params     []ckptParam  `json:"params"`
	World      int          `json:"world"`
	BatchSize  int          `json:"batch_size"`
	AccumFreq  int          `json:"accum_freq"`
	Epochs     int          `json:"epochs"`
	TrainRows  int          `json:"train_rows"`
	Seed       uint64       `json:"seed"`
	Optim      OptimConfig  `json:"optim"`
	TotalSteps int          `json:"total_steps"`
	Progress   ckptProgress `json:"progress"`
}

type ckptParam struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

// ckptProgress is where the run stands. The shuffle needs no state of its
// own: the order of epoch e on rank r is drawn afresh from
// PCG(Seed ^ 0x9e3779b97f4a7c15, e<<32 | r) (Trainer.shuffle), and the step
// gives the epoch, step / StepsPerEpoch, and the batch within it,
// step % StepsPerEpoch.
type ckptProgress struct {
	Step      int `json:"step"`
	AdamSteps int `json:"adam_steps"`
}

func dtypeName[T blas.Float]() string {
	if blas.Is32[T]() {
		return "float32"
	}
	return "float64"
}

func (t *Trainer[T]) header() ckptHeader {
	h := ckptHeader{
		DType: dtypeName[T](), Model: t.cfg.Model, World: t.comm.Size(),
		BatchSize: t.cfg.BatchSize, AccumFreq: t.cfg.AccumFreq, Epochs: t.cfg.Epochs,
		TrainRows: t.train.Total, Seed: t.cfg.Seed, Optim: t.cfg.Optim, TotalSteps: t.total,
		Progress: ckptProgress{Step: t.step, AdamSteps: t.opt.t},
	}
	for _, p := range t.model.layout {
		h.Params = append(h.Params, ckptParam{Name: p.Name, Shape: p.Shape})
	}
	return h
}

// Save is collective: rank 0 writes the trainer's state to path atomically
// (a temporary file in the same directory, fsync, rename, fsync of the
// directory), so that path holds either the previous checkpoint or this
// one, whole, with mode 0644 less the umask. A save that is killed leaves
// its temporary file, ".BASE.tmp-partial", which the next save to path
// replaces. Every rank returns rank 0's error, if any.
func (t *Trainer[T]) Save(path string) error {
	var err error
	if t.comm.Rank() == 0 {
		err = t.write(path)
	}
	return Agree(t.comm, err)
}

func (t *Trainer[T]) write(path string) error {
	hdr, err := json.Marshal(t.header())
	if err != nil {
		return err
	}
	p := len(t.model.params)
	var b bytes.Buffer
	b.Grow(len(ckptMagic) + 8 + len(hdr) + 8 + 24*p + 4)
	b.WriteString(ckptMagic)
	le := binary.LittleEndian
	b.Write(le.AppendUint32(nil, ckptVersion))
	b.Write(le.AppendUint32(nil, uint32(len(hdr))))
	b.Write(hdr)
	b.Write(le.AppendUint64(nil, uint64(3*p)))
	var buf [8]byte
	for _, v := range [][]T{t.model.params, t.opt.m, t.opt.v} {
		for _, x := range v {
			le.PutUint64(buf[:], math.Float64bits(float64(x)))
			b.Write(buf[:])
		}
	}
	b.Write(le.AppendUint32(nil, crc32.Checksum(b.Bytes(), crcTable)))
	if err := writeAtomic(path, b.Bytes()); err != nil {
		return fmt.Errorf("clip: writing checkpoint %s: %w", path, err)
	}
	return nil
}

// tempPath is the temporary file a checkpoint at path is written to before
// it is renamed onto path: ".BASE.tmp-partial" in the same directory. The
// name is fixed, so that a save killed before its rename leaves at most one
// such file, which the next save replaces. (The cluster tests look for it
// as ".latest.ckpt.tmp-*".)
func tempPath(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-partial")
}

// writeAtomic replaces path by data: it writes tempPath(path), fsyncs it,
// renames it onto path and fsyncs the directory. A leftover temporary file
// of a killed save is removed first, so that the file is created anew with
// mode 0644 (less the umask) whatever mode the leftover had.
func writeAtomic(path string, data []byte) error {
	tmp := tempPath(path)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Load is collective: rank 0 reads the checkpoint at path and every rank
// takes its weights, optimizer state and step, so that the run continues
// exactly as the one that wrote it (same losses, step for step). It returns
// an error wrapping ErrCheckpoint on every rank if the file is missing, not
// a checkpoint, truncated or corrupt (its CRC-32C does not match), or was
// written by a run whose model, data layout, element type or schedule
// differs from this trainer's (every differing field is named).
func (t *Trainer[T]) Load(path string) error {
	p := len(t.model.params)
	state := make([]float64, 2+3*p)
	var err error
	if t.comm.Rank() == 0 {
		err = t.read(path, state)
	}
	if err = Agree(t.comm, err); err != nil {
		return err
	}
	if err := broadcast(t.comm, "checkpoint "+path, state); err != nil {
		return err
	}
	t.step, t.opt.t = int(state[0]), int(state[1])
	for i, v := range [][]T{t.model.params, t.opt.m, t.opt.v} {
		for j := range v {
			v[j] = T(state[2+i*p+j])
		}
	}
	t.permEpoch = -1
	return nil
}

// read checks the checkpoint at path against this trainer and writes
// [step, adam steps, params, m, v] into state.
func (t *Trainer[T]) read(path string, state []float64) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrCheckpoint, path, fmt.Sprintf(format, a...))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	le := binary.LittleEndian
	if len(b) < len(ckptMagic)+8 || string(b[:len(ckptMagic)]) != ckptMagic {
		return bad("not a clipmpi checkpoint")
	}
	if v := le.Uint32(b[8:]); v < ckptOldest || v > ckptVersion {
		return bad("format version %d, this program reads versions %d to %d", v, ckptOldest, ckptVersion)
	}
	n := int(le.Uint32(b[12:]))
	if len(b) < 16+n+8+4 {
		return bad("truncated (%d bytes)", len(b))
	}
	m := le.Uint64(b[16+n:])
	if m > uint64(len(b)) || len(b) != 16+n+8+8*int(m)+4 {
		return bad("truncated or padded: %d bytes, its header promises %d", len(b), 16+n+8+8*int(min(m, uint64(len(b))))+4)
	}
	body, sum := b[:len(b)-4], le.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, crcTable); got != sum {
		return bad("corrupt: CRC-32C of the contents is %08x, the file says %08x", got, sum)
	}
	var h ckptHeader
	if err := json.Unmarshal(b[16:16+n], &h); err != nil {
		return bad("corrupt header: %v", err)
	}
	if diff := diffHeaders(h, t.header()); len(diff) > 0 {
		return bad("written by a different run (checkpoint vs this run): %s", strings.Join(diff, "; "))
	}
	if int(m) != len(state)-2 {
		return bad("holds %d values, this model needs %d", m, len(state)-2)
	}
	pr := h.Progress
	if pr.Step < 0 || pr.Step > t.total || pr.AdamSteps != pr.Step {
		return bad("inconsistent progress: step %d of %d, %d optimizer steps", pr.Step, t.total, pr.AdamSteps)
	}
	state[0], state[1] = float64(pr.Step), float64(pr.AdamSteps)
	vals := b[16+n+8 : len(b)-4]
	for i := range int(m) {
		state[2+i] = math.Float64frombits(le.Uint64(vals[8*i:]))
	}
	if !isFinite(state) {
		return bad("holds NaN or Inf values")
	}
	return nil
}

// diffHeaders lists the fields, other than the progress, in which two
// headers differ, as "name: a vs b".
func diffHeaders(a, b ckptHeader) []string {
	a.Progress, b.Progress = ckptProgress{}, ckptProgress{}
	fa, fb := flatJSON(a), flatJSON(b)
	keys := make(map[string]bool)
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	var diff []string
	for k := range keys {
		if fa[k] != fb[k] {
			diff = append(diff, fmt.Sprintf("%s: %s vs %s", k, orNone(fa[k]), orNone(fb[k])))
		}
	}
	sort.Strings(diff)
	return diff
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// flatJSON maps the dotted path of every leaf of v's JSON form to its JSON
// text.
func flatJSON(v any) map[string]string {
	b, _ := json.Marshal(v)
	var x any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // seeds are uint64: keep every digit
	dec.Decode(&x)
	out := make(map[string]string)
	var walk func(prefix string, x any)
	walk = func(prefix string, x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, v := range x {
				walk(strings.TrimPrefix(prefix+"."+k, "."), v)
			}
		case []any:
			for i, v := range x {
				walk(fmt.Sprintf("%s[%d]", prefix, i), v)
			}
		default:
			b, _ := json.Marshal(x)
			out[prefix] = string(b)
		}
	}
	walk("", x)
	return out
}
