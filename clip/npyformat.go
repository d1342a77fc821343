package clip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The .npy format (NEP 1, numpy.lib.format): the magic string "\x93NUMPY",
// a major and a minor version byte, the header length HLEN (uint16
// little-endian in version 1.0; uint32 in versions 2.0 and 3.0), then HLEN
// bytes of header: a Python dict literal with exactly the keys 'descr' (the
// dtype, such as '<f4'), 'fortran_order' (True or False) and 'shape' (a
// tuple of ints), padded with spaces and ended by a newline, so that the
// data start at a multiple of 64 bytes (16 in old numpy versions). The
// header is ASCII in versions 1.0 and 2.0 and UTF-8 in version 3.0 (which
// numpy writes only for structured dtypes with non-ASCII field names). The
// data follow: the elements in C order (row-major), or in Fortran order
// (column-major) when fortran_order is True, in the byte order of descr.
//
// This file reads and writes that layout itself: it depends on nothing
// beyond the documented format, reads only the bytes it needs, and never
// allocates more than the file holds.

const (
	npyMagic = "\x93NUMPY"
	// npyMaxHeader bounds HLEN: numpy writes headers of about a hundred
	// bytes, and its reader refuses more than 10000 by default.
	npyMaxHeader = 1 << 16
	// npyMaxDepth bounds the nesting of the header's literal.
	npyMaxDepth = 8
)

// npyHeader is a checked .npy header.
type npyHeader struct {
	Major, Minor int
	// Descr is the dtype as written ('<f4'); Fortran and Shape the other
	// two keys.
	Descr   string
	Fortran bool
	Shape   []int
	// Data is the byte offset of the first element.
	Data int64
}

// readNpyHeader reads and parses the header of a .npy file of size bytes
// read through r. It checks the magic string, the version (1.0, 2.0 or
// 3.0), that the header fits in the file (and in npyMaxHeader bytes) and
// that it is a dict literal with exactly the keys 'descr' (a string),
// 'fortran_order' (a bool) and 'shape' (a tuple of non-negative ints);
// it does not check the dtype or that the data fit. It allocates at most
// min(HLEN, size) bytes.
func readNpyHeader(r io.ReaderAt, size int64) (npyHeader, error) {
	var h npyHeader
	var pre [12]byte
	n, err := r.ReadAt(pre[:], 0)
	if n < 10 {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("%d bytes, too short for a .npy file", n)
		}
		return h, err
	}
	if string(pre[:6]) != npyMagic {
		return h, fmt.Errorf("no .npy magic string (the file starts %q)", pre[:min(n, 6)])
	}
	h.Major, h.Minor = int(pre[6]), int(pre[7])
	var hlen, start int64
	switch {
	case h.Major == 1 && h.Minor == 0:
		hlen, start = int64(binary.LittleEndian.Uint16(pre[8:])), 10
	case (h.Major == 2 || h.Major == 3) && h.Minor == 0:
		if n < 12 {
			return h, fmt.Errorf("%d bytes, too short for a version %d.0 .npy file", n, h.Major)
		}
		hlen, start = int64(binary.LittleEndian.Uint32(pre[8:])), 12
	default:
		return h, fmt.Errorf("format version %d.%d: this reader knows 1.0, 2.0 and 3.0", h.Major, h.Minor)
	}
	if hlen > npyMaxHeader {
		return h, fmt.Errorf("header length %d: more than %d bytes is not a header numpy writes", hlen, npyMaxHeader)
	}
	if start+hlen > size {
		return h, fmt.Errorf("header length %d, but the file has %d bytes", hlen, size)
	}
	buf := make([]byte, hlen)
	if _, err := r.ReadAt(buf, start); err != nil {
		return h, fmt.Errorf("reading the header: %w", err)
	}
	if h.Major < 3 {
		for i, c := range buf {
			if c >= 0x80 {
				return h, fmt.Errorf("version %d.0 header: byte %d is not ASCII (%#02x); only version 3.0 headers are UTF-8", h.Major, i, c)
			}
		}
	} else if !utf8.Valid(buf) {
		return h, errors.New("version 3.0 header: not valid UTF-8")
	}
	h.Descr, h.Fortran, h.Shape, err = parseNpyDict(string(buf))
	if err != nil {
		return h, fmt.Errorf("header %q: %w", strings.TrimRight(string(buf), " \n"), err)
	}
	h.Data = start + hlen
	return h, nil
}

// parseNpyDict parses a .npy header: a Python dict literal with exactly
// the keys 'descr' (a string), 'fortran_order' (True or False) and 'shape'
// (a tuple of non-negative ints), in any order, with any whitespace, either
// quote, trailing commas, and ints with Python 2's L suffix; after the
// closing brace only whitespace may follow (the padding and the newline).
func parseNpyDict(s string) (descr string, fortran bool, shape []int, err error) {
	p := &pyParser{s: s}
	v, err := p.value(0)
	if err != nil {
		return "", false, nil, err
	}
	p.space()
	if p.i < len(p.s) {
		return "", false, nil, fmt.Errorf("unexpected %q after the dict", p.s[p.i:min(p.i+10, len(p.s))])
	}
	if v.kind != pyDict {
		return "", false, nil, errors.New("not a dict")
	}
	seen := map[string]bool{}
	for i, k := range v.keys {
		val := v.items[i]
		switch k {
		case "descr":
			if val.kind != pyString {
				return "", false, nil, errors.New("'descr' is not a string: structured dtypes are not supported")
			}
			descr = val.s
		case "fortran_order":
			if val.kind != pyBool {
				return "", false, nil, errors.New("'fortran_order' is not True or False")
			}
			fortran = val.b
		case "shape":
			if val.kind != pyTuple {
				return "", false, nil, errors.New("'shape' is not a tuple")
			}
			shape = make([]int, len(val.items))
			for j, d := range val.items {
				if d.kind != pyInt || d.n < 0 {
					return "", false, nil, errors.New("'shape' holds something other than non-negative ints")
				}
				shape[j] = int(d.n)
			}
		default:
			return "", false, nil, fmt.Errorf("unexpected key %q (want exactly 'descr', 'fortran_order' and 'shape')", k)
		}
		if seen[k] {
			return "", false, nil, fmt.Errorf("key %q appears twice", k)
		}
		seen[k] = true
	}
	for _, k := range []string{"descr", "fortran_order", "shape"} {
		if !seen[k] {
			return "", false, nil, fmt.Errorf("no key %q", k)
		}
	}
	return descr, fortran, shape, nil
}

type pyKind int

const (
	pyString pyKind = iota
	pyBool
	pyNone
	pyInt
	pyTuple
	pyList
	pyDict
)

// pyValue is a Python literal: a string, True/False/None, an int, a tuple
// or list (items), or a dict (keys, which must be strings, and items).
type pyValue struct {
	kind  pyKind
	s     string
	b     bool
	n     int64
	keys  []string
	items []pyValue
}

// pyParser parses the small subset of Python literals that .npy headers
// use.
type pyParser struct {
	s string
	i int
}

func (p *pyParser) space() {
	for p.i < len(p.s) && strings.IndexByte(" \t\n\r\f\v", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *pyParser) errorf(format string, a ...any) error {
	return fmt.Errorf("at byte %d: %s", p.i, fmt.Sprintf(format, a...))
}

func (p *pyParser) value(depth int) (pyValue, error) {
	if depth > npyMaxDepth {
		return pyValue{}, p.errorf("nested more than %d deep", npyMaxDepth)
	}
	p.space()
	if p.i >= len(p.s) {
		return pyValue{}, p.errorf("unexpected end")
	}
	switch c := p.s[p.i]; {
	case c == '\'' || c == '"':
		s, err := p.str()
		return pyValue{kind: pyString, s: s}, err
	case c == '(' || c == '[':
		closer, kind := byte(')'), pyTuple
		if c == '[' {
			closer, kind = ']', pyList
		}
		p.i++
		v := pyValue{kind: kind}
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == closer {
				p.i++
				return v, nil
			}
			item, err := p.value(depth + 1)
			if err != nil {
				return v, err
			}
			v.items = append(v.items, item)
			if err := p.sep(closer); err != nil {
				return v, err
			}
		}
	case c == '{':
		p.i++
		v := pyValue{kind: pyDict}
		for {
			p.space()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return v, nil
			}
			k, err := p.value(depth + 1)
			if err != nil {
				return v, err
			}
			if k.kind != pyString {
				return v, p.errorf("a dict key that is not a string")
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return v, p.errorf("want ':' after key %q", k.s)
			}
			p.i++
			item, err := p.value(depth + 1)
			if err != nil {
				return v, err
			}
			v.keys = append(v.keys, k.s)
			v.items = append(v.items, item)
			if err := p.sep('}'); err != nil {
				return v, err
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		j := p.i + 1
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		n, err := strconv.ParseInt(p.s[p.i:j], 10, 64)
		if err != nil {
			return pyValue{}, p.errorf("bad int %q", p.s[p.i:j])
		}
		p.i = j
		if p.i < len(p.s) && (p.s[p.i] == 'L' || p.s[p.i] == 'l') {
			p.i++ // Python 2's long suffix, in headers written by old numpy
		}
		return pyValue{kind: pyInt, n: n}, nil
	default:
		for _, w := range []struct {
			word string
			v    pyValue
		}{{"True", pyValue{kind: pyBool, b: true}}, {"False", pyValue{kind: pyBool}}, {"None", pyValue{kind: pyNone}}} {
			if strings.HasPrefix(p.s[p.i:], w.word) {
				p.i += len(w.word)
				return w.v, nil
			}
		}
		return pyValue{}, p.errorf("unexpected %q", p.s[p.i:min(p.i+10, len(p.s))])
	}
}

// sep consumes a ',' or stops before closer.
func (p *pyParser) sep(closer byte) error {
	p.space()
	if p.i < len(p.s) && p.s[p.i] == ',' {
		p.i++
		return nil
	}
	if p.i < len(p.s) && p.s[p.i] == closer {
		return nil
	}
	return p.errorf("want ',' or %q", closer)
}

// str parses a quoted string with backslash escapes of the quote and the
// backslash (dtype strings need no others).
func (p *pyParser) str() (string, error) {
	q := p.s[p.i]
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == q:
			p.i++
			return b.String(), nil
		case c == '\\' && p.i+1 < len(p.s):
			b.WriteByte(p.s[p.i+1])
			p.i += 2
		case c == '\n':
			return "", p.errorf("newline in a string")
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return "", p.errorf("unterminated string")
}

// npyDType is an element type the reader decodes: float32 or float16, in
// either byte order.
type npyDType struct {
	size int  // bytes per element: 4 (binary32) or 2 (binary16)
	big  bool // big-endian ('>')
}

// parseNpyDType returns the element type of a descr: '<f4', '>f4', '<f2'
// or '>f2'. Native order ('=') and no order ('|') are errors: in a file
// they do not say which order the bytes are in.
func parseNpyDType(descr string) (npyDType, error) {
	if len(descr) == 3 && (descr[0] == '<' || descr[0] == '>') {
		switch descr[1:] {
		case "f4":
			return npyDType{size: 4, big: descr[0] == '>'}, nil
		case "f2":
			return npyDType{size: 2, big: descr[0] == '>'}, nil
		}
	}
	return npyDType{}, fmt.Errorf("dtype %s is not supported: want float32 or float16, little- or big-endian ('<f4', '>f4', '<f2', '>f2'; numpy: a.astype(np.float32))", descr)
}

// decode converts len(dst) elements from src (len(dst)·size bytes).
func (t npyDType) decode(dst []float32, src []byte) {
	var bo binary.ByteOrder = binary.LittleEndian
	if t.big {
		bo = binary.BigEndian
	}
	if t.size == 4 {
		for i := range dst {
			dst[i] = math.Float32frombits(bo.Uint32(src[4*i:]))
		}
		return
	}
	for i := range dst {
		dst[i] = halfToFloat32(bo.Uint16(src[2*i:]))
	}
}

// npyHeaderBytes returns the preamble and header of a version 1.0 .npy
// file holding a C-order array of the given descr and shape, padded with
// spaces and a newline to 64 bytes as numpy pads.
func npyHeaderBytes(descr string, shape ...int) []byte {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = strconv.Itoa(d)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	// magic (6) + version (2) + length (2) + dict + padding + '\n' is a
	// multiple of 64.
	pad := 63 - (10+len(dict))%64
	hdr := dict + strings.Repeat(" ", pad) + "\n"
	b := make([]byte, 0, 10+len(hdr))
	b = append(b, npyMagic...)
	b = append(b, 1, 0, byte(len(hdr)), byte(len(hdr)>>8))
	return append(b, hdr...)
}
