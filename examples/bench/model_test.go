package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
)

// TestModelMode: bin/bench -model prints one JSON record per algorithm of
// each loss, the given rates in each (kernel times per thread divided by
// the threads), exactly one auto choice per loss
// (the fastest that fits), memory and the largest batch consistent with
// the loss package, then a table; bad flags are errors.
func TestModelMode(t *testing.T) {
	var out bytes.Buffer
	args := []string{"-loss", "both", "-w", "8", "-b", "256", "-d", "64", "-threads", "4",
		"-gflops", "400", "-link-gbit", "5", "-latency-us", "15", "-node-mem-gib", "0.25", "-ranks-per-node", "2",
		"-kernel-rates", `{"stats_ns":2,"grad_ns":1.6,"naive_stats_ns":16,"naive_grad_ns":12,"sigmoid_ns":2.8,"copy_ns":0.2,"transpose_ns":2.4}`}
	if err := modelMain(args, &out); err != nil {
		t.Fatal(err)
	}
	budget := int64(0.25*(1<<30)) / 2
	sc := bufio.NewScanner(&out)
	autos := map[string]string{}
	best, autoMs := map[string]float64{}, map[string]float64{}
	n := 0
	var table bool
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			table = table || strings.Contains(line, "max global b")
			continue
		}
		n++
		var rec ModelRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if rec.Rates.GemmGflops != 400 || rec.Rates.LinkGbits != 5 || rec.Rates.LatencyUs != 15 || rec.Threads != 4 || rec.World != 8 ||
			rec.Rates.StatsNs != 2.0/4 || rec.Rates.TransposeNs != 2.4/4 {
			t.Errorf("%s/%s: rates %+v, threads %d, world %d; want the flags' values", rec.Loss, rec.Algo, rec.Rates, rec.Threads, rec.World)
		}
		var mem, memMax, memOver int64
		if rec.Loss == "clip" {
			a, err := loss.ParseAlgorithm(rec.Algo)
			if err != nil {
				t.Fatal(err)
			}
			o := loss.ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: a}
			mem, memMax, memOver = o.Memory(8, 256, 64, 4), o.Memory(8, rec.MaxBPerRank, 64, 4), o.Memory(8, rec.MaxBPerRank+1, 64, 4)
		} else {
			m, err := loss.ParseSigLipImpl(rec.Algo)
			if err != nil {
				t.Fatal(err)
			}
			o := loss.SigLipOptions{Impl: m}
			mem, memMax, memOver = o.Memory(8, 256, 64, 4), o.Memory(8, rec.MaxBPerRank, 64, 4), o.Memory(8, rec.MaxBPerRank+1, 64, 4)
		}
		if got := int64(rec.MemoryMiB * (1 << 20)); got != mem {
			t.Errorf("%s/%s: memory %d, loss says %d", rec.Loss, rec.Algo, got, mem)
		}
		if rec.Fits != (mem <= budget) || memMax > budget || memOver <= budget || rec.MaxGlobalBatch != 8*rec.MaxBPerRank {
			t.Errorf("%s/%s: fits %v, max b %d (memory %d there, %d one row more), budget %d", rec.Loss, rec.Algo, rec.Fits, rec.MaxBPerRank, memMax, memOver, budget)
		}
		if !(rec.StepMs >= rec.GemmMs+rec.KernelMs) {
			t.Errorf("%s/%s: step %g ms below its compute %g + %g", rec.Loss, rec.Algo, rec.StepMs, rec.GemmMs, rec.KernelMs)
		}
		if rec.Auto {
			if autos[rec.Loss] != "" {
				t.Errorf("%s: two auto choices", rec.Loss)
			}
			autos[rec.Loss] = rec.Algo
			autoMs[rec.Loss] = rec.StepMs
		}
		if v, ok := best[rec.Loss]; rec.Fits && (!ok || rec.StepMs < v) {
			best[rec.Loss] = rec.StepMs
		}
	}
	for l, ms := range autoMs {
		// Choose counts predictions within 0.1% as a tie, won by the
		// earlier candidate.
		if ms > best[l]*1.001 {
			t.Errorf("%s: auto chose a step of %g ms, the fastest that fits takes %g", l, ms, best[l])
		}
	}
	if n != 8 || autos["clip"] == "" || autos["siglip"] == "" || !table {
		t.Errorf("%d records (want 8), auto choices %v, table %v:\n%s", n, autos, table, out.String())
	}
	for _, bad := range [][]string{{"-w", "0"}, {"-kernel-rates", `{"stats":1}`}, {"-loss", "dice"}, {"-dtype", "int8"}, {"-w", "2", "-link-gbit", "0"}, {"-algo", "nope"}, {"extra"}} {
		if err := modelMain(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
