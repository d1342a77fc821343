package loss

import (
	"math"

	"github.com/clipmpi/clipmpi/blas"
)

// The elementwise kernels of the softmax cross-entropy. Logits are formed on
// the fly as s = scale·x + bias from the GEMM output x, so x is what stays in
// memory and the scale gradient Σ dS∘x needs no division. All statistics are
// accumulated in float64 whatever the element type: with scale 100 on unit
// features, exp(s - max) reaches exp(-200), below float32's range.
//
// The max and the log-sum are kept apart (log p = (s - m) - l): folding them
// into one offset m + l loses the low bits of l when |m| is in the thousands.

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

// statsTile updates row and column statistics with the rows×cols tile x
// (leading dimension ld) of logits s = scale·x + bias.
//
// Rows: rowM and rowS hold a running max and a sum of exp(s - rowM) over the
// columns seen so far (online log-sum-exp); a tile with a larger max
// rescales the sum. Columns: colM and colS (length cols) are overwritten with
// the max and sum of exp(s - colM) over this tile's rows.
func statsTile[T blas.Float](x []T, ld, rows, cols int, scale, bias float64, rowM, rowS, colM, colS []float64) {
	colM = colM[:cols]
	colS = colS[:cols]
	fill(colM, math.Inf(-1))
	fill(colS, 0)
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		tmax := math.Inf(-1)
		for j, v := range xr {
			s := scale*float64(v) + bias
			tmax = math.Max(tmax, s)
			if s > colM[j] {
				colM[j] = s
			}
		}
		m := rowM[i]
		sum := rowS[i]
		if tmax > m {
			sum *= math.Exp(m - tmax)
			m = tmax
		}
		for _, v := range xr {
			sum += math.Exp(scale*float64(v) + bias - m)
		}
		rowM[i], rowS[i] = m, sum
	}
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		for j, v := range xr {
			colS[j] += math.Exp(scale*float64(v) + bias - colM[j])
		}
	}
}

// rowStats computes the max and log-sum-exp of each row of the rows×cols
// block x of logits s = scale·x + bias: logp(i,j) = (s_ij - m_i) - l_i.
func rowStats[T blas.Float](x []T, ld, rows, cols int, scale, bias float64, m, l []float64) {
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

// gradTile forms the logit gradient of the rows×cols tile x whose first
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
// cI or cT may be 0 to leave a direction out.
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

// rowGrad overwrites the rows×cols block x (leading dimension ld) of logits
// s = scale·x + bias with the gradient of c·Σ_i CE(row i, column diag0+i):
// dS = c·p - c·E with p = exp((s - m_i) - l_i). It returns Σ dS∘x and Σ dS
// (taken before x is overwritten).
func rowGrad[T blas.Float](x []T, ld, rows, cols, diag0 int, scale, bias, c float64, m, l []float64) (sumX, sumB float64) {
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

// stats is statsTile, in C for float32 when the native kernels are compiled
// in.
func stats[T blas.Float](k *kernelScratch, x []T, ld, rows, cols int, scale, bias float64, rowM, rowS, colM, colS []float64) {
	if nativeKernels && blas.Is32[T]() {
		checkTile(len(x), ld, rows, cols)
		_, _, _, _ = rowM[rows-1], rowS[rows-1], colM[cols-1], colS[cols-1]
		k.stats32(blas.As32(x), ld, rows, cols, scale, bias, rowM, rowS, colM, colS)
		return
	}
	statsTile(x, ld, rows, cols, scale, bias, rowM, rowS, colM, colS)
}

// grad is gradTile, in C for float32 when the native kernels are compiled
// in.
func grad[T blas.Float](k *kernelScratch, di, dt, x []T, ld, rows, cols, j0, diag0 int, scale, bias, cI, cT float64,
	rowM, rowL, colM, colL, colX, colB []float64) (sumX, sumB float64) {
	if nativeKernels && blas.Is32[T]() {
		checkTile(len(x), ld, rows, cols)
		checkTile(len(di), ld, rows, cols)
		if dt != nil {
			checkTile(len(dt), ld, rows, cols)
		}
		_, _, _, _ = rowM[rows-1], rowL[rows-1], colM[cols-1], colL[cols-1]
		_, _ = colX[cols-1], colB[cols-1]
		return k.grad32(blas.As32(di), blas.As32(dt), blas.As32(x), ld, rows, cols, j0, diag0, scale, bias, cI, cT, rowM, rowL, colM, colL, colX, colB)
	}
	return gradTile(di, dt, x, ld, rows, cols, j0, diag0, scale, bias, cI, cT, rowM, rowL, colM, colL, colX, colB)
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
// gradients written to d (which may alias x). The sums run over the tile in
// row-major order in one accumulator each, the order of a flat reduction,
// so that cancellation between saturated terms (±c) comes out as OpenCLIP's
// does:
//
//	loss += Σ softplus(-y·z),   dz = -c·y·σ(-y·z)
//
// with y = +1 at column e0+i of row i and -1 elsewhere. It returns the loss
// sum and Σ dz∘x and Σ dz (taken before x is overwritten). softplus and σ
// are evaluated in the forms that neither overflow nor lose the tail for
// |z| in the thousands.
func sigTile[T blas.Float](k *kernelScratch, d, x []T, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	if nativeKernels && blas.Is32[T]() {
		checkTile(len(x), ld, rows, cols)
		checkTile(len(d), ld, rows, cols)
		return k.sig32(blas.As32(d), blas.As32(x), ld, rows, cols, e0, scale, bias, c, backward)
	}
	return sigTileGo(d, x, ld, rows, cols, e0, scale, bias, c, backward)
}

// sigTileGo is sigTile in Go, for either element type.
func sigTileGo[T blas.Float](d, x []T, ld, rows, cols, e0 int, scale, bias, c float64, backward bool) (loss, sumX, sumB float64) {
	for i := 0; i < rows; i++ {
		xr := x[i*ld : i*ld+cols]
		dr := d[i*ld : i*ld+cols]
		e := e0 + i
		for j, v := range xr {
			xv := float64(v)
			z := scale*xv + bias
			y := -1.0
			if j == e {
				y = 1
			}
			u := -y * z // loss term softplus(u), gradient -c·y·σ(u)
			loss += softplus(u)
			if backward {
				g := -c * y * sigmoid(u)
				sumX += g * xv
				sumB += g
				dr[j] = T(g)
			}
		}
	}
	return loss, sumX, sumB
}

// softplus(u) = log(1 + e^u) = max(u, 0) + log1p(e^-|u|).
func softplus(u float64) float64 {
	return math.Max(u, 0) + math.Log1p(math.Exp(-math.Abs(u)))
}

// sigmoid(u) = 1 / (1 + e^-u), through e^-|u| so that nothing overflows.
func sigmoid(u float64) float64 {
	if u >= 0 {
		return 1 / (1 + math.Exp(-u))
	}
	e := math.Exp(u)
	return e / (1 + e)
}
