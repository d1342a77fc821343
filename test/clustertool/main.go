//go:build linux

// Command clustertool holds the small helpers of the cluster tests
// (scripts/cluster) that a shell does badly:
//
//	clustertool killwrite -dir LOGS/checkpoints -tmp .latest.ckpt.tmp -after latest.ckpt -tag T [-tries 3]
//	    waits (inotify) until a file named TMP or TMP-* is created in DIR
//	    while DIR/AFTER exists, that is, until a checkpoint replaces an
//	    earlier one, and at once SIGKILLs every MPI rank whose environment
//	    holds CLIPMPI_CLUSTER_RUN=T (listed beforehand, and kept fresh)
//	    as soon as the file holds its first bytes. A temporary file already
//	    renamed when the kill is due is let go, and the next checkpoint
//	    tried, up to -tries in all. It exits 0 if the
//	    temporary file was still there after the kill (the job died while
//	    the checkpoint was being written) and DIR/AFTER was not replaced;
//	    1 otherwise, or when the ranks end first; 2 on timeout.
//
//	clustertool summary -file SUMMARY.json -world W [-steps N] [-min-recall R]
//	    checks a training summary: world size W, N steps (if given), every
//	    step run, a finite final loss, and held-out recall@1 better than
//	    before training in both directions (and above R, if given); prints
//	    one line with the recall, mean and median ranks and validation loss.
//
//	clustertool metrics -got METRICS.csv -want METRICS.csv -tol T [-from K]
//	    checks a train run's metrics.csv (one continued across a kill and
//	    a resume, say) against another run's: every training step and
//	    every evaluation appears exactly once, at the same steps as in
//	    -want, and every training loss is within T of -want's; prints the
//	    largest difference of the losses before and after step K.
//
//	clustertool evalcmp -summary EVAL.json -metrics METRICS.csv
//	    checks that the metrics of `train eval --summary` equal those of
//	    the training run's last evaluation in its metrics.csv, exactly.
//
//	clustertool npydiff -a A.npy -b B.npy [-tol T]
//	    checks that two float32/float16 .npy matrices have the same shape
//	    and differ by at most T (default 0) anywhere; prints the largest
//	    difference.
//
//	clustertool nanrows -train DIR -out OUT -world W -rank R -batch B -step K [-seed S]
//	    writes OUT/image.npy and OUT/text.npy (float32): the training set
//	    DIR with NaN in every row that rank R of W reads at step K
//	    (0-based) of bin/train --batch-size B --seed S (accum 1), and in no
//	    other, so that a run given OUT,... on rank R and DIR on the others
//	    meets bad data on rank R only, in the middle of an epoch (the fault
//	    suite, scripts/faults.sh).
//
// It is Linux-only (inotify, /proc) and needs no cgo.
package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/clipmpi/clipmpi/clip"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: clustertool killwrite|summary|metrics|evalcmp|npydiff|nanrows [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "killwrite":
		err = killWrite(os.Args[2:])
	case "summary":
		err = checkSummary(os.Args[2:])
	case "metrics":
		err = checkMetrics(os.Args[2:])
	case "evalcmp":
		err = evalCmp(os.Args[2:])
	case "npydiff":
		err = npyDiff(os.Args[2:])
	case "nanrows":
		err = nanRows(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustertool:", err)
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec))
		}
		os.Exit(1)
	}
}

type exitCode int

func (e exitCode) Error() string { return "exit " + strconv.Itoa(int(e)) }

// killWrite implements clustertool killwrite.
func killWrite(args []string) error {
	fs := flag.NewFlagSet("killwrite", flag.ExitOnError)
	dir := fs.String("dir", "", "directory the checkpoints are written to")
	tmpName := fs.String("tmp", ".latest.ckpt.tmp", "name of the temporary file a checkpoint is written to; NAME-* matches too")
	after := fs.String("after", "latest.ckpt", "kill only once this file exists in -dir (a previous checkpoint)")
	tag := fs.String("tag", "", "value of CLIPMPI_CLUSTER_RUN in the environment of the ranks to kill")
	tries := fs.Int("tries", 3, "give up after this many checkpoints renamed before the kill could land")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	fs.Parse(args)
	if *dir == "" || *tag == "" {
		return errors.New("killwrite needs -dir and -tag")
	}
	deadline := time.Now().Add(*timeout)
	for {
		if fi, err := os.Stat(*dir); err == nil && fi.IsDir() {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "clustertool: %s did not appear within %v\n", *dir, *timeout)
			return exitCode(2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	if _, err := syscall.InotifyAddWatch(fd, *dir, syscall.IN_CREATE); err != nil {
		return fmt.Errorf("inotify_add_watch %s: %w", *dir, err)
	}
	names := make(chan string, 64)
	go func() {
		var buf [64 * (syscall.SizeofInotifyEvent + syscall.NAME_MAX + 1)]byte
		for {
			n, err := syscall.Read(fd, buf[:])
			if err != nil || n <= 0 {
				close(names)
				return
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
				names <- string(bytes.TrimRight(name, "\x00"))
				off += syscall.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}()
	// Scanning /proc takes milliseconds, longer than a small checkpoint
	// takes to write: find the ranks beforehand and keep the list fresh.
	ranks := newRankList(*tag)
	defer ranks.stop()
	afterPath := filepath.Join(*dir, *after)
	timer := time.NewTimer(time.Until(deadline))
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	missed := 0
	for {
		select {
		case <-timer.C:
			fmt.Fprintf(os.Stderr, "clustertool: no checkpoint replaced %s within %v\n", afterPath, *timeout)
			return exitCode(2)
		case <-ticker.C:
			if ranks.ended() {
				fmt.Printf("clustertool: the ranks ended before a checkpoint could be killed mid-write (%d renamed first)\n", missed)
				return exitCode(1)
			}
		case name, ok := <-names:
			if !ok {
				return errors.New("reading inotify events failed")
			}
			if name != *tmpName && !strings.HasPrefix(name, *tmpName+"-") {
				continue
			}
			before, err := os.Stat(afterPath)
			if err != nil {
				continue // the first checkpoint: nothing to keep intact yet
			}
			pids := ranks.get()
			if len(pids) == 0 {
				return fmt.Errorf("no process has CLIPMPI_CLUSTER_RUN=%s and OMPI_COMM_WORLD_RANK in its environment", *tag)
			}
			// Kill once the first bytes are in (the save is then mid-write),
			// unless the file is gone: renamed already, the next checkpoint
			// is tried.
			tmp := filepath.Join(*dir, name)
			if !writing(tmp, time.Second) {
				missed++
				if missed >= *tries {
					fmt.Printf("clustertool: %d checkpoints were renamed before the kill could land\n", missed)
					return exitCode(1)
				}
				continue
			}
			for _, p := range pids {
				syscall.Kill(p, syscall.SIGKILL)
			}
			killed := time.Now()
			size := int64(-1)
			if fi, err := os.Stat(tmp); err == nil {
				size = fi.Size()
			}
			time.Sleep(300 * time.Millisecond) // let anything that survived finish its rename
			_, tmpErr := os.Stat(tmp)
			now, err := os.Stat(afterPath)
			replaced := err != nil || !os.SameFile(before, now) || now.ModTime() != before.ModTime()
			fmt.Printf("clustertool: SIGKILLed ranks %v at unixnano=%d while %s was being written (%d bytes so far); %s\n",
				pids, killed.UnixNano(), tmp, size, map[bool]string{true: "it was renamed over " + *after, false: "it is still there, " + *after + " untouched"}[tmpErr != nil || replaced])
			if tmpErr != nil || replaced {
				return exitCode(1)
			}
			return nil
		}
	}
}

// writing waits until file holds data, for up to max; false if it is gone
// before (or when max has passed).
func writing(file string, max time.Duration) bool {
	end := time.Now().Add(max)
	for {
		fi, err := os.Stat(file)
		if err != nil {
			return false
		}
		if fi.Size() > 0 || time.Now().After(end) {
			return true
		}
	}
}

// rankList keeps the pids of the ranks of one run, refreshed every 50 ms
// by a goroutine.
type rankList struct {
	tag  string
	mu   sync.Mutex
	pids []int
	seen time.Time // when a rank was last seen; zero before the first
	done chan struct{}
}

func newRankList(tag string) *rankList {
	r := &rankList{tag: tag, done: make(chan struct{})}
	r.refresh()
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-t.C:
				r.refresh()
			}
		}
	}()
	return r
}

func (r *rankList) refresh() {
	pids := rankPids(r.tag)
	r.mu.Lock()
	r.pids = pids
	if len(pids) > 0 {
		r.seen = time.Now()
	}
	r.mu.Unlock()
}

func (r *rankList) stop() { close(r.done) }

// get returns the listed pids that still are ranks of the run (a check of
// their own environment only, so that a reused pid is not killed); if none
// is, it scans /proc once more.
func (r *rankList) get() []int {
	r.mu.Lock()
	listed := r.pids
	r.mu.Unlock()
	var pids []int
	for _, p := range listed {
		if isRank(p, r.tag) {
			pids = append(pids, p)
		}
	}
	if len(pids) == 0 {
		pids = rankPids(r.tag)
	}
	return pids
}

// ended reports whether ranks were seen once and none for a second since.
func (r *rankList) ended() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.seen.IsZero() && len(r.pids) == 0 && time.Since(r.seen) > time.Second
}

// rankPids returns the processes whose environment holds
// CLIPMPI_CLUSTER_RUN=tag and OMPI_COMM_WORLD_RANK (the ranks, not mpirun
// or its daemons).
func rankPids(tag string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if isRank(pid, tag) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isRank reports whether pid's environment holds CLIPMPI_CLUSTER_RUN=tag
// and OMPI_COMM_WORLD_RANK.
func isRank(pid int, tag string) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	env = append(append([]byte{0}, env...), 0)
	return bytes.Contains(env, []byte("\x00CLIPMPI_CLUSTER_RUN="+tag+"\x00")) && bytes.Contains(env, []byte("\x00OMPI_COMM_WORLD_RANK="))
}

// checkSummary implements clustertool summary.
func checkSummary(args []string) error {
	fs := flag.NewFlagSet("summary", flag.ExitOnError)
	file := fs.String("file", "", "the JSON summary of a training run (train --summary)")
	world := fs.Int("world", 0, "expected number of ranks")
	steps := fs.Int("steps", 0, "expected number of steps (0: any)")
	minRecall := fs.Float64("min-recall", 0, "held-out recall@1 in both directions must exceed this (0: it must only improve)")
	fs.Parse(args)
	b, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	var s struct {
		FinalLoss   *float64 `json:"final_loss"`
		Steps       int      `json:"steps"`
		StepsRun    int      `json:"steps_run"`
		World       int      `json:"world"`
		GlobalBatch int      `json:"global_batch"`
		I2T         *float64 `json:"recall_i2t_at1"`
		T2I         *float64 `json:"recall_t2i_at1"`
		I2TBefore   *float64 `json:"recall_i2t_at1_before"`
		T2IBefore   *float64 `json:"recall_t2i_at1_before"`
		MPI         bool     `json:"mpi"`
		BLAS        string   `json:"blas"`
		Threads     int      `json:"blas_threads"`
		// OpenCLIP's names (clip.MetricNames); absent in older summaries.
		Val map[string]float64 `json:"val_metrics"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	var bad []string
	if s.FinalLoss == nil || s.I2T == nil || s.T2I == nil || s.I2TBefore == nil || s.T2IBefore == nil {
		return fmt.Errorf("%s lacks final_loss or recall fields:\n%s", *file, b)
	}
	if s.World != *world {
		bad = append(bad, fmt.Sprintf("world %d, want %d", s.World, *world))
	}
	if !s.MPI && *world > 1 {
		bad = append(bad, "mpi false")
	}
	if *steps > 0 && s.Steps != *steps {
		bad = append(bad, fmt.Sprintf("steps %d, want %d", s.Steps, *steps))
	}
	if s.Steps < 1 || s.StepsRun != s.Steps {
		bad = append(bad, fmt.Sprintf("ran %d of %d steps", s.StepsRun, s.Steps))
	}
	if math.IsNaN(*s.FinalLoss) || math.IsInf(*s.FinalLoss, 0) {
		bad = append(bad, fmt.Sprintf("final loss %v", *s.FinalLoss))
	}
	if !(*s.I2T > *s.I2TBefore && *s.T2I > *s.T2IBefore) {
		bad = append(bad, fmt.Sprintf("recall@1 did not improve: i2t %.4f -> %.4f, t2i %.4f -> %.4f", *s.I2TBefore, *s.I2T, *s.T2IBefore, *s.T2I))
	}
	if *minRecall > 0 && !(*s.I2T > *minRecall && *s.T2I > *minRecall) {
		bad = append(bad, fmt.Sprintf("recall@1 i2t %.4f, t2i %.4f: want both above %g", *s.I2T, *s.T2I, *minRecall))
	}
	ranks := ""
	if v := s.Val; v != nil {
		ranks = fmt.Sprintf(", mean rank i2t %.3f t2i %.3f, median %g/%g, clip_val_loss %.4f",
			v["image_to_text_mean_rank"], v["text_to_image_mean_rank"], v["image_to_text_median_rank"], v["text_to_image_median_rank"], v["clip_val_loss"])
	}
	line := fmt.Sprintf("world %d, %d steps of global batch %d, final loss %.4f, recall@1 i2t %.3f -> %.3f, t2i %.3f -> %.3f%s, blas %s x%d",
		s.World, s.Steps, s.GlobalBatch, *s.FinalLoss, *s.I2TBefore, *s.I2T, *s.T2IBefore, *s.T2I, ranks, s.BLAS, s.Threads)
	if len(bad) > 0 {
		return fmt.Errorf("%s: %s (%s)", *file, strings.Join(bad, "; "), line)
	}
	fmt.Println("summary ok:", line)
	return nil
}

// metricsRow is a row of metrics.csv: its split, step and loss.
type metricsRow struct {
	split string
	step  int
	loss  float64
}

// readMetrics reads the split, step and loss columns of a metrics.csv.
func readMetrics(path string) ([]metricsRow, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil || len(recs) < 1 {
		return nil, fmt.Errorf("%s: not a CSV file: %v", path, err)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	for _, name := range []string{"split", "step", "loss"} {
		if _, ok := col[name]; !ok {
			return nil, fmt.Errorf("%s: no column %q", path, name)
		}
	}
	var rows []metricsRow
	for n, r := range recs[1:] {
		var x metricsRow
		x.split = r[col["split"]]
		if x.step, err = strconv.Atoi(r[col["step"]]); err != nil {
			return nil, fmt.Errorf("%s: line %d: step %q", path, n+2, r[col["step"]])
		}
		if x.split == "train" {
			if x.loss, err = strconv.ParseFloat(r[col["loss"]], 64); err != nil {
				return nil, fmt.Errorf("%s: line %d: loss %q", path, n+2, r[col["loss"]])
			}
		}
		rows = append(rows, x)
	}
	return rows, nil
}

// checkMetrics implements clustertool metrics.
func checkMetrics(args []string) error {
	fs := flag.NewFlagSet("metrics", flag.ExitOnError)
	gotPath := fs.String("got", "", "the metrics.csv to check")
	wantPath := fs.String("want", "", "the metrics.csv of the reference run")
	tol := fs.Float64("tol", 0, "largest allowed |loss difference|")
	from := fs.Int("from", 0, "report the differences up to this step and after it apart")
	fs.Parse(args)
	got, err := readMetrics(*gotPath)
	if err != nil {
		return err
	}
	want, err := readMetrics(*wantPath)
	if err != nil {
		return err
	}
	index := func(rows []metricsRow, path string) (map[string]metricsRow, error) {
		m := map[string]metricsRow{}
		for _, r := range rows {
			k := fmt.Sprintf("%s %d", r.split, r.step)
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("%s: %s step %d appears twice", path, r.split, r.step)
			}
			m[k] = r
		}
		return m, nil
	}
	g, err := index(got, *gotPath)
	if err != nil {
		return err
	}
	w, err := index(want, *wantPath)
	if err != nil {
		return err
	}
	var missing, extra []string
	for k := range w {
		if _, ok := g[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra) > 0 {
		some := func(v []string) string {
			slices.Sort(v)
			if len(v) > 8 {
				return fmt.Sprintf("%v ... (%d in all)", v[:8], len(v))
			}
			return fmt.Sprint(v)
		}
		return fmt.Errorf("%s: missing rows %s; rows not in %s: %s", *gotPath, some(missing), *wantPath, some(extra))
	}
	var before, after float64
	steps, evals := 0, 0
	for k, r := range g {
		if r.split != "train" {
			evals++
			continue
		}
		steps++
		d := math.Abs(r.loss - w[k].loss)
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		if r.step <= *from {
			before = max(before, d)
		} else {
			after = max(after, d)
		}
	}
	line := fmt.Sprintf("%d training steps and %d evaluations, each once; loss max |difference| %.3g over steps 1..%d, %.3g after (tolerance %g)",
		steps, evals, before, *from, after, *tol)
	if before > *tol || after > *tol {
		return fmt.Errorf("%s vs %s: %s", *gotPath, *wantPath, line)
	}
	fmt.Println("metrics ok:", line)
	return nil
}

// evalCmp implements clustertool evalcmp.
func evalCmp(args []string) error {
	fs := flag.NewFlagSet("evalcmp", flag.ExitOnError)
	sumPath := fs.String("summary", "", "the JSON of train eval --summary")
	csvPath := fs.String("metrics", "", "the training run's metrics.csv")
	fs.Parse(args)
	b, err := os.ReadFile(*sumPath)
	if err != nil {
		return err
	}
	var sum struct {
		Step    int                `json:"step"`
		Metrics map[string]float64 `json:"val_metrics"`
	}
	if err := json.Unmarshal(b, &sum); err != nil {
		return fmt.Errorf("%s: %w", *sumPath, err)
	}
	c, err := os.ReadFile(*csvPath)
	if err != nil {
		return err
	}
	recs, err := csv.NewReader(bytes.NewReader(c)).ReadAll()
	if err != nil || len(recs) < 2 {
		return fmt.Errorf("%s: %v", *csvPath, err)
	}
	var last []string
	for _, r := range recs[1:] {
		if r[0] == "val" {
			last = r
		}
	}
	if last == nil || last[1] != strconv.Itoa(sum.Step) {
		return fmt.Errorf("eval of step %d; the run's last evaluation %v", sum.Step, last)
	}
	n := 0
	var diff []string
	for i, name := range recs[0] {
		want, ok := sum.Metrics[name]
		if !ok {
			continue
		}
		n++
		got, _ := strconv.ParseFloat(last[i], 64)
		if got != want {
			diff = append(diff, fmt.Sprintf("%s: eval %v, training %v", name, want, got))
		}
	}
	if n != len(sum.Metrics) || n == 0 || len(diff) > 0 {
		return fmt.Errorf("%d of %d metrics found in %s; %s", n, len(sum.Metrics), *csvPath, strings.Join(diff, "; "))
	}
	fmt.Printf("evalcmp ok: the %d metrics of eval at step %d equal the run's last evaluation (R@1 i2t %.4f, t2i %.4f, clip_val_loss %.6f)\n",
		n, sum.Step, sum.Metrics["image_to_text_R@1"], sum.Metrics["text_to_image_R@1"], sum.Metrics["clip_val_loss"])
	return nil
}

// npyDiff implements clustertool npydiff.
func npyDiff(args []string) error {
	fs := flag.NewFlagSet("npydiff", flag.ExitOnError)
	a := fs.String("a", "", "a .npy file")
	b := fs.String("b", "", "another")
	tol := fs.Float64("tol", 0, "largest allowed |difference|")
	fs.Parse(args)
	read := func(path string) ([]float32, int, int, error) {
		x, err := clip.OpenNpyArray(path)
		if err != nil {
			return nil, 0, 0, err
		}
		v := make([]float32, x.Rows()*x.Dim())
		return v, x.Rows(), x.Dim(), x.Read(v, 0, x.Rows())
	}
	va, ra, da, err := read(*a)
	if err != nil {
		return err
	}
	vb, rb, db, err := read(*b)
	if err != nil {
		return err
	}
	if ra != rb || da != db {
		return fmt.Errorf("%s is [%d, %d], %s [%d, %d]", *a, ra, da, *b, rb, db)
	}
	var d float64
	for i := range va {
		d = max(d, math.Abs(float64(va[i])-float64(vb[i])))
		if math.IsNaN(float64(va[i])) != math.IsNaN(float64(vb[i])) {
			d = math.Inf(1)
		}
	}
	if d > *tol {
		return fmt.Errorf("%s and %s differ by up to %g (tolerance %g)", *a, *b, d, *tol)
	}
	fmt.Printf("npydiff ok: [%d, %d], largest difference %g (tolerance %g)\n", ra, da, d, *tol)
	return nil
}
