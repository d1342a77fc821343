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
	"github.com/clipmpi/clipmpi/mpi"
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
// Version 3 added global_batch and order: the data order became a
// function of the seed, the epoch and the global batch (dataOrder), no
// longer of the world size, so a checkpoint resumes on any number of ranks
// that divides its global batch. Version 2 dropped the progress fields
// rng_epoch and rng_batch of version 1, which no reader used. Versions 1
// and 2 still load: their global batch is world·batch_size·accum_freq,
// and a run resumed from them continues in the version-3 order (not the
// order of the program that wrote them).
const (
	ckptMagic   = "CLIPCKPT"
	ckptVersion = 3
	// ckptOldest is the oldest version Load reads.
	ckptOldest = 1
	// ckptOrder names the data order of version 3 (dataOrder).
	ckptOrder = "blocks-v1"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ckptHeader is the JSON header of a checkpoint. Every field but those of
// ckptProgress must equal the resuming run's.
type ckptHeader struct {
	DType  string      `json:"dtype"`
	Model  ModelConfig `json:"model"`
	Params []ckptParam `json:"params"`
	// World, BatchSize and AccumFreq describe the run that wrote the
	// checkpoint; a resumed run may differ in them as long as its global
	// batch is GlobalBatch.
	World       int          `json:"world"`
	BatchSize   int          `json:"batch_size"`
	AccumFreq   int          `json:"accum_freq"`
	GlobalBatch int          `json:"global_batch"`
	Order       string       `json:"order"`
	Epochs      int          `json:"epochs"`
	TrainRows   int          `json:"train_rows"`
	Seed        uint64       `json:"seed"`
	Optim       OptimConfig  `json:"optim"`
	TotalSteps  int          `json:"total_steps"`
	Progress    ckptProgress `json:"progress"`
}

type ckptParam struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

// ckptProgress is where the run stands. The data order needs no state of
// its own: the rows of every global batch follow from the seed, the
// number of training rows, the global batch and the step (dataOrder).
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
		BatchSize: t.cfg.BatchSize, AccumFreq: t.cfg.AccumFreq, GlobalBatch: t.GlobalBatch(), Order: ckptOrder,
		Epochs: t.cfg.Epochs, TrainRows: t.rows, Seed: t.cfg.Seed, Optim: t.cfg.Optim, TotalSteps: t.total,
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
// as the one that wrote it (the same losses, step for step, up to the
// rounding of another distribution of the rows over ranks). The
// checkpoint may come from another number of ranks: what must match is
// the global batch (W·BatchSize·AccumFreq), since the data order depends
// on it and not on W (see Trainer); ReadCheckpointInfo and
// CheckpointInfo.BatchSizeFor give the batch size per rank that keeps it.
//
// It returns an error wrapping ErrCheckpoint on every rank if the file is
// missing, not a checkpoint, truncated or corrupt (its CRC-32C does not
// match), or was written by a run whose model, data, global batch, element
// type or schedule differs from this trainer's (every differing field is
// named).
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
	return nil
}

// parseCheckpoint checks the bytes of a checkpoint file (magic string,
// version, lengths, CRC-32C, JSON header, finite values) and returns its
// header and values. Errors wrap ErrCheckpoint. It allocates no more than
// len(b) bytes beyond the header's decoded JSON.
func parseCheckpoint(b []byte) (ckptHeader, []float64, error) {
	var h ckptHeader
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrCheckpoint, fmt.Sprintf(format, a...))
	}
	le := binary.LittleEndian
	if len(b) < len(ckptMagic)+8 || string(b[:len(ckptMagic)]) != ckptMagic {
		return h, nil, bad("not a clipmpi checkpoint")
	}
	v := le.Uint32(b[8:])
	if v < ckptOldest || v > ckptVersion {
		return h, nil, bad("format version %d, this program reads versions %d to %d", v, ckptOldest, ckptVersion)
	}
	n := uint64(le.Uint32(b[12:]))
	if uint64(len(b)) < 16+n+8+4 {
		return h, nil, bad("truncated (%d bytes; its header length is %d)", len(b), n)
	}
	m := le.Uint64(b[16+n:])
	if m > uint64(len(b))/8 || uint64(len(b)) != 16+n+8+8*m+4 {
		return h, nil, bad("truncated or padded: %d bytes, its header promises %d", len(b), 16+n+8+8*min(m, uint64(len(b)))+4)
	}
	body, sum := b[:len(b)-4], le.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, crcTable); got != sum {
		return h, nil, bad("corrupt: CRC-32C of the contents is %08x, the file says %08x", got, sum)
	}
	if err := json.Unmarshal(b[16:16+n], &h); err != nil {
		return h, nil, bad("corrupt header: %v", err)
	}
	if v < 3 {
		h.GlobalBatch, h.Order = h.World*h.BatchSize*h.AccumFreq, ckptOrder
	}
	if err := h.check(); err != nil {
		return h, nil, bad("corrupt header: %v", err)
	}
	vals := make([]float64, m)
	for i := range vals {
		vals[i] = math.Float64frombits(le.Uint64(b[16+n+8+8*uint64(i):]))
	}
	if !isFinite(vals) {
		return h, nil, bad("holds NaN or Inf values")
	}
	return h, vals, nil
}

// check returns what no writer puts in a header (so the file is corrupt,
// or was not written by clipmpi), or nil: sizes that are not positive, a
// global batch other than world × batch size × accum freq, progress
// outside the schedule, an unknown element type, a model configuration
// that NewModel refuses or whose widths exceed 2^24 (FuzzCheckpoint found
// headers with a global batch of 0 and a step of -1 accepted).
func (h *ckptHeader) check() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"world", h.World}, {"batch_size", h.BatchSize}, {"accum_freq", h.AccumFreq},
		{"global_batch", h.GlobalBatch}, {"epochs", h.Epochs}, {"train_rows", h.TrainRows}} {
		if f.v < 1 {
			return fmt.Errorf("%s is %d", f.name, f.v)
		}
	}
	if g := h.GlobalBatch; g%h.World != 0 || g/h.World%h.AccumFreq != 0 || g/h.World/h.AccumFreq != h.BatchSize {
		return fmt.Errorf("global batch %d is not world %d × batch size %d × accum freq %d", g, h.World, h.BatchSize, h.AccumFreq)
	}
	if pr := h.Progress; h.TotalSteps < 0 || pr.Step < 0 || pr.Step > h.TotalSteps || pr.AdamSteps != pr.Step {
		return fmt.Errorf("progress: step %d of %d, %d optimizer steps", pr.Step, h.TotalSteps, pr.AdamSteps)
	}
	if h.DType != "float32" && h.DType != "float64" {
		return fmt.Errorf("element type %q", h.DType)
	}
	mc := h.Model
	if mc.numParams() < 0 || mc.ImageDim > 1<<24 || mc.TextDim > 1<<24 || mc.EmbedDim > 1<<24 || mc.Hidden > 1<<24 {
		return fmt.Errorf("model configuration %+v", mc)
	}
	return nil
}

// read checks the checkpoint at path against this trainer and writes
// [step, adam steps, params, m, v] into state.
func (t *Trainer[T]) read(path string, state []float64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	h, vals, err := parseCheckpoint(b)
	if err != nil {
		return fmt.Errorf("%w (%s)", err, path)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrCheckpoint, path, fmt.Sprintf(format, a...))
	}
	if diff := diffHeaders(h, t.header()); len(diff) > 0 {
		return bad("written by a different run (checkpoint vs this run): %s", strings.Join(diff, "; "))
	}
	if len(vals) != len(state)-2 {
		return bad("holds %d values, this model needs %d", len(vals), len(state)-2)
	}
	pr := h.Progress
	if pr.Step < 0 || pr.Step > t.total || pr.AdamSteps != pr.Step {
		return bad("inconsistent progress: step %d of %d, %d optimizer steps", pr.Step, t.total, pr.AdamSteps)
	}
	if i := beyondRange[T](vals); i >= 0 {
		return bad("value %d, %g, is beyond the range of %s", i, vals[i], dtypeName[T]())
	}
	state[0], state[1] = float64(pr.Step), float64(pr.AdamSteps)
	copy(state[2:], vals)
	return nil
}

// beyondRange returns the index of the first value that becomes ±Inf in
// T, or -1 (FuzzCheckpoint found finite float64 values of 1e300 loaded as
// +Inf into a float32 model).
func beyondRange[T blas.Float](vals []float64) int {
	for i, v := range vals {
		if math.IsInf(float64(T(v)), 0) {
			return i
		}
	}
	return -1
}

// CheckpointInfo is what a checkpoint says about the run that wrote it.
type CheckpointInfo struct {
	// Version is the file format's version.
	Version int
	// DType is the element type of the run, "float32" or "float64".
	DType string
	Model ModelConfig
	// World, BatchSize and AccumFreq are those of the run that wrote it;
	// GlobalBatch is World·BatchSize·AccumFreq.
	World, BatchSize, AccumFreq, GlobalBatch int
	Epochs, TrainRows                        int
	Seed                                     uint64
	Optim                                    OptimConfig
	// Step is the steps taken, of TotalSteps.
	Step, TotalSteps int
}

func (h ckptHeader) info(version int) CheckpointInfo {
	return CheckpointInfo{
		Version: version, DType: h.DType, Model: h.Model,
		World: h.World, BatchSize: h.BatchSize, AccumFreq: h.AccumFreq, GlobalBatch: h.GlobalBatch,
		Epochs: h.Epochs, TrainRows: h.TrainRows, Seed: h.Seed, Optim: h.Optim,
		Step: h.Progress.Step, TotalSteps: h.TotalSteps,
	}
}

// BatchSizeFor returns the rows per rank of a micro-batch with which w ranks
// and accum micro-batches per step keep the checkpoint's global batch:
// GlobalBatch / (w·accum). It returns an ErrCheckpoint error naming both
// numbers if the global batch does not divide by w·accum. It panics if w
// or accum is not positive.
func (c CheckpointInfo) BatchSizeFor(w, accum int) (int, error) {
	if w < 1 || accum < 1 {
		panic(errBatch)
	}
	if c.GlobalBatch%(w*accum) != 0 {
		if accum == 1 {
			return 0, fmt.Errorf("%w: the checkpoint's global batch of %d rows does not divide by %d ranks: resume on a number of ranks that divides %d",
				ErrCheckpoint, c.GlobalBatch, w, c.GlobalBatch)
		}
		return 0, fmt.Errorf("%w: the checkpoint's global batch of %d rows does not divide by %d ranks × accum freq %d = %d",
			ErrCheckpoint, c.GlobalBatch, w, accum, w*accum)
	}
	return c.GlobalBatch / (w * accum), nil
}

// ReadCheckpointInfo is collective: rank 0 reads and checks the checkpoint
// at path (as Load does), and every rank returns what its header says. It
// returns an error wrapping ErrCheckpoint on every rank if the file is
// missing, not a checkpoint, truncated or corrupt.
func ReadCheckpointInfo(comm mpi.Comm, path string) (CheckpointInfo, error) {
	info, _, err := readCheckpoint(comm, path, false)
	return info, err
}

// LoadModel is collective: rank 0 reads the checkpoint at path, and every
// rank returns the model it holds (its trained weights; the optimizer
// state is not kept) and what its header says. The model's element type T
// need not be the checkpoint's. It returns an error wrapping ErrCheckpoint
// on every rank if the file is missing, not a checkpoint, truncated or
// corrupt, or holds values that do not fit its model configuration.
func LoadModel[T blas.Float](comm mpi.Comm, path string) (*Model[T], CheckpointInfo, error) {
	info, params, err := readCheckpoint(comm, path, true)
	if err != nil {
		return nil, info, err
	}
	// Every rank holds the same values and decides alike.
	if i := beyondRange[T](params); i >= 0 {
		return nil, info, fmt.Errorf("%w: %s: parameter %d, %g, is beyond the range of %s", ErrCheckpoint, path, i, params[i], dtypeName[T]())
	}
	m := NewModel[T](info.Model, 0)
	for i, v := range params {
		m.params[i] = T(v)
	}
	return m, info, nil
}

// readCheckpoint is ReadCheckpointInfo and, with params, LoadModel's
// parameters.
func readCheckpoint(comm mpi.Comm, path string, params bool) (CheckpointInfo, []float64, error) {
	var hdr []byte
	var vals []float64
	var err error
	if comm.Rank() == 0 {
		var b []byte
		if b, err = os.ReadFile(path); err != nil {
			err = fmt.Errorf("%w: %v", ErrCheckpoint, err)
		} else {
			var h ckptHeader
			if h, vals, err = parseCheckpoint(b); err != nil {
				err = fmt.Errorf("%w (%s)", err, path)
			} else {
				info := h.info(int(binary.LittleEndian.Uint32(b[8:])))
				hdr, err = json.Marshal(info)
				if err == nil && params {
					err = checkModelValues(path, info.Model, vals)
				}
			}
		}
	}
	if err = Agree(comm, err); err != nil {
		return CheckpointInfo{}, nil, err
	}
	// Rank 0's header, then its parameters, to every rank.
	size := []float64{float64(len(hdr))}
	if err := broadcast(comm, "checkpoint "+path, size); err != nil {
		return CheckpointInfo{}, nil, err
	}
	buf := make([]float64, int(size[0]))
	for i, c := range hdr {
		buf[i] = float64(c)
	}
	if err := broadcast(comm, "checkpoint "+path, buf); err != nil {
		return CheckpointInfo{}, nil, err
	}
	hdr = make([]byte, len(buf))
	for i, v := range buf {
		hdr[i] = byte(v)
	}
	var info CheckpointInfo
	if err := json.Unmarshal(hdr, &info); err != nil {
		return CheckpointInfo{}, nil, fmt.Errorf("clip: sharing checkpoint %s: %w", path, err)
	}
	if !params {
		return info, nil, nil
	}
	p := NewModel[float64](info.Model, 0).params
	if comm.Rank() == 0 {
		copy(p, vals)
	}
	if err := broadcast(comm, "checkpoint "+path, p); err != nil {
		return CheckpointInfo{}, nil, err
	}
	return info, p, nil
}

// checkModelValues checks that a checkpoint of a model configuration holds
// its parameters and their two AdamW moments, and that the configuration
// is one NewModel accepts.
func checkModelValues(path string, mc ModelConfig, vals []float64) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: invalid model configuration %+v: %v", ErrCheckpoint, path, mc, p)
		}
	}()
	if mc.ImageDim > 1<<24 || mc.TextDim > 1<<24 || mc.EmbedDim > 1<<24 || mc.Hidden > 1<<24 {
		return fmt.Errorf("%w: %s: model configuration %+v has widths beyond 2^24", ErrCheckpoint, path, mc)
	}
	// The values must fit the model before it is made: a header may
	// promise widths whose model would not fit in memory (found by
	// FuzzCheckpoint: image and embedding widths of 2^20 made NewModel ask
	// for 8 TiB).
	n := mc.numParams()
	if len(vals) != 3*n {
		return fmt.Errorf("%w: %s: holds %d values, its model (%d parameters) needs %d", ErrCheckpoint, path, len(vals), n, 3*n)
	}
	if n = len(NewModel[float64](mc, 0).params); len(vals) != 3*n {
		return fmt.Errorf("%w: %s: holds %d values, its model (%d parameters) needs %d", ErrCheckpoint, path, len(vals), n, 3*n)
	}
	return nil
}

// diffHeaders lists the fields in which two headers differ, as "name: a
// vs b", other than the progress and the world size, batch size and accum
// freq (a run may resume with others that keep the global batch).
func diffHeaders(a, b ckptHeader) []string {
	a.Progress, b.Progress = ckptProgress{}, ckptProgress{}
	a.World, a.BatchSize, a.AccumFreq = 0, 0, 0
	b.World, b.BatchSize, b.AccumFreq = 0, 0, 0
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
