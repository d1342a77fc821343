package clip

import (
	"math/bits"
	"math/rand/v2"
	"sort"
)

// The order of the training rows is a function of the seed, the epoch,
// the number of rows n and the global batch G only, never of the number of
// ranks, so that a run continues the same way on any number of ranks
// (Trainer.Load).
//
// Epoch e visits the rows in blocks of B = min(256, max(1, G/16))
// consecutive rows (the last block may be shorter): the blocks in a random
// permutation drawn from PCG(Seed ^ orderBlockKey, e), their rows
// concatenated. Global batch k of the epoch is positions k·G .. (k+1)·G−1
// of that sequence, shuffled again with PCG(Seed ^ orderBatchKey,
// e<<40 | k); the n − S·G positions after the epoch's S = ⌊n/G⌋ batches are
// not visited in that epoch. Rank r of W takes positions r·G/W ..
// (r+1)·G/W − 1 of the shuffled batch, so the ranks' rows, concatenated in
// rank order, are the batch in the same order on any W that divides G.
// Blocks keep a rank's reads within a few regions of the files; the
// shuffle within the batch gives each rank rows from every block.
//
// The permutations are Fisher–Yates shuffles with bounded draws computed
// here from the generator's 64-bit outputs (PCG-DXSM, fixed by its
// definition), so that the order does not depend on how a Go release
// implements rand.Shuffle.
const (
	orderBlockKey = 0x9e3779b97f4a7c15
	orderBatchKey = 0xd1b54a32d192ed03
	orderMaxBlock = 256
)

// orderBlock is the block size B of a global batch of g rows.
func orderBlock(g int) int { return min(orderMaxBlock, max(1, g/16)) }

// dataOrder computes the rows of each global batch (see above).
type dataOrder struct {
	seed         uint64
	n, g, block  int
	epoch        int   // the epoch of perm and start; -1 before the first
	perm         []int // the epoch's permutation of the blocks
	start        []int // start[j]: position of block perm[j]'s first row
	pcg          *rand.PCG
	nblocks      int
	lastBlockLen int
}

func newDataOrder(seed uint64, n, g int) *dataOrder {
	b := orderBlock(g)
	nb := (n + b - 1) / b
	return &dataOrder{
		seed: seed, n: n, g: g, block: b, epoch: -1,
		perm: make([]int, nb), start: make([]int, nb), pcg: rand.NewPCG(0, 0),
		nblocks: nb, lastBlockLen: n - (nb-1)*b,
	}
}

// below returns a uniform draw in [0, n) from the generator (Lemire's
// multiply-and-reject method).
func (o *dataOrder) below(n uint64) uint64 {
	hi, lo := bits.Mul64(o.pcg.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(o.pcg.Uint64(), n)
		}
	}
	return hi
}

// shuffle permutes v (Fisher–Yates) with the generator as seeded.
func (o *dataOrder) shuffle(v []int) {
	for i := len(v) - 1; i > 0; i-- {
		j := int(o.below(uint64(i + 1)))
		v[i], v[j] = v[j], v[i]
	}
}

// setEpoch draws the block permutation of an epoch.
func (o *dataOrder) setEpoch(epoch int) {
	if o.epoch == epoch {
		return
	}
	for i := range o.perm {
		o.perm[i] = i
	}
	o.pcg.Seed(o.seed^orderBlockKey, uint64(epoch))
	o.shuffle(o.perm)
	pos := 0
	for j, b := range o.perm {
		o.start[j] = pos
		if b == o.nblocks-1 {
			pos += o.lastBlockLen
		} else {
			pos += o.block
		}
	}
	o.epoch = epoch
}

// batch writes the g global rows of batch k of an epoch into dst, in the
// batch's order. It panics unless 0 ≤ k < ⌊n/g⌋ and len(dst) = g.
func (o *dataOrder) batch(dst []int, epoch, k int) {
	if len(dst) != o.g || k < 0 || (k+1)*o.g > o.n {
		panic("clip: batch outside the epoch")
	}
	o.setEpoch(epoch)
	pos := k * o.g
	j := sort.Search(len(o.start), func(j int) bool { return o.start[j] > pos }) - 1
	for i := 0; i < len(dst); j++ {
		b := o.perm[j]
		first, size := b*o.block, o.block
		if b == o.nblocks-1 {
			size = o.lastBlockLen
		}
		for off := pos + i - o.start[j]; off < size && i < len(dst); off++ {
			dst[i] = first + off
			i++
		}
	}
	o.pcg.Seed(o.seed^orderBatchKey, uint64(epoch)<<40|uint64(k))
	o.shuffle(dst)
}
