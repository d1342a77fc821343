package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// documentedFields are the JSON fields the README's Performance section
// lists, each present in every record (nullable: may be null).
var documentedFields = map[string]bool{
	"loss": false, "algo": false, "mode": false, "world": false, "b": false, "d": false,
	"dtype": false, "precision": false, "gemm_path": false, "tile": false, "steps": false,
	"step_ms_median": false, "step_ms_min": false, "step_ms_max": false,
	"gflop_per_step": false, "gflops": false,
	"gemm_floor_ms": false, "comm_floor_ms": false, "floor_ms": false, "ratio_to_floor": false,
	"sgemm_gflops": false, "collective_gb_per_s": true,
	"peak_rss_mib": false, "workspace_mib": false, "comm_bytes_per_step": false,
	"allocs_per_step": false, "blas_backend": false, "blas_threads": false, "threads": false, "loss_value": false,
	"predicted_step_ms": false,
	"link_gbit_s":       true, "compute_floor_ms": false, "comm_exposed_ms": false,
	"comm_hidden_fraction": true, "max_floor_ms": false, "ratio_to_max_floor": false,
}

// optionalFields may be absent: skipped, and the -max-batch fields.
var optionalFields = map[string]bool{
	"skipped": true, "model_mib": true, "budget_mib_per_rank": true,
	"max_b_per_rank": true, "max_global_batch": true,
}

// runGroup runs the bench on an in-process group of w ranks and returns
// rank 0's output and each rank's error; it fails the test on a hang.
func runGroup(t *testing.T, w int, bc benchConfig) (string, []error) {
	t.Helper()
	outs := make([]bytes.Buffer, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = run(c, &outs[r], bc)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the ranks did not all return within 60 s: a hang")
	}
	for r := 1; r < w; r++ {
		if outs[r].Len() != 0 {
			t.Errorf("rank %d wrote %q; only rank 0 writes", r, outs[r].String())
		}
	}
	return outs[0].String(), errs
}

// TestBenchJSON: for W = 1 and 2, every algorithm alone and all, both losses
// and both element types, the bench prints one parseable JSON object per
// configuration with every documented field, before its table.
func TestBenchJSON(t *testing.T) {
	algos := map[string][]string{
		"clip":   {"naive", "fused", "tiled", "ring", "all"},
		"siglip": {"bidir", "shift", "reduce", "gather", "all"},
	}
	for _, w := range []int{1, 2} {
		for _, lossKind := range []string{"clip", "siglip"} {
			for _, algo := range algos[lossKind] {
				for _, dtype := range []string{"float32", "float64"} {
					name := fmt.Sprintf("W=%d/loss=%s/algo=%s/dtype=%s", w, lossKind, algo, dtype)
					t.Run(name, func(t *testing.T) {
						bc := benchConfig{loss: lossKind, b: 6, d: 4, mode: "local_gwg", algos: algo, dtype: dtype,
							steps: 2, warmup: 1, tile: 4, memLimit: 1 << 20}
						out, errs := runGroup(t, w, bc)
						for r, err := range errs {
							if err != nil {
								t.Fatalf("rank %d: %v", r, err)
							}
						}
						want := 1
						if algo == "all" {
							want = 4
						}
						checkOutput(t, out, want, w, false)
					})
				}
			}
		}
	}
}

// TestBenchNet: with -net the bench measures the link (once per round of
// -repeat 2) and takes the communication floor from it: link_gbit_s is a
// positive number exactly when W > 1, comm_floor_ms is the bytes at that
// rate, and the hidden fraction lies in [0, 1]; there is one record per
// configuration whatever the rounds; the table is the link table.
func TestBenchNet(t *testing.T) {
	for _, w := range []int{1, 2} {
		for _, lossKind := range []string{"clip", "siglip"} {
			t.Run(fmt.Sprintf("W=%d/loss=%s", w, lossKind), func(t *testing.T) {
				bc := benchConfig{loss: lossKind, b: 6, d: 4, mode: "local_gwg", algos: "all", dtype: "float32",
					steps: 2, warmup: 1, tile: 4, memLimit: 1 << 20, net: true, repeat: 2}
				out, errs := runGroup(t, w, bc)
				for r, err := range errs {
					if err != nil {
						t.Fatalf("rank %d: %v", r, err)
					}
				}
				checkOutput(t, out, 4, w, true)
				if n := strings.Count(out, "# link: "); (w > 1) != (n == 2) || w == 1 && n != 0 {
					t.Errorf("%d link lines with W = %d and two rounds, want one per round with W > 1:\n%s", n, w, out)
				}
				if !strings.Contains(out, "x max fl") {
					t.Errorf("no link table in:\n%s", out)
				}
			})
		}
	}
}

// checkOutput checks that out holds the header, want JSON records (each a
// parseable object with every documented field), then the table. With net,
// it also checks the fields of the link measurement.
func checkOutput(t *testing.T, out string, want, w int, net bool) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(out))
	var recs, blank int
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# "): // the header: the run, the cost model's rates, the link
			if recs > 0 {
				t.Errorf("header after a record")
			}
			continue
		case strings.HasPrefix(line, "{"):
		case line == "":
			blank++
			if recs < want {
				t.Errorf("a blank line where record %d belongs", recs+1)
			}
			continue
		default:
			if recs < want {
				t.Errorf("line %q where record %d belongs", line, recs+1)
			}
			continue
		}
		recs++
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("record %d does not parse: %v: %s", recs, err, line)
			continue
		}
		for f, nullable := range documentedFields {
			v, ok := m[f]
			switch {
			case !ok:
				t.Errorf("record %d lacks %q: %s", recs, f, line)
			case v == nil && !nullable:
				t.Errorf("record %d: %q is null: %s", recs, f, line)
			}
		}
		for f := range m {
			if _, doc := documentedFields[f]; !doc && !optionalFields[f] {
				t.Errorf("record %d has undocumented field %q", recs, f)
			}
		}
		if got := m["world"]; got != float64(w) {
			t.Errorf("record %d: world %v, want %d", recs, got, w)
		}
		if v := m["collective_gb_per_s"]; (w == 1) != (v == nil) {
			t.Errorf("record %d: collective_gb_per_s = %v with W = %d (null exactly when W = 1)", recs, v, w)
		}
		for _, f := range []string{"ratio_to_floor", "ratio_to_max_floor", "max_floor_ms", "compute_floor_ms"} {
			if v, ok := m[f].(float64); !ok || !(v > 0) {
				t.Errorf("record %d: %s = %v, want a positive number", recs, f, m[f])
			}
		}
		if v := m["comm_hidden_fraction"]; (w == 1) != (v == nil) {
			t.Errorf("record %d: comm_hidden_fraction = %v with W = %d (null exactly when W = 1)", recs, v, w)
		} else if h, ok := v.(float64); ok && (h < 0 || h > 1) {
			t.Errorf("record %d: comm_hidden_fraction = %v, outside [0, 1]", recs, h)
		}
		link, hasLink := m["link_gbit_s"].(float64)
		if hasLink != (net && w > 1) {
			t.Errorf("record %d: link_gbit_s = %v with W = %d, -net %v (a number exactly with -net and W > 1)", recs, m["link_gbit_s"], w, net)
		}
		if hasLink {
			bytes, floor := m["comm_bytes_per_step"].(float64), m["comm_floor_ms"].(float64)
			if wantMs := bytes * 8 / (link * 1e9) * 1e3; !(link > 0) || math.Abs(floor-wantMs) > 1e-9*wantMs {
				t.Errorf("record %d: comm_floor_ms %v, want comm_bytes_per_step·8 / link_gbit_s = %v", recs, floor, wantMs)
			}
		}
	}
	if recs != want {
		t.Errorf("%d JSON records, want %d:\n%s", recs, want, out)
	}
	if blank == 0 {
		t.Errorf("no table after the records:\n%s", out)
	}
}

// TestEmitUnencodable: a record holding NaN cannot be encoded; emit returns
// an error on every rank and rank 0 writes nothing.
func TestEmitUnencodable(t *testing.T) {
	const w = 2
	outs := make([]bytes.Buffer, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r, c := range mpi.NewGroup(w) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := Record{Algo: "fused", StepMsMedian: math.NaN()}
			errs[r] = emit(c, &outs[r], &rec)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil {
			t.Errorf("rank %d: no error for a NaN field", r)
		}
	}
	if outs[0].Len() != 0 {
		t.Errorf("rank 0 wrote %q for an unencodable record", outs[0].String())
	}
}

// TestBenchThreads: -threads sets the loss kernels' threads of every
// record (and the BLAS's, where the backend has threads to set); 0 means
// the CPUs per rank; a negative count is an error on every rank.
func TestBenchThreads(t *testing.T) {
	for _, tc := range []struct{ w, threads, want int }{
		{2, 3, 3}, {1, 2, 2}, {2, 0, max(1, runtime.NumCPU()/2)},
	} {
		t.Run(fmt.Sprintf("W=%d/threads=%d", tc.w, tc.threads), func(t *testing.T) {
			bc := benchConfig{loss: "clip", b: 40, d: 4, mode: "local_gwg", algos: "fused,ring", dtype: "float32",
				steps: 1, warmup: 0, tile: 0, threads: tc.threads, memLimit: 1 << 20, jsonOnly: true}
			out, errs := runGroup(t, tc.w, bc)
			for r, err := range errs {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var rec Record
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("%v: %s", err, line)
				}
				if rec.Threads != tc.want {
					t.Errorf("%s: threads %d, want %d", rec.Algo, rec.Threads, tc.want)
				}
				if blas.Backend() == "openblas" && rec.BlasThreads != tc.want {
					t.Errorf("%s: blas_threads %d, want %d", rec.Algo, rec.BlasThreads, tc.want)
				}
			}
		})
	}
	bc := benchConfig{loss: "clip", b: 4, d: 4, mode: "local_gwg", algos: "fused", dtype: "float32", steps: 1, threads: -1, memLimit: 1 << 20}
	_, errs := runGroup(t, 2, bc)
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "-threads") {
			t.Errorf("rank %d: error %v, want one about -threads", r, err)
		}
	}
}
