package clip

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Npy is a paired data set stored as .npy files of shape [n, d], dtype
// float32 or float16 (either byte order, C order; see NpyArray): one image file and one
// text file of the same n, or a directory of shards. A shard is a pair of
// files whose names differ only in "image"/"text" (what the train program's
// gen-data writes: image-00000.npy, text-00000.npy, ...) or in
// "img_emb"/"text_emb" (clip-retrieval's img_emb/img_emb_0.npy,
// text_emb/text_emb_0.npy). The rows of the set are the shards' rows in the
// order of their names (numbers compared as numbers).
//
// Opening reads only the headers; Read and ReadRows read only the requested
// rows. An Npy is safe for concurrent use (in-process ranks may share
// one); its reads are serialised.
type Npy struct {
	path           string
	shards         []npyShard
	rows           int
	imgDim, txtDim int
	mu             sync.Mutex // guards order and buf
	order          []int      // ReadRows' scratch
	buf            []byte     // ReadRows' read buffer
}

type npyShard struct {
	image, text *NpyArray
	first       int // global index of the shard's first row
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
		img, err := OpenNpyArray(p[0])
		if err != nil {
			return nil, err
		}
		txt, err := OpenNpyArray(p[1])
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

// NpyArray is one .npy file holding a 2-D array [rows, dim] of float32 or
// float16, in either byte order, in C order (or in Fortran order when it
// has one row or one column, which is the same layout). Opening reads only
// the header; Read reads only the bytes of the rows asked for (pread), and
// decodes them to float32. An NpyArray holds no open file; it is safe for
// concurrent use.
type NpyArray struct {
	path      string
	rows, dim int
	dtype     npyDType
	data      int64 // byte offset of row 0
}

// OpenNpyArray opens one .npy file. It returns an error wrapping ErrData
// if the file is missing or unreadable, its header is malformed (see
// readNpyHeader), its dtype is not float32 or float16 with a byte order, it
// is not 2-D with at least one column, it is in Fortran order (and not a
// single row or column), or it is shorter than its header says.
func OpenNpyArray(path string) (*NpyArray, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrData, err)
	}
	h, err := readNpyHeader(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not a .npy file we can read: %v", ErrData, path, err)
	}
	dt, err := parseNpyDType(h.Descr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrData, path, err)
	}
	if len(h.Shape) != 2 || h.Shape[1] < 1 {
		return nil, fmt.Errorf("%w: %s: shape %v: want [rows, dim]", ErrData, path, h.Shape)
	}
	a := &NpyArray{path: path, rows: h.Shape[0], dim: h.Shape[1], dtype: dt, data: h.Data}
	if h.Fortran && a.rows > 1 && a.dim > 1 {
		return nil, fmt.Errorf("%w: %s: Fortran (column-major) order is not supported: a row's values are not contiguous (numpy: np.save(path, np.ascontiguousarray(a)))", ErrData, path)
	}
	if a.dim > 1<<31 {
		return nil, fmt.Errorf("%w: %s: shape %v: rows of more than 2^31 values are not embeddings", ErrData, path, h.Shape)
	}
	// The data need rows·dim·size bytes; compared without overflow.
	avail := st.Size() - h.Data
	if int64(a.rows) > avail/(int64(a.dim)*int64(dt.size)) {
		return nil, fmt.Errorf("%w: %s is truncated: %d bytes of data after its header, which says %v %s (%d bytes a row)",
			ErrData, path, avail, h.Shape, h.Descr, a.dim*dt.size)
	}
	return a, nil
}

// Path returns the file's path.
func (a *NpyArray) Path() string { return a.path }

// Rows returns the number of rows.
func (a *NpyArray) Rows() int { return a.rows }

// Dim returns the number of columns.
func (a *NpyArray) Dim() int { return a.dim }

// Read writes rows lo..hi-1 into dst ((hi−lo)×Dim). It panics if the range
// is out of bounds or dst has the wrong length, and returns an error
// wrapping ErrData if the rows cannot be read.
func (a *NpyArray) Read(dst []float32, lo, hi int) error {
	if lo < 0 || hi < lo || hi > a.rows {
		panic(errRows)
	}
	if len(dst) != (hi-lo)*a.dim {
		panic(errBufLen)
	}
	if lo == hi {
		return nil
	}
	f, err := os.Open(a.path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrData, err)
	}
	defer f.Close()
	var buf []byte
	rows := make([]int, hi-lo)
	order := make([]int, hi-lo)
	for i := range rows {
		rows[i], order[i] = lo+i, i
	}
	return a.readRuns(f, dst, rows, order, 0, &buf)
}

// npyChunk bounds the bytes of one pread.
const npyChunk = 1 << 20

// readRuns reads the rows rows[order[0]], rows[order[1]], ... (ascending;
// minus first, rows of a) from f into dst, row rows[k] into dst's row k,
// reading each run of consecutive rows with one pread of at most npyChunk
// bytes into *buf.
func (a *NpyArray) readRuns(f *os.File, dst []float32, rows, order []int, first int, buf *[]byte) error {
	rowBytes := a.dim * a.dtype.size
	per := max(1, npyChunk/rowBytes)
	for i := 0; i < len(order); {
		r0 := rows[order[i]] - first
		j := i + 1
		for j < len(order) && j-i < per && rows[order[j]]-first == r0+(j-i) {
			j++
		}
		n := (j - i) * rowBytes
		if cap(*buf) < n {
			*buf = make([]byte, n)
		}
		b := (*buf)[:n]
		if _, err := f.ReadAt(b, a.data+int64(r0)*int64(rowBytes)); err != nil {
			if err == io.EOF {
				err = errors.New("the file ends early (shortened after it was opened?)")
			}
			return fmt.Errorf("%w: %s: rows %d..%d: %v", ErrData, a.path, r0, r0+j-i-1, err)
		}
		for k := i; k < j; k++ {
			o := order[k]
			a.dtype.decode(dst[o*a.dim:(o+1)*a.dim], b[(k-i)*rowBytes:])
		}
		i = j
	}
	return nil
}

// halfToFloat32 converts IEEE 754 binary16 bits to float32 exactly,
// subnormals included.
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
	rows := make([]int, hi-lo)
	for i := range rows {
		rows[i] = lo + i
	}
	return d.ReadRows(img, txt, rows)
}

// ReadRows implements RowReader: it reads the rows in any order, sorted by
// file and offset, each run of consecutive rows with one pread, opening
// each shard's files once per call.
func (d *Npy) ReadRows(img, txt []float32, rows []int) error {
	if len(img) != len(rows)*d.imgDim || len(txt) != len(rows)*d.txtDim {
		panic(errBufLen)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.order = d.order[:0]
	for i, r := range rows {
		if r < 0 || r >= d.rows {
			panic(errRows)
		}
		d.order = append(d.order, i)
	}
	slices.SortFunc(d.order, func(a, b int) int { return rows[a] - rows[b] })
	for i := 0; i < len(d.order); {
		r := rows[d.order[i]]
		s := sort.Search(len(d.shards), func(k int) bool { return d.shards[k].first+d.shards[k].image.rows > r })
		sh := d.shards[s]
		j := i + 1
		for j < len(d.order) && rows[d.order[j]] < sh.first+sh.image.rows {
			j++
		}
		for _, part := range []struct {
			a   *NpyArray
			dst []float32
		}{{sh.image, img}, {sh.text, txt}} {
			f, err := os.Open(part.a.path)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrData, err)
			}
			err = part.a.readRuns(f, part.dst, rows, d.order[i:j], sh.first, &d.buf)
			f.Close()
			if err != nil {
				return err
			}
		}
		i = j
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

// WriteNpy writes a rows×dim row-major matrix to path as a .npy file
// (version 1.0, C order, little-endian) of dtype float32 or, with half,
// float16: values rounded to the nearest float16, ties to even.
func WriteNpy(path string, data []float32, rows, dim int, half bool) (err error) {
	if rows < 0 || dim < 1 || len(data) != rows*dim {
		panic(errBufLen)
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
	descr := "<f4"
	if half {
		descr = "<f2"
	}
	w.Write(npyHeaderBytes(descr, rows, dim))
	var b [4]byte
	for _, v := range data {
		if half {
			binary.LittleEndian.PutUint16(b[:], float32ToHalf(v))
			w.Write(b[:2])
		} else {
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			w.Write(b[:])
		}
	}
	return w.Flush()
}

// CreateNpy creates (or replaces) path as a .npy file of a rows×dim float32
// matrix (version 1.0, C order, little-endian) whose values are zero until
// WriteNpyRows fills them: the file has its full size at once, so that
// several processes can write their rows into it concurrently.
func CreateNpy(path string, rows, dim int) error {
	if rows < 0 || dim < 1 {
		panic(errBufLen)
	}
	hdr := npyHeaderBytes("<f4", rows, dim)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(len(hdr)) + 4*int64(rows)*int64(dim)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteNpyRows writes data (n×dim float32 values, row-major) into the .npy
// file that CreateNpy made at path, as its rows lo..lo+n-1. It returns an
// error if path is not a float32 .npy file of dim columns that has those
// rows. It panics if len(data) is not a multiple of dim or lo is negative.
func WriteNpyRows(path string, lo int, data []float32, dim int) error {
	if dim < 1 || len(data)%dim != 0 || lo < 0 {
		panic(errBufLen)
	}
	a, err := OpenNpyArray(path)
	if err != nil {
		return err
	}
	if a.dim != dim || a.dtype != (npyDType{size: 4}) || lo+len(data)/dim > a.rows {
		return fmt.Errorf("clip: %s holds %d rows of %d values, dtype %d bytes: cannot write %d rows of %d float32 values from row %d",
			path, a.rows, a.dim, a.dtype.size, len(data)/dim, dim, lo)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	b := make([]byte, 0, min(len(data)*4, npyChunk))
	off := a.data + 4*int64(lo)*int64(dim)
	for len(data) > 0 {
		n := min(len(data), npyChunk/4)
		b = b[:0]
		for _, v := range data[:n] {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
		if _, err := f.WriteAt(b, off); err != nil {
			f.Close()
			return err
		}
		off += int64(len(b))
		data = data[n:]
	}
	return f.Close()
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
