package loss

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/mpi"
)

// MeasureRates measures the cost model's Rates for element type T on every
// rank of comm at once, so that the ranks share the node's cores and memory
// as they do in a step, with the shapes of a step of b rows of dimension d
// (b is capped at 2048 and the tiles at 1024 columns to bound the time it
// takes: about 0.3 s at b = 1024, d = 512, plus the link). The GEMM rate is
// that of the GEMMs of a b×tile logit tile at this process's BLAS threads,
// alone or in a tile's forward and backward cycle with the kernels between
// them, whichever is slower; the kernels are the ones the losses call, on a b×tile tile, on
// threads threads (0: blas.Threads(), as the losses' Threads option); the
// link is a ring shift of a b×d block, the message the algorithms send
// (at least 16 Ki elements, at most 4 Mi), its latency that of a
// one-element shift. Each item is the best of
// several runs on each rank, and the ranks agree on the slowest rank's
// value, so every rank returns the same Rates. With one rank LinkGbits and
// LatencyUs are 0. It is collective; it panics if b or d is less than 1 or
// threads is negative; a failed collective goes to mpi.Fail.
func MeasureRates[T blas.Float](comm mpi.Comm, b, d, threads int) (Rates, error) {
	if b < 1 || d < 1 {
		panic("loss: MeasureRates needs b, d ≥ 1")
	}
	r, err := measureRates[T](comm, b, d, resolveThreads(threads))
	if err != nil {
		return Rates{}, mpi.Fail(comm, err)
	}
	return r, nil
}

func measureRates[T blas.Float](comm mpi.Comm, b, d, threads int) (Rates, error) {
	m := newMeter[T](comm, b, d)
	p := newPool(threads)
	defer p.close()
	m.k.pool = p
	if err := m.compute(); err != nil {
		return Rates{}, err
	}
	if err := m.link(); err != nil {
		return Rates{}, err
	}
	// The slowest rank's times: one all-reduce of the maxima.
	if err := comm.AllreduceF64(mpi.Max, m.times, m.times); err != nil {
		return Rates{}, fmt.Errorf("loss: agreeing on the measured rates: %w", err)
	}
	return m.rates(), nil
}

// MeasureComputeRates is MeasureRates for this process alone, without the
// link (LinkGbits and LatencyUs are 0): what bin/bench -model uses.
func MeasureComputeRates[T blas.Float](b, d, threads int) Rates {
	if b < 1 || d < 1 {
		panic("loss: MeasureComputeRates needs b, d ≥ 1")
	}
	m := newMeter[T](mpi.Self(), b, d)
	p := newPool(resolveThreads(threads))
	defer p.close()
	m.k.pool = p
	if err := m.compute(); err != nil {
		panic("loss: internal error: " + err.Error()) // Self never fails
	}
	return m.rates()
}

// Indices of meter.times.
const (
	mGemm = iota
	mStats
	mGrad
	mNaiveStats
	mNaiveGrad
	mSigmoid
	mCopy
	mTranspose
	mCycle
	mNarrow
	mKept
	mBF16
	mLink
	mLatency
	mCount
)

type meter[T blas.Float] struct {
	comm mpi.Comm
	b0   int // the step's rows per rank
	b, t, d,
	nb int // rows of the naive kernels' tile
	tn    int // side of the transposed matrix
	msg   int // elements of the link message
	k     kernels[T]
	times []float64
	flops float64
	err   error // the first failure of a collective
}

func newMeter[T blas.Float](comm mpi.Comm, b, d int) *meter[T] {
	t := min(b, 2048, defaultTile)
	tn := min(max(comm.Size()*b, 512), 2048)
	return &meter[T]{comm: comm, b0: b, b: min(b, 2048), t: t, d: d, nb: min(b, 256), tn: tn,
		msg: min(max(b*d, 1<<14), 1<<22), times: make([]float64, mCount)}
}

// time stores in times[at] the shortest of reps timed runs of f, after one
// untimed run, each started together on every rank. After a failure it
// does nothing: err keeps the first.
func (m *meter[T]) time(at, reps int, f func()) {
	if m.err != nil {
		return
	}
	f()
	t := math.Inf(1)
	for i := 0; i < reps && m.err == nil; i++ {
		if err := m.comm.Barrier(); err != nil {
			m.err = fmt.Errorf("loss: measuring rates: %w", err)
			return
		}
		t0 := time.Now()
		f()
		t = min(t, time.Since(t0).Seconds())
	}
	m.times[at] = t
}

// compute times the GEMMs and the kernels.
func (m *meter[T]) compute() error {
	b, t, d := m.b, m.t, m.d
	img, tq, x := make([]T, b*d), make([]T, max(t, b)*d), make([]T, b*t)
	for i := range img {
		img[i] = T(math.Sin(float64(i)) / math.Sqrt(float64(d)))
	}
	for i := range tq {
		tq[i] = T(math.Cos(float64(i)) / math.Sqrt(float64(d)))
	}
	acc, dimg := make([]T, t*d), make([]T, b*d)
	m.flops = 2 * 3 * float64(b) * float64(t) * float64(d)
	// The three GEMMs of a tile of t columns in x (leading dimension ld).
	triple := func(x []T, t, ld int) func() {
		return func() {
			blas.Gemm(blas.NoTrans, blas.Trans, b, t, d, 1, img, d, tq, d, 0, x, ld)
			blas.Gemm(blas.Trans, blas.NoTrans, t, d, b, 1, x, ld, img, d, 0, acc, d)
			blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, t, 1, x, ld, tq, d, 0, dimg, d)
		}
	}
	m.time(mGemm, 7, triple(x, t, t))
	// The ring methods' narrower tiles, on their own and in a kept b×N
	// block (Fused), N as in the step but the block at most 64 MiB.
	tn := min(b, ringTile(b))
	m.time(mNarrow, 7, triple(x, tn, tn))
	ld := min(m.comm.Size()*m.b0, max(t, (64<<20)/(elemSize[T]()*b)))
	m.time(mKept, 7, triple(make([]T, b*ld), tn, ld))
	// AMPBF16's wide tiles (blas.GemmBF16).
	h := make([]blas.BF16, len(img)+len(tq)+len(x))
	for i, v := range slices.Concat(img, tq, x) {
		h[i] = blas.ToBF16(float32(v))
	}
	ih, th, xh, c := h[:b*d], h[b*d:b*d+len(tq)], h[b*d+len(tq):], make([]float32, max(b, t)*max(t, d))
	m.time(mBF16, 7, func() {
		blas.GemmBF16(blas.NoTrans, blas.Trans, b, t, d, 1, ih, d, th, d, 0, c, t)
		blas.GemmBF16(blas.Trans, blas.NoTrans, t, d, b, 1, xh, t, ih, d, 0, c, d)
		blas.GemmBF16(blas.NoTrans, blas.NoTrans, b, d, t, 1, xh, t, th, d, 0, c, d)
	})
	m.kernels(img, tq, x, acc, dimg)
	return m.err
}

// kernels times the kernels on a b×t tile x, and a tile's cycle of GEMMs
// and kernels.
func (m *meter[T]) kernels(img, tq, x, acc, dimg []T) {
	b, t, d, nb := m.b, m.t, m.d, m.nb
	logits := func() { // of a realistic spread: cosines in [-0.3, 0.3] at scale 1/0.07
		for i := range x {
			x[i] = T(0.3 * math.Sin(0.37*float64(i)))
		}
	}
	logits()
	const scale, c = 1 / 0.07, 1e-6
	k := &m.k
	rowM, rowS := make([]float64, b), make([]float64, b)
	colM, colS := make([]float64, t), make([]float64, t)
	colX, colB := make([]float64, t), make([]float64, t)
	cm, cs := make([]float64, b), make([]float64, b)
	di := make([]T, b*t)
	statsOf := func(x []T) {
		fill(cm, math.Inf(-1))
		fill(cs, 0)
		stats(k, x, t, b, t, scale, 0, cm, cs, colM, colS)
	}
	m.time(mStats, 3, func() { statsOf(x) })
	for i := range cs {
		rowM[i], rowS[i] = cm[i], math.Log(cs[i])
	}
	for j := range colS {
		colS[j] = math.Log(colS[j])
	}
	m.time(mGrad, 3, func() { grad(k, di, nil, x, t, b, t, 0, 0, scale, 0, c, c, rowM, rowS, colM, colS, colX, colB) })
	m.time(mSigmoid, 3, func() { sigTile(k, di, x, t, b, t, 0, 10, -10, c, true) })
	// A tile's forward and backward as the losses run them, GEMMs and
	// kernels in turn: they share the caches and, with several threads,
	// the cores, which OpenBLAS's threads keep spinning on for a while
	// after each GEMM. What the cycle takes beyond the kernels' own times
	// gives the GEMM rate (rates), so that it carries the interference.
	m.time(mCycle, 5, func() {
		blas.Gemm(blas.NoTrans, blas.Trans, b, t, d, 1, img, d, tq, d, 0, x, t)
		statsOf(x)
		blas.Gemm(blas.NoTrans, blas.Trans, b, t, d, 1, img, d, tq, d, 0, x, t)
		grad(k, x, nil, x, t, b, t, 0, 0, scale, 0, c, c, rowM, rowS, colM, colS, colX, colB)
		blas.Gemm(blas.Trans, blas.NoTrans, t, d, b, 1, x, t, img, d, 0, acc, d)
		blas.Gemm(blas.NoTrans, blas.NoTrans, b, d, t, 1, x, t, tq, d, 0, dimg, d)
	})
	logits() // the cycle left gradients in x
	m.time(mNaiveStats, 2, func() { rowStats(k, x, t, nb, t, scale, 0, rowM, rowS) })
	m.time(mNaiveGrad, 2, func() {
		copy(di[:nb*t], x[:nb*t]) // rowGrad overwrites its input
		rowGrad(k, di, t, nb, t, 0, scale, 0, c, rowM, rowS)
	})
	m.time(mCopy, 3, func() { copy(di, x) })
	// Naive's transposes are of N×N: their cost per element grows with
	// the matrix until it leaves the caches (1.8 ns at 512, 6 ns at 2048
	// on the machine of the README), so the matrix is N×N up to 2048.
	tn := m.tn
	ty, tx := make([]T, tn*tn), make([]T, tn*tn)
	copy(tx, x)
	m.time(mTranspose, 2, func() { transpose(k, ty, tx, tn, false) })
}

// link times a ring shift of msg elements and of one element.
func (m *meter[T]) link() error {
	w, r := m.comm.Size(), m.comm.Rank()
	if w == 1 {
		return nil
	}
	src, dst := make([]T, m.msg), make([]T, m.msg)
	shift := func(n int) func() {
		return func() {
			q, err := mpi.Isendrecv(m.comm, dst[:n], (r+w-1)%w, src[:n], (r+1)%w)
			if err == nil {
				err = q.Wait()
			}
			if err != nil && m.err == nil {
				m.err = fmt.Errorf("loss: measuring the link: %w", err)
			}
		}
	}
	m.time(mLatency, 5, shift(1))
	m.time(mLink, 5, shift(m.msg))
	return m.err
}

// narrowFlops is the flops of a narrow tile's three GEMMs.
func (m *meter[T]) narrowFlops() float64 {
	return 2 * 3 * float64(m.b) * float64(min(m.b, ringTile(m.b))) * float64(m.d)
}

// rates turns the times into Rates.
func (m *meter[T]) rates() Rates {
	size := float64(elemSize[T]())
	tile := float64(m.b) * float64(m.t)
	ns := func(i int, n float64) float64 { return m.times[i] / n * 1e9 }
	// The GEMM rate: the GEMMs alone, or less if a tile's cycle leaves
	// them less time than that (see compute).
	gemm := m.flops / m.times[mGemm] / 1e9
	alone := gemm
	if rest := m.times[mCycle] - m.times[mStats] - m.times[mGrad]; rest > 0 {
		gemm = min(gemm, 4.0/3*m.flops/rest/1e9)
	}
	r := Rates{
		GemmGflops: gemm,
		// The narrow and kept GEMMs with the same interference.
		NarrowGflops: m.narrowFlops() / m.times[mNarrow] / 1e9 * gemm / alone,
		KeptGflops:   m.narrowFlops() / m.times[mKept] / 1e9 * gemm / alone,
		BF16Gflops:   m.flops / m.times[mBF16] / 1e9 * gemm / alone,
		StatsNs:      ns(mStats, tile),
		GradNs:       ns(mGrad, tile),
		SigmoidNs:    ns(mSigmoid, tile),
		NaiveStatsNs: ns(mNaiveStats, float64(m.nb)*float64(m.t)),
		NaiveGradNs:  max(0, ns(mNaiveGrad, float64(m.nb)*float64(m.t))-ns(mCopy, tile)),
		CopyNs:       ns(mCopy, tile),
	}
	r.TransposeNs = ns(mTranspose, float64(m.tn)*float64(m.tn))
	if m.comm.Size() > 1 {
		lat := m.times[mLatency]
		r.LatencyUs = lat * 1e6
		r.LinkGbits = float64(m.msg) * size * 8 / max(m.times[mLink]-lat, 1e-9) / 1e9
	}
	return r
}
