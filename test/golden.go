// Package test holds clipmpi's integration tests: the OpenCLIP golden cases,
// run with in-process ranks under plain go test and under real mpirun, and
// the checks that need several processes. Its non-test files are the shared
// machinery: loading cases and comparing results with the golden tolerances.
package test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Case is one golden case in the format of test/testdata/golden/README.md.
type Case struct {
	Name            string   `json:"name"`
	LossKind        string   `json:"loss_kind"`
	WorldSize       int      `json:"world_size"`
	LocalLoss       *bool    `json:"local_loss"`
	GatherWithGrad  *bool    `json:"gather_with_grad"`
	SigLipDistImpl  *string  `json:"siglip_dist_impl"`
	SigLipChunkSize *int     `json:"siglip_chunk_size"`
	LogitScale      float64  `json:"logit_scale"`
	LogitBias       *float64 `json:"logit_bias"`
	BatchPerRank    int      `json:"batch_per_rank"`
	Dim             int      `json:"dim"`
	Ranks           []Rank   `json:"ranks"`
	Single          Outputs  `json:"single_process"`

	File string `json:"-"`
}

// Rank is one rank's inputs and outputs.
type Rank struct {
	Image [][]float64 `json:"image_features"`
	Text  [][]float64 `json:"text_features"`
	Outputs
}

// Outputs are what the loss returned and the gradients it left.
type Outputs struct {
	Loss      float64     `json:"loss"`
	GradImage [][]float64 `json:"grad_image_features"`
	GradText  [][]float64 `json:"grad_text_features"`
	GradScale float64     `json:"grad_logit_scale"`
	GradBias  *float64    `json:"grad_logit_bias"`
}

// GoldenDir returns the directory of golden cases: $CLIPMPI_GOLDEN, or the
// repository's own copy, testdata/golden beside this package's sources (the
// working directory of go test).
func GoldenDir() string {
	if d := os.Getenv("CLIPMPI_GOLDEN"); d != "" {
		return d
	}
	return filepath.Join("testdata", "golden")
}

// LoadCases reads every *.json case in dir, sorted by file name.
func LoadCases(dir string) ([]*Case, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no golden cases (*.json) in %s; set CLIPMPI_GOLDEN", dir)
	}
	sort.Strings(files)
	var cases []*Case
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		c := new(Case)
		if err := json.Unmarshal(raw, c); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		c.File = f
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		cases = append(cases, c)
	}
	return cases, nil
}

func (c *Case) validate() error {
	if c.WorldSize < 1 || len(c.Ranks) != c.WorldSize {
		return fmt.Errorf("world_size %d with %d ranks", c.WorldSize, len(c.Ranks))
	}
	for r, rk := range c.Ranks {
		for _, m := range [][][]float64{rk.Image, rk.Text, rk.GradImage, rk.GradText} {
			if len(m) != c.BatchPerRank {
				return fmt.Errorf("rank %d: %d rows, want batch_per_rank %d", r, len(m), c.BatchPerRank)
			}
			for _, row := range m {
				if len(row) != c.Dim {
					return fmt.Errorf("rank %d: row of %d values, want dim %d", r, len(row), c.Dim)
				}
			}
		}
	}
	return nil
}

// TestName is the subtest name of a case: its file name without extension.
func (c *Case) TestName() string {
	return strings.TrimSuffix(filepath.Base(c.File), ".json")
}

// Worlds returns the distinct world sizes of the cases, ascending.
func Worlds(cases []*Case) []int {
	seen := map[int]bool{}
	var ws []int
	for _, c := range cases {
		if !seen[c.WorldSize] {
			seen[c.WorldSize] = true
			ws = append(ws, c.WorldSize)
		}
	}
	sort.Ints(ws)
	return ws
}

// Flatten returns the rows of m concatenated.
func Flatten(m [][]float64) []float64 {
	var s []float64
	for _, row := range m {
		s = append(s, row...)
	}
	return s
}

// Tolerances from test/testdata/golden/README.md: an independent float64
// implementation reproduces the cases to about 1e-14 relative to each
// array's largest magnitude; the README asks for 1e-9, and an absolute 1e-12
// for ClipLoss's bias gradient, which is rounding noise (|x| <= 1.1e-16).
const (
	RelTol      = 1e-9
	ClipBiasAbs = 1e-12
)

// BF16Tol is the relative tolerance of loss.AMPBF16 at logit scale s, and
// BF16Abs its absolute part. Rounding both operands of a logit to bf16
// (2⁻⁹ relative each) moves it by up to s·2⁻⁸ for unit features, and the
// loss and its gradients move relatively by about as much (measured on the
// golden cases: 1.2% at scale 10, 3.1% at 14.3, 3.2% at 50, 9.7% at 100);
// values the cases hold below 1e-6 (down to 1e-279) are float32's
// underflow and are matched absolutely.
func BF16Tol(s float64) float64 { return s / 256 }

const BF16Abs = 1e-6

// Mismatch compares got with want, element-wise, to rel times the largest
// |want|, and describes the worst element if any is outside. An all-zero
// want (W = 1, b = 1 gives exact zeros) demands exact zeros.
func Mismatch(what string, got, want []float64, rel float64) string {
	return MismatchAbsRel(what, got, want, rel, 0)
}

// MismatchAbsRel is Mismatch with abs added to the tolerance.
func MismatchAbsRel(what string, got, want []float64, rel, abs float64) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%s: %d values, want %d", what, len(got), len(want))
	}
	var scale float64
	for _, v := range want {
		scale = math.Max(scale, math.Abs(v))
	}
	tol := rel*scale + abs
	worst, at := -1.0, -1
	for i := range want {
		d := math.Abs(got[i] - want[i])
		if !(d <= tol) && (d > worst || math.IsNaN(d)) {
			worst, at = d, i
		}
	}
	if at < 0 {
		return ""
	}
	return fmt.Sprintf("%s[%d] = %.17g, want %.17g (|diff| %.3g > %.3g = %g × max|want| %.3g + %g)",
		what, at, got[at], want[at], worst, tol, rel, scale, abs)
}

// MismatchAbs compares two scalars to an absolute tolerance.
func MismatchAbs(what string, got, want, abs float64) string {
	if d := math.Abs(got - want); !(d <= abs) {
		return fmt.Sprintf("%s = %.17g, want %.17g (|diff| %.3g > %g)", what, got, want, d, abs)
	}
	return ""
}
