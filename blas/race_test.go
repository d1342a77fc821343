//go:build race

package blas

// raceEnabled reports that the race detector is on: the long numeric
// shapes are then left to the uninstrumented run.
const raceEnabled = true
