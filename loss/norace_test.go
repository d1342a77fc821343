//go:build !race

package loss

// raceEnabled reports that the race detector is on: tests that need
// gigabytes or minutes without it skip.
const raceEnabled = false
