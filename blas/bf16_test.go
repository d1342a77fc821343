package blas

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// refBF16 rounds x to bf16 through float64 distances: the nearer of the
// two bf16 neighbours, ties to the even one.
func refBF16(x float32) BF16 {
	lo := BF16(math.Float32bits(x) >> 16)
	hi := lo + 1
	dl := math.Abs(float64(x) - float64(lo.Float32()))
	dh := math.Abs(float64(hi.Float32()) - float64(x))
	if hi&0x7fff == 0x7f80 { // hi is ±Inf: compare with 2^128, where the exponent range would put it
		dh = math.Abs(math.Ldexp(math.Copysign(1, float64(x)), 128) - float64(x))
	}
	switch {
	case dl < dh, dl == dh && lo&1 == 0:
		return lo
	}
	return hi
}

func TestToBF16(t *testing.T) {
	for _, tc := range []struct {
		in   uint32
		want BF16
	}{
		{0x3f800000, 0x3f80}, // 1: exact
		{0xbf800000, 0xbf80}, // -1
		{0x00000000, 0x0000},
		{0x80000000, 0x8000}, // -0
		{0x3f808000, 0x3f80}, // tie, even below
		{0x3f818000, 0x3f82}, // tie, even above
		{0xbf818000, 0xbf82}, // negative tie
		{0x3f808001, 0x3f81}, // just above the tie
		{0x3f807fff, 0x3f80}, // just below the tie
		{0x00008000, 0x0000}, // subnormal tie to zero
		{0x00018000, 0x0002}, // subnormal tie up
		{0x7f800000, 0x7f80}, // +Inf
		{0xff800000, 0xff80}, // -Inf
		{0x7f7f0000, 0x7f7f}, // largest bf16
		{0x7f7f7fff, 0x7f7f}, // rounds down to it
		{0x7f7f8000, 0x7f80}, // tie above the largest: to even, Inf
		{0x7f7fffff, 0x7f80}, // MaxFloat32 rounds to Inf
		{0xff7fffff, 0xff80}, // and -MaxFloat32 to -Inf
	} {
		if got := ToBF16(math.Float32frombits(tc.in)); got != tc.want {
			t.Errorf("ToBF16(%#08x) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	for _, nan := range []uint32{0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7f80ffff} {
		got := ToBF16(math.Float32frombits(nan))
		if f := got.Float32(); f == f {
			t.Errorf("ToBF16(NaN %#08x) = %#04x, not NaN", nan, got)
		}
		if got>>15 != BF16(nan>>31) {
			t.Errorf("ToBF16(NaN %#08x) = %#04x: sign lost", nan, got)
		}
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		x := math.Float32frombits(rnd.Uint32())
		if x != x {
			continue
		}
		if got, want := ToBF16(x), refBF16(x); got != want {
			t.Fatalf("ToBF16(%#08x) = %#04x, want %#04x", math.Float32bits(x), got, want)
		}
	}
	for h := range 1 << 16 {
		if f := BF16(h).Float32(); f == f && ToBF16(f) != BF16(h) {
			t.Fatalf("ToBF16(BF16(%#04x).Float32()) = %#04x", h, ToBF16(f))
		}
	}
}

func TestRoundBF16(t *testing.T) {
	src := []float32{1, 1.00390625, -3.5, float32(math.Inf(1))}
	dst := make([]BF16, 5)
	dst[4] = 7
	RoundBF16(dst, src)
	for i, want := range []BF16{0x3f80, 0x3f80, 0xc060, 0x7f80, 7} {
		if dst[i] != want {
			t.Fatalf("RoundBF16: dst = %#04x, want %#04x at %d", dst, want, i)
		}
	}
	expectPanic(t, errShortDst, func() { RoundBF16(dst[:3], src) })
}

func expectPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		if r := recover(); r != want {
			t.Errorf("recovered %v, want %q", r, want)
		}
	}()
	f()
}

// bf16Paths is every bf16 GEMM this build can test: the emulated one
// always, and oneDNN's when in use.
func bf16Paths() []string {
	if BF16Path() == pathEmulated {
		return []string{pathEmulated}
	}
	return []string{pathEmulated, BF16Path()}
}

// randBF16 returns n bf16 values rounded from uniform [-1, 1).
func randBF16(rnd *rand.Rand, n int) []BF16 {
	s := make([]BF16, n)
	for i := range s {
		s[i] = ToBF16(float32(rnd.Float64()*2 - 1))
	}
	return s
}

func widen64(s []BF16) []float64 {
	t := make([]float64, len(s))
	for i, v := range s {
		t[i] = float64(v.Float32())
	}
	return t
}

// bf16Bound returns the per-element error bound of an fp32 GEMM of the
// widened operands: (k+2)·2⁻²⁴·(|alpha|·Σ|a||b| + |beta·c|), from the
// absolute-value product computed by refGemm.
func bf16Bound(tA, tB Transpose, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) []float64 {
	abs := func(s []float64) []float64 {
		t := make([]float64, len(s))
		for i, v := range s {
			t[i] = math.Abs(v)
		}
		return t
	}
	bound := abs(c)
	refGemm(tA, tB, m, n, k, math.Abs(alpha), abs(a), lda, abs(b), ldb, math.Abs(beta), bound, ldc)
	for i := range bound {
		bound[i] *= float64(k+2) * 0x1p-24
	}
	return bound
}

// TestGemmBF16 runs one suite against each path: sizes at blocking edges,
// all transpose pairs, padded leading dimensions, alpha and beta (beta 0
// must not read C: it holds NaNs then), k == 0, and a check that A and B
// are not modified.
func TestGemmBF16(t *testing.T) {
	sizes := append(gemmSizes[:len(gemmSizes):len(gemmSizes)], [3]int{33, 129, 511})
	trans := []Transpose{NoTrans, Trans}
	scalars := [][2]float32{{1, 0}, {1, 1}, {0.75, -0.5}, {-2, 0}, {0, 0.5}}
	for _, path := range bf16Paths() {
		t.Run("path="+path, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			for _, sz := range sizes {
				m, n, k := sz[0], sz[1], sz[2]
				for _, tA := range trans {
					for _, tB := range trans {
						for _, ab := range scalars {
							alpha, beta := ab[0], ab[1]
							ar, ac := stored(tA, m, k)
							br, bc := stored(tB, k, n)
							lda, ldb, ldc := max(ac, 1)+2, max(bc, 1)+1, max(n, 1)+3
							a := randBF16(rnd, max(ar*lda, 1))
							b := randBF16(rnd, max(br*ldb, 1))
							c := make([]float32, max(m*ldc, 1))
							for i := range c {
								c[i] = float32(rnd.Float64()*2 - 1)
								if beta == 0 {
									c[i] = float32(math.NaN())
								}
							}
							c64 := make([]float64, len(c))
							for i, v := range c {
								c64[i] = float64(v)
							}
							if beta == 0 {
								clear(c64)
							}
							a64, b64 := widen64(a), widen64(b)
							want := append([]float64(nil), c64...)
							refGemm(tA, tB, m, n, k, float64(alpha), a64, lda, b64, ldb, float64(beta), want, ldc)
							bound := bf16Bound(tA, tB, m, n, k, float64(alpha), a64, lda, b64, ldb, float64(beta), c64, ldc)

							a0, b0 := append([]BF16(nil), a...), append([]BF16(nil), b...)
							gemmBF16(path, tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
							what := fmt.Sprintf("%v%v %dx%dx%d alpha=%v beta=%v", tA, tB, m, n, k, alpha, beta)
							for i := range m {
								for j := range n {
									got, w := float64(c[i*ldc+j]), want[i*ldc+j]
									if d := math.Abs(got - w); !(d <= bound[i*ldc+j]) {
										t.Fatalf("%s: C[%d,%d] = %v, want %v (|diff| %g > %g)", what, i, j, got, w, d, bound[i*ldc+j])
									}
								}
								// The padding of C is left alone.
								for j := n; j < ldc && i*ldc+j < len(c); j++ {
									if got := float64(c[i*ldc+j]); got != c64[i*ldc+j] && !(beta == 0 && got != got) {
										t.Fatalf("%s: padding C[%d,%d] changed to %v", what, i, j, got)
									}
								}
							}
							for i := range a {
								if a[i] != a0[i] {
									t.Fatalf("%s: A modified at %d", what, i)
								}
							}
							for i := range b {
								if b[i] != b0[i] {
									t.Fatalf("%s: B modified at %d", what, i)
								}
							}
						}
					}
				}
			}
		})
	}
}

func TestGemmBF16Panics(t *testing.T) {
	a, b, c := make([]BF16, 6), make([]BF16, 6), make([]float32, 4)
	for _, tc := range []struct {
		want string
		f    func()
	}{
		{errTranspose, func() { GemmBF16('x', NoTrans, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2) }},
		{errMLT0, func() { GemmBF16(NoTrans, NoTrans, -1, 2, 3, 1, a, 3, b, 2, 0, c, 2) }},
		{errNLT0, func() { GemmBF16(NoTrans, NoTrans, 2, -1, 3, 1, a, 3, b, 2, 0, c, 2) }},
		{errKLT0, func() { GemmBF16(NoTrans, NoTrans, 2, 2, -1, 1, a, 3, b, 2, 0, c, 2) }},
		{errLdA, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a, 2, b, 2, 0, c, 2) }},
		{errLdA, func() { GemmBF16(Trans, NoTrans, 2, 2, 3, 1, a, 1, b, 2, 0, c, 2) }},
		{errLdB, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a, 3, b, 1, 0, c, 2) }},
		{errLdB, func() { GemmBF16(NoTrans, Trans, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2) }},
		{errLdC, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a, 3, b, 2, 0, c, 1) }},
		{errShortA, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a[:5], 3, b, 2, 0, c, 2) }},
		{errShortB, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a, 3, b[:5], 2, 0, c, 2) }},
		{errShortC, func() { GemmBF16(NoTrans, NoTrans, 2, 2, 3, 1, a, 3, b, 2, 0, c[:3], 2) }},
	} {
		expectPanic(t, tc.want, tc.f)
	}
	// Empty products need no more storage than Sgemm does.
	GemmBF16(NoTrans, NoTrans, 0, 2, 3, 1, nil, 3, b, 2, 0, nil, 2)
	GemmBF16(NoTrans, NoTrans, 2, 2, 0, 1, a[:1], 1, nil, 2, 0, c, 2)
	for _, v := range c {
		if v != 0 {
			t.Fatalf("k == 0, beta == 0: C = %v, want zeros", c)
		}
	}
}

// setThreads sets the GEMM threads, and GOMAXPROCS where that is what
// Threads reports (the gonum backend), and returns a func restoring both.
func setThreads(n int) (restore func()) {
	old, procs := Threads(), runtime.GOMAXPROCS(0)
	SetThreads(n)
	if Backend() == "gonum" {
		runtime.GOMAXPROCS(n)
	}
	return func() {
		runtime.GOMAXPROCS(procs)
		SetThreads(old)
	}
}

// bf16Shapes are m×n×k of the products the loss runs in bf16 (logits and
// their gradients: m up to 4096, n 256..1024, k 256..4096); short leaves
// out the largest.
func bf16Shapes(short bool) [][3]int {
	s := [][3]int{{1, 256, 512}, {7, 512, 256}, {64, 512, 512}, {1024, 1024, 512}, {1024, 512, 1024}, {333, 256, 4096}}
	if !short {
		s = append(s, [3]int{4096, 512, 512}, [3]int{4096, 1024, 512}, [3]int{512, 512, 4096}, [3]int{4096, 256, 4096})
	}
	return s
}

// TestGemmBF16Paths checks that oneDNN's product and the emulated one agree
// to fp32 rounding, and that oneDNN's bits do not depend on the thread
// count (it does not split K across threads on these shapes).
func TestGemmBF16Paths(t *testing.T) {
	if BF16Path() == pathEmulated {
		t.Skip("only the emulated bf16 GEMM in this build or on this CPU")
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	for _, sz := range bf16Shapes(testing.Short() || raceEnabled) {
		m, n, k := sz[0], sz[1], sz[2]
		for _, tr := range [][2]Transpose{{NoTrans, Trans}, {NoTrans, NoTrans}, {Trans, NoTrans}, {Trans, Trans}} {
			tA, tB := tr[0], tr[1]
			lda, ldb := k, n
			if tA == Trans {
				lda = m
			}
			if tB == Trans {
				ldb = k
			}
			a, b := randBF16(rnd, m*k), randBF16(rnd, k*n)
			c0 := make([]float32, m*n)
			for i := range c0 {
				c0[i] = float32(rnd.Float64())
			}
			what := fmt.Sprintf("%v%v %dx%dx%d", tA, tB, m, n, k)
			run := func(path string, threads int) []float32 {
				defer setThreads(threads)()
				c := append([]float32(nil), c0...)
				gemmBF16(path, tA, tB, m, n, k, 0.5, a, lda, b, ldb, 1, c, n)
				return c
			}
			emu, one, two := run(pathEmulated, 1), run(BF16Path(), 1), run(BF16Path(), 2)
			for i := range one {
				if math.Float32bits(one[i]) != math.Float32bits(two[i]) {
					t.Fatalf("%s (%s): element %d is %v with 1 thread, %v with 2", what, dnnlImpl(tA, tB, m, n, k, lda, ldb, n, 0.5, 1), i, one[i], two[i])
				}
			}
			// Both are within (k+2)·2⁻²⁴·Σ|terms| of the exact value:
			// |a|,|b| ≤ 1 and 0 ≤ c < 1 make Σ|terms| ≤ k/2 + 1.
			tol := 2 * float64(k+2) * 0x1p-24 * (float64(k)/2 + 1)
			for i := range one {
				if d := math.Abs(float64(one[i]) - float64(emu[i])); d > tol {
					t.Fatalf("%s: element %d is %v on %s, %v emulated (|diff| %g > %g)", what, i, one[i], BF16Path(), emu[i], d, tol)
				}
			}
		}
	}
}

// TestGemmBF16Concurrent runs products of several shapes from several
// goroutines at once and checks each against its serial result.
func TestGemmBF16Concurrent(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	shapes := [][3]int{{64, 256, 512}, {128, 512, 256}, {31, 256, 300}, {200, 256, 64}}
	type job struct {
		m, n, k int
		a, b    []BF16
		want    []float32
	}
	for _, path := range bf16Paths() {
		t.Run("path="+path, func(t *testing.T) {
			var jobs []job
			for _, sz := range shapes {
				j := job{m: sz[0], n: sz[1], k: sz[2], a: randBF16(rnd, sz[0]*sz[2]), b: randBF16(rnd, sz[2]*sz[1])}
				j.want = make([]float32, j.m*j.n)
				gemmBF16(path, NoTrans, Trans, j.m, j.n, j.k, 1, j.a, j.k, j.b, j.k, 0, j.want, j.n)
				jobs = append(jobs, j)
			}
			var wg sync.WaitGroup
			errs := make(chan string, 8*len(jobs))
			for g := range 8 {
				wg.Go(func() {
					j := jobs[g%len(jobs)]
					c := make([]float32, j.m*j.n)
					for range 5 {
						gemmBF16(path, NoTrans, Trans, j.m, j.n, j.k, 1, j.a, j.k, j.b, j.k, 0, c, j.n)
						for i := range c {
							if math.Float32bits(c[i]) != math.Float32bits(j.want[i]) {
								errs <- fmt.Sprintf("goroutine %d, %dx%dx%d: element %d is %v, serially %v", g, j.m, j.n, j.k, i, c[i], j.want[i])
								return
							}
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
		})
	}
}

func TestGemmBF16Allocs(t *testing.T) {
	const m, n, k = 64, 256, 512
	rnd := rand.New(rand.NewPCG(9, 10))
	a, b, c := randBF16(rnd, m*k), randBF16(rnd, n*k), make([]float32, m*n)
	// gonum's Sgemm allocates for its goroutines on products this size;
	// the emulated path may add nothing to that.
	a32, b32 := make([]float32, len(a)), make([]float32, len(b))
	sgemm := testing.AllocsPerRun(50, func() { Sgemm(NoTrans, Trans, m, n, k, 1, a32, k, b32, k, 0, c, n) })
	for _, path := range bf16Paths() {
		f := func() { gemmBF16(path, NoTrans, Trans, m, n, k, 1, a, k, b, k, 0, c, n) }
		f()
		want := 0.0
		if path == pathEmulated {
			want = sgemm
		}
		if got := testing.AllocsPerRun(50, f); got != want {
			t.Errorf("%s: GemmBF16 allocates %v times per call, want %v (Sgemm's)", path, got, want)
		}
	}
}

// TestBF16PathEnv re-runs the test binary with CLIPMPI_BF16=emulated and
// checks that BF16Path says so there.
func TestBF16PathEnv(t *testing.T) {
	if os.Getenv("CLIPMPI_BF16_HELPER") == "1" {
		fmt.Printf("path=%s\n", BF16Path())
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestBF16PathEnv$")
	cmd.Env = append(os.Environ(), "CLIPMPI_BF16_HELPER=1", "CLIPMPI_BF16=emulated")
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.ENOEXEC) {
		t.Skipf("cannot re-run the test binary here (%v): an emulator such as qemu-user runs it", err)
	}
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "path=emulated\n") {
		t.Fatalf("CLIPMPI_BF16=emulated: helper printed %q", out)
	}
	t.Logf("BF16Path() = %q here", BF16Path())
}

// BenchmarkGemmBF16 reports GFLOP/s of the bf16 GEMM on each path beside
// Sgemm, for the loss's shapes (logits: A·Bᵀ; their gradient: A·B).
func BenchmarkGemmBF16(b *testing.B) {
	for _, sz := range []struct {
		m, n, k int
		tB      Transpose
	}{{1024, 1024, 512, Trans}, {1024, 512, 1024, NoTrans}} {
		m, n, k, tB := sz.m, sz.n, sz.k, sz.tB
		ldb := n
		if tB == Trans {
			ldb = k
		}
		name := fmt.Sprintf("m=%d/n=%d/k=%d/tB=%c", m, n, k, tB)
		rnd := rand.New(rand.NewPCG(11, 12))
		a, bb, c := randBF16(rnd, m*k), randBF16(rnd, k*n), make([]float32, m*n)
		report := func(b *testing.B) {
			b.ReportMetric(GemmFlops(m, n, k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		}
		b.Run(fmt.Sprintf("impl=%s/dtype=float32/%s", Backend(), name), func(b *testing.B) {
			a32, b32 := make([]float32, len(a)), make([]float32, len(bb))
			for i := range a {
				a32[i] = a[i].Float32()
			}
			for i := range bb {
				b32[i] = bb[i].Float32()
			}
			for b.Loop() {
				Sgemm(NoTrans, tB, m, n, k, 1, a32, k, b32, ldb, 0, c, n)
			}
			report(b)
		})
		for _, path := range bf16Paths() {
			b.Run(fmt.Sprintf("impl=%s/dtype=bf16/%s", path, name), func(b *testing.B) {
				for b.Loop() {
					gemmBF16(path, NoTrans, tB, m, n, k, 1, a, k, bb, ldb, 0, c, n)
				}
				report(b)
			})
		}
	}
}

// BenchmarkGemmBF16Small measures the per-call cost of the bf16 GEMM on
// tiny products, where the call's overhead dominates.
func BenchmarkGemmBF16Small(b *testing.B) {
	for _, sz := range [][3]int{{1, 1, 1}, {8, 16, 16}, {32, 64, 64}} {
		m, n, k := sz[0], sz[1], sz[2]
		rnd := rand.New(rand.NewPCG(13, 14))
		a, bb, c := randBF16(rnd, m*k), randBF16(rnd, k*n), make([]float32, m*n)
		for _, path := range bf16Paths() {
			b.Run(fmt.Sprintf("impl=%s/m=%d/n=%d/k=%d", path, m, n, k), func(b *testing.B) {
				for b.Loop() {
					gemmBF16(path, NoTrans, Trans, m, n, k, 1, a, k, bb, k, 0, c, n)
				}
			})
		}
		b.Run(fmt.Sprintf("impl=%s/dtype=float32/m=%d/n=%d/k=%d", Backend(), m, n, k), func(b *testing.B) {
			a32, b32 := make([]float32, len(a)), make([]float32, len(bb))
			for b.Loop() {
				Sgemm(NoTrans, Trans, m, n, k, 1, a32, k, b32, k, 0, c, n)
			}
		})
	}
}
