package slurm

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The seed corpora live in testdata/fuzz/<Fuzz name>/; make fuzz runs each
// target for FUZZTIME, and plain go test runs the seeds.

// FuzzExpandHostlist: any string gives an error or a list of at most 2^20
// names, none empty, none holding a bracket, a comma or surrounding space;
// such a list is its own expansion (expanding "a,b,..." again gives it
// back), and a string without brackets expands to its comma-separated
// names.
func FuzzExpandHostlist(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 256 {
			return // long strings only repeat what short ones test
		}
		out, err := ExpandHostlist(s)
		if err != nil {
			if out != nil {
				t.Fatalf("%q: error %v with %d names", s, err, len(out))
			}
			return
		}
		if len(out) > maxHosts {
			t.Fatalf("%q: %d names, more than maxHosts", s, len(out))
		}
		for _, n := range out {
			if n == "" || strings.ContainsAny(n, "[],") || strings.TrimSpace(n) != n {
				t.Fatalf("%q: name %q", s, n)
			}
		}
		if len(out) > 4096 {
			return // the round trip of a long list takes long and tests nothing new
		}
		again, err := ExpandHostlist(strings.Join(out, ","))
		if err != nil || !reflect.DeepEqual(again, out) {
			t.Fatalf("%q expands to %q, which expands to %q, %v", s, out, again, err)
		}
		if !strings.ContainsAny(s, "[]") && s != "" {
			var want []string
			for _, n := range strings.Split(s, ",") {
				want = append(want, strings.TrimSpace(n))
			}
			if !reflect.DeepEqual(out, want) {
				t.Fatalf("%q: %q, want %q", s, out, want)
			}
		}
	})
}

// FuzzExpandTasksPerNode: any string gives an error or at most 2^20
// non-negative counts, which written out one by one ("2,2,1") expand to
// themselves.
func FuzzExpandTasksPerNode(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 256 {
			return
		}
		out, err := ExpandTasksPerNode(s)
		if err != nil {
			return
		}
		if len(out) == 0 || len(out) > maxHosts {
			t.Fatalf("%q: %d counts", s, len(out))
		}
		if len(out) > 4096 {
			return
		}
		parts := make([]string, len(out))
		for i, n := range out {
			if n < 0 {
				t.Fatalf("%q: count %d", s, n)
			}
			parts[i] = strconv.Itoa(n)
		}
		again, err := ExpandTasksPerNode(strings.Join(parts, ","))
		if err != nil || !reflect.DeepEqual(again, out) {
			t.Fatalf("%q expands to %v, which expands to %v, %v", s, out, again, err)
		}
	})
}
