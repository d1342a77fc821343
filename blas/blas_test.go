package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	gblas "gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// impls is every GEMM implementation this build can test: gonum's always,
// and the backend compiled in when it is another one.
func impls() map[string]struct {
	s gblas.Float32
	d gblas.Float64
} {
	m := map[string]struct {
		s gblas.Float32
		d gblas.Float64
	}{"gonum": {gonum.Implementation{}, gonum.Implementation{}}}
	m[Backend()] = struct {
		s gblas.Float32
		d gblas.Float64
	}{impl32, impl64}
	return m
}

// refGemm is the textbook triple loop in float64, the reference for both
// precisions.
func refGemm(tA, tB Transpose, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	at := func(i, l int) float64 {
		if tA == Trans {
			return a[l*lda+i]
		}
		return a[i*lda+l]
	}
	bt := func(l, j int) float64 {
		if tB == Trans {
			return b[j*ldb+l]
		}
		return b[l*ldb+j]
	}
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for l := 0; l < k; l++ {
				s += at(i, l) * bt(l, j)
			}
			c[i*ldc+j] = alpha*s + beta*c[i*ldc+j]
		}
	}
}

func randSlice(rnd *rand.Rand, n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = rnd.Float64()*2 - 1
	}
	return s
}

func to32(s []float64) []float32 {
	t := make([]float32, len(s))
	for i, v := range s {
		t[i] = float32(v)
	}
	return t
}

// gemmSizes are the m, n, k the GEMM tests run: empty, tiny, odd, and
// across blocking edges.
var gemmSizes = [][3]int{{0, 3, 4}, {3, 0, 4}, {3, 4, 0}, {1, 1, 1}, {7, 5, 3}, {17, 33, 9}, {64, 65, 63}, {130, 3, 257}}

// TestGemmConformance runs one suite against every implementation: sizes at
// blocking edges, all transpose pairs, padded leading dimensions, alpha and
// beta, and a check that A and B are not modified.
func TestGemmConformance(t *testing.T) {
	trans := []Transpose{NoTrans, Trans}
	for name, im := range impls() {
		t.Run("impl="+name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			for _, sz := range gemmSizes {
				m, n, k := sz[0], sz[1], sz[2]
				for _, tA := range trans {
					for _, tB := range trans {
						ar, ac := stored(tA, m, k)
						br, bc := stored(tB, k, n)
						lda, ldb, ldc := max(ac, 1)+2, max(bc, 1)+1, max(n, 1)+3
						a := randSlice(rnd, max(ar*lda, 1))
						b := randSlice(rnd, max(br*ldb, 1))
						c := randSlice(rnd, max(m*ldc, 1))
						alpha, beta := 0.75, -0.5
						want := append([]float64(nil), c...)
						refGemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, want, ldc)

						a0, b0 := append([]float64(nil), a...), append([]float64(nil), b...)
						got := append([]float64(nil), c...)
						im.d.Dgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, got, ldc)
						// 1e-13: k ≤ 257 products of values in [-1,1] summed in float64.
						assertClose(t, fmt.Sprintf("Dgemm %v%v %dx%dx%d", tA, tB, m, n, k), got, want, 1e-13)
						assertSame(t, "Dgemm A", a, a0)
						assertSame(t, "Dgemm B", b, b0)

						a32, b32, c32 := to32(a), to32(b), to32(c)
						im.s.Sgemm(tA, tB, m, n, k, float32(alpha), a32, lda, b32, ldb, float32(beta), c32, ldc)
						got32 := make([]float64, len(c32))
						for i, v := range c32 {
							got32[i] = float64(v)
						}
						// 1e-5 relative to max|C|: float32 rounding of inputs and
						// of up to 257 accumulations (eps32 ≈ 6e-8 × 257 ≈ 1.5e-5 worst case, ~1e-6 typical).
						assertClose(t, fmt.Sprintf("Sgemm %v%v %dx%dx%d", tA, tB, m, n, k), got32, want, 2e-5)
					}
				}
			}
		})
	}
}

func assertClose(t *testing.T, what string, got, want []float64, rel float64) {
	t.Helper()
	var scale float64
	for _, v := range want {
		scale = math.Max(scale, math.Abs(v))
	}
	scale = math.Max(scale, 1)
	for i := range want {
		if d := math.Abs(got[i] - want[i]); !(d <= rel*scale) {
			t.Fatalf("%s: element %d = %v, want %v (|diff| %g > %g)", what, i, got[i], want[i], d, rel*scale)
		}
	}
}

func assertSame(t *testing.T, what string, got, want []float64) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s modified at %d", what, i)
		}
	}
}

// TestGemmGenericDispatch checks that Gemm picks the right precision and
// does not allocate.
func TestGemmGenericDispatch(t *testing.T) {
	a32 := []float32{1, 2, 3, 4}
	b32 := []float32{5, 6, 7, 8}
	c32 := make([]float32, 4)
	Gemm(NoTrans, NoTrans, 2, 2, 2, 1, a32, 2, b32, 2, 0, c32, 2)
	want := []float32{19, 22, 43, 50}
	for i := range want {
		if c32[i] != want[i] {
			t.Fatalf("Gemm[float32] = %v, want %v", c32, want)
		}
	}
	a64 := []float64{1, 2, 3, 4}
	b64 := []float64{5, 6, 7, 8}
	c64 := make([]float64, 4)
	Gemm(NoTrans, Trans, 2, 2, 2, 2, a64, 2, b64, 2, 0, c64, 2)
	want64 := []float64{34, 46, 78, 106}
	for i := range want64 {
		if c64[i] != want64[i] {
			t.Fatalf("Gemm[float64] = %v, want %v", c64, want64)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Gemm(NoTrans, NoTrans, 2, 2, 2, 1, a32, 2, b32, 2, 0, c32, 2) }); n != 0 {
		t.Errorf("Gemm allocates %v times per call", n)
	}
}

func TestGemmPanics(t *testing.T) {
	defer func() {
		r := recover()
		if s, ok := r.(string); !ok || len(s) < 6 || s[:6] != "blas: " {
			t.Fatalf("short C: recovered %v, want a blas: panic", r)
		}
	}()
	Sgemm(NoTrans, NoTrans, 2, 2, 2, 1, make([]float32, 4), 2, make([]float32, 4), 2, 0, make([]float32, 3), 2)
}

func TestThreads(t *testing.T) {
	if Threads() < 1 {
		t.Fatalf("Threads() = %d", Threads())
	}
	defer func() {
		if recover() == nil {
			t.Fatal("SetThreads(0) did not panic")
		}
	}()
	SetThreads(0)
}

// BenchmarkGemm reports GFLOP/s for the shapes the loss uses.
func BenchmarkGemm(b *testing.B) {
	for _, sz := range [][3]int{{256, 256, 256}, {1024, 2048, 512}} {
		m, n, k := sz[0], sz[1], sz[2]
		b.Run(fmt.Sprintf("impl=%s/dtype=float32/m=%d/n=%d/k=%d", Backend(), m, n, k), func(b *testing.B) {
			a, bb, c := make([]float32, m*k), make([]float32, n*k), make([]float32, m*n)
			for i := range a {
				a[i] = 0.5
			}
			for i := range bb {
				bb[i] = 0.25
			}
			b.ResetTimer()
			for range b.N {
				Sgemm(NoTrans, Trans, m, n, k, 1, a, k, bb, k, 0, c, n)
			}
			b.ReportMetric(GemmFlops(m, n, k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("impl=%s/dtype=float64/m=%d/n=%d/k=%d", Backend(), m, n, k), func(b *testing.B) {
			a, bb, c := make([]float64, m*k), make([]float64, n*k), make([]float64, m*n)
			b.ResetTimer()
			for range b.N {
				Dgemm(NoTrans, Trans, m, n, k, 1, a, k, bb, k, 0, c, n)
			}
			b.ReportMetric(GemmFlops(m, n, k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
