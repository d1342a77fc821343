//go:build !mpi

package mpi

// P2PModes is empty without MPI.
var P2PModes []string

// SetP2PMode does nothing without MPI.
func SetP2PMode(c Comm, mode string) (old string) { return "" }

// ThreadMultiple is false without MPI.
func ThreadMultiple(c Comm) bool { return false }
