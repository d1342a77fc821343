//go:build !mpi

package mpi

import (
	"os"
	"strconv"
)

// launchedRanks reports whether a launcher started this process as one of
// several ranks, and the environment variable (name=value) that says so. It
// reads, in order: OMPI_COMM_WORLD_SIZE (Open MPI's mpirun),
// PMI_SIZE (MPICH's Hydra, Slurm's PMI-2), PMIX_RANK > 0 (a PMIx launcher
// only starts rank 1 and up beside others), and under srun
// SLURM_STEP_NUM_TASKS, or SLURM_NTASKS when SLURM_STEP_ID is set (an
// sbatch script itself is not a step).
func launchedRanks() (several bool, by string) {
	for _, v := range []string{"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"} {
		if envInt(v) > 1 {
			return true, v + "=" + os.Getenv(v)
		}
	}
	if envInt("PMIX_RANK") > 0 {
		return true, "PMIX_RANK=" + os.Getenv("PMIX_RANK")
	}
	if envInt("SLURM_STEP_NUM_TASKS") > 1 {
		return true, "SLURM_STEP_NUM_TASKS=" + os.Getenv("SLURM_STEP_NUM_TASKS")
	}
	if os.Getenv("SLURM_STEP_ID") != "" && envInt("SLURM_NTASKS") > 1 {
		return true, "SLURM_NTASKS=" + os.Getenv("SLURM_NTASKS")
	}
	return false, ""
}

// envInt returns the integer value of the environment variable v, or 0.
func envInt(v string) int {
	k, err := strconv.Atoi(os.Getenv(v))
	if err != nil {
		return 0
	}
	return k
}
