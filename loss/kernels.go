package loss

import (
	"math"
	"unsafe"

	"github.com/clipmpi/clipmpi/blas"
)

// The elementwise kernels of the softmax cross-entropy and of SigLIP. Logits
// are formed on the fly as s = scale·x + bias from the GEMM output x, so x is
// what stays in memory and the scale gradient Σ dS∘x needs no division. All
// statistics are accumulated in float64 whatever the element type: with
// scale 100 on unit features, exp(s - max) reaches exp(-200), below
// float32's range.
//
// The max and the log-sum are kept apart (log p = (s - m) - l): folding them
// into one offset m + l loses the low bits of l when |m| is in the thousands.
//
// Threads. Every kernel splits the rows of its tile into blocks of at least
// blockRows rows, at most maxBlocks of them; the split depends on the number
// of rows only. A block computes its rows completely and its share of each
// column (a partial vector of the tile's width) and of each scalar sum; the
// partials are then added up in block order, and column partials column
// chunk by column chunk, in block order too. So the result is the same bit
// for bit whichever goroutine ran which block, for every thread count, and
// the partials take 20 bytes per column per block of at least 32 rows
// (two float64 sums and a float32 maximum): about a sixth of a float32
// tile's 4 bytes per entry, never b×N of them.
//
// Two implementations compute each block: the generic Go kernels below (the
// reference, and float64's path) and, for float32 when cgo is on, the C
// kernels of kernels.h chosen by the CPU (AVX-512, AVX2+FMA or the baseline
// ISA on amd64, NEON on arm64).

const (
	blockRows = 32      // fewest rows in a block
	maxBlocks = 64      // most blocks in a tile
	colChunk  = 512     // columns per chunk of a column reduction
	elemChunk = 1 << 15 // elements per chunk of an elementwise pass
)

// rowBlocks returns the number and the size of the row blocks of a tile
// with the given number of rows (the last block may be shorter).
func rowBlocks(rows int) (n, size int) {
	size = max(blockRows, (rows+maxBlocks-1)/maxBlocks)
	return (rows + size - 1) / size, size
}

// kernelBytes is the most scratch a kernels value holds for tiles of rows
// rows and at most cols columns: per block two float64 column partials and
// a float32 one, per row and column a few offsets and weights.
func kernelBytes(rows, cols int) int64 {
	nb, _ := rowBlocks(rows)
	return int64(nb)*int64(cols)*20 + int64(rows)*20 + int64(cols)*8 + int64(nb)*24
}

// chunks returns the number of chunks of size c that cover n.
func chunks(n, c int) int { return (n + c - 1) / c }

// grow returns s resliced to length n, reallocating only when its capacity
// is too small.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

func fill(s []float64, v float64) {
	for i := range s {
		s[i] = v
	}
}

// kop is the operation a kernels value runs over blocks.
type kop int

const (
	opStatsMax kop = iota
	opStatsColMax
	opStatsSum
	opStatsColSum
	opStatsBlock
	opStatsMerge
	opGradCols
	opGrad
	opGradColSum
	opSig
	opRowStats
	opRowGrad
	opTranspose
	opAddTranspose
	opAdd
)

// kernels runs the elementwise kernels of one loss over its pool of
// threads. It owns the scratch the kernels need (per-block partials, per-row
// and per-column offsets); after the first call with the largest tile its
// calls allocate nothing. The zero value runs everything on the caller.
type kernels[T blas.Float] struct {
	pool *pool

	// The current operation: its tile (x, with outputs d and dt), shape
	// and parameters, and the statistics it reads or writes.
	op                     kop
	x, d, dt, src          []T
	ld, rows, cols, e0     int
	scale, bias, cI, cT    float64
	backward               bool
	rowM, rowS, colM, colS []float64
	colX, colB             []float64
	nb, bs                 int  // row blocks and their size
	native                 bool // float32 C kernels
	isa                    int
	hd, hdt                []blas.BF16 // AMPBF16: the bf16 copies of d and dt the GEMMs read

	part  []float64 // 2·nb×cols column partials of the blocks
	sums  []float64 // 3·nb scalar partials of the blocks
	tmax  []float64 // rows: row maxima of a tile (Go kernels)
	racc  []float64 // rows: row sums of a tile (C kernels)
	part3 []float32 // nb×cols column extrema of the blocks (C kernels)
	xr    []float32 // rows: x at each row's maximum (C kernels)
	wr    []float32 // rows: row weights (C kernels)
	xc    []float32 // cols: x at each column's maximum (C kernels)
	wc    []float32 // cols: column weights (C kernels)
}

// useNative reports whether the C kernels compute T's blocks.
func (k *kernels[T]) useNative() bool {
	return nativeKernels && blas.Is32[T]() && kernelISA > isaGo
}

// run runs op over n blocks on the pool.
func (k *kernels[T]) run(op kop, n int) {
	k.op = op
	k.pool.run(n, k)
}

// setTile records the tile of the next operation and its row blocks.
func (k *kernels[T]) setTile(x []T, ld, rows, cols int) {
	k.x, k.ld, k.rows, k.cols = x, ld, rows, cols
	k.nb, k.bs = rowBlocks(rows)
	k.native = k.useNative()
	k.isa = kernelISA
}

// release drops the references to the caller's slices.
func (k *kernels[T]) release() {
	k.x, k.d, k.dt, k.src, k.hd, k.hdt = nil, nil, nil, nil, nil, nil
	k.rowM, k.rowS, k.colM, k.colS, k.colX, k.colB = nil, nil, nil, nil, nil, nil
}

// rowsOf returns the rows [r0, r1) of block b.
func (k *kernels[T]) rowsOf(b int) (r0, r1 int) {
	r0 = b * k.bs
	return r0, min(r0+k.bs, k.rows)
}

// colsOf returns the columns [j0, j1) of column chunk c.
func (k *kernels[T]) colsOf(c int) (j0, j1 int) {
	j0 = c * colChunk
	return j0, min(j0+colChunk, k.cols)
}

// block runs block b of the current operation.
func (k *kernels[T]) block(b int) {
	switch k.op {
	case opStatsMax:
		k.statsMaxBlock(b)
	case opStatsColMax:
		k.statsColMaxChunk(b)
	case opStatsSum:
		k.statsSumBlock(b)
	case opStatsColSum:
		j0, j1 := k.colsOf(b)
		sumParts(k.colS[j0:j1], k.part, k.nb, k.cols, j0, false)
	case opStatsBlock:
		r0, r1 := k.rowsOf(b)
		stats32(k.isa, blas.As32(k.x[r0*k.ld:]), k.ld, r1-r0, k.cols, float32(k.scale*math.Log2E), k.scale < 0,
			k.xr[r0:r1], k.racc[r0:r1], k.part3[b*k.cols:(b+1)*k.cols], k.part[b*k.cols:(b+1)*k.cols])
		k.mergeRows(r0, r1)
	case opStatsMerge:
		j0, j1 := k.colsOf(b)
		colmerge32(k.isa, k.nb, j1-j0, k.cols, k.part3[j0:], k.part[j0:], float32(k.scale*math.Log2E), k.scale < 0,
			k.xc[j0:j1], k.colS[j0:j1])
		for j := j0; j < j1; j++ {
			k.colM[j] = k.scale*float64(k.xc[j]) + k.bias
		}
	case opGradCols:
		k.gradColsChunk(b)
	case opGrad:
		k.gradBlock(b)
	case opGradColSum:
		j0, j1 := k.colsOf(b)
		sumParts(k.colX[j0:j1], k.part, k.nb, k.cols, j0, true)
		sumParts(k.colB[j0:j1], k.part[k.nb*k.cols:], k.nb, k.cols, j0, true)
	case opSig:
		k.sigBlock(b)
	case opRowStats:
		r0, r1 := k.rowsOf(b)
		rowStatsGo(k.x[r0*k.ld:], k.ld, r1-r0, k.cols, k.scale, k.bias, k.rowM[r0:r1], k.rowS[r0:r1])
	case opRowGrad:
		r0, r1 := k.rowsOf(b)
		k.sums[2*b], k.sums[2*b+1] = rowGradGo(k.x[r0*k.ld:], k.ld, r1-r0, k.cols, k.e0+r0, k.scale, k.bias, k.cI,
			k.rowM[r0:r1], k.rowS[r0:r1])
	case opTranspose, opAddTranspose:
		r0, r1 := k.rowsOf(b)
		n := k.cols
		for i := r0; i < r1; i++ {
			dr := k.d[i*n : (i+1)*n]
			if k.op == opTranspose {
				for j := range dr {
					dr[j] = k.src[j*n+i]
				}
			} else {
				for j := range dr {
					dr[j] += k.src[j*n+i]
				}
			}
		}
	case opAdd:
		lo, hi := b*elemChunk, min((b+1)*elemChunk, len(k.d))
		dst, src := k.d[lo:hi], k.src[lo:hi]
		for i, v := range src {
			dst[i] += v
		}
	}
}

// sumParts sets (or, with add, adds to) dst[j-j0] the sum over blocks, in
// block order, of part[b·stride + j] for the columns j of dst.
func sumParts(dst, part []float64, nb, stride, j0 int, add bool) {
	for j := range dst {
		var s float64
		for b := 0; b < nb; b++ {
			s += part[b*stride+j0+j]
		}
		if add {
			dst[j] += s
		} else {
			dst[j] = s
		}
	}
}

// stats updates row and column statistics with the rows×cols tile x
// (leading dimension ld) of logits s = scale·x + bias.
//
// Rows: rowM and rowS hold a running max and a sum of exp(s - rowM) over the
// columns seen so far (online log-sum-exp); a tile with a larger max
// rescales the sum. Columns: colM and colS (from index 0, cols of them) are
// overwritten with the max and the sum of exp(s - colM) over this tile's
// rows. It panics if a slice is too short for the tile.
func stats[T blas.Float](k *kernels[T], x []T, ld, rows, cols int, scale, bias float64, rowM, rowS, colM, colS []float64) {
	checkTile(len(x), ld, rows, cols)
	k.setTile(x, ld, rows, cols)
	k.scale, k.bias = scale, bias
	k.rowM, k.rowS, k.colM, k.colS = rowM[:rows], rowS[:rows], colM[:cols], colS[:cols]
	k.part = grow(k.part, 2*k.nb*cols)
	if k.native {
		k.part3 = grow(k.part3, k.nb*cols)
		k.xr, k.racc = grow(k.xr, rows), grow(k.racc, rows)
		k.xc = grow(k.xc, cols)
	} else {
		k.tmax = grow(k.tmax, rows)
	}
	nc := chunks(cols, colChunk)
	if k.native && k.bs*cols*4 <= statsCacheBytes {
		// One pass over the tile: each block's two passes hit the cache,
		// and the blocks' column statistics are combined afterwards.
		k.run(opStatsBlock, k.nb)
		k.run(opStatsMerge, nc)
	} else {
		k.run(opStatsMax, k.nb)
		k.run(opStatsColMax, nc)
		k.run(opStatsSum, k.nb)
		k.run(opStatsColSum, nc)
	}
	k.release()
}

// statsCacheBytes bounds a block of float32 logits that the C kernels
// read twice in a row (its maxima, then its exponentials), so that the
// second pass hits the cache (L2 is 0.5 to 2 MiB per core on current
// x86-64 and arm64 servers). Larger blocks take the maxima of the whole
// tile first, in a separate pass.
const statsCacheBytes = 384 << 10

// statsMaxBlock finds the maxima of block b: per row (k.tmax, or k.xr in x
// units) and per column (its partial, in k.part or k.part3).
func (k *kernels[T]) statsMaxBlock(b int) {
	r0, r1 := k.rowsOf(b)
	x := k.x[r0*k.ld:]
	if k.native {
		max32(k.isa, blas.As32(x), k.ld, r1-r0, k.cols, k.scale < 0, k.xr[r0:r1], k.part3[b*k.cols:(b+1)*k.cols])
		return
	}
	statsMaxGo(x, k.ld, r1-r0, k.cols, k.scale, k.bias, k.tmax[r0:r1], k.part[b*k.cols:(b+1)*k.cols])
}

// statsColMaxChunk reduces the blocks' column maxima of chunk c into colM
// (and k.xc, their x, for the C kernels).
func (k *kernels[T]) statsColMaxChunk(c int) {
	j0, j1 := k.colsOf(c)
	if k.native {
		neg := k.scale < 0
		for j := j0; j < j1; j++ {
			m := k.part3[j]
			for b := 1; b < k.nb; b++ {
				v := k.part3[b*k.cols+j]
				if (!neg && v > m) || (neg && v < m) {
					m = v
				}
			}
			k.xc[j] = m
			k.colM[j] = k.scale*float64(m) + k.bias
		}
		return
	}
	for j := j0; j < j1; j++ {
		m := k.part[j]
		for b := 1; b < k.nb; b++ {
			m = math.Max(m, k.part[b*k.cols+j])
		}
		k.colM[j] = m
	}
}

// statsSumBlock adds block b's rows to the row statistics and writes its
// column sums of exp(s - colM) to its partial.
func (k *kernels[T]) statsSumBlock(b int) {
	r0, r1 := k.rowsOf(b)
	x := k.x[r0*k.ld:]
	part := k.part[b*k.cols : (b+1)*k.cols]
	if !k.native {
		statsSumGo(x, k.ld, r1-r0, k.cols, k.scale, k.bias, k.rowM[r0:r1], k.rowS[r0:r1], k.tmax[r0:r1], k.colM, part)
		return
	}
	expsum32(k.isa, blas.As32(x), k.ld, r1-r0, k.cols, float32(k.scale*math.Log2E), k.xr[r0:r1], k.xc, k.racc[r0:r1], part)
	k.mergeRows(r0, r1)
}

// mergeRows merges rows [r0, r1)'s sums of this tile (k.racc, relative to
// the tile's maxima k.xr) into the running row statistics: the sum
// relative to the tile's maximum t joins the one relative to m.
func (k *kernels[T]) mergeRows(r0, r1 int) {
	for i := r0; i < r1; i++ {
		t := k.scale*float64(k.xr[i]) + k.bias
		m, s := k.rowM[i], k.rowS[i]
		if t > m {
			k.rowS[i] = s*math.Exp(m-t) + k.racc[i]
			k.rowM[i] = t
		} else {
			k.rowS[i] = s + k.racc[i]*math.Exp(t-m)
		}
	}
}

// statsMaxGo writes the row maxima tmax[i] = max_j s_ij and the column
// maxima cmax[j] = max_i s_ij of the rows×cols tile x of logits
// s = scale·x + bias.
func statsMaxGo[T blas.Float](x []T, ld, rows, cols int, scale, bias float64, tmax, cmax []float64) {
	cmax = cmax[:cols]
	fill(cmax, math.Inf(-1))
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		m := math.Inf(-1)
		for j, v := range xr {
			s := scale*float64(v) + bias
			m = math.Max(m, s)
			if s > cmax[j] {
				cmax[j] = s
			}
		}
		tmax[i] = m
	}
}

// statsSumGo folds the rows of the tile x into the running row statistics
// (rowM, rowS; tmax holds the tile's row maxima) and writes the column sums
// csum[j] = Σ_i exp(s_ij - colM[j]).
func statsSumGo[T blas.Float](x []T, ld, rows, cols int, scale, bias float64, rowM, rowS, tmax, colM, csum []float64) {
	colM, csum = colM[:cols], csum[:cols]
	fill(csum, 0)
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		m, sum := rowM[i], rowS[i]
		if tmax[i] > m {
			sum *= math.Exp(m - tmax[i])
			m = tmax[i]
		}
		for j, v := range xr {
			s := scale*float64(v) + bias
			sum += math.Exp(s - m)
			csum[j] += math.Exp(s - colM[j])
		}
		rowM[i], rowS[i] = m, sum
	}
}

// grad forms the logit gradient of the rows×cols tile x whose first
// column is global column j0; row i's positive pair is global column
// diag0+i. With p_row = exp((s - rowM_i) - rowL_i) and
// p_col = exp((s - colM_j) - colL_j) (colM, colL indexed from the tile's
// first column):
//
//	dI = cI·p_row - cI·E,   dT = cT·p_col - cT·E
//
// If dt is nil, di receives dI + dT; otherwise di receives dI and dt
// receives dT. di (and dt) have leading dimension ld and may alias x.
// It returns Σ dI∘x and Σ dI, and adds Σ_i dT∘x and Σ_i dT to colX[j] and
// colB[j] (the column direction's share of the scale and bias gradients).
// cI or cT may be 0 to leave a direction out. It panics if a slice is too
// short for the tile.
func grad[T blas.Float](k *kernels[T], di, dt, x []T, ld, rows, cols, j0, diag0 int, scale, bias, cI, cT float64,
	rowM, rowL, colM, colL, colX, colB []float64) (sumX, sumB float64) {
	checkTile(len(x), ld, rows, cols)
	checkTile(len(di), ld, rows, cols)
	if dt != nil {
		checkTile(len(dt), ld, rows, cols)
	}
	k.setTile(x, ld, rows, cols)
	k.d, k.dt, k.e0 = di, dt, diag0-j0
	k.scale, k.bias, k.cI, k.cT = scale, bias, cI, cT
	k.rowM, k.rowS, k.colM, k.colS = rowM[:rows], rowL[:rows], colM[:cols], colL[:cols]
	k.colX, k.colB = colX[:cols], colB[:cols]
	k.part = grow(k.part, 2*k.nb*cols)
	k.sums = grow(k.sums, 3*k.nb)
	nc := chunks(cols, colChunk)
	if k.native {
		k.xr, k.wr = grow(k.xr, rows), grow(k.wr, rows)
		k.xc, k.wc = grow(k.xc, cols), grow(k.wc, cols)
		k.run(opGradCols, nc)
	}
	k.run(opGrad, k.nb)
	k.run(opGradColSum, nc)
	for b := 0; b < k.nb; b++ {
		sumX += k.sums[2*b]
		sumB += k.sums[2*b+1]
	}
	k.release()
	return sumX, sumB
}

// xAt returns a float32 x whose logit scale·x + bias is close to m: the
// offset the C kernels take float32 exponentials relative to. What is left
// of m goes into the weights, in float64.
func xAt(m, scale, bias float64) float32 {
	if scale == 0 {
		return 0
	}
	return float32((m - bias) / scale)
}

// gradColsChunk prepares the column offsets and weights of chunk c for the
// C kernels: gt = wc·2^(A·(x - xc)) = cT·exp((s - colM) - colL).
func (k *kernels[T]) gradColsChunk(c int) {
	j0, j1 := k.colsOf(c)
	for j := j0; j < j1; j++ {
		xs := xAt(k.colM[j], k.scale, k.bias)
		k.xc[j] = xs
		k.wc[j] = float32(k.cT * math.Exp((k.scale*float64(xs)+k.bias-k.colM[j])-k.colS[j]))
	}
}

// gradBlock forms block b's gradients, its column partials and its sums;
// in AMPBF16 it leaves the block's gradient rows in bf16 (roundRows).
func (k *kernels[T]) gradBlock(b int) {
	r0, r1 := k.rowsOf(b)
	off := r0 * k.ld
	var dt []T
	if k.dt != nil {
		dt = k.dt[off:]
	}
	cx := k.part[b*k.cols : (b+1)*k.cols]
	cb := k.part[(k.nb+b)*k.cols : (k.nb+b+1)*k.cols]
	if !k.native {
		fill(cx, 0)
		fill(cb, 0)
		k.sums[2*b], k.sums[2*b+1] = gradTile(k.d[off:], dt, k.x[off:], k.ld, r1-r0, k.cols, 0, k.e0+r0,
			k.scale, k.bias, k.cI, k.cT, k.rowM[r0:r1], k.rowS[r0:r1], k.colM, k.colS, cx, cb)
	} else {
		for i := r0; i < r1; i++ {
			xs := xAt(k.rowM[i], k.scale, k.bias)
			k.xr[i] = xs
			k.wr[i] = float32(k.cI * math.Exp((k.scale*float64(xs)+k.bias-k.rowM[i])-k.rowS[i]))
		}
		var dt32 []float32
		if dt != nil {
			dt32 = blas.As32(dt)
		}
		grad32(k.isa, blas.As32(k.d[off:]), dt32, blas.As32(k.x[off:]), k.ld, r1-r0, k.cols, k.e0+r0,
			float32(k.scale*math.Log2E), k.xr[r0:r1], k.wr[r0:r1], k.xc, k.wc, float32(k.cI), float32(k.cT),
			cx, cb, k.sums[2*b:2*b+2])
	}
	if k.hd != nil {
		roundRows(k, k.hd[off:], k.ld, k.d[off:], k.ld, r1-r0, k.cols)
		if dt != nil {
			roundRows(k, k.hdt[off:], k.ld, dt, k.ld, r1-r0, k.cols)
		}
	}
}

// roundRows writes the rows×cols tile x (leading dimension ldx) rounded to
// bf16 into h (leading dimension ldh), while the block is in the caches.
func roundRows[T blas.Float](k *kernels[T], h []blas.BF16, ldh int, x []T, ldx, rows, cols int) {
	x32 := blas.As32(x)
	checkTile(len(x32), ldx, rows, cols)
	checkTile(len(h), ldh, rows, cols)
	if k.useNative() {
		bf16rows32(kernelISA, x32, ldx, h, ldh, rows, cols)
		return
	}
	for i := range rows {
		blas.RoundBF16(h[i*ldh:i*ldh+cols], x32[i*ldx:i*ldx+cols])
	}
}

// asBF16 returns the float32 slice s seen as its bf16 halves.
func asBF16[T blas.Float](s []T) []blas.BF16 {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*blas.BF16)(unsafe.Pointer(&s[0])), 2*len(s))
}

// gradTile is grad's Go kernel for one block: it adds to colX and colB.
func gradTile[T blas.Float](di, dt, x []T, ld, rows, cols, j0, diag0 int, scale, bias, cI, cT float64,
	rowM, rowL, colM, colL, colX, colB []float64) (sumX, sumB float64) {
	colM, colL, colX, colB = colM[:cols], colL[:cols], colX[:cols], colB[:cols]
	for i := 0; i < rows; i++ {
		off := i * ld
		xr := x[off : off+cols]
		dir := di[off : off+cols]
		var dtr []T
		if dt != nil {
			dtr = dt[off : off+cols]
		}
		m, l := rowM[i], rowL[i]
		e := diag0 + i - j0 // column of the positive pair within the tile
		var rx, rb float64
		for j, v := range xr {
			xv := float64(v)
			s := scale*xv + bias
			gi := cI * math.Exp((s-m)-l)
			gt := cT * math.Exp((s-colM[j])-colL[j])
			if j == e {
				gi -= cI
				gt -= cT
			}
			rx += gi * xv
			rb += gi
			colX[j] += gt * xv
			colB[j] += gt
			if dtr != nil {
				dir[j] = T(gi)
				dtr[j] = T(gt)
			} else {
				dir[j] = T(gi + gt)
			}
		}
		sumX += rx
		sumB += rb
	}
	return sumX, sumB
}

// checkTile panics unless a buffer of length n holds a rows×cols tile with
// leading dimension ld: the C kernels do not check bounds.
func checkTile(n, ld, rows, cols int) {
	if rows < 1 || cols < 1 || ld < cols || n < (rows-1)*ld+cols {
		panic("loss: internal error: tile out of bounds")
	}
}

// sigTile turns the rows×cols tile x of SigLIP logits z = scale·x + bias
// (leading dimension ld) into its loss and, when backward is set, into
// gradients written to d (which may alias x):
//
//	loss += Σ softplus(-y·z),   dz = -c·y·σ(-y·z)
//
// with y = +1 at column e0+i of row i and -1 elsewhere. It returns the loss
// sum and Σ dz∘x and Σ dz (taken before x is overwritten). softplus and σ
// are evaluated in the forms that neither overflow nor lose the tail for
// |z| in the thousands. It panics if a slice is too short for the tile.
func sigTile[T blas.Float](k *kernels[T], d, x []T, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	checkTile(len(x), ld, rows, cols)
	if backward {
		checkTile(len(d), ld, rows, cols)
	}
	k.setTile(x, ld, rows, cols)
	k.d, k.e0 = d, e0
	k.scale, k.bias, k.cI, k.backward = scale, bias, c, backward
	k.sums = grow(k.sums, 3*k.nb)
	k.run(opSig, k.nb)
	for b := 0; b < k.nb; b++ {
		loss += k.sums[3*b]
		sumX += k.sums[3*b+1]
		sumB += k.sums[3*b+2]
	}
	k.release()
	return loss, sumX, sumB
}

// sigBlock runs block b of sigTile; in AMPBF16 it leaves the block's
// gradient rows in bf16 (roundRows).
func (k *kernels[T]) sigBlock(b int) {
	r0, r1 := k.rowsOf(b)
	off := r0 * k.ld
	e0 := max(min(k.e0, 1<<40), -1<<40) + r0 // within C's long
	s := k.sums[3*b : 3*b+3]
	var d []T
	if k.backward {
		d = k.d[off:]
	}
	if !k.native {
		s[0], s[1], s[2] = sigTileGo(d, k.x[off:], k.ld, r1-r0, k.cols, e0, k.scale, k.bias, k.cI, k.backward)
	} else {
		var d32 []float32
		if k.backward {
			d32 = blas.As32(d)
		}
		sig32(k.isa, d32, blas.As32(k.x[off:]), k.ld, r1-r0, k.cols, e0, float32(k.scale*math.Log2E),
			float32(k.bias*math.Log2E), float32(k.cI), k.backward, s)
		s[0] *= math.Ln2
	}
	if k.hd != nil && k.backward {
		roundRows(k, k.hd[off:], k.ld, d, k.ld, r1-r0, k.cols)
	}
}

// sigTileGo is sigTile's Go kernel for one block, for either element type:
// softplus(u) = max(u, 0) + log1p(e^-|u|) and σ(u) = 1/(1 + e^-u), both
// from e^-|u|, so that nothing overflows.
func sigTileGo[T blas.Float](d, x []T, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		var dr []T
		if backward {
			dr = d[i*ld : i*ld+cols]
		}
		e := e0 + i
		for j, v := range xr {
			xv := float64(v)
			z := scale*xv + bias
			y := -1.0
			if j == e {
				y = 1
			}
			u := -y * z // loss term softplus(u), gradient -c·y·σ(u)
			e := math.Exp(-math.Abs(u))
			loss += math.Max(u, 0) + math.Log1p(e)
			if backward {
				// σ(u) from the same e^-|u|: 1/(1+e) for u ≥ 0, e/(1+e) below.
				s := e
				if u >= 0 {
					s = 1
				}
				g := -c * y * (s / (1 + e))
				sumX += g * xv
				sumB += g
				dr[j] = T(g)
			}
		}
	}
	return loss, sumX, sumB
}

// rowStats computes the max and log-sum-exp of each row of the rows×cols
// block x of logits s = scale·x + bias: logp(i,j) = (s_ij - m_i) - l_i.
// The naive algorithm's kernel: Go for both element types.
func rowStats[T blas.Float](k *kernels[T], x []T, ld, rows, cols int, scale, bias float64, m, l []float64) {
	checkTile(len(x), ld, rows, cols)
	k.setTile(x, ld, rows, cols)
	k.scale, k.bias, k.rowM, k.rowS = scale, bias, m[:rows], l[:rows]
	k.run(opRowStats, k.nb)
	k.release()
}

func rowStatsGo[T blas.Float](x []T, ld, rows, cols int, scale, bias float64, m, l []float64) {
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		mx := math.Inf(-1)
		for _, v := range xr {
			mx = math.Max(mx, scale*float64(v)+bias)
		}
		var sum float64
		for _, v := range xr {
			sum += math.Exp(scale*float64(v) + bias - mx)
		}
		m[i], l[i] = mx, math.Log(sum)
	}
}

// rowGrad overwrites the rows×cols block x (leading dimension ld) of logits
// s = scale·x + bias with the gradient of c·Σ_i CE(row i, column diag0+i):
// dS = c·p - c·E with p = exp((s - m_i) - l_i). It returns Σ dS∘x and Σ dS
// (taken before x is overwritten).
func rowGrad[T blas.Float](k *kernels[T], x []T, ld, rows, cols, diag0 int, scale, bias, c float64, m, l []float64) (sumX, sumB float64) {
	checkTile(len(x), ld, rows, cols)
	k.setTile(x, ld, rows, cols)
	k.e0, k.scale, k.bias, k.cI = diag0, scale, bias, c
	k.rowM, k.rowS = m[:rows], l[:rows]
	k.sums = grow(k.sums, 3*k.nb)
	k.run(opRowGrad, k.nb)
	for b := 0; b < k.nb; b++ {
		sumX += k.sums[2*b]
		sumB += k.sums[2*b+1]
	}
	k.release()
	return sumX, sumB
}

func rowGradGo[T blas.Float](x []T, ld, rows, cols, diag0 int, scale, bias, c float64, m, l []float64) (sumX, sumB float64) {
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		mi, li := m[i], l[i]
		e := diag0 + i
		var rx, rb float64
		for j, v := range xr {
			xv := float64(v)
			g := c * math.Exp((scale*xv+bias-mi)-li)
			if j == e {
				g -= c
			}
			rx += g * xv
			rb += g
			xr[j] = T(g)
		}
		sumX += rx
		sumB += rb
	}
	return sumX, sumB
}

// rowLoss returns Σ_i -logp(i, diag0+i) of the rows×cols block x of logits
// s = scale·x + bias with row statistics m and l.
func rowLoss[T blas.Float](x []T, ld, rows, diag0 int, scale, bias float64, m, l []float64) float64 {
	var sum float64
	for i := 0; i < rows; i++ {
		s := scale*float64(x[i*ld+diag0+i]) + bias
		sum -= (s - m[i]) - l[i]
	}
	return sum
}

// transpose writes the transpose of the n×n matrix src into dst; with add
// it adds it to dst.
func transpose[T blas.Float](k *kernels[T], dst, src []T, n int, add bool) {
	if len(dst) < n*n || len(src) < n*n {
		panic("loss: internal error: transpose out of bounds")
	}
	k.setTile(dst, n, n, n)
	k.d, k.src = dst, src
	op := opTranspose
	if add {
		op = opAddTranspose
	}
	k.run(op, k.nb)
	k.release()
}

// addTo adds src to dst elementwise (dst[i] += src[i]).
func addTo[T blas.Float](k *kernels[T], dst, src []T) {
	if len(src) != len(dst) {
		panic("loss: internal error: addTo lengths differ")
	}
	k.d, k.src = dst, src
	k.run(opAdd, chunks(len(dst), elemChunk))
	k.release()
}
