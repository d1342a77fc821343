package main

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/clipmpi/clipmpi/clip"
)

// summary is the JSON that --summary writes.
type summary struct {
	FinalLoss        *float64   `json:"final_loss"` // null when no step ran (resumed at the end)
	RecallI2T1       float64    `json:"recall_i2t_at1"`
	RecallT2I1       float64    `json:"recall_t2i_at1"`
	RecallI2T1Before float64    `json:"recall_i2t_at1_before"`
	RecallT2I1Before float64    `json:"recall_t2i_at1_before"`
	Steps            int        `json:"steps"`
	GlobalBatch      int        `json:"global_batch"`
	World            int        `json:"world"`
	SamplesPerS      float64    `json:"samples_per_s"`
	WallS            float64    `json:"wall_s"`
	StepsRun         int        `json:"steps_run"`
	TrainS           float64    `json:"train_s"`
	Epochs           int        `json:"epochs"`
	RecallI2T        [3]float64 `json:"recall_i2t_at1_5_10"`
	RecallT2I        [3]float64 `json:"recall_t2i_at1_5_10"`
	// ValMetrics and ValMetricsBefore are the held-out metrics after and
	// before training under OpenCLIP's names (clip.MetricNames): recall,
	// mean and median rank per direction, clip_val_loss.
	ValMetrics       map[string]float64 `json:"val_metrics"`
	ValMetricsBefore map[string]float64 `json:"val_metrics_before"`
	ChanceAt1        float64            `json:"chance_at1"`
	ValRows          int                `json:"val_rows"`
	TrainRows        int                `json:"train_rows"`
	LogitScale       float64            `json:"logit_scale"`
	Head             string             `json:"head"`
	Mode             string             `json:"mode"`
	Algorithm        string             `json:"algorithm"`
	DType            string             `json:"dtype"`
	Precision        string             `json:"precision"`
	GemmPath         string             `json:"gemm_path"` // the loss's GEMMs: blas.Backend() or blas.BF16Path()
	BLAS             string             `json:"blas"`
	BLASThreads      int                `json:"blas_threads"`
	MPI              bool               `json:"mpi"`
}

// row is one line of metrics.csv: a training step (split "train") or an
// evaluation (split "val").
type row struct {
	split       string
	step, epoch int
	loss, lr    float64
	scale, sps  float64
	val         clip.Metrics
}

// csvHeader are the columns of metrics.csv: a training step fills loss..
// samples_per_s, an evaluation the held-out metrics under OpenCLIP's names.
var csvHeader = append([]string{"split", "step", "epoch", "loss", "lr", "logit_scale", "samples_per_s"}, clip.MetricNames...)

const csvTrainCols = 7

// metrics holds the rows of metrics.csv. On rank 0 with --logs it also
// appends each row to the file as it is produced and flushes it to the
// operating system at once, so that a run that is killed keeps its history
// up to its last step. A write error is kept and reported at the end (err):
// the ranks learn it there, with the other outputs.
type metrics struct {
	rows []row
	f    *os.File
	w    *csv.Writer
	err  error
}

// openMetrics starts metrics.csv at path, on rank 0. A new run (resume < 0)
// truncates the file and writes the header. A run resumed at step resume
// continues the file: it keeps the earlier run's training rows up to that
// step and its evaluations before it (the resumed run evaluates again at
// its first step), drops what the killed run wrote after the checkpoint
// and a last line it did not finish, and rewrites the file atomically
// before appending to it; columns are matched by name. note says what it
// found, for the log; a missing file starts afresh.
func openMetrics(path string, resume int) (m *metrics, note string, err error) {
	m = &metrics{}
	if path == "" {
		return m, "", nil
	}
	if resume >= 0 {
		var kept int
		kept, note, err = m.load(path, resume)
		if err != nil {
			return nil, "", err
		}
		if note == "" {
			note = fmt.Sprintf("%s: continued from step %d (%d earlier rows kept)", path, resume, kept)
		}
	}
	// Write the header and the kept rows to a new file and rename it onto
	// path: a kill meanwhile leaves the old file whole.
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, "", err
	}
	bw := bufio.NewWriter(f)
	w := csv.NewWriter(bw)
	w.Write(csvHeader)
	for _, r := range m.rows {
		w.Write(r.record())
	}
	w.Flush()
	if err = w.Error(); err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return nil, "", fmt.Errorf("writing %s: %w", path, err)
	}
	if m.f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return nil, "", err
	}
	m.w = csv.NewWriter(m.f)
	return m, note, nil
}

func (m *metrics) addStep(st clip.StepStats, sps float64) {
	m.add(row{split: "train", step: st.Step, epoch: st.Epoch, loss: st.Loss, lr: st.LR, scale: st.Scale, sps: sps})
}

func (m *metrics) addEval(step, epoch int, r clip.Metrics) {
	m.add(row{split: "val", step: step, epoch: epoch, val: r})
}

// add keeps a row and appends it to the file, flushed at once (one write
// per row: csv.Writer buffers the record, Flush hands it to the file).
func (m *metrics) add(r row) {
	m.rows = append(m.rows, r)
	if m.w == nil || m.err != nil {
		return
	}
	m.w.Write(r.record())
	m.w.Flush()
	if err := m.w.Error(); err != nil {
		m.err = fmt.Errorf("writing metrics: %w", err)
	}
}

// close closes the file and returns the first error met writing it.
func (m *metrics) close() error {
	if m.f == nil {
		return m.err
	}
	err := m.f.Close()
	m.f, m.w = nil, nil
	if m.err == nil && err != nil {
		m.err = fmt.Errorf("writing metrics: %w", err)
	}
	return m.err
}

// record is the row as metrics.csv holds it. Loss, learning rate, logit
// scale and the held-out metrics are written exactly (the shortest decimal
// that reads back as the same float64), so that runs can be compared.
func (r row) record() []string {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	rec := make([]string, len(csvHeader))
	rec[0], rec[1], rec[2] = r.split, strconv.Itoa(r.step), strconv.Itoa(r.epoch)
	if r.split == "train" {
		rec[3], rec[4], rec[5] = g(r.loss), g(r.lr), g(r.scale)
		rec[6] = strconv.FormatFloat(r.sps, 'f', 0, 64)
	} else {
		for k, v := range r.val.Values() {
			rec[csvTrainCols+k] = g(v)
		}
	}
	return rec
}

// load reads the rows of an earlier run's metrics.csv at path that a run
// resumed at step keeps (see openMetrics) and returns how many it kept. A
// missing file is not an error (note says so); a file that is not a
// metrics.csv is.
func (m *metrics) load(path string, step int) (kept int, note string, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Sprintf("%s: no earlier file; its rows start at step %d", path, step), nil
	}
	if err != nil {
		return 0, "", err
	}
	// A kill may have cut the last line short: drop it.
	cut := ""
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		b = b[:i+1]
		cut = "; an unfinished last line dropped"
	}
	rd := csv.NewReader(bytes.NewReader(b))
	rd.FieldsPerRecord = -1
	recs, err := rd.ReadAll()
	if err != nil || len(recs) == 0 {
		return 0, "", fmt.Errorf("%s: not a metrics.csv: %v", path, err)
	}
	col := make(map[string]int)
	for i, name := range recs[0] {
		col[name] = i
	}
	for _, name := range []string{"split", "step", "epoch"} {
		if _, ok := col[name]; !ok {
			return 0, "", fmt.Errorf("%s: not a metrics.csv: no column %q (move it away to start afresh)", path, name)
		}
	}
	missing := 0
	last := 0
	for n, r := range recs[1:] {
		if len(r) != len(recs[0]) {
			return 0, "", fmt.Errorf("%s: line %d has %d fields, the header %d", path, n+2, len(r), len(recs[0]))
		}
		get := func(name string) float64 {
			i, ok := col[name]
			if !ok || r[i] == "" {
				return 0
			}
			v, _ := strconv.ParseFloat(r[i], 64)
			return v
		}
		var x row
		x.split = r[col["split"]]
		x.step, _ = strconv.Atoi(r[col["step"]])
		x.epoch, _ = strconv.Atoi(r[col["epoch"]])
		x.loss, x.lr, x.scale, x.sps = get("loss"), get("lr"), get("logit_scale"), get("samples_per_s")
		v := make([]float64, len(clip.MetricNames))
		for k, name := range clip.MetricNames {
			v[k] = get(name)
		}
		x.val = metricsFromValues(v)
		if x.step < step || (x.split == "train" && x.step == step) {
			if x.split == "train" {
				if x.step != last+1 {
					missing++
				}
				last = x.step
			}
			m.rows = append(m.rows, x)
		}
	}
	if last != step || missing > 0 {
		note = fmt.Sprintf("%s: the earlier rows end at step %d with %d gaps, not at step %d: the file lacks steps%s", path, last, missing, step, cut)
	} else if cut != "" {
		note = fmt.Sprintf("%s: continued from step %d (%d earlier rows kept%s)", path, step, len(m.rows), cut)
	}
	return len(m.rows), note, nil
}

// metricsFromValues is the inverse of clip.Metrics.Values.
func metricsFromValues(v []float64) clip.Metrics {
	var m clip.Metrics
	for d, r := range []*clip.Retrieval{&m.ImageToText, &m.TextToImage} {
		r.MeanRank, r.MedianRank = v[5*d], v[5*d+1]
		copy(r.R[:], v[5*d+2:5*d+5])
	}
	m.Loss = v[10]
	return m
}

// writeOutputs closes metrics.csv, writes curves.png under --logs and the
// --summary JSON.
func writeOutputs(o *options, m *metrics, s *summary) error {
	if err := m.close(); err != nil {
		return err
	}
	if o.logs != "" {
		if err := writePlot(filepath.Join(o.logs, "curves.png"), m); err != nil {
			return fmt.Errorf("writing the plot: %w", err)
		}
	}
	if o.summary != "" {
		if dir := filepath.Dir(o.summary); dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		b, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.summary, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing the summary: %w", err)
		}
	}
	return nil
}

// display shows progress on rank 0: lines on stdout, or a progress bar on
// stderr with the lines printed above it.
type display struct {
	on  bool
	bar *progressbar.ProgressBar
}

func newDisplay(on bool, mode string, total, done int) *display {
	d := &display{on: on}
	if !on {
		return d
	}
	if mode == "bar" || (mode == "auto" && term.IsTerminal(int(os.Stderr.Fd()))) {
		d.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("steps"),
			progressbar.OptionShowIts(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100_000_000),
		)
		d.bar.Set(done)
	}
	return d
}

func (d *display) line(s string) {
	if !d.on {
		return
	}
	if d.bar != nil {
		d.bar.Clear()
	}
	fmt.Println(s)
}

func (d *display) step(st clip.StepStats) {
	if d.bar == nil {
		return
	}
	d.bar.Describe(fmt.Sprintf("loss %.4f lr %.1e scale %.1f", st.Loss, st.LR, st.Scale))
	d.bar.Add(1)
}

func (d *display) done() {
	if d.bar != nil {
		d.bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
}

// printMetrics prints the held-out metrics before and after training as a
// table, under OpenCLIP's names.
func printMetrics(before, after clip.Metrics) {
	fmt.Printf("\n%-28s %10s %10s\n", fmt.Sprintf("held-out (n=%d)", after.N), "before", "after")
	b, a := before.Values(), after.Values()
	for i, name := range clip.MetricNames {
		fmt.Printf("%-28s %10.4f %10.4f\n", name, b[i], a[i])
	}
}
