package loss

import (
	"testing"

	"github.com/clipmpi/clipmpi/blas"
)

// TestPlanFlops checks the GEMM counts the algorithms are designed around:
// OpenCLIP's local loss does 6 GEMMs of 2·b·N·d, Fused 3, Tiled and Ring 4.
func TestPlanFlops(t *testing.T) {
	const w, b, d = 4, 64, 32
	unit := blas.GemmFlops(b, w*b, d)
	for _, tc := range []struct {
		opt  ClipOptions
		want float64
	}{
		{ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Naive}, 6},
		{ClipOptions{LocalLoss: true, Algorithm: Naive}, 4},
		{ClipOptions{Algorithm: Naive}, 3 * w}, // N×N×d, three times
		{ClipOptions{Algorithm: Fused}, 3},
		{ClipOptions{Algorithm: Tiled, Tile: 50}, 4},
		{ClipOptions{Algorithm: Tiled, Tile: 1000}, 3}, // one tile: nothing recomputed
		{ClipOptions{Algorithm: Ring, Tile: 48}, 4},
	} {
		if got := tc.opt.Plan(w, b, d, 4).Flops() / unit; got != tc.want {
			t.Errorf("%s/%s tile %d: %g GEMMs of 2bNd, want %g", tc.opt.Mode(), tc.opt.Algorithm, tc.opt.Tile, got, tc.want)
		}
	}
	// Tiled and Ring memory does not grow with b·N.
	big := ClipOptions{Algorithm: Tiled}.Plan(2, 16384, 512, 4).WorkspaceBytes
	if big > 400<<20 {
		t.Errorf("tiled workspace at b=16384, W=2, d=512: %d MiB, want under 400", big>>20)
	}
	if naive := (ClipOptions{Algorithm: Naive}).Plan(2, 16384, 512, 4).WorkspaceBytes; naive < 8<<30 {
		t.Errorf("naive global workspace at N=32768: %d MiB, want the N×N matrices (> 8 GiB)", naive>>20)
	}
}
