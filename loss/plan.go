package loss

// GemmShape is one GEMM a step performs Count times: C (M×N) = op(A)·op(B)
// with inner dimension K.
type GemmShape struct {
	TransA, TransB bool
	M, N, K        int
	Count          int
}

// Flops returns the floating-point operations of the Count GEMMs, 2·M·N·K
// each.
func (g GemmShape) Flops() float64 {
	return 2 * float64(g.M) * float64(g.N) * float64(g.K) * float64(g.Count)
}

// Plan is the work one rank does in one ForwardBackward step: its GEMMs and
// the memory its workspaces hold (beyond the caller's features and
// gradients).
type Plan struct {
	Gemms          []GemmShape
	WorkspaceBytes int64
}

// Flops returns the GEMM flops of the step.
func (p Plan) Flops() float64 {
	var f float64
	for _, g := range p.Gemms {
		f += g.Flops()
	}
	return f
}

// Plan returns the per-rank work of one ForwardBackward step with w ranks of
// b rows of dimension d, for elements of elemSize bytes (4 or 8). It panics
// if w, b or d is less than 1 or if the algorithm is Auto (ResolveClip
// turns it into one) or unknown.
func (o ClipOptions) Plan(w, b, d, elemSize int) Plan {
	if w < 1 || b < 1 || d < 1 {
		panic("loss: Plan needs w, b, d ≥ 1")
	}
	if o.Algorithm == Auto {
		panic(errAutoPlan)
	}
	n := w * b
	e := int64(elemSize)
	local := o.LocalLoss && w > 1
	split := local && !o.GatherWithGrad
	stats := int64(8) * int64(6*n+4*b) // row and column statistics in float64
	var p Plan
	add := func(ta, tb bool, m, nn, k, count int) {
		p.Gemms = append(p.Gemms, GemmShape{TransA: ta, TransB: tb, M: m, N: nn, K: k, Count: count})
	}
	switch o.Algorithm {
	case Naive:
		if !local {
			add(false, true, n, n, d, 1)  // logits N×N
			add(false, false, n, d, n, 1) // dI_all
			add(true, false, n, d, n, 1)  // dT_all
			p.WorkspaceBytes = e*(4*int64(n)*int64(d)+2*int64(n)*int64(n)) + stats
			break
		}
		add(false, true, b, n, d, 2)  // logits per image and per text
		add(false, false, b, d, n, 2) // direct paths
		if o.GatherWithGrad {
			add(true, false, n, d, b, 2) // through the gathered features
		}
		p.WorkspaceBytes = e*(4*int64(n)*int64(d)+2*int64(b)*int64(n)+int64(b)*int64(d)) + stats
	case Fused, Tiled:
		if o.Algorithm == Fused && w > 1 {
			// ringClip keeping the logits: the ring's tiles, none
			// recomputed, the b×N block kept.
			t := min(ringTile(b), b)
			blocks := int64(1)
			if split {
				blocks = 2
			}
			for _, tw := range []struct{ w, count int }{{t, b / t}, {b % t, 1}} {
				if tw.w == 0 || tw.count == 0 {
					continue
				}
				add(false, true, b, tw.w, d, w*tw.count)
				add(false, false, b, d, tw.w, w*tw.count)
				add(true, false, tw.w, d, b, w*tw.count)
			}
			p.WorkspaceBytes = e*(ringBlocks(w)*int64(b)*int64(d)+blocks*int64(b)*int64(n)) + stats + kernelBytes(b, t)
			break
		}
		t := n
		if o.Algorithm == Tiled {
			t = o.Tile
			if t == 0 {
				t = defaultTile
			}
			t = min(t, n)
		}
		tiles, last := n/t, n%t
		blocks := int64(1)
		if split {
			blocks = 2
		}
		for _, tw := range []struct{ w, count int }{{t, tiles}, {last, 1}} {
			if tw.w == 0 || tw.count == 0 {
				continue
			}
			fwd := tw.count
			if t < n {
				fwd *= 2 // recomputed in backward
			}
			add(false, true, b, tw.w, d, fwd)
			add(false, false, b, d, tw.w, tw.count)
			add(true, false, tw.w, d, b, tw.count)
		}
		p.WorkspaceBytes = e*(2*int64(n)*int64(d)+blocks*int64(b)*int64(t)) + stats + kernelBytes(b, t)
	case Ring:
		t := o.Tile
		if t == 0 {
			t = ringTile(b)
		}
		t = min(t, b)
		tiles, last := b/t, b%t
		for _, tw := range []struct{ w, count int }{{t, tiles}, {last, 1}} {
			if tw.w == 0 || tw.count == 0 {
				continue
			}
			add(false, true, b, tw.w, d, 2*w*tw.count)
			add(false, false, b, d, tw.w, w*tw.count)
			add(true, false, tw.w, d, b, w*tw.count)
		}
		blocks := int64(1)
		if split {
			blocks = 2
		}
		p.WorkspaceBytes = e*(ringBlocks(w)*int64(b)*int64(d)+blocks*int64(b)*int64(t)) + stats + kernelBytes(b, t)
	default:
		panic(errAlgorithm)
	}
	return p
}

// Plan returns the per-rank work of one SigLipLoss ForwardBackward step with
// w ranks of b rows of dimension d, for elements of elemSize bytes. Every
// method does the same 3 GEMMs of 2·b·N·d; they differ in memory. It panics
// if w, b or d is less than 1 or if the method is SigLipAuto.
func (o SigLipOptions) Plan(w, b, d, elemSize int) Plan {
	if w < 1 || b < 1 || d < 1 {
		panic("loss: Plan needs w, b, d ≥ 1")
	}
	if o.Impl == SigLipAuto {
		panic(errAutoPlan)
	}
	t := o.Tile
	if t == 0 {
		t = defaultSigTile
		if o.Impl == Bidir || o.Impl == Shift {
			t = ringTile(b)
		}
	}
	t = min(t, b)
	widths := []struct{ w, count int }{{t, w * (b / t)}}
	if b%t != 0 {
		widths = append(widths, struct{ w, count int }{b % t, w})
	}
	var p Plan
	for _, tw := range widths {
		p.Gemms = append(p.Gemms,
			GemmShape{TransB: true, M: b, N: tw.w, K: d, Count: tw.count},
			GemmShape{M: b, N: d, K: tw.w, Count: tw.count},
			GemmShape{TransA: true, M: tw.w, N: d, K: b, Count: tw.count})
	}
	e, bd, n := int64(elemSize), int64(b)*int64(d), int64(w)*int64(b)
	tileBytes := e * int64(b) * int64(t)
	switch o.Impl {
	case Gather:
		p.WorkspaceBytes = 2*e*n*int64(d) + tileBytes
	case Reduce:
		p.WorkspaceBytes = 2*e*bd + tileBytes
	case Shift:
		p.WorkspaceBytes = e*bd*streamBlocks(w-1) + tileBytes
	default:
		p.WorkspaceBytes = e*bd*(streamBlocks(w/2)+streamBlocks((w-1)/2)) + tileBytes
	}
	return p
}
