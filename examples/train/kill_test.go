package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"
)

// mainEnv makes the test binary run the program's main instead of the
// tests: the tests start the program as a process of its own, to kill it.
const mainEnv = "CLIPMPI_TRAIN_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// program returns the train program (this test binary running main) with
// args, as one process of one rank.
func program(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	return cmd
}

// readCSV reads a metrics.csv: its header and records.
func readCSV(t *testing.T, path string) ([]string, [][]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("%s: %v (%d records)", path, err, len(recs))
	}
	return recs[0], recs[1:]
}

// trainSteps returns the steps of a metrics.csv's training rows, in file
// order.
func trainSteps(recs [][]string) []int {
	var s []int
	for _, r := range recs {
		if r[0] == "train" {
			n, _ := strconv.Atoi(r[1])
			s = append(s, n)
		}
	}
	return s
}

// TestMetricsKillResume: a run killed (SIGKILL) after its first checkpoint
// has its metrics.csv written up to its last step; the run resumed from
// its latest checkpoint continues the same file, which then holds every
// step and every evaluation exactly once, with the values of an
// uninterrupted run (losses, learning rates, logit scales and held-out
// metrics, digit for digit: one process, the same operations).
func TestMetricsKillResume(t *testing.T) {
	dir := t.TempDir()
	// 256 steps an epoch, 768 in all, a checkpoint and an evaluation at
	// the end of each epoch.
	// The algorithm is named: --algo auto measures the machine, and two
	// runs may choose differently where candidates are close (naive over
	// fused one run in six in the pure-Go build), which agree to float32
	// rounding, not digit for digit.
	args := []string{"--synth-rows", "16384", "--val-size", "200", "--batch-size", "64", "--epochs", "3",
		"--head", "mlp", "--hidden", "128", "--embed-dim", "32", "--progress", "lines", "--log-every", "1000000",
		"--algo", "fused"}
	const perEpoch, total = 256, 768
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	csvA := filepath.Join(a, "metrics.csv")

	run := program(append(args, "--logs", a)...)
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	// Kill once the first checkpoint is written and metrics.csv has rows
	// some way past it.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := os.Stat(filepath.Join(a, "checkpoints", "epoch_1.ckpt"))
		if err == nil {
			if s := lastTrainStep(csvA); s >= perEpoch+40 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("the run ended (%v) before it could be killed past step %d:\n%s", err, perEpoch+40, out.String())
		default:
		}
		if time.Now().After(deadline) {
			run.Process.Kill()
			t.Fatalf("no checkpoint and step %d within 2 minutes:\n%s", perEpoch+40, out.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := run.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	_, killed := readCSV(t, csvA)
	ks := trainSteps(killed)
	if len(ks) < perEpoch+40 || ks[len(ks)-1] >= total {
		t.Fatalf("the killed run's metrics.csv holds training steps up to %v: want the rows up to the kill, past %d, before %d", ks[len(ks)-1], perEpoch+40, total)
	}
	for i, s := range ks {
		if s != i+1 {
			t.Fatalf("the killed run's metrics.csv: training row %d is step %d", i+1, s)
		}
	}
	t.Logf("killed at step %d (metrics.csv had %d rows)", ks[len(ks)-1], len(killed))

	res, err := program(append(args, "--logs", a, "--resume", "latest")...).CombinedOutput()
	if err != nil {
		t.Fatalf("resumed run: %v\n%s", err, res)
	}
	m := regexp.MustCompile(`resumed from \S+ at step (\d+) of 768`).FindSubmatch(res)
	if m == nil {
		t.Fatalf("the resumed run does not say where it resumed:\n%s", res)
	}
	at, _ := strconv.Atoi(string(m[1]))
	if at < perEpoch || at%perEpoch != 0 || at >= ks[len(ks)-1] {
		t.Fatalf("resumed at step %d; the killed run got to %d", at, ks[len(ks)-1])
	}
	if ref, err := program(append(args, "--logs", b)...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, ref)
	}

	hdr, got := readCSV(t, csvA)
	hdrB, want := readCSV(t, filepath.Join(b, "metrics.csv"))
	if !slices.Equal(hdr, hdrB) || !slices.Equal(hdr, csvHeader) {
		t.Fatalf("headers %v and %v, want %v", hdr, hdrB, csvHeader)
	}
	// Every row of the uninterrupted run, once, in the same order, with
	// the same values; samples_per_s (col 6) is a timing.
	if len(got) != len(want) {
		t.Errorf("resumed metrics.csv has %d rows, the uninterrupted run's %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g, w := slices.Clone(got[i]), slices.Clone(want[i])
		g[6], w[6] = "", ""
		if !slices.Equal(g, w) {
			t.Errorf("row %d:\n  resumed       %v\n  uninterrupted %v", i+1, got[i], want[i])
			break
		}
	}
	steps := trainSteps(got)
	for i, s := range steps {
		if s != i+1 {
			t.Fatalf("training row %d is step %d", i+1, s)
		}
	}
	var evals []string
	for _, r := range got {
		if r[0] == "val" {
			evals = append(evals, r[1])
		}
	}
	if len(steps) != total || fmt.Sprint(evals) != "[0 256 512 768]" {
		t.Errorf("%d training rows, evaluations at steps %v; want %d and [0 256 512 768]", len(steps), evals, total)
	}
}

// lastTrainStep returns the step of the last complete training row of a
// metrics.csv being written, 0 if there is none yet.
func lastTrainStep(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	lines := bytes.Split(b, []byte("\n"))
	for i := len(lines) - 2; i >= 0; i-- { // the last element follows the last newline
		f := bytes.Split(lines[i], []byte(","))
		if len(f) > 1 && string(f[0]) == "train" {
			n, _ := strconv.Atoi(string(f[1]))
			return n
		}
	}
	return 0
}
