package clip

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"codeberg.org/sbinet/npyio/npy"
	"codeberg.org/sbinet/npyio/npy/float16"
)

// Npy is a paired data set stored as .npy files of shape [n, d], dtype
// float32 or float16 (either byte order, C order): one image file and one
// text file of the same n, or a directory of shards. A shard is a pair of
// files whose names differ only in "image"/"text" (what the train program's
// gen-data writes: image-00000.npy, text-00000.npy, ...) or in
// "img_emb"/"text_emb" (clip-retrieval's img_emb/img_emb_0.npy,
// text_emb/text_emb_0.npy). The rows of the set are the shards' rows in the
// order of their names (numbers compared as numbers).
//
// Opening reads only the headers; Read reads only the requested rows.
type Npy struct {
	path           string
	shards         []npyShard
	rows           int
	imgDim, txtDim int
}

type npyShard struct {
	image, text npyFile
	first       int // global index of the shard's first row
}

// npyFile is a checked .npy header: rows×dim elements of 2 or 4 bytes from
// byte offset data on.
type npyFile struct {
	path      string
	rows, dim int
	esize     int
	data      int64
}

// OpenNpy opens a paired data set: "IMAGE.npy,TEXT.npy" or a directory of
// shards (see Npy). It returns an error wrapping ErrData if a file is
// missing or is not a 2-D float32 or float16 array in C order, if a shard's
// image and text files differ in rows, if shards differ in dimension, or if
// a file is shorter than its header says.
func OpenNpy(path string) (*Npy, error) {
	d := &Npy{path: path}
	var pairs [][2]string
	if img, txt, ok := strings.Cut(path, ","); ok {
		pairs = [][2]string{{img, txt}}
	} else {
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrData, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%w: %s: want a directory of shards or IMAGE.npy,TEXT.npy", ErrData, path)
		}
		if pairs, err = findShards(path); err != nil {
			return nil, err
		}
	}
	for _, p := range pairs {
		img, err := openNpyFile(p[0])
		if err != nil {
			return nil, err
		}
		txt, err := openNpyFile(p[1])
		if err != nil {
			return nil, err
		}
		if img.rows != txt.rows {
			return nil, fmt.Errorf("%w: %s has %d rows but %s has %d: image and text embeddings must pair row by row", ErrData, img.path, img.rows, txt.path, txt.rows)
		}
		if len(d.shards) == 0 {
			d.imgDim, d.txtDim = img.dim, txt.dim
		} else if img.dim != d.imgDim || txt.dim != d.txtDim {
			return nil, fmt.Errorf("%w: %s and %s have dimensions %d and %d, but %s and %s have %d and %d", ErrData,
				img.path, txt.path, img.dim, txt.dim, d.shards[0].image.path, d.shards[0].text.path, d.imgDim, d.txtDim)
		}
		d.shards = append(d.shards, npyShard{image: img, text: txt, first: d.rows})
		d.rows += img.rows
	}
	if d.rows == 0 {
		return nil, fmt.Errorf("%w: %s holds no rows", ErrData, path)
	}
	return d, nil
}

// findShards pairs the image and text files of a directory of shards.
func findShards(dir string) ([][2]string, error) {
	type layout struct{ glob, img, txt string }
	for _, l := range []layout{
		{"image*.npy", "image", "text"},
		{filepath.Join("img_emb", "img_emb*.npy"), "img_emb", "text_emb"},
	} {
		imgs, err := filepath.Glob(filepath.Join(dir, l.glob))
		if err != nil || len(imgs) == 0 {
			continue
		}
		var pairs [][2]string
		for _, img := range imgs {
			rel, _ := filepath.Rel(dir, img)
			txt := filepath.Join(dir, strings.ReplaceAll(rel, l.img, l.txt))
			if _, err := os.Stat(txt); err != nil {
				return nil, fmt.Errorf("%w: %s has no text file %s to pair with", ErrData, img, txt)
			}
			pairs = append(pairs, [2]string{img, txt})
		}
		sort.Slice(pairs, func(i, j int) bool { return naturalLess(pairs[i][0], pairs[j][0]) })
		return pairs, nil
	}
	return nil, fmt.Errorf("%w: %s holds no shards (want image-*.npy with text-*.npy, or img_emb/img_emb_*.npy with text_emb/text_emb_*.npy)", ErrData, dir)
}

// naturalLess compares strings with runs of digits compared as numbers, so
// that shard 2 sorts before shard 10.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da != "" && db != "" {
			x, _ := strconv.ParseUint(da, 10, 64)
			y, _ := strconv.ParseUint(db, 10, 64)
			if x != y {
				return x < y
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// swapReader lets an npy.Reader parse a header from one reader and then
// decode data from another (a section of the file).
type swapReader struct{ io.Reader }

// readHeader parses the header of the .npy file f with npyio and returns it
// with the offset of the data.
func readHeader(f *os.File, sr *swapReader) (*npy.Reader, int64, error) {
	sr.Reader = f
	r, err := npy.NewReader(sr)
	if err != nil {
		return nil, 0, err
	}
	off, err := f.Seek(0, io.SeekCurrent)
	return r, off, err
}

func openNpyFile(path string) (npyFile, error) {
	nf := npyFile{path: path}
	f, err := os.Open(path)
	if err != nil {
		return nf, fmt.Errorf("%w: %v", ErrData, err)
	}
	defer f.Close()
	r, off, err := readHeader(f, &swapReader{})
	if err != nil {
		return nf, fmt.Errorf("%w: %s: not a .npy file: %v", ErrData, path, err)
	}
	h := r.Header.Descr
	h.Type = strings.Trim(h.Type, "'\"")
	switch strings.TrimLeft(h.Type, "<>=|") {
	case "f4":
		nf.esize = 4
	case "f2":
		nf.esize = 2
	default:
		return nf, fmt.Errorf("%w: %s: dtype %s is not supported: want float32 or float16 (numpy: a.astype(np.float32))", ErrData, path, h.Type)
	}
	if h.Fortran {
		return nf, fmt.Errorf("%w: %s: Fortran (column-major) order is not supported (numpy: np.ascontiguousarray(a))", ErrData, path)
	}
	if len(h.Shape) != 2 || h.Shape[0] < 0 || h.Shape[1] < 1 {
		return nf, fmt.Errorf("%w: %s: shape %v: want [rows, dim]", ErrData, path, h.Shape)
	}
	nf.rows, nf.dim, nf.data = h.Shape[0], h.Shape[1], off
	st, err := f.Stat()
	if err != nil {
		return nf, fmt.Errorf("%w: %v", ErrData, err)
	}
	if want := off + int64(nf.rows*nf.dim*nf.esize); st.Size() < want {
		return nf, fmt.Errorf("%w: %s is truncated: %d bytes, its header (%v %s) needs %d", ErrData, path, st.Size(), h.Shape, h.Type, want)
	}
	return nf, nil
}

// read decodes rows lo..hi-1 of the file into dst ((hi−lo)×dim) with
// npyio, reading only those rows.
func (nf npyFile) read(dst []float32, lo, hi int) error {
	f, err := os.Open(nf.path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrData, err)
	}
	defer f.Close()
	sr := &swapReader{}
	r, _, err := readHeader(f, sr)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrData, nf.path, err)
	}
	rowBytes := int64(nf.dim * nf.esize)
	sr.Reader = bufio.NewReaderSize(io.NewSectionReader(f, nf.data+int64(lo)*rowBytes, int64(hi-lo)*rowBytes), 1<<20)
	var arr npy.Array
	if err := r.Read(&arr); err != nil {
		return fmt.Errorf("%w: %s: rows %d..%d: %v", ErrData, nf.path, lo, hi-1, err)
	}
	switch v := arr.Data().(type) {
	case []float32:
		if len(v) != len(dst) {
			return fmt.Errorf("%w: %s: rows %d..%d: read %d values, want %d", ErrData, nf.path, lo, hi-1, len(v), len(dst))
		}
		copy(dst, v)
	case []float16.Num:
		if len(v) != len(dst) {
			return fmt.Errorf("%w: %s: rows %d..%d: read %d values, want %d", ErrData, nf.path, lo, hi-1, len(v), len(dst))
		}
		for i, h := range v {
			dst[i] = halfToFloat32(h.Uint16())
		}
	default:
		return fmt.Errorf("%w: %s: decoded %T, want float32 or float16", ErrData, nf.path, v)
	}
	return nil
}

// halfToFloat32 converts IEEE 754 binary16 bits to float32 exactly,
// subnormals included (npyio's float16.Num.Float32 flushes them).
func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch exp {
	case 0x1f: // ±Inf, NaN (payload kept)
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	case 0: // ±0 and subnormals: frac·2⁻²⁴
		f := float32(frac) / (1 << 24)
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | frac<<13)
}

// Rows returns the number of rows of the set.
func (d *Npy) Rows() int { return d.rows }

// ImageDim returns the width of the image embeddings.
func (d *Npy) ImageDim() int { return d.imgDim }

// TextDim returns the width of the text embeddings.
func (d *Npy) TextDim() int { return d.txtDim }

func (d *Npy) String() string { return d.path }

// Read implements Source: it reads rows lo..hi-1, touching only the shards
// and the bytes that hold them.
func (d *Npy) Read(img, txt []float32, lo, hi int) error {
	if lo < 0 || hi < lo || hi > d.rows {
		panic(errRows)
	}
	if len(img) != (hi-lo)*d.imgDim || len(txt) != (hi-lo)*d.txtDim {
		panic(errBufLen)
	}
	for _, s := range d.shards {
		a, b := max(lo, s.first), min(hi, s.first+s.image.rows)
		if a >= b {
			continue
		}
		if err := s.image.read(img[(a-lo)*d.imgDim:(b-lo)*d.imgDim], a-s.first, b-s.first); err != nil {
			return err
		}
		if err := s.text.read(txt[(a-lo)*d.txtDim:(b-lo)*d.txtDim], a-s.first, b-s.first); err != nil {
			return err
		}
	}
	return nil
}

// locate names the file and the row within it that hold a row of the set.
func (d *Npy) locate(row int, image bool) string {
	for _, s := range d.shards {
		if row >= s.first && row < s.first+s.image.rows {
			f := s.text
			if image {
				f = s.image
			}
			return fmt.Sprintf("%s: row %d", f.path, row-s.first)
		}
	}
	return fmt.Sprintf("%s: row %d", d.path, row)
}

// WriteNpy writes a rows×dim row-major matrix to path as a .npy file of
// dtype float32 (through npyio) or, with half, float16 (npyio cannot write
// float16; the header is written here, as NEP 1 specifies). Values are
// rounded to the nearest float16, ties to even.
func WriteNpy(path string, data []float32, rows, dim int, half bool) (err error) {
	if rows < 0 || dim < 1 || len(data) != rows*dim {
		panic(errBufLen)
	}
	if rows == 0 && !half {
		return errors.New("clip: WriteNpy: npyio cannot write an empty float32 matrix")
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if !half {
		m := make([][]float32, rows)
		for i := range m {
			m[i] = data[i*dim : (i+1)*dim : (i+1)*dim]
		}
		if err := npy.Write(w, m); err != nil {
			return err
		}
	} else {
		dict := fmt.Sprintf("{'descr': '<f2', 'fortran_order': False, 'shape': (%d, %d), }", rows, dim)
		// magic (6) + version (2) + length (2) + dict + padding + '\n'
		// is a multiple of 64.
		pad := 63 - (10+len(dict))%64
		hdr := dict + strings.Repeat(" ", pad) + "\n"
		w.WriteString("\x93NUMPY\x01\x00")
		w.Write([]byte{byte(len(hdr)), byte(len(hdr) >> 8)})
		w.WriteString(hdr)
		var b [2]byte
		for _, v := range data {
			h := float32ToHalf(v)
			b[0], b[1] = byte(h), byte(h>>8)
			w.Write(b[:])
		}
	}
	return w.Flush()
}

// float32ToHalf rounds a float32 to the nearest binary16, ties to even;
// overflow gives ±Inf, NaN stays NaN.
func float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	frac := b & 0x7fffff
	if exp == 0xff {
		if frac != 0 {
			return sign | 0x7e00 // quiet NaN
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal or zero: shift the significand (with its implicit 1)
		// right so that one unit is 2⁻²⁴, rounding to nearest even.
		if e < -10 {
			return sign
		}
		m := frac | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | frac>>13
	rem := frac & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, up to Inf: correct
	}
	return sign | uint16(h)
}
