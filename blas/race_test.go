//go:build race

package blas

// raceEnabled reports that the race detector is on: sync.Pool then drops
// items at random, so allocation counts are not checked, and the long
// numeric shapes are left to the uninstrumented run.
const raceEnabled = true
