package clip

import (
	"fmt"
	"math"

	"github.com/clipmpi/clipmpi/mpi"
)

// Source is a paired data set of Rows() rows: row i is an image embedding
// (ImageDim floats) and the text embedding paired with it (TextDim floats).
type Source interface {
	Rows() int
	ImageDim() int
	TextDim() int
	// Read writes rows lo..hi-1 into img ((hi−lo)×ImageDim) and txt
	// ((hi−lo)×TextDim), row-major. It panics if the range is out of
	// bounds or a buffer has the wrong length, and returns an error
	// wrapping ErrData if the rows cannot be read.
	Read(img, txt []float32, lo, hi int) error
	// String describes the source for people.
	String() string
}

// locator is a Source that can say where a row lies, for error messages.
type locator interface {
	locate(row int, image bool) string
}

// Pairs are the rows of a data set that one rank holds: global rows
// Offset .. Offset+Rows-1 of a range of Total rows split over the ranks.
type Pairs struct {
	// Image is Rows×ImageDim, Text Rows×TextDim, row-major.
	Image, Text       []float32
	Rows              int
	ImageDim, TextDim int
	// Offset is the global index of the first row within the range; Total
	// the rows of the range over all ranks.
	Offset, Total int
}

// Split returns the rows [lo, hi) of rank r when n rows are split over w
// ranks in contiguous blocks whose sizes differ by at most one.
func Split(n, w, r int) (lo, hi int) {
	return r * n / w, (r + 1) * n / w
}

// LoadShard is collective: rank r reads its block (Split) of the source's
// rows lo..hi-1, and nothing else, and checks every value is finite. All
// ranks return the same error (wrapping ErrData) if any rank cannot read
// its rows, meets NaN or ±Inf (the first such row is named), or sees a
// source of another shape than rank 0's. It panics if the range is out of
// bounds.
func LoadShard(comm mpi.Comm, src Source, lo, hi int) (*Pairs, error) {
	if comm == nil {
		panic(errNilComm)
	}
	if lo < 0 || hi < lo || hi > src.Rows() {
		panic(errRows)
	}
	if err := agreeInts(comm, "data set "+src.String(), []string{"rows", "image dim", "text dim", "range start", "range end"},
		[]int{src.Rows(), src.ImageDim(), src.TextDim(), lo, hi}); err != nil {
		return nil, fmt.Errorf("%w (%w)", err, ErrData)
	}
	n := hi - lo
	a, b := Split(n, comm.Size(), comm.Rank())
	p := &Pairs{
		Rows: b - a, ImageDim: src.ImageDim(), TextDim: src.TextDim(),
		Offset: a, Total: n,
	}
	p.Image = make([]float32, p.Rows*p.ImageDim)
	p.Text = make([]float32, p.Rows*p.TextDim)
	err := src.Read(p.Image, p.Text, lo+a, lo+b)
	if err == nil {
		err = checkFinite(src, p, lo+a)
	}
	if err = Agree(comm, err); err != nil {
		return nil, err
	}
	return p, nil
}

// checkFinite returns an ErrData error naming the first row of p (global
// row first+i of src) that holds NaN or ±Inf.
func checkFinite(src Source, p *Pairs, first int) error {
	for i := range p.Rows {
		for _, part := range []struct {
			name string
			row  []float32
		}{
			{"image", p.Image[i*p.ImageDim : (i+1)*p.ImageDim]},
			{"text", p.Text[i*p.TextDim : (i+1)*p.TextDim]},
		} {
			for j, v := range part.row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					where := fmt.Sprintf("%s: row %d", src, first+i)
					if l, ok := src.(locator); ok {
						where = l.locate(first+i, part.name == "image")
					}
					return fmt.Errorf("%w: %s of the %s embeddings holds %v (column %d); drop or repair the row", ErrData, where, part.name, v, j)
				}
			}
		}
	}
	return nil
}

// RowReader is a Source that reads rows given in any order at once; Npy
// sorts them by file and offset and reads runs of consecutive rows with
// one pread each.
type RowReader interface {
	// ReadRows writes row rows[i] of the source into row i of img
	// (len(rows)×ImageDim) and of txt (len(rows)×TextDim). It panics if a
	// row is out of bounds or a buffer has the wrong length, and returns
	// an error wrapping ErrData if the rows cannot be read.
	ReadRows(img, txt []float32, rows []int) error
}

// ReadRows writes row rows[i] of src into row i of img (len(rows)×ImageDim)
// and of txt (len(rows)×TextDim): with src's own ReadRows if it is a
// RowReader, else row by row with Read. It panics if a row is out of bounds
// or a buffer has the wrong length.
func ReadRows(src Source, img, txt []float32, rows []int) error {
	di, dt := src.ImageDim(), src.TextDim()
	if len(img) != len(rows)*di || len(txt) != len(rows)*dt {
		panic(errBufLen)
	}
	if rr, ok := src.(RowReader); ok {
		return rr.ReadRows(img, txt, rows)
	}
	for i, r := range rows {
		if err := src.Read(img[i*di:(i+1)*di], txt[i*dt:(i+1)*dt], r, r+1); err != nil {
			return err
		}
	}
	return nil
}

// Range returns rows lo..hi-1 of src as a Source of hi−lo rows (row i is
// row lo+i of src): the training rows when the held-out rows are the last
// ones of the same files. It panics if the range is out of bounds. It is
// safe for concurrent use if src is.
func Range(src Source, lo, hi int) Source {
	if lo < 0 || hi < lo || hi > src.Rows() {
		panic(errRows)
	}
	if lo == 0 && hi == src.Rows() {
		return src
	}
	return &rangeSource{src: src, lo: lo, hi: hi}
}

type rangeSource struct {
	src    Source
	lo, hi int
	rows   []int
}

func (r *rangeSource) Rows() int     { return r.hi - r.lo }
func (r *rangeSource) ImageDim() int { return r.src.ImageDim() }
func (r *rangeSource) TextDim() int  { return r.src.TextDim() }
func (r *rangeSource) String() string {
	return fmt.Sprintf("%s rows %d..%d", r.src, r.lo, r.hi-1)
}

func (r *rangeSource) Read(img, txt []float32, lo, hi int) error {
	if lo < 0 || hi < lo || hi > r.Rows() {
		panic(errRows)
	}
	return r.src.Read(img, txt, r.lo+lo, r.lo+hi)
}

func (r *rangeSource) ReadRows(img, txt []float32, rows []int) error {
	r.rows = r.rows[:0]
	for _, i := range rows {
		if i < 0 || i >= r.Rows() {
			panic(errRows)
		}
		r.rows = append(r.rows, r.lo+i)
	}
	return ReadRows(r.src, img, txt, r.rows)
}

func (r *rangeSource) locate(row int, image bool) string {
	if l, ok := r.src.(locator); ok {
		return l.locate(r.lo+row, image)
	}
	return fmt.Sprintf("%s: row %d", r.src, r.lo+row)
}

// checkRows returns an ErrData error naming the first of the rows (global
// rows of src, read into img and txt) that holds NaN or ±Inf.
func checkRows(src Source, img, txt []float32, rows []int) error {
	di, dt := src.ImageDim(), src.TextDim()
	for i, r := range rows {
		for _, part := range []struct {
			name string
			row  []float32
		}{
			{"image", img[i*di : (i+1)*di]},
			{"text", txt[i*dt : (i+1)*dt]},
		} {
			for j, v := range part.row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					where := fmt.Sprintf("%s: row %d", src, r)
					if l, ok := src.(locator); ok {
						where = l.locate(r, part.name == "image")
					}
					return fmt.Errorf("%w: %s of the %s embeddings holds %v (column %d); drop or repair the row", ErrData, where, part.name, v, j)
				}
			}
		}
	}
	return nil
}

// Memory is a paired data set held in memory, as a Source: row i is
// Image[i·ImageDim : (i+1)·ImageDim] with Text[i·TextDim : (i+1)·TextDim].
type Memory struct {
	img, txt          []float32
	imageDim, textDim int
}

// NewMemory returns the rows of img (n×imageDim) and txt (n×textDim),
// row-major, as a Source; it keeps the slices, not copies. It panics if
// the lengths do not describe the same number of rows or a width is not
// positive.
func NewMemory(img, txt []float32, imageDim, textDim int) *Memory {
	if imageDim < 1 || textDim < 1 || len(img)%imageDim != 0 || len(txt)%textDim != 0 || len(img)/imageDim != len(txt)/textDim {
		panic(errBufLen)
	}
	return &Memory{img: img, txt: txt, imageDim: imageDim, textDim: textDim}
}

// Rows returns the number of rows.
func (m *Memory) Rows() int { return len(m.img) / m.imageDim }

// ImageDim returns the width of the image embeddings.
func (m *Memory) ImageDim() int { return m.imageDim }

// TextDim returns the width of the text embeddings.
func (m *Memory) TextDim() int { return m.textDim }

func (m *Memory) String() string {
	return fmt.Sprintf("memory(%d rows, image %d, text %d)", m.Rows(), m.imageDim, m.textDim)
}

// Read implements Source; it never fails.
func (m *Memory) Read(img, txt []float32, lo, hi int) error {
	if lo < 0 || hi < lo || hi > m.Rows() {
		panic(errRows)
	}
	if len(img) != (hi-lo)*m.imageDim || len(txt) != (hi-lo)*m.textDim {
		panic(errBufLen)
	}
	copy(img, m.img[lo*m.imageDim:hi*m.imageDim])
	copy(txt, m.txt[lo*m.textDim:hi*m.textDim])
	return nil
}

// ReadRows implements RowReader; it never fails.
func (m *Memory) ReadRows(img, txt []float32, rows []int) error {
	if len(img) != len(rows)*m.imageDim || len(txt) != len(rows)*m.textDim {
		panic(errBufLen)
	}
	for i, r := range rows {
		if r < 0 || r >= m.Rows() {
			panic(errRows)
		}
		copy(img[i*m.imageDim:(i+1)*m.imageDim], m.img[r*m.imageDim:(r+1)*m.imageDim])
		copy(txt[i*m.textDim:(i+1)*m.textDim], m.txt[r*m.textDim:(r+1)*m.textDim])
	}
	return nil
}
