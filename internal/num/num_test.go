package num

import "testing"

type celsius float32

type metres float64

func TestIs32(t *testing.T) {
	if !Is32[float32]() || !Is32[celsius]() {
		t.Error("Is32 is false for a 4-byte type")
	}
	if Is32[float64]() || Is32[metres]() {
		t.Error("Is32 is true for an 8-byte type")
	}
}

func TestAsSharesStorage(t *testing.T) {
	c := []celsius{1, 2, 3}
	f := As32(c)
	if len(f) != 3 || cap(f) != 3 || &f[0] != (*float32)(&c[0]) {
		t.Fatalf("As32: len %d cap %d, not c's storage", len(f), cap(f))
	}
	f[1] = 5
	if c[1] != 5 {
		t.Errorf("a write through As32 gave c[1] = %v, want 5", c[1])
	}
	m := []metres{1, 2}
	g := As64(m[:1])
	if len(g) != 1 || cap(g) != 1 || &g[0] != (*float64)(&m[0]) {
		t.Fatalf("As64: len %d cap %d, not m's storage", len(g), cap(g))
	}
	if As32([]float32{}) != nil || As64([]float64(nil)) != nil || As64(m[:0]) != nil {
		t.Error("an empty slice is not nil")
	}
}

func TestAsAllocatesNothing(t *testing.T) {
	s := make([]float64, 8)
	if n := testing.AllocsPerRun(10, func() { _ = As64(s) }); n != 0 {
		t.Errorf("As64 allocates %v times", n)
	}
}
