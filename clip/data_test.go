package clip

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/clipmpi/clipmpi/mpi"
)

// TestHalfConversion: every binary16 value converts to float32 exactly and
// back to the same bits (NaNs stay NaN), and finite values equal
// (−1)^s · 2^(e−15) · (1 + f/1024) (normal) or (−1)^s · 2^−14 · f/1024
// (subnormal), computed from the bit fields.
func TestHalfConversion(t *testing.T) {
	for h := range 1 << 16 {
		f := halfToFloat32(uint16(h))
		back := float32ToHalf(f)
		if math.IsNaN(float64(f)) {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("%#04x: NaN came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x → %g → %#04x", h, f, back)
		}
		if exp := (h >> 10) & 0x1f; exp < 0x1f {
			frac, sign := float64(h&0x3ff)/1024, 1.0
			if h&0x8000 != 0 {
				sign = -1
			}
			want := sign * math.Ldexp(frac, -14)
			if exp > 0 {
				want = sign * math.Ldexp(1+frac, int(exp)-15)
			}
			if float64(f) != want {
				t.Fatalf("%#04x: %g, want %g", h, f, want)
			}
		}
	}
	if f := halfToFloat32(1); f != float32(math.Ldexp(1, -24)) {
		t.Errorf("smallest subnormal: %g, want 2^-24", f)
	}
	// Round to nearest, ties to even: 1 + 2⁻¹¹ lies halfway between 1 and
	// the next half 1 + 2⁻¹⁰.
	for _, c := range []struct {
		f    float32
		want uint16
	}{{1 + 1.0/2048, 0x3c00}, {1 + 3.0/2048, 0x3c02}, {1 + 1.0/2048 + 1.0/65536, 0x3c01}, {70000, 0x7c00}, {1e-9, 0}} {
		if got := float32ToHalf(c.f); got != c.want {
			t.Errorf("float32ToHalf(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

// writeSet writes rows of src as shards of the given sizes into dir, with
// the given file-name layout ("image-%05d.npy" or clip-retrieval's).
func writeSet(t *testing.T, dir string, src Source, sizes []int, half bool, retrieval bool) {
	t.Helper()
	lo := 0
	for s, n := range sizes {
		img := make([]float32, n*src.ImageDim())
		txt := make([]float32, n*src.TextDim())
		if err := src.Read(img, txt, lo, lo+n); err != nil {
			t.Fatal(err)
		}
		ip := filepath.Join(dir, fmt.Sprintf("image-%05d.npy", s))
		tp := filepath.Join(dir, fmt.Sprintf("text-%05d.npy", s))
		if retrieval {
			os.MkdirAll(filepath.Join(dir, "img_emb"), 0o755)
			os.MkdirAll(filepath.Join(dir, "text_emb"), 0o755)
			ip = filepath.Join(dir, "img_emb", fmt.Sprintf("img_emb_%d.npy", s))
			tp = filepath.Join(dir, "text_emb", fmt.Sprintf("text_emb_%d.npy", s))
		}
		if err := WriteNpy(ip, img, n, src.ImageDim(), half); err != nil {
			t.Fatal(err)
		}
		if err := WriteNpy(tp, txt, n, src.TextDim(), half); err != nil {
			t.Fatal(err)
		}
		lo += n
	}
}

func roundHalf(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = halfToFloat32(float32ToHalf(x))
	}
	return out
}

// TestNpyRoundTrip writes a synthetic set as shards (float32 and float16,
// both directory layouts, and the two-file form) and reads row ranges that
// straddle shards back.
func TestNpyRoundTrip(t *testing.T) {
	src := NewSynthetic(SyntheticConfig{Latent: 3, ImageDim: 5, TextDim: 4, Noise: 0.1, Seed: 2}, 0, 40)
	// 12 shards of 3 or 4 rows: names 0..11 sort as numbers (2 before 10).
	sizes := []int{4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 3, 2}
	want := struct{ img, txt []float32 }{make([]float32, 40*5), make([]float32, 40*4)}
	src.Read(want.img, want.txt, 0, 40)
	for _, half := range []bool{false, true} {
		for _, retrieval := range []bool{false, true} {
			t.Run(fmt.Sprintf("half=%v/retrieval=%v", half, retrieval), func(t *testing.T) {
				dir := t.TempDir()
				writeSet(t, dir, src, sizes, half, retrieval)
				d, err := OpenNpy(dir)
				if err != nil {
					t.Fatal(err)
				}
				if d.Rows() != 40 || d.ImageDim() != 5 || d.TextDim() != 4 {
					t.Fatalf("opened %d rows of %d/%d, want 40 of 5/4", d.Rows(), d.ImageDim(), d.TextDim())
				}
				wi, wt := want.img, want.txt
				if half {
					wi, wt = roundHalf(wi), roundHalf(wt)
				}
				for _, r := range [][2]int{{0, 40}, {5, 6}, {3, 33}, {38, 40}, {7, 7}} {
					img, txt := make([]float32, (r[1]-r[0])*5), make([]float32, (r[1]-r[0])*4)
					if err := d.Read(img, txt, r[0], r[1]); err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(img, wi[r[0]*5:r[1]*5]) || !slices.Equal(txt, wt[r[0]*4:r[1]*4]) {
						t.Errorf("rows %d..%d differ from what was written", r[0], r[1]-1)
					}
				}
			})
		}
	}
	t.Run("pair", func(t *testing.T) {
		dir := t.TempDir()
		writeSet(t, dir, src, []int{40}, false, false)
		d, err := OpenNpy(filepath.Join(dir, "image-00000.npy") + "," + filepath.Join(dir, "text-00000.npy"))
		if err != nil {
			t.Fatal(err)
		}
		img, txt := make([]float32, 40*5), make([]float32, 40*4)
		if err := d.Read(img, txt, 0, 40); err != nil || !slices.Equal(img, want.img) || !slices.Equal(txt, want.txt) {
			t.Errorf("pair of files read back differently (err %v)", err)
		}
	})
}

// TestNpyErrors: every malformed input is an ErrData error that says what
// is wrong, and where.
func TestNpyErrors(t *testing.T) {
	src := NewSynthetic(SyntheticConfig{Latent: 2, ImageDim: 3, TextDim: 2, Noise: 0.1, Seed: 2}, 0, 10)
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the path to open
		want  string
	}{
		{"rows differ", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, false, false)
			WriteNpy(filepath.Join(dir, "text-00000.npy"), make([]float32, 9*2), 9, 2, false)
			return dir
		}, "has 10 rows but"},
		// Malformed files of every kind: TestNpyHeaderErrors.
		{"float64", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, false, false)
			writeFile(t, dir, "text-00000.npy", npyFixture(1, padded("{'descr': '<f8', 'fortran_order': False, 'shape': (10, 2), }", 10, 64), make([]byte, 10*2*8)))
			return dir
		}, "text-00000.npy: dtype <f8 is not supported"},
		{"truncated", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, true, false)
			p := filepath.Join(dir, "image-00000.npy")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-3], 0o644)
			return dir
		}, "is truncated"},
		{"fortran", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, true, false)
			// The header numpy writes for np.asfortranarray(a).
			hdr := "{'descr': '<f4', 'fortran_order': True, 'shape': (10, 3), }"
			hdr += strings.Repeat(" ", 63-(10+len(hdr))%64) + "\n"
			b := append([]byte("\x93NUMPY\x01\x00"), byte(len(hdr)), byte(len(hdr)>>8))
			b = append(append(b, hdr...), make([]byte, 10*3*4)...)
			os.WriteFile(filepath.Join(dir, "image-00000.npy"), b, 0o644)
			return dir
		}, "Fortran"},
		{"missing text", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{5, 5}, false, false)
			os.Remove(filepath.Join(dir, "text-00001.npy"))
			return dir
		}, "has no text file"},
		{"dims differ", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{5, 5}, false, false)
			WriteNpy(filepath.Join(dir, "text-00001.npy"), make([]float32, 5*3), 5, 3, false)
			return dir
		}, "have dimensions"},
		{"not npy", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, false, false)
			os.WriteFile(filepath.Join(dir, "image-00000.npy"), []byte("hello, world"), 0o644)
			return dir
		}, "not a .npy file we can read"},
		{"no shards", func(t *testing.T, dir string) string { return dir }, "holds no shards"},
		{"missing", func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") }, "no such file"},
		{"file not dir", func(t *testing.T, dir string) string {
			writeSet(t, dir, src, []int{10}, false, false)
			return filepath.Join(dir, "image-00000.npy")
		}, "want a directory of shards"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := OpenNpy(c.setup(t, dir))
			if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an ErrData error containing %q", err, c.want)
			}
		})
	}
}

// recording is a Source that records the row ranges read.
type recording struct {
	Source
	mu     sync.Mutex
	ranges [][2]int
}

func (r *recording) Read(img, txt []float32, lo, hi int) error {
	r.mu.Lock()
	r.ranges = append(r.ranges, [2]int{lo, hi})
	r.mu.Unlock()
	return r.Source.Read(img, txt, lo, hi)
}

// TestLoadShardOwnRows: rank r reads exactly its block of the range and
// holds those rows.
func TestLoadShardOwnRows(t *testing.T) {
	const w, lo, hi = 3, 4, 15 // 11 rows: blocks of 3, 4, 4
	full := NewSynthetic(SyntheticConfig{Latent: 2, ImageDim: 3, TextDim: 2, Noise: 0.1, Seed: 2}, 0, 20)
	all := struct{ img, txt []float32 }{make([]float32, 20*3), make([]float32, 20*2)}
	full.Read(all.img, all.txt, 0, 20)
	rec := &recording{Source: full}
	got := make([]*Pairs, w)
	errs := onRanks(w, func(c mpi.Comm) error {
		p, err := LoadShard(c, rec, lo, hi)
		got[c.Rank()] = p
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		a, b := Split(hi-lo, w, r)
		p := got[r]
		if p.Offset != a || p.Rows != b-a || p.Total != hi-lo {
			t.Errorf("rank %d: offset %d rows %d total %d, want %d %d %d", r, p.Offset, p.Rows, p.Total, a, b-a, hi-lo)
		}
		if !slices.Equal(p.Image, all.img[(lo+a)*3:(lo+b)*3]) || !slices.Equal(p.Text, all.txt[(lo+a)*2:(lo+b)*2]) {
			t.Errorf("rank %d holds other rows than %d..%d", r, lo+a, lo+b-1)
		}
	}
	slices.SortFunc(rec.ranges, func(x, y [2]int) int { return x[0] - y[0] })
	if want := [][2]int{{4, 7}, {7, 11}, {11, 15}}; !slices.Equal(rec.ranges, want) {
		t.Errorf("reads %v, want one per rank: %v", rec.ranges, want)
	}
}

// TestLoadShardNaN: a NaN in one rank's rows is an error on every rank that
// names the file and the row.
func TestLoadShardNaN(t *testing.T) {
	src := NewSynthetic(SyntheticConfig{Latent: 2, ImageDim: 3, TextDim: 2, Noise: 0.1, Seed: 2}, 0, 10)
	dir := t.TempDir()
	writeSet(t, dir, src, []int{6, 4}, false, false)
	// Row 7 of the set is row 1 of shard 1, in rank 1's block (5..9).
	txt := make([]float32, 4*2)
	src.Read(make([]float32, 4*3), txt, 6, 10)
	txt[1*2+1] = float32(math.Inf(-1))
	WriteNpy(filepath.Join(dir, "text-00001.npy"), txt, 4, 2, false)
	d, err := OpenNpy(dir)
	if err != nil {
		t.Fatal(err)
	}
	errs := onRanks(2, func(c mpi.Comm) error {
		_, err := LoadShard(c, d, 0, 10)
		return err
	})
	for r, err := range errs {
		var re *RankError
		if !errors.Is(err, ErrData) || !errors.As(err, &re) || re.Rank != 1 ||
			!strings.Contains(err.Error(), "text-00001.npy: row 1 of the text embeddings holds -Inf") {
			t.Errorf("rank %d: got %v, want rank 1's ErrData naming text-00001.npy row 1", r, err)
		}
	}
}

// TestSyntheticRows: a row depends only on the seed and its index.
func TestSyntheticRows(t *testing.T) {
	cfg := SyntheticConfig{Latent: 4, ImageDim: 6, TextDim: 5, Noise: 0.2, Seed: 3}
	all := NewSynthetic(cfg, 0, 20)
	ai, at := make([]float32, 20*6), make([]float32, 20*5)
	all.Read(ai, at, 0, 20)
	part := NewSynthetic(cfg, 8, 10) // rows 8..17
	pi, pt := make([]float32, 3*6), make([]float32, 3*5)
	part.Read(pi, pt, 2, 5) // rows 10..12
	if !slices.Equal(pi, ai[10*6:13*6]) || !slices.Equal(pt, at[10*5:13*5]) {
		t.Error("rows 10..12 differ between a set and its slice")
	}
	other := NewSynthetic(SyntheticConfig{Latent: 4, ImageDim: 6, TextDim: 5, Noise: 0.2, Seed: 4}, 0, 1)
	oi, ot := make([]float32, 6), make([]float32, 5)
	other.Read(oi, ot, 0, 1)
	if slices.Equal(oi, ai[:6]) {
		t.Error("another seed gives the same rows")
	}
}
