package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
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

type metrics struct{ rows []row }

func (m *metrics) addStep(st clip.StepStats, sps float64) {
	m.rows = append(m.rows, row{split: "train", step: st.Step, epoch: st.Epoch, loss: st.Loss, lr: st.LR, scale: st.Scale, sps: sps})
}

func (m *metrics) addEval(step, epoch int, r clip.Metrics) {
	m.rows = append(m.rows, row{split: "val", step: step, epoch: epoch, val: r})
}

// load keeps the rows of an earlier run's metrics.csv up to step (a resumed
// run continues its curves); a missing or unreadable file is ignored.
func (m *metrics) load(path string, step int) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil || len(recs) < 1 {
		return
	}
	for _, r := range recs[1:] {
		if len(r) != len(csvHeader) {
			return
		}
		var x row
		x.split = r[0]
		x.step, _ = strconv.Atoi(r[1])
		x.epoch, _ = strconv.Atoi(r[2])
		f := func(i int) float64 { v, _ := strconv.ParseFloat(r[i], 64); return v }
		x.loss, x.lr, x.scale, x.sps = f(3), f(4), f(5), f(6)
		v := make([]float64, len(clip.MetricNames))
		for k := range v {
			v[k] = f(csvTrainCols + k)
		}
		x.val = metricsFromValues(v)
		// The resumed run evaluates again at its first step.
		if x.step < step || (x.split == "train" && x.step == step) {
			m.rows = append(m.rows, x)
		}
	}
}

func (m *metrics) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	w := csv.NewWriter(bw)
	w.Write(csvHeader)
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	for _, r := range m.rows {
		rec := make([]string, len(csvHeader))
		rec[0], rec[1], rec[2] = r.split, strconv.Itoa(r.step), strconv.Itoa(r.epoch)
		if r.split == "train" {
			rec[3], rec[4], rec[5], rec[6] = g(r.loss), g(r.lr), g(r.scale), g(r.sps)
		} else {
			for k, v := range r.val.Values() {
				rec[csvTrainCols+k] = g(v)
			}
		}
		w.Write(rec)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
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

// writeOutputs writes metrics.csv and curves.png under --logs and the
// --summary JSON.
func writeOutputs(o *options, m *metrics, s *summary) error {
	if o.logs != "" {
		if err := m.writeCSV(filepath.Join(o.logs, "metrics.csv")); err != nil {
			return fmt.Errorf("writing metrics: %w", err)
		}
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
