package clip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// The fixtures here are written byte by byte from the layout that NEP 1
// (numpy.lib.format) documents: "\x93NUMPY", major and minor version,
// the header length (uint16 little-endian in 1.0, uint32 in 2.0 and 3.0),
// the header (a dict literal padded with spaces and ended by '\n'), then
// the data. None of them come from this package's writer.

// npyFixture returns a .npy file of the given version with the header
// text hdr (used as is) and data bytes.
func npyFixture(major byte, hdr string, data []byte) []byte {
	b := append([]byte("\x93NUMPY"), major, 0)
	if major == 1 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(hdr)))
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(hdr)))
	}
	return append(append(b, hdr...), data...)
}

// padded pads a dict with spaces and a newline so that the preamble
// (pre bytes) and the header end on a multiple of align bytes, as numpy
// does with align 64 (16 before numpy 1.x's change).
func padded(dict string, pre, align int) string {
	n := pre + len(dict) + 1
	return dict + strings.Repeat(" ", (align-n%align)%align) + "\n"
}

// halfBits are float16 values and their IEEE 754 binary16 encodings.
var halfBits = []struct {
	v    float32
	bits uint16
}{{0, 0x0000}, {1, 0x3c00}, {-2, 0xc000}, {0.5, 0x3800}, {0.25, 0x3400}, {3, 0x4200}, {-0.75, 0xba00}, {65504, 0x7bff}}

// fixtureData returns rows×dim values (exact in float16) and their bytes
// as descr ('<f4', '>f4', '<f2', '>f2') says, in C order, or in Fortran
// order with fortran.
func fixtureData(descr string, rows, dim int, fortran bool) ([]float32, []byte) {
	var bo binary.AppendByteOrder = binary.LittleEndian
	if descr[0] == '>' {
		bo = binary.BigEndian
	}
	vals := make([]float32, rows*dim)
	var b []byte
	for k := range rows * dim {
		i, j := k/dim, k%dim // C order: element (i, j) at k
		if fortran {
			i, j = k%rows, k/rows
		}
		h := halfBits[(i*dim+j)%len(halfBits)]
		vals[i*dim+j] = h.v
		if descr[2] == '2' {
			b = bo.AppendUint16(b, h.bits)
		} else {
			b = bo.AppendUint32(b, math.Float32bits(h.v))
		}
	}
	return vals, b
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNpyFormatVariants: headers as numpy and other writers produce them,
// and both byte orders of float32 and float16, read back to the values
// written.
func TestNpyFormatVariants(t *testing.T) {
	const rows, dim = 5, 3
	dict := func(descr string, fortran bool) string {
		f := "False"
		if fortran {
			f = "True"
		}
		return fmt.Sprintf("{'descr': '%s', 'fortran_order': %s, 'shape': (%d, %d), }", descr, f, rows, dim)
	}
	for _, c := range []struct {
		name    string
		major   byte
		descr   string
		fortran bool
		hdr     func(descr string) string // nil: numpy's, padded to 64
	}{
		{"v1 <f4", 1, "<f4", false, nil},
		{"v1 >f4", 1, ">f4", false, nil},
		{"v1 <f2", 1, "<f2", false, nil},
		{"v1 >f2", 1, ">f2", false, nil},
		{"v2 <f4", 2, "<f4", false, nil},
		{"v2 >f2", 2, ">f2", false, nil},
		{"v3 (UTF-8 header) <f4", 3, "<f4", false, nil},
		{"v3 >f4", 3, ">f4", false, nil},
		{"padded to 16 (old numpy)", 1, "<f4", false, func(d string) string { return padded(dict(d, false), 10, 16) }},
		{"no padding", 1, "<f4", false, func(d string) string { return dict(d, false) + "\n" }},
		{"keys reordered, double quotes, no trailing comma", 1, ">f2", false, func(d string) string {
			return padded(fmt.Sprintf(`{"shape": (%d, %d), "fortran_order": False, "descr": "%s"}`, rows, dim, d), 10, 64)
		}},
		{"Python 2 longs", 1, "<f4", false, func(d string) string {
			return padded(fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%dL, %dL), }", d, rows, dim), 10, 64)
		}},
		{"tabs and newlines", 2, "<f2", false, func(d string) string {
			return padded(fmt.Sprintf("{\t'descr' :\t'%s' ,\n'fortran_order':False,'shape':( %d ,%d , ) }", d, rows, dim), 12, 64)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			want, data := fixtureData(c.descr, rows, dim, c.fortran)
			pre := 10
			if c.major > 1 {
				pre = 12
			}
			hdr := padded(dict(c.descr, c.fortran), pre, 64)
			if c.hdr != nil {
				hdr = c.hdr(c.descr)
			}
			path := writeFile(t, t.TempDir(), "a.npy", npyFixture(c.major, hdr, data))
			a, err := OpenNpyArray(path)
			if err != nil {
				t.Fatal(err)
			}
			if a.Rows() != rows || a.Dim() != dim {
				t.Fatalf("shape [%d, %d], want [%d, %d]", a.Rows(), a.Dim(), rows, dim)
			}
			got := make([]float32, rows*dim)
			if err := a.Read(got, 0, rows); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("read %v, want %v", got, want)
			}
			part := make([]float32, 2*dim)
			if err := a.Read(part, 2, 4); err != nil || !slices.Equal(part, want[2*dim:4*dim]) {
				t.Errorf("rows 2..3: %v (%v), want %v", part, err, want[2*dim:4*dim])
			}
		})
	}
}

// TestNpyFortran: a Fortran-order array of several rows and columns is a
// clear error (its rows are not contiguous); with one column or one row
// both orders are the same bytes, and it reads.
func TestNpyFortran(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		rows, dim int
		ok        bool
	}{{4, 3, false}, {4, 1, true}, {1, 3, true}} {
		want, data := fixtureData("<f4", c.rows, c.dim, true)
		hdr := padded(fmt.Sprintf("{'descr': '<f4', 'fortran_order': True, 'shape': (%d, %d), }", c.rows, c.dim), 10, 64)
		path := writeFile(t, dir, fmt.Sprintf("f%dx%d.npy", c.rows, c.dim), npyFixture(1, hdr, data))
		a, err := OpenNpyArray(path)
		if !c.ok {
			if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "Fortran (column-major) order is not supported") {
				t.Errorf("[%d, %d] in Fortran order: %v, want ErrData saying Fortran order is not supported", c.rows, c.dim, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("[%d, %d] in Fortran order: %v", c.rows, c.dim, err)
		}
		got := make([]float32, c.rows*c.dim)
		if err := a.Read(got, 0, c.rows); err != nil || !slices.Equal(got, want) {
			t.Errorf("[%d, %d] in Fortran order: %v (%v), want %v", c.rows, c.dim, got, err, want)
		}
	}
}

// TestNpyHeaderErrors: malformed files are ErrData errors that say what is
// wrong; none panics or allocates what the file does not hold.
func TestNpyHeaderErrors(t *testing.T) {
	good := "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
	data := make([]byte, 2*3*4)
	v1 := func(dict string) []byte { return npyFixture(1, padded(dict, 10, 64), data) }
	huge := append([]byte("\x93NUMPY\x02\x00"), 0xff, 0xff, 0xff, 0xff) // a 4 GiB header in a 10-byte file
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "too short for a .npy file"},
		{"no magic", []byte("PK\x03\x04 a zip file, not an array"), "no .npy magic string"},
		{"version 4.0", npyFixture(4, padded(good, 12, 64), data), "format version 4.0: this reader knows 1.0, 2.0 and 3.0"},
		{"version 1.1", func() []byte { b := v1(good); b[7] = 1; return b }(), "format version 1.1"},
		{"header beyond the file", huge, "header length 4294967295"},
		{"header longer than the file", npyFixture(1, padded(good, 10, 64), nil)[:40], "but the file has 40 bytes"},
		{"not ASCII in a v1 header", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'é': 1}"), "is not ASCII"},
		{"not UTF-8 in a v3 header", npyFixture(3, padded(good[:len(good)-1]+"'\xff': 1}", 12, 64), data), "not valid UTF-8"},
		{"missing key", v1("{'descr': '<f4', 'shape': (2, 3), }"), `no key "fortran_order"`},
		{"extra key", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}"), `unexpected key "x"`},
		{"duplicate key", v1("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}"), `key "descr" appears twice`},
		{"not a dict", v1("[1, 2, 3]"), "not a dict"},
		{"garbage after the dict", v1(good + " x"), "after the dict"},
		{"unterminated", v1("{'descr': '<f4, 'fortran_order': False"), "want ',' or"},
		{"structured dtype", v1("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2,), }"), "structured dtypes are not supported"},
		{"shape a list", v1("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }"), "'shape' is not a tuple"},
		{"negative shape", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }"), "non-negative ints"},
		{"fortran_order a string", v1("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2, 3), }"), "is not True or False"},
		{"nested deeply", v1("{'descr': '<f4', 'fortran_order': False, 'shape': " + strings.Repeat("(", 20) + strings.Repeat(")", 20) + "}"), "nested more than"},
		{"float64", v1("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"), "dtype <f8 is not supported"},
		{"int32", v1("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }"), "dtype <i4 is not supported"},
		{"native order", v1("{'descr': '=f4', 'fortran_order': False, 'shape': (2, 3), }"), "dtype =f4 is not supported"},
		{"no order", v1("{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3), }"), "dtype |f4 is not supported"},
		{"1-D", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }"), "shape [6]: want [rows, dim]"},
		{"3-D", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }"), "want [rows, dim]"},
		{"no columns", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }"), "want [rows, dim]"},
		{"truncated data", v1(good)[:len(v1(good))-4], "is truncated: 20 bytes of data"},
		{"rows beyond any file", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775807, 3), }"), "is truncated"},
		{"too wide", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775807), }"), "more than 2^31 values"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "a.npy", c.b)
			_, err := OpenNpyArray(path)
			if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an ErrData error containing %q", err, c.want)
			}
		})
	}
	// readNpyHeader allocates at most what the file holds (here, bytes for
	// an error message), not the 4 GiB the header length says.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := readNpyHeader(bytes.NewReader(huge), int64(len(huge))); err == nil {
			t.Fatal("a 4 GiB header length in a 10-byte file: no error")
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 10*4096 {
		t.Errorf("a 4 GiB header length in a 10-byte file: %d bytes allocated in 10 reads", d)
	}
}

// TestNpyReadRows: rows read in any order (repeats included, across
// shards, float32 and big-endian float16) equal the rows read in order;
// Read and ReadRows of an Npy and of a Range agree.
func TestNpyReadRows(t *testing.T) {
	dir := t.TempDir()
	const dimI, dimT = 3, 2
	// Shards of 4, 1 and 5 rows: image files float32 little-endian, text
	// files float16 big-endian.
	var allI, allT []float32
	for s, n := range []int{4, 1, 5} {
		img, bi := fixtureData("<f4", n, dimI, false)
		txt, bt := fixtureData(">f2", n, dimT, false)
		for k := range img {
			img[k] += float32(s) // the shards differ
			binary.LittleEndian.PutUint32(bi[4*k:], math.Float32bits(img[k]))
		}
		allI, allT = append(allI, img...), append(allT, txt...)
		writeFile(t, dir, fmt.Sprintf("image-%d.npy", s), npyFixture(1, padded(fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", n, dimI), 10, 64), bi))
		writeFile(t, dir, fmt.Sprintf("text-%d.npy", s), npyFixture(2, padded(fmt.Sprintf("{'descr': '>f2', 'fortran_order': False, 'shape': (%d, %d), }", n, dimT), 12, 64), bt))
	}
	d, err := OpenNpy(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Rows() != 10 {
		t.Fatalf("%d rows, want 10", d.Rows())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, rows := range [][]int{{9, 0, 4, 5, 3}, {7, 7, 2, 8, 1, 6, 0}, rng.Perm(10), {4}} {
		img, txt := make([]float32, len(rows)*dimI), make([]float32, len(rows)*dimT)
		if err := d.ReadRows(img, txt, rows); err != nil {
			t.Fatal(err)
		}
		for i, r := range rows {
			if !slices.Equal(img[i*dimI:(i+1)*dimI], allI[r*dimI:(r+1)*dimI]) || !slices.Equal(txt[i*dimT:(i+1)*dimT], allT[r*dimT:(r+1)*dimT]) {
				t.Fatalf("rows %v: row %d (%d) read %v %v, want %v %v", rows, i, r, img[i*dimI:(i+1)*dimI], txt[i*dimT:(i+1)*dimT], allI[r*dimI:(r+1)*dimI], allT[r*dimT:(r+1)*dimT])
			}
		}
	}
	sub := Range(d, 3, 8)
	img, txt := make([]float32, 3*dimI), make([]float32, 3*dimT)
	if err := ReadRows(sub, img, txt, []int{4, 0, 2}); err != nil {
		t.Fatal(err)
	}
	for i, r := range []int{7, 3, 5} {
		if !slices.Equal(img[i*dimI:(i+1)*dimI], allI[r*dimI:(r+1)*dimI]) || !slices.Equal(txt[i*dimT:(i+1)*dimT], allT[r*dimT:(r+1)*dimT]) {
			t.Errorf("Range(3, 8) row %d: %v %v, want row %d of the set", i, img, txt, r)
		}
	}
	if err := sub.Read(img, txt, 1, 4); err != nil || !slices.Equal(img, allI[4*dimI:7*dimI]) || !slices.Equal(txt, allT[4*dimT:7*dimT]) {
		t.Errorf("Range(3, 8).Read(1, 4): %v %v (%v), want rows 4..6", img, txt, err)
	}
}

// TestNpyReadErrors: a file shortened after it was opened is an ErrData
// error naming it and the rows, not a panic or zeros.
func TestNpyReadErrors(t *testing.T) {
	dir := t.TempDir()
	img, _ := fixtureData("<f4", 4, 2, false)
	p := filepath.Join(dir, "a.npy")
	if err := WriteNpy(p, img, 4, 2, false); err != nil {
		t.Fatal(err)
	}
	a, err := OpenNpyArray(p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	os.WriteFile(p, b[:len(b)-8], 0o644)
	err = a.Read(make([]float32, 2*2), 2, 4)
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "a.npy: rows 2..3: the file ends early") {
		t.Errorf("reading past the end: %v", err)
	}
}

// TestCreateNpy: a file made by CreateNpy and filled by WriteNpyRows in
// pieces, out of order, reads back as the whole matrix; writes that do not
// fit are errors.
func TestCreateNpy(t *testing.T) {
	p := filepath.Join(t.TempDir(), "e.npy")
	const rows, dim = 7, 3
	want := make([]float32, rows*dim)
	for i := range want {
		want[i] = float32(i) - 0.5
	}
	if err := CreateNpy(p, rows, dim); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int{{4, 7}, {0, 2}, {2, 4}} {
		if err := WriteNpyRows(p, r[0], want[r[0]*dim:r[1]*dim], dim); err != nil {
			t.Fatal(err)
		}
	}
	// The header by the documented layout: version 1.0, '<f4', C order.
	b, _ := os.ReadFile(p)
	hlen := int(binary.LittleEndian.Uint16(b[8:]))
	if string(b[:8]) != "\x93NUMPY\x01\x00" || (10+hlen)%64 != 0 || b[10+hlen-1] != '\n' ||
		!strings.Contains(string(b[10:10+hlen]), "'descr': '<f4', 'fortran_order': False, 'shape': (7, 3)") || len(b) != 10+hlen+rows*dim*4 {
		t.Fatalf("file %q...: not a [7, 3] '<f4' .npy of %d bytes", b[:min(len(b), 80)], 10+hlen+rows*dim*4)
	}
	for i := range want {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(b[10+hlen+4*i:])); got != want[i] {
			t.Fatalf("element %d: %v, want %v", i, got, want[i])
		}
	}
	if err := WriteNpyRows(p, 6, make([]float32, 2*dim), dim); err == nil {
		t.Error("writing rows 6..7 of 7: no error")
	}
	if err := WriteNpyRows(p, 0, make([]float32, 4), 4); err == nil {
		t.Error("writing rows of 4 values into a file of 3: no error")
	}
}
