//go:build !mpi

package mpi

import (
	"strings"
	"testing"
)

func TestWorldStub(t *testing.T) {
	for _, v := range []string{"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
		"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_STEP_ID"} {
		t.Setenv(v, "") // unset for the test, restored after
	}
	c, err := World()
	if err != nil || c != Self() {
		t.Fatalf("World() = %v, %v; want Self()", c, err)
	}
	if err := Finalize(); err != nil {
		t.Errorf("Finalize: %v", err)
	}
	multi := []struct{ env map[string]string }{
		{map[string]string{"OMPI_COMM_WORLD_SIZE": "4"}},
		{map[string]string{"PMI_SIZE": "2"}},
		{map[string]string{"PMIX_RANK": "3"}},
		{map[string]string{"SLURM_STEP_NUM_TASKS": "8"}},
		{map[string]string{"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}},
	}
	for _, tc := range multi {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		_, err := World()
		if err == nil || !strings.Contains(err.Error(), "-tags mpi") {
			t.Errorf("%v: World() error %v, want one asking for -tags mpi", tc.env, err)
		} else {
			t.Log(err)
		}
		for k := range tc.env {
			t.Setenv(k, "")
		}
	}
	single := []map[string]string{
		{"OMPI_COMM_WORLD_SIZE": "1"},
		{"PMIX_RANK": "0"},
		{"SLURM_NTASKS": "8"}, // an sbatch script, not an srun step
	}
	for _, env := range single {
		for k, v := range env {
			t.Setenv(k, v)
		}
		if _, err := World(); err != nil {
			t.Errorf("%v: World(): %v", env, err)
		}
		for k := range env {
			t.Setenv(k, "")
		}
	}
}
