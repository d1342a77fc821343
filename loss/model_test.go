package loss

import (
	"math"
	"testing"
)

// testRates are fixed rates of the order this machine measures.
var testRates = Rates{GemmGflops: 100, StatsNs: 2.2, GradNs: 1.7, NaiveStatsNs: 15, NaiveGradNs: 11.5,
	SigmoidNs: 2.9, CopyNs: 0.2, TransposeNs: 2.5, LinkGbits: 2, LatencyUs: 20}

// predictAll returns the prediction of every ClipLoss algorithm in the
// mode and of every SigLIP method.
func predictAll(mode ClipOptions, w, b, d, e int, r Rates) map[string]Prediction {
	out := map[string]Prediction{}
	for _, a := range Algorithms() {
		o := mode
		o.Algorithm = a
		out["clip/"+a.String()] = o.Predict(w, b, d, e, r)
	}
	for _, m := range SigLipImpls() {
		out["siglip/"+m.String()] = SigLipOptions{Impl: m}.Predict(w, b, d, e, r)
	}
	return out
}

// TestPredictConsistent: the replayed timeline does Plan's GEMMs; its parts
// add up: compute ≤ step ≤ compute + communication, and what waits for the
// link is at most what the link carries; memory is Plan's workspace plus
// 4·b·d elements; one rank communicates nothing.
func TestPredictConsistent(t *testing.T) {
	for _, w := range []int{1, 2, 3, 8} {
		for _, b := range []int{1, 7, 64, 1500} {
			for _, mode := range modes {
				for _, tile := range []int{0, 5} {
					m := mode
					m.Tile = tile
					for name, p := range predictAll(m, w, b, 48, 4, testRates) {
						compute := p.GemmSeconds + p.KernelSeconds
						if got := p.Flops / (testRates.GemmGflops * 1e9); math.Abs(got-p.GemmSeconds) > 1e-12*got {
							t.Errorf("W=%d b=%d %s %s: GEMM time %g, flops/rate %g", w, b, m.Mode(), name, p.GemmSeconds, got)
						}
						if p.Seconds < compute*(1-1e-9) || p.Seconds > (compute+p.CommSeconds)*(1+1e-9) {
							t.Errorf("W=%d b=%d %s %s: step %g outside [compute %g, compute + comm %g]", w, b, m.Mode(), name, p.Seconds, compute, compute+p.CommSeconds)
						}
						if p.ExposedSeconds > p.CommSeconds*(1+1e-9)+1e-15 {
							t.Errorf("W=%d b=%d %s %s: waits %g for a link busy %g", w, b, m.Mode(), name, p.ExposedSeconds, p.CommSeconds)
						}
						if w == 1 && (p.CommSeconds != 0 || p.CommBytes != 0) {
							t.Errorf("W=1 %s %s: communication %g s, %g bytes", m.Mode(), name, p.CommSeconds, p.CommBytes)
						}
					}
					for _, a := range Algorithms() {
						o := m
						o.Algorithm = a
						want := o.Plan(w, b, 48, 4).WorkspaceBytes + 4*int64(b)*48*4
						if got := o.Predict(w, b, 48, 4, testRates).MemoryBytes; got != want {
							t.Errorf("W=%d b=%d %s %s: memory %d, want %d", w, b, m.Mode(), a, got, want)
						}
					}
				}
			}
		}
	}
}

// TestPredictMonotone: more rows, wider features, more ranks at a fixed
// b, a slower GEMM, slower kernels, a slower link or a longer latency never
// make a step faster; more rows never need less memory.
func TestPredictMonotone(t *testing.T) {
	const w, b, d = 4, 256, 64
	base := predictAll(modes[3], w, b, d, 4, testRates)
	check := func(what string, got map[string]Prediction, memToo bool) {
		t.Helper()
		for name, p := range got {
			if p.Seconds < base[name].Seconds*(1-1e-12) {
				t.Errorf("%s: %s is faster (%g s) than at the base (%g s)", what, name, p.Seconds, base[name].Seconds)
			}
			if memToo && p.MemoryBytes <= base[name].MemoryBytes {
				t.Errorf("%s: %s needs %d bytes, not more than at the base (%d)", what, name, p.MemoryBytes, base[name].MemoryBytes)
			}
		}
	}
	check("b ×2", predictAll(modes[3], w, 2*b, d, 4, testRates), true)
	check("d ×2", predictAll(modes[3], w, b, 2*d, 4, testRates), true)
	check("W ×2", predictAll(modes[3], 2*w, b, d, 4, testRates), false)
	check("float64", predictAll(modes[3], w, b, d, 8, testRates), true)
	slow := func(f func(r *Rates)) Rates {
		r := testRates
		f(&r)
		return r
	}
	check("GEMM /2", predictAll(modes[3], w, b, d, 4, slow(func(r *Rates) { r.GemmGflops /= 2 })), false)
	check("kernels ×2", predictAll(modes[3], w, b, d, 4, slow(func(r *Rates) {
		r.StatsNs *= 2
		r.GradNs *= 2
		r.SigmoidNs *= 2
		r.NaiveStatsNs *= 2
		r.NaiveGradNs *= 2
	})), false)
	check("link /4", predictAll(modes[3], w, b, d, 4, slow(func(r *Rates) { r.LinkGbits /= 4 })), false)
	check("latency ×10", predictAll(modes[3], w, b, d, 4, slow(func(r *Rates) { r.LatencyUs *= 10 })), false)
}

// TestPredictOverlap: the algorithms that post non-blocking shifts (Fused
// and Ring with W > 1, SigLIP Bidir and Shift) hide part of their
// communication behind compute; the ones built on blocking collectives
// (Tiled, Naive, Gather, Reduce) wait for all of it. On a fast link Fused
// beats Tiled and Ring (3 GEMMs against 4); on a slow link Fused and Ring
// move the same bytes around the ring, hide a part of them and beat Tiled,
// which waits for its collectives.
func TestPredictOverlap(t *testing.T) {
	const w, b, d = 4, 1024, 512
	for name, p := range predictAll(modes[3], w, b, d, 4, testRates) {
		hides := name == "clip/fused" || name == "clip/ring" || name == "siglip/bidir" || name == "siglip/shift"
		if hides != (p.ExposedSeconds < 0.9*p.CommSeconds) {
			t.Errorf("%s: waits %.2f ms of %.2f ms on the link; want it to hide a part: %v", name, p.ExposedSeconds*1e3, p.CommSeconds*1e3, hides)
		}
	}
	fast := testRates
	fast.LinkGbits = 400
	ps := predictAll(modes[3], w, b, d, 4, fast)
	if f := ps["clip/fused"].Seconds; f >= ps["clip/tiled"].Seconds || f >= ps["clip/ring"].Seconds {
		t.Errorf("at 400 Gbit/s fused (%.1f ms) is not faster than tiled (%.1f) and ring (%.1f)",
			f*1e3, ps["clip/tiled"].Seconds*1e3, ps["clip/ring"].Seconds*1e3)
	}
	slow := testRates
	slow.LinkGbits = 0.3
	ps = predictAll(modes[3], w, b, d, 4, slow)
	if ps["clip/ring"].CommBytes != ps["clip/fused"].CommBytes ||
		ps["clip/ring"].Seconds >= ps["clip/tiled"].Seconds || ps["clip/fused"].Seconds >= ps["clip/tiled"].Seconds {
		t.Errorf("at 0.3 Gbit/s ring moves %g bytes in %.1f ms, fused %g in %.1f ms, tiled %.1f ms: want ring and fused the same bytes, faster than tiled",
			ps["clip/ring"].CommBytes, ps["clip/ring"].Seconds*1e3, ps["clip/fused"].CommBytes, ps["clip/fused"].Seconds*1e3, ps["clip/tiled"].Seconds*1e3)
	}
	for _, name := range []string{"clip/ring", "clip/fused"} {
		if r := ps[name]; r.ExposedSeconds >= r.CommSeconds {
			t.Errorf("at 0.3 Gbit/s %s waits %.1f ms of its %.1f ms of link time: nothing hidden", name, r.ExposedSeconds*1e3, r.CommSeconds*1e3)
		}
	}
}

// TestPredictPanics: Auto has no plan, and a model with ranks but no link
// cannot predict.
func TestPredictPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"clip auto":   func() { ClipOptions{Algorithm: Auto}.Predict(2, 4, 4, 4, testRates) },
		"siglip auto": func() { SigLipOptions{Impl: SigLipAuto}.Predict(2, 4, 4, 4, testRates) },
		"plan auto":   func() { ClipOptions{Algorithm: Auto}.Plan(2, 4, 4, 4) },
		"memory auto": func() { SigLipOptions{Impl: SigLipAuto}.Memory(2, 4, 4, 4) },
		"no link":     func() { ClipOptions{}.Predict(2, 4, 4, 4, Rates{GemmGflops: 1}) },
		"b = 0":       func() { ClipOptions{}.Predict(2, 0, 4, 4, testRates) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
	// One rank needs no link.
	if p := (ClipOptions{}).Predict(1, 4, 4, 4, Rates{GemmGflops: 1}); !(p.Seconds > 0) {
		t.Errorf("W=1 without a link: step %g s", p.Seconds)
	}
}

// TestPredictByHand: the step time of Tiled (one tile), Ring (one tile)
// and Fused (at b = 32, its one tile) at W = 2, local_gwg, worked out by
// hand from the rates: Tiled adds everything up; Ring and Fused wait at
// each hop for the longer of its transfer and the compute issued after it.
func TestPredictByHand(t *testing.T) {
	const w, d, e = 2, 64, 4
	b := 512
	r := testRates
	r.LinkGbits = 0.05 // slow enough that some shifts outlast their compute
	n := float64(w * b)
	alpha, beta := r.LatencyUs*1e-6, r.LinkGbits*1e9/8
	gemm := func(m, n, k float64) float64 { return 2 * m * n * k / (r.GemmGflops * 1e9) }
	bd := float64(b * d * e)
	B, D := float64(b), float64(d)
	allreduce := func(bytes float64) float64 { return 2*alpha + bytes/beta } // 2·log2(2) α + 2·n·(1/2)/β
	prologue := 2*B*D*r.CopyNs*1e-9 + allreduce(8*float64(agreeFixed+w))
	columns := 2 * allreduce(8*n)
	finish := alpha + 16*2/2/beta // reduce-scatter of 2W float64
	// A posted transfer also holds the link for its rendezvous, one poll
	// period of GEMM.
	sendrecv := func(bytes float64) float64 { return alpha + pollFlops/(r.GemmGflops*1e9) + bytes/beta }

	tiled := prologue +
		alpha + bd/beta + // all-gather: (W-1)·α + N·d·e·(1/2)/β
		gemm(B, n, D) + B*n*r.StatsNs*1e-9 + columns +
		B*n*r.GradNs*1e-9 + gemm(B, D, n) + gemm(n, D, B) +
		alpha + (2*bd+bd)/beta + B*D*r.CopyNs*1e-9 + // reduce-scatter (reduce of N·d·e, scatter of half) and its adds
		finish
	opt := ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Tiled, Tile: int(n)}
	if got := opt.Predict(w, b, d, e, r).Seconds; math.Abs(got-tiled) > 1e-9*tiled {
		t.Errorf("tiled: predicted %.6f ms, by hand %.6f ms", got*1e3, tiled*1e3)
	}

	fwd := gemm(B, B, D) + B*B*r.StatsNs*1e-9 // one block's forward
	bwd := gemm(B, B, D) + B*B*r.GradNs*1e-9 + 2*gemm(B, D, B)
	copyBD := B * D * r.CopyNs * 1e-9
	ring := prologue +
		math.Max(fwd, sendrecv(bd)) + fwd + // hop 1 hides behind block 0, block 1 after it
		columns +
		bwd + // block 1 (the one forward ended with): no transfer to wait for
		math.Max(bwd, sendrecv(bd)) + copyBD + // its partial sum goes home while the own block is visited, then is added
		finish
	opt.Algorithm, opt.Tile = Ring, b // one tile: the block travels whole
	if got := opt.Predict(w, b, d, e, r).Seconds; math.Abs(got-ring) > 1e-9*ring {
		t.Errorf("ring: predicted %.6f ms, by hand %.6f ms", got*1e3, ring*1e3)
	}

	// Fused is the ring keeping its logits: no recomputation in backward.
	// Its tile is a quarter of the block, whole multiples of 32: one tile
	// at b = 32.
	b = 32
	n, bd, B = float64(w*b), float64(b*d*e), float64(b)
	prologue = 2*B*D*r.CopyNs*1e-9 + allreduce(8*float64(agreeFixed+w))
	columns = 2 * allreduce(8*n)
	fwd = gemm(B, B, D) + B*B*r.StatsNs*1e-9
	bwd = B*B*r.GradNs*1e-9 + 2*gemm(B, D, B)
	copyBD = B * D * r.CopyNs * 1e-9
	fused := prologue +
		math.Max(fwd, sendrecv(bd)) + fwd +
		columns +
		bwd + math.Max(bwd, sendrecv(bd)) + copyBD +
		finish
	opt = ClipOptions{LocalLoss: true, GatherWithGrad: true, Algorithm: Fused}
	if got := opt.Predict(w, b, d, e, r).Seconds; math.Abs(got-fused) > 1e-9*fused {
		t.Errorf("fused: predicted %.6f ms, by hand %.6f ms", got*1e3, fused*1e3)
	}
}
