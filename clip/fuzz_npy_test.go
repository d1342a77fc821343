package clip

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"runtime"
	"strings"
	"testing"
)

// halfRef converts binary16 bits to float32 from the definition
// (±2^(e−15)·(1 + f/1024), subnormals ±2^−14·f/1024), in float64: an
// oracle for halfToFloat32 that shares no code with it. NaN payloads are
// not compared.
func halfRef(h uint16) float32 {
	s := 1.0
	if h>>15 == 1 {
		s = -1
	}
	e, f := int(h>>10&0x1f), float64(h&0x3ff)
	switch e {
	case 0:
		return float32(s * math.Ldexp(f, -24))
	case 31:
		if f == 0 {
			return float32(math.Inf(int(s)))
		}
		return float32(math.NaN())
	}
	return float32(s * math.Ldexp(1+f/1024, e-15))
}

// FuzzNpy: any bytes, as a .npy file, give an error wrapping ErrData or an
// array whose values are the file's bytes decoded as NEP 1 says: the data
// start right after the header that the preamble's length field gives, the
// dtype is the '<f4', '>f4', '<f2' or '>f2' its header names, and every
// value read (all rows, and the rows in reverse through the row reader)
// equals that decoding. The file holds every byte the shape promises, and
// neither opening nor reading allocates more than 16 times the file's size
// plus 64 KiB (a header that promises more than the file holds is an error,
// never an allocation).
func FuzzNpy(f *testing.F) {
	path := fuzzTempFile(f, "clipmpi-fuzz-npy", "x.npy")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		budget := uint64(16*len(b) + 64<<10)
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		a, err := OpenNpyArray(path)
		if got := allocatedSince(&before); got > budget {
			t.Fatalf("opening a %d-byte file allocated %d bytes", len(b), got)
		}
		if err != nil {
			if !errors.Is(err, ErrData) {
				t.Fatalf("OpenNpyArray: %v, want ErrData", err)
			}
			return
		}
		// The layout, from the bytes.
		var off int
		switch b[6] {
		case 1:
			off = 10 + int(binary.LittleEndian.Uint16(b[8:]))
		case 2, 3:
			off = 12 + int(binary.LittleEndian.Uint32(b[8:]))
		default:
			t.Fatalf("accepted format version %d.%d", b[6], b[7])
		}
		hdr := string(b[:off])
		var size int
		var big bool
		for _, d := range []string{"<f4", ">f4", "<f2", ">f2"} {
			if strings.Contains(hdr, "'"+d+"'") || strings.Contains(hdr, `"`+d+`"`) {
				if size != 0 {
					t.Skip("the header names several dtypes") // only one is 'descr'
				}
				size, big = int(d[2]-'0'), d[0] == '>'
			}
		}
		if size == 0 || a.dtype.size != size || a.dtype.big != big || a.data != int64(off) {
			t.Fatalf("read as dtype %+v at offset %d; the header %q says size %d big %v, offset %d", a.dtype, a.data, hdr, size, big, off)
		}
		rows, dim := a.Rows(), a.Dim()
		if rows*dim*size > len(b)-off {
			t.Fatalf("shape %d×%d of %d-byte elements, but %d bytes of data", rows, dim, size, len(b)-off)
		}
		var bo binary.ByteOrder = binary.LittleEndian
		if big {
			bo = binary.BigEndian
		}
		want := func(k int) float32 {
			p := b[off+k*size:]
			if size == 4 {
				return math.Float32frombits(bo.Uint32(p))
			}
			return halfRef(bo.Uint16(p))
		}
		same := func(x, y float32) bool {
			return math.Float32bits(x) == math.Float32bits(y) || x != x && y != y
		}
		dst := make([]float32, rows*dim)
		runtime.ReadMemStats(&before)
		if err := a.Read(dst, 0, rows); err != nil {
			t.Fatalf("Read of an opened file: %v", err)
		}
		if got := allocatedSince(&before); got > budget {
			t.Fatalf("reading a %d-byte file allocated %d bytes", len(b), got)
		}
		for k, v := range dst {
			if !same(v, want(k)) {
				t.Fatalf("element %d = %v, the bytes say %v", k, v, want(k))
			}
		}
		if rows == 0 {
			return
		}
		order := make([]int, rows)
		for i := range order {
			order[i] = rows - 1 - i
		}
		src := &Npy{path: path, rows: rows, imgDim: dim, txtDim: dim,
			shards: []npyShard{{image: a, text: a}}}
		img, txt := make([]float32, rows*dim), make([]float32, rows*dim)
		if err := src.ReadRows(img, txt, order); err != nil {
			t.Fatalf("ReadRows of an opened file: %v", err)
		}
		for i, r := range order {
			for j := range dim {
				if !same(img[i*dim+j], want(r*dim+j)) || !same(txt[i*dim+j], want(r*dim+j)) {
					t.Fatalf("ReadRows: row %d column %d = %v, %v; the bytes say %v", r, j, img[i*dim+j], txt[i*dim+j], want(r*dim+j))
				}
			}
		}
	})
}
