package test

import (
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// world is MPI_COMM_WORLD when the test binary runs under mpirun (built with
// the mpi tag and started by a launcher), nil under plain go test.
var world mpi.Comm

// launched reports whether a launcher started this process as one of
// several ranks (Open MPI's mpirun, or srun with PMIx).
func launched() bool {
	for _, v := range []string{"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// TestMain starts MPI when launched under mpirun, keeps ranks other than 0
// quiet unless they fail, and makes every rank exit non-zero when any rank
// failed, so that mpirun reports the failure.
func TestMain(m *testing.M) {
	loss.Warn = func(string) {} // the local-without-gather-grad warning is expected here
	if !launched() || !mpi.Enabled {
		os.Exit(m.Run())
	}
	var err error
	world, err = mpi.World()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test: starting MPI:", err)
		os.Exit(2)
	}
	var log *os.File
	stdout := os.Stdout
	if world.Rank() != 0 {
		if log, err = os.CreateTemp("", "clipmpi-rank-*.log"); err == nil {
			os.Stdout = log
		}
	}
	code := m.Run()
	os.Stdout = stdout
	if code != 0 && log != nil {
		log.Seek(0, io.SeekStart)
		fmt.Fprintf(os.Stderr, "---- output of rank %d, which failed:\n", world.Rank())
		io.Copy(os.Stderr, log)
	}
	if log != nil {
		log.Close()
		os.Remove(log.Name())
	}
	v := []float64{float64(code)}
	if err := world.AllreduceF64(mpi.Max, v, v); err != nil {
		fmt.Fprintln(os.Stderr, "test: agreeing on the result:", err)
		world.Abort(3)
	}
	if err := mpi.Finalize(); err != nil {
		fmt.Fprintln(os.Stderr, "test: MPI_Finalize:", err)
	}
	os.Exit(int(v[0]))
}
