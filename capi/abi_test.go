//go:build cgo

package main

import (
	"errors"
	"strings"
	"testing"
	"unsafe"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
)

// newTestLoss is a float32 ClipLoss handle's object on one rank, made as
// clipmpi_clip_new makes it, without going through C.
func newTestLoss(comm mpi.Comm, dim int) *lossObj {
	return &lossObj{comm: &commObj{c: comm}, dtype: dtypeF32, dim: dim,
		f32: loss.NewClipLoss[float32](comm, dim, loss.ClipOptions{LocalLoss: true, GatherWithGrad: true})}
}

func testArgs(img, txt, gi, gt []float32, rows int) stepArgs {
	return stepArgs{rows: int64(rows), img: unsafe.Pointer(&img[0]), txt: unsafe.Pointer(&txt[0]),
		gImg: unsafe.Pointer(&gi[0]), gTxt: unsafe.Pointer(&gt[0]), backward: true, lg: loss.Logit{Scale: 10}}
}

// TestStepAllocs: a steady-state step through the ABI's Go half (checks,
// agreement, loss) allocates nothing, as the loss itself does not.
func TestStepAllocs(t *testing.T) {
	const b, d = 16, 8
	img, txt, gi, gt := make([]float32, b*d), make([]float32, b*d), make([]float32, b*d), make([]float32, b*d)
	for i := range img {
		img[i], txt[i] = float32(i%7)/7, float32(i%5)/5
	}
	l := newTestLoss(mpi.Self(), d)
	a := testArgs(img, txt, gi, gt, b)
	for range 3 {
		if _, err := run(l, l.f32, dtypeF32, a); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(20, func() {
		if _, err := run(l, l.f32, dtypeF32, a); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per step, want 0", n)
	}
}

// TestRejectOnEveryRank: one rank's invalid argument is every rank's
// CLIPMPI_ERR_INVALID, naming it; an error of the loss keeps its code.
func TestRejectOnEveryRank(t *testing.T) {
	const b, d = 4, 3
	errs := make([]*apiError, 3)
	mpitest.RunGroup(3, func(c mpi.Comm) {
		img, txt, gi, gt := make([]float32, b*d), make([]float32, b*d), make([]float32, b*d), make([]float32, b*d)
		l := newTestLoss(c, d)
		a := testArgs(img, txt, gi, gt, b)
		if c.Rank() == 2 {
			a.gImg = a.img // overlapping buffers
		}
		_, errs[c.Rank()] = run(l, l.f32, dtypeF32, a)
	})
	for r, e := range errs {
		if e == nil || e.code != codeInvalid || !strings.Contains(e.msg, "rank 2 (argument)") {
			t.Errorf("rank %d: %v, want CLIPMPI_ERR_INVALID naming rank 2", r, e)
		}
	}
	if got := lossError(errors.Join(loss.ErrNonFinite)); got.code != codeNonFinite {
		t.Errorf("ErrNonFinite maps to %d", got.code)
	}
}

// TestPrecision: the options' precision names OpenCLIP's; an unknown name,
// and amp_bf16 for a float64 loss, are CLIPMPI_ERR_USAGE with a message
// that says why.
func TestPrecision(t *testing.T) {
	for _, c := range []struct {
		name  string
		dtype int
		want  loss.Precision
		code  int
		msg   string
	}{
		{"fp32", dtypeF32, loss.FP32, codeOK, ""},
		{"fp32", dtypeF64, loss.FP32, codeOK, ""},
		{"amp_bf16", dtypeF32, loss.AMPBF16, codeOK, ""},
		{"bf16", dtypeF32, loss.AMPBF16, codeOK, ""},
		{"amp_bf16", dtypeF64, 0, codeUsage, "CLIPMPI_FLOAT32"},
		{"fp16", dtypeF32, 0, codeUsage, `"fp16"`},
		{"", dtypeF32, 0, codeUsage, "precision"},
	} {
		p, err := parsePrecision(c.name, c.dtype)
		switch {
		case c.code == codeOK && (err != nil || p != c.want):
			t.Errorf("%q, %s: %v, %v; want %v", c.name, dtypeNames[c.dtype], p, err, c.want)
		case c.code != codeOK && (err == nil || err.code != c.code || !strings.Contains(err.msg, c.msg)):
			t.Errorf("%q, %s: %v; want code %d mentioning %s", c.name, dtypeNames[c.dtype], err, c.code, c.msg)
		}
	}
}
