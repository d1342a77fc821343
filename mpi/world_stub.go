//go:build !mpi

package mpi

import (
	"errors"
	"fmt"
)

// Enabled reports whether this package was built with MPI (build tag mpi).
const Enabled = false

// World returns the communicator of all processes started together, as
// MPI_COMM_WORLD. This build has no MPI: World returns Self(), unless the
// environment shows that a launcher (mpirun, srun, ...) started this
// process as one of several ranks; then it returns an error, because each
// process would silently train alone.
func World() (Comm, error) {
	if several, by := launchedRanks(); several {
		return nil, fmt.Errorf("mpi: %s says this process is one of several ranks, but it was built without the mpi build tag; rebuild with -tags mpi", by)
	}
	return Self(), nil
}

// Finalize shuts MPI down. Without MPI it does nothing and returns nil.
func Finalize() error { return nil }

// WorldFortran needs MPI: this build returns an error.
func WorldFortran() (int, error) { return 0, errNoMPI }

// CommFromFortran needs MPI: this build returns an error.
func CommFromFortran(f int) (Comm, error) { return nil, errNoMPI }

// Free does nothing without MPI and returns nil.
func Free(c Comm) error { return nil }

var errNoMPI = errors.New("mpi: an MPI communicator handle needs MPI; rebuild with -tags mpi")
