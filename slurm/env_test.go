package slurm

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

// launchVars is every variable Lookup reads.
var launchVars = []string{
	"LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
	"RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK",
	"WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
	"LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE",
	"SLURM_NODEID", "SLURM_CPUS_PER_TASK", "OPENBLAS_NUM_THREADS",
	"SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
}

// setEnv clears every launch variable for the test (restored afterwards,
// even if the test runs under srun or mpirun) and sets those in vars.
func setEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, v := range launchVars {
		t.Setenv(v, "") // records the old value for the cleanup
		os.Unsetenv(v)
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
}

// TestPrecedence sets every subset of each variable family and checks that
// the first set variable in OpenCLIP's order wins, and that Open MPI's
// variable moves before Slurm's when mpirun started the process.
func TestPrecedence(t *testing.T) {
	families := []struct {
		name string
		vars []string
		get  func(Env) (int, string)
	}{
		{"local rank", localRankVars, func(e Env) (int, string) { return e.LocalRank, e.LocalRankVar }},
		{"rank", rankVars, func(e Env) (int, string) { return e.Rank, e.RankVar }},
		{"size", sizeVars, func(e Env) (int, string) { return e.Size, e.SizeVar }},
	}
	for _, f := range families {
		for _, mpirun := range []bool{false, true} {
			for mask := 0; mask < 1<<len(f.vars); mask++ {
				vars := map[string]string{}
				// Values that are valid whichever wins: ranks 1..4 of 9.
				for i, v := range f.vars {
					if mask&(1<<i) != 0 {
						vars[v] = fmt.Sprint(i + 1)
					}
				}
				if f.name != "size" {
					vars["WORLD_SIZE"] = "9"
					vars["LOCAL_WORLD_SIZE"] = "9"
				}
				if mpirun {
					if _, ok := vars["OMPI_COMM_WORLD_SIZE"]; !ok {
						vars["OMPI_COMM_WORLD_SIZE"] = "9"
					}
				}
				// Open MPI's mpirun started the process iff it set the size.
				_, byMpirun := vars["OMPI_COMM_WORLD_SIZE"]
				if !mpirun && byMpirun {
					continue // the same as a case with mpirun=true
				}
				order := f.vars
				if byMpirun {
					order = []string{f.vars[0], f.vars[1], f.vars[3], f.vars[2]}
				}
				wantVal, wantVar := 0, ""
				if f.name == "size" {
					wantVal = 1
				}
				for _, v := range order {
					if s, ok := vars[v]; ok {
						fmt.Sscan(s, &wantVal)
						wantVar = v
						break
					}
				}
				t.Run(fmt.Sprintf("%s/mpirun=%v/%v", f.name, mpirun, keys(vars)), func(t *testing.T) {
					setEnv(t, vars)
					e, err := FromEnv()
					if err != nil {
						t.Fatal(err)
					}
					if got, gotVar := f.get(e); got != wantVal || gotVar != wantVar {
						t.Errorf("got %d from %q, want %d from %q", got, gotVar, wantVal, wantVar)
					}
				})
			}
		}
	}
}

func keys(m map[string]string) []string {
	var k []string
	for _, v := range launchVars {
		if _, ok := m[v]; ok {
			k = append(k, v)
		}
	}
	return k
}

// TestLaunchers reads environments captured from real launchers.
func TestLaunchers(t *testing.T) {
	cases := []struct {
		name     string
		env      map[string]string
		want     Env
		launcher string
	}{
		{"none", nil, Env{Size: 1}, "none"},
		{
			// srun --mpi=pmix, rank 1 of a 2-task step on one node
			// (captured on Slurm 22.05).
			"srun", map[string]string{
				"SLURM_LOCALID": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NODEID": "0",
				"SLURM_TASKS_PER_NODE": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost",
				"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "localhost",
			},
			Env{Rank: 1, Size: 2, LocalRank: 1, LocalSize: 2, RankVar: "SLURM_PROCID", SizeVar: "SLURM_NTASKS",
				LocalRankVar: "SLURM_LOCALID", LocalSizeVar: "SLURM_STEP_TASKS_PER_NODE",
				JobID: "7", Nodes: []string{"localhost"}, Node: "localhost"},
			"slurm",
		},
		{
			// srun on the second of three nodes, 2+2+1 tasks.
			"srun multi-node", map[string]string{
				"SLURM_LOCALID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "5", "SLURM_NODEID": "1",
				"SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
				"SLURM_JOB_NODELIST": "n[01-03]", "SLURMD_NODENAME": "n02", "SLURM_CPUS_PER_TASK": "4",
			},
			Env{Rank: 2, Size: 5, LocalRank: 0, LocalSize: 2, RankVar: "SLURM_PROCID", SizeVar: "SLURM_NTASKS",
				LocalRankVar: "SLURM_LOCALID", LocalSizeVar: "SLURM_STEP_TASKS_PER_NODE",
				Nodes: []string{"n01", "n02", "n03"}, NodeID: 1, Node: "n02", CPUsPerTask: 4},
			"slurm",
		},
		{
			// mpirun inside an sbatch allocation: rank 1 inherits the batch
			// script's SLURM_PROCID=0 and SLURM_LOCALID=0 (captured).
			"mpirun in sbatch", map[string]string{
				"SLURM_LOCALID": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "1",
				"SLURM_NTASKS": "2", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_NODEID": "0",
				"SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost", "SLURMD_NODENAME": "localhost",
			},
			Env{Rank: 1, Size: 2, LocalRank: 1, LocalSize: 2, RankVar: "OMPI_COMM_WORLD_RANK", SizeVar: "OMPI_COMM_WORLD_SIZE",
				LocalRankVar: "OMPI_COMM_WORLD_LOCAL_RANK", LocalSizeVar: "OMPI_COMM_WORLD_LOCAL_SIZE",
				Nodes: []string{"localhost"}, Node: "localhost"},
			"openmpi",
		},
		{
			"mpirun", map[string]string{
				"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
				"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OPENBLAS_NUM_THREADS": "3",
			},
			Env{Rank: 3, Size: 4, LocalRank: 1, LocalSize: 2, RankVar: "OMPI_COMM_WORLD_RANK", SizeVar: "OMPI_COMM_WORLD_SIZE",
				LocalRankVar: "OMPI_COMM_WORLD_LOCAL_RANK", LocalSizeVar: "OMPI_COMM_WORLD_LOCAL_SIZE", OpenBLASThreads: 3},
			"openmpi",
		},
		{
			"mpich hydra", map[string]string{
				"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4",
			},
			Env{Rank: 5, Size: 8, LocalRank: 1, LocalSize: 4, RankVar: "PMI_RANK", SizeVar: "PMI_SIZE",
				LocalRankVar: "MPI_LOCALRANKID", LocalSizeVar: "MPI_LOCALNRANKS"},
			"pmi",
		},
		{
			"torchrun in slurm", map[string]string{
				"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
				"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "1(x2)",
			},
			Env{Rank: 3, Size: 4, LocalRank: 1, LocalSize: 2, RankVar: "RANK", SizeVar: "WORLD_SIZE",
				LocalRankVar: "LOCAL_RANK", LocalSizeVar: "LOCAL_WORLD_SIZE"},
			"torchrun",
		},
		{
			// The batch script itself (not a step): Slurm says 2 tasks.
			"sbatch script", map[string]string{
				"SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODEID": "0",
				"SLURM_TASKS_PER_NODE": "2", "SLURM_NODELIST": "n[1-2]",
			},
			Env{Rank: 0, Size: 2, LocalRank: 0, LocalSize: 2, RankVar: "SLURM_PROCID", SizeVar: "SLURM_NTASKS",
				LocalRankVar: "SLURM_LOCALID", LocalSizeVar: "SLURM_TASKS_PER_NODE", Nodes: []string{"n1", "n2"}},
			"slurm",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			setEnv(t, c.env)
			got, err := Lookup(os.LookupEnv)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
			if l := got.Launcher(); l != c.launcher {
				t.Errorf("Launcher() = %q, want %q", l, c.launcher)
			}
			if got.Launched() != (c.launcher != "none") {
				t.Errorf("Launched() = %v", got.Launched())
			}
			if s := got.String(); !strings.Contains(s, fmt.Sprintf("rank %d/%d", c.want.Rank, c.want.Size)) {
				t.Errorf("String() = %q", s)
			}
		})
	}
}

func TestLookupErrors(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"RANK": "one"}, `RANK="one" is not an integer`},
		{map[string]string{"SLURM_PROCID": ""}, `SLURM_PROCID="" is not an integer`},
		{map[string]string{"LOCAL_RANK": "x", "RANK": "0"}, `LOCAL_RANK="x"`},
		{map[string]string{"WORLD_SIZE": "2.0"}, `WORLD_SIZE="2.0" is not an integer`},
		{map[string]string{"WORLD_SIZE": "0"}, "world size must be at least 1"},
		{map[string]string{"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 (RANK) is outside [0, 2)"},
		{map[string]string{"RANK": "1"}, "rank 1 (RANK) is outside [0, 1) (default)"},
		{map[string]string{"PMI_RANK": "-1", "PMI_SIZE": "2"}, "rank -1 (PMI_RANK)"},
		{map[string]string{"LOCAL_RANK": "-1"}, "local rank must not be negative"},
		{map[string]string{"SLURM_NODEID": "a"}, `SLURM_NODEID="a"`},
		{map[string]string{"SLURM_CPUS_PER_TASK": "-2"}, "SLURM_CPUS_PER_TASK=-2 must not be negative"},
		{map[string]string{"OPENBLAS_NUM_THREADS": "many"}, "OPENBLAS_NUM_THREADS"},
		{map[string]string{"SLURM_JOB_NODELIST": "n[1-"}, "SLURM_JOB_NODELIST: hostlist"},
		{map[string]string{"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "2"}, "SLURM_NODEID=2 but the node list has 2 nodes"},
		{map[string]string{"SLURM_TASKS_PER_NODE": "2(3)"}, "SLURM_TASKS_PER_NODE: tasks per node"},
		{map[string]string{"SLURM_TASKS_PER_NODE": "2", "SLURM_NODEID": "1"}, "no entry for SLURM_NODEID=1"},
		{map[string]string{"LOCAL_WORLD_SIZE": "0"}, "ranks per node must be at least 1"},
		{map[string]string{"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "local rank 2 (LOCAL_RANK) is outside [0, 2) (LOCAL_WORLD_SIZE)"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.env), func(t *testing.T) {
			setEnv(t, c.env)
			_, err := FromEnv()
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "slurm: ") {
				t.Errorf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestFromEnvNode(t *testing.T) {
	setEnv(t, nil)
	e, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := os.Hostname(); e.Node != h {
		t.Errorf("Node = %q, want the host name %q", e.Node, h)
	}
	setEnv(t, map[string]string{"SLURMD_NODENAME": "n7"})
	if e, _ = FromEnv(); e.Node != "n7" {
		t.Errorf("Node = %q, want SLURMD_NODENAME n7", e.Node)
	}
}

type fakeComm struct{ rank, size int }

func (c fakeComm) Rank() int { return c.rank }
func (c fakeComm) Size() int { return c.size }

func TestCheck(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		comm fakeComm
		want string // "" for no error
	}{
		{"agree", map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, fakeComm{1, 2}, ""},
		{"no launcher", nil, fakeComm{3, 4}, ""},
		{"no launcher, one rank", nil, fakeComm{0, 1}, ""},
		{"plain command in sbatch", map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, fakeComm{0, 1},
			"the launch environment says rank 0 of 2 (SLURM_PROCID, SLURM_NTASKS) but MPI says rank 0 of 1: MPI started this process alone"},
		{"size differs", map[string]string{"WORLD_SIZE": "4", "RANK": "1"}, fakeComm{1, 2},
			"rank 1 of 4 (RANK, WORLD_SIZE) but MPI says rank 1 of 2: WORLD_SIZE is left over"},
		{"rank differs", map[string]string{"PMI_RANK": "0", "PMI_SIZE": "2"}, fakeComm{1, 2},
			"rank 0 of 2 (PMI_RANK, PMI_SIZE) but MPI says rank 1 of 2: PMI_RANK is left over"},
		{"size only", map[string]string{"SLURM_NTASKS": "2"}, fakeComm{1, 2},
			"rank 0 of 2 (default, SLURM_NTASKS) but MPI says rank 1 of 2: default is left over"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			setEnv(t, c.env)
			e, err := FromEnv()
			if err != nil {
				t.Fatal(err)
			}
			err = e.Check(c.comm)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestThreads(t *testing.T) {
	cases := []struct {
		env      map[string]string
		cores    int
		want     int
		wantFrom string
	}{
		{nil, 8, 8, "cores"},
		{nil, 0, 1, "cores"},
		{map[string]string{"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 8, 2, "cores/OMPI_COMM_WORLD_LOCAL_SIZE"},
		{map[string]string{"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 2, 1, "cores/OMPI_COMM_WORLD_LOCAL_SIZE"},
		{map[string]string{"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, 8, 2, "cores/OMPI_COMM_WORLD_LOCAL_SIZE"},
		{map[string]string{"SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)"}, 16, 8, "cores/SLURM_TASKS_PER_NODE"},
		{map[string]string{"SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_CPUS_PER_TASK": "3"}, 16, 3, "SLURM_CPUS_PER_TASK"},
		{map[string]string{"SLURM_CPUS_PER_TASK": "3", "OPENBLAS_NUM_THREADS": "1"}, 16, 1, "OPENBLAS_NUM_THREADS"},
		{map[string]string{"SLURM_CPUS_PER_TASK": "0", "LOCAL_WORLD_SIZE": "4"}, 16, 4, "cores/LOCAL_WORLD_SIZE"},
		{map[string]string{"OPENBLAS_NUM_THREADS": "0"}, 4, 4, "cores"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.env, c.cores), func(t *testing.T) {
			setEnv(t, c.env)
			e, err := FromEnv()
			if err != nil {
				t.Fatal(err)
			}
			if n, from := e.Threads(c.cores); n != c.want || from != c.wantFrom {
				t.Errorf("Threads(%d) = %d from %q, want %d from %q", c.cores, n, from, c.want, c.wantFrom)
			}
		})
	}
}

func TestInit(t *testing.T) {
	setEnv(t, map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "3"})
	var set int
	e, err := Init(fakeComm{1, 2}, func(n int) { set = n })
	if err != nil || e.Rank != 1 || set != 3 {
		t.Errorf("Init = %+v, %v; threads set to %d, want rank 1 and 3 threads", e, err, set)
	}
	set = 0
	if _, err := Init(fakeComm{0, 2}, func(n int) { set = n }); err == nil || set != 0 {
		t.Errorf("Init with a disagreeing communicator: err %v, threads set to %d; want an error and no setting", err, set)
	}
	if _, err := Init(fakeComm{1, 2}, nil); err != nil {
		t.Errorf("Init without a setter: %v", err)
	}
	setEnv(t, map[string]string{"RANK": "x"})
	if _, err := Init(fakeComm{0, 1}, nil); err == nil {
		t.Error("Init with RANK=x: no error")
	}
}
