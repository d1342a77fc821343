package slurm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestScript(t *testing.T) {
	j := Job{Nodes: 4, TasksPerNode: 8, CPUsPerTask: 4, Time: "12:00:00", Partition: "cpu", Account: "proj-1",
		Args: []string{"--batch-size", "256", "--name", "it's a run"}}
	s, err := j.Script()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"#!/bin/bash\n",
		"#SBATCH --nodes=4\n", "#SBATCH --ntasks-per-node=8\n", "#SBATCH --cpus-per-task=4\n",
		"#SBATCH --time=12:00:00\n", "#SBATCH --partition=cpu\n", "#SBATCH --account=proj-1\n",
		"#SBATCH --job-name=clipmpi-train\n", "#SBATCH --output=clipmpi-%j.out\n", "#SBATCH --no-requeue\n",
		"launcher=${CLIPMPI_LAUNCHER:-srun}\n", "program=${CLIPMPI_PROGRAM:-bin/train}\n",
		"export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n",
		"OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-5}\n",
		"OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-2}\n",
		"OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-3}\n",
		`srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 --wait=10`,
		"unset SRUN_CPUS_PER_TASK\n",
		`"$program" --batch-size 256 --name 'it'\''s a run' "$@"`,
		`mpirun "${root[@]}" -np "$SLURM_NTASKS" --map-by "ppr:${SLURM_NTASKS_PER_NODE:-8}:node"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	j = Job{Nodes: 1, TasksPerNode: 2, CPUsPerTask: 1, Time: "5", Launcher: "mpirun", Program: "/opt/my train"}
	if s, err = j.Script(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"--partition", "--account"} {
		if strings.Contains(s, bad) {
			t.Errorf("script without a %s has one", bad)
		}
	}
	for _, want := range []string{"launcher=${CLIPMPI_LAUNCHER:-mpirun}\n", "program=${CLIPMPI_PROGRAM:-'/opt/my train'}\n", "\"$program\" \"$@\"\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q", want)
		}
	}
}

func TestScriptErrors(t *testing.T) {
	ok := Job{Nodes: 1, TasksPerNode: 1, CPUsPerTask: 1, Time: "1:00:00"}
	for _, tm := range []string{"30", "30:00", "1:00:00", "2-0", "2-12:00", "2-12:00:00"} {
		j := ok
		j.Time = tm
		if err := j.Validate(); err != nil {
			t.Errorf("time %q: %v", tm, err)
		}
	}
	cases := []struct {
		edit func(*Job)
		want string
	}{
		{func(j *Job) { j.Nodes = 0 }, "nodes must be at least 1"},
		{func(j *Job) { j.TasksPerNode = -1 }, "tasks per node must be at least 1"},
		{func(j *Job) { j.CPUsPerTask = 0 }, "cpus per task must be at least 1"},
		{func(j *Job) { j.Time = "" }, "time \"\""},
		{func(j *Job) { j.Time = "1h" }, "time \"1h\""},
		{func(j *Job) { j.Time = "1:2:3:4" }, "time"},
		{func(j *Job) { j.Launcher = "mpiexec" }, "launcher \"mpiexec\""},
		{func(j *Job) { j.Partition = "a b" }, "partition \"a b\""},
		{func(j *Job) { j.Name = "x\n#SBATCH --exclusive" }, "name"},
		{func(j *Job) { j.Output = "out;rm" }, "output"},
	}
	for _, c := range cases {
		j := ok
		c.edit(&j)
		if _, err := j.Script(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error containing %q", j, err, c.want)
		}
	}
}

// TestShippedScripts checks that the scripts in this directory are what
// go generate writes, and that bash can parse them.
func TestShippedScripts(t *testing.T) {
	shipped := map[string]Job{
		"train.sbatch":           {Nodes: 1, TasksPerNode: 2, CPUsPerTask: 1, Time: "01:00:00"},
		"train-multinode.sbatch": {Nodes: 2, TasksPerNode: 2, CPUsPerTask: 1, Time: "01:00:00"},
	}
	for name, j := range shipped {
		want, err := j.Script()
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s is out of date: run go generate ./slurm", name)
		}
		if fi, err := os.Stat(name); err == nil && fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", name)
		}
		bashN(t, name)
	}
}

// TestScriptRuns runs a generated script outside Slurm with a fake srun
// and mpirun that print their arguments and environment.
func TestScriptRuns(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	for _, name := range []string{"srun", "mpirun"} {
		fake := "#!/bin/sh\necho " + name + " \"$@\"; echo threads=$OPENBLAS_NUM_THREADS keepalive=$OMPI_MCA_oob_tcp_keepalive_time srun_cpus=${SRUN_CPUS_PER_TASK-unset}\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Job{Nodes: 2, TasksPerNode: 2, CPUsPerTask: 3, Time: "10", Args: []string{"--epochs", "1"}}.Script()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "job.sbatch")
	if err := os.WriteFile(script, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(launcher string) string {
		cmd := exec.Command("bash", script, "--resume", "latest")
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "SLURM_SUBMIT_DIR=/sub", "SLURM_CPUS_PER_TASK=3",
			"SLURM_NTASKS=4", "SLURM_NTASKS_PER_NODE=2", "CLIPMPI_LAUNCHER="+launcher, "OMPI_MCA_oob_tcp_keepalive_time=",
			"SRUN_CPUS_PER_TASK=3")
		out, err := cmd.CombinedOutput()
		if err != nil && launcher != "bogus" {
			t.Fatalf("%s: %v\n%s", launcher, err, out)
		}
		return string(out)
	}
	out := run("srun")
	// srun gets the CPUs per task from the job: Slurm 22.05 and 23.02 do
	// not read SLURM_CPUS_PER_TASK themselves.
	for _, want := range []string{"srun --mpi=pmix --cpus-per-task=3 --kill-on-bad-exit=1 --wait=10 /sub/bin/train --epochs 1 --resume latest\n", "threads=3 keepalive=5 "} {
		if !strings.Contains(out, want) {
			t.Errorf("srun: output lacks %q:\n%s", want, out)
		}
	}
	out = run("mpirun")
	if !strings.Contains(out, "-np 4 --map-by ppr:2:node --bind-to none -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS /sub/bin/train --epochs 1 --resume latest\n") {
		t.Errorf("mpirun: unexpected output:\n%s", out)
	}
	// mpirun's own srun (its daemons, one per node) must get all the
	// node's CPUs: no --cpus-per-task, so no SRUN_CPUS_PER_TASK either.
	if !strings.Contains(out, "threads=3 keepalive=5 srun_cpus=unset\n") {
		t.Errorf("mpirun: SRUN_CPUS_PER_TASK reaches mpirun:\n%s", out)
	}
	if out = run("bogus"); !strings.Contains(out, "want srun or mpirun") {
		t.Errorf("bogus launcher: unexpected output:\n%s", out)
	}
}

func bashN(t *testing.T, path string) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		return
	}
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Errorf("bash -n %s: %v\n%s", path, err, out)
	}
}
