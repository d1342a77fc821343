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
