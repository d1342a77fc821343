// Package slurm reads how a process was launched as one rank of several (by
// Slurm's srun, Open MPI's mpirun, a PMI launcher such as MPICH's Hydra, or
// torchrun-style RANK/WORLD_SIZE variables), checks that against the MPI
// communicator, and chooses the BLAS threads per rank. It also writes sbatch
// scripts for training jobs (see Job).
//
// It imports nothing of clipmpi's: the check takes any value with Rank and
// Size methods (an mpi.Comm), and the thread count is handed to a setter
// (blas.SetThreads):
//
//	comm, err := mpi.World()
//	...
//	env, err := slurm.Init(comm, blas.SetThreads)
//	if err != nil { // the launcher and MPI disagree: every rank says why
//		fmt.Fprintln(os.Stderr, err)
//		comm.Abort(1)
//	}
package slurm

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Precedence of the launch variables, as OpenCLIP's world_info_from_env
// (open_clip_train/distributed.py): the first variable that is set wins.
var (
	localRankVars = []string{"LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"}
	rankVars      = []string{"RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"}
	sizeVars      = []string{"WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"}
)

// Env is the launch environment of this process.
//
// Rank, Size and LocalRank follow OpenCLIP's precedence, with one exception
// that OpenCLIP gets wrong: a process that Open MPI's mpirun started inside
// a Slurm allocation (OMPI_COMM_WORLD_SIZE is set; srun never sets it)
// inherits SLURM_PROCID and SLURM_LOCALID of the batch script or of the
// orted's step, which are the same on every rank of a node. There the
// OMPI_COMM_WORLD_* variables are read before the SLURM_* ones.
type Env struct {
	Rank      int // this process's rank in [0, Size); 0 when no variable says
	Size      int // number of ranks; 1 when no variable says
	LocalRank int // rank among the ranks on this node; 0 when no variable says
	// LocalSize is the number of ranks on this node: LOCAL_WORLD_SIZE,
	// MPI_LOCALNRANKS, this node's entry of SLURM_STEP_TASKS_PER_NODE (or
	// SLURM_TASKS_PER_NODE), OMPI_COMM_WORLD_LOCAL_SIZE; 0 when none says.
	LocalSize int

	// RankVar, SizeVar, LocalRankVar and LocalSizeVar name the variable
	// each value came from, "" for a default.
	RankVar, SizeVar, LocalRankVar, LocalSizeVar string

	JobID  string   // SLURM_JOB_ID, "" outside Slurm
	Nodes  []string // SLURM_JOB_NODELIST expanded (hostlist syntax), nil outside Slurm
	NodeID int      // SLURM_NODEID: index of this node in Nodes
	Node   string   // SLURMD_NODENAME, or the host name (FromEnv only)

	// CPUsPerTask is SLURM_CPUS_PER_TASK, 0 when unset.
	CPUsPerTask int
	// OpenBLASThreads is OPENBLAS_NUM_THREADS, 0 when unset.
	OpenBLASThreads int
}

// Launched reports whether any launch variable gave the world size, that
// is, whether a launcher said how many ranks it started.
func (e Env) Launched() bool { return e.SizeVar != "" }

// Launcher names who started the process, from the variable that gave the
// size: "torchrun" (WORLD_SIZE), "pmi" (PMI_SIZE), "slurm" (SLURM_NTASKS),
// "openmpi" (OMPI_COMM_WORLD_SIZE), or "none".
func (e Env) Launcher() string {
	switch e.SizeVar {
	case "WORLD_SIZE":
		return "torchrun"
	case "PMI_SIZE":
		return "pmi"
	case "SLURM_NTASKS":
		return "slurm"
	case "OMPI_COMM_WORLD_SIZE":
		return "openmpi"
	}
	return "none"
}

// String is a one-line summary, e.g. "rank 1/4 (SLURM_PROCID, SLURM_NTASKS),
// local rank 1/2 (SLURM_LOCALID), node n01 of 2, job 42" (2: the number of
// nodes in SLURM_JOB_NODELIST).
func (e Env) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rank %d/%d (%s, %s), local rank %d", e.Rank, e.Size, orDefault(e.RankVar), orDefault(e.SizeVar), e.LocalRank)
	if e.LocalSize > 0 {
		fmt.Fprintf(&b, "/%d", e.LocalSize)
	}
	fmt.Fprintf(&b, " (%s)", orDefault(e.LocalRankVar))
	if e.Node != "" {
		fmt.Fprintf(&b, ", node %s", e.Node)
	}
	if len(e.Nodes) > 0 {
		fmt.Fprintf(&b, " of %d", len(e.Nodes))
	}
	if e.JobID != "" {
		fmt.Fprintf(&b, ", job %s", e.JobID)
	}
	return b.String()
}

func orDefault(v string) string {
	if v == "" {
		return "default"
	}
	return v
}

// FromEnv reads the process environment (see Lookup) and fills Node with
// the host name when SLURMD_NODENAME is unset.
func FromEnv() (Env, error) {
	e, err := Lookup(os.LookupEnv)
	if err != nil {
		return e, err
	}
	if e.Node == "" {
		e.Node, _ = os.Hostname()
	}
	return e, nil
}

// Lookup reads the launch environment through lookup (os.LookupEnv or a
// map in tests). A variable that is set must hold a decimal integer (a
// node list, valid hostlist syntax), else Lookup returns an error naming
// it; so must the rank, which must lie in [0, Size), and the local rank,
// which must be non-negative (and below LocalSize when that is known).
func Lookup(lookup func(string) (string, bool)) (Env, error) {
	e := Env{Size: 1}
	_, byMpirun := lookup("OMPI_COMM_WORLD_SIZE")
	order := func(vars []string) []string {
		if !byMpirun {
			return vars
		}
		// mpirun started us: Open MPI's variable before Slurm's.
		return []string{vars[0], vars[1], vars[3], vars[2]}
	}
	var err error
	first := func(dst *int, name *string, vars []string) {
		for _, v := range vars {
			s, ok := lookup(v)
			if !ok {
				continue
			}
			if err == nil {
				*dst, err = atoi(v, s)
			}
			*name = v
			return
		}
	}
	first(&e.LocalRank, &e.LocalRankVar, order(localRankVars))
	first(&e.Rank, &e.RankVar, order(rankVars))
	first(&e.Size, &e.SizeVar, order(sizeVars))
	if err != nil {
		return e, err
	}
	if e.Size < 1 {
		return e, fmt.Errorf("slurm: %s=%d: the world size must be at least 1", e.SizeVar, e.Size)
	}
	if e.Rank < 0 || e.Rank >= e.Size {
		return e, fmt.Errorf("slurm: rank %d (%s) is outside [0, %d) (%s)", e.Rank, orDefault(e.RankVar), e.Size, orDefault(e.SizeVar))
	}
	if e.LocalRank < 0 {
		return e, fmt.Errorf("slurm: %s=%d: the local rank must not be negative", e.LocalRankVar, e.LocalRank)
	}

	for _, v := range []string{"SLURM_NODEID", "SLURM_CPUS_PER_TASK", "OPENBLAS_NUM_THREADS"} {
		s, ok := lookup(v)
		if !ok {
			continue
		}
		n, err := atoi(v, s)
		if err != nil {
			return e, err
		}
		if n < 0 {
			return e, fmt.Errorf("slurm: %s=%d must not be negative", v, n)
		}
		switch v {
		case "SLURM_NODEID":
			e.NodeID = n
		case "SLURM_CPUS_PER_TASK":
			e.CPUsPerTask = n
		case "OPENBLAS_NUM_THREADS":
			e.OpenBLASThreads = n
		}
	}
	e.JobID, _ = lookup("SLURM_JOB_ID")
	e.Node, _ = lookup("SLURMD_NODENAME")
	for _, v := range []string{"SLURM_JOB_NODELIST", "SLURM_NODELIST"} {
		if s, ok := lookup(v); ok {
			if e.Nodes, err = ExpandHostlist(s); err != nil {
				return e, fmt.Errorf("slurm: %s: %w", v, err)
			}
			break
		}
	}
	if e.Nodes != nil && e.NodeID >= len(e.Nodes) {
		return e, fmt.Errorf("slurm: SLURM_NODEID=%d but the node list has %d nodes", e.NodeID, len(e.Nodes))
	}
	if err := e.lookupLocalSize(lookup, byMpirun); err != nil {
		return e, err
	}
	if e.LocalSize > 0 && e.LocalRank >= e.LocalSize {
		return e, fmt.Errorf("slurm: local rank %d (%s) is outside [0, %d) (%s)", e.LocalRank, e.LocalRankVar, e.LocalSize, e.LocalSizeVar)
	}
	return e, nil
}

// lookupLocalSize sets LocalSize in the order of the local rank's
// variables: torchrun, MPICH, Slurm (this node's entry of the tasks per
// node), Open MPI; Open MPI before Slurm when mpirun started the process.
func (e *Env) lookupLocalSize(lookup func(string) (string, bool), byMpirun bool) error {
	vars := []string{"LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE"}
	if byMpirun {
		vars = []string{vars[0], vars[1], vars[4], vars[2], vars[3]}
	}
	for _, v := range vars {
		s, ok := lookup(v)
		if !ok {
			continue
		}
		var n int
		if strings.HasSuffix(v, "TASKS_PER_NODE") {
			per, err := ExpandTasksPerNode(s)
			if err != nil {
				return fmt.Errorf("slurm: %s: %w", v, err)
			}
			if e.NodeID >= len(per) {
				return fmt.Errorf("slurm: %s=%q has no entry for SLURM_NODEID=%d", v, s, e.NodeID)
			}
			n = per[e.NodeID]
		} else {
			var err error
			if n, err = atoi(v, s); err != nil {
				return err
			}
		}
		if n < 1 {
			return fmt.Errorf("slurm: %s=%q: ranks per node must be at least 1", v, s)
		}
		e.LocalSize, e.LocalSizeVar = n, v
		return nil
	}
	return nil
}

func atoi(name, s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("slurm: %s=%q is not an integer", name, s)
	}
	return n, nil
}

// Comm is what Check needs of a communicator (mpi.Comm has both methods).
type Comm interface {
	Rank() int
	Size() int
}

// Check returns an error when the launch environment and the communicator
// disagree on this process's rank or on the number of ranks: a program
// started without a launcher that MPI understands (a plain command in an
// sbatch script, srun without --mpi=pmix), built without MPI, or with
// variables left over from another launcher. When no launch variable is
// set there is nothing to disagree with and Check returns nil.
func (e Env) Check(c Comm) error {
	if !e.Launched() {
		return nil
	}
	r, w := c.Rank(), c.Size()
	if r == e.Rank && w == e.Size {
		return nil
	}
	msg := fmt.Sprintf("slurm: the launch environment says rank %d of %d (%s, %s) but MPI says rank %d of %d",
		e.Rank, e.Size, orDefault(e.RankVar), e.SizeVar, r, w)
	switch {
	case w == 1 && e.Size > 1:
		msg += ": MPI started this process alone. Start the program with srun --mpi=pmix or mpirun, not as a plain command inside the batch script, and build it with the mpi tag"
	case w != e.Size:
		msg += fmt.Sprintf(": %s is left over from another launch, or the launcher started a different number of ranks than the program joined", e.SizeVar)
	default:
		msg += fmt.Sprintf(": %s is left over from another launch (e.g. SLURM_PROCID of the batch script seen by ranks that mpirun started)", orDefault(e.RankVar))
	}
	return fmt.Errorf("%s", msg)
}

// Threads returns the BLAS threads each rank should use and where the
// number came from: OPENBLAS_NUM_THREADS when set (the user's choice),
// else SLURM_CPUS_PER_TASK (the CPUs Slurm gave this rank), else the
// cores of this node divided by the ranks on it (LocalSize, or 1 when
// unknown), and at least 1. cores is usually runtime.NumCPU(), which
// counts the CPUs this process may run on.
func (e Env) Threads(cores int) (n int, from string) {
	switch {
	case e.OpenBLASThreads > 0:
		return e.OpenBLASThreads, "OPENBLAS_NUM_THREADS"
	case e.CPUsPerTask > 0:
		return e.CPUsPerTask, "SLURM_CPUS_PER_TASK"
	}
	local, from := e.LocalSize, "cores/"+e.LocalSizeVar
	if local < 1 {
		local, from = 1, "cores"
	}
	n = cores / local
	if n < 1 {
		n = 1
	}
	return n, from
}

// Init reads the environment (FromEnv), checks it against comm (Check)
// and, if setThreads is not nil, calls it with Threads(runtime.NumCPU()).
// Pass blas.SetThreads; OpenBLAS also reads OPENBLAS_NUM_THREADS when it
// loads, which the sbatch scripts export, so both agree.
func Init(comm Comm, setThreads func(int)) (Env, error) {
	e, err := FromEnv()
	if err != nil {
		return e, err
	}
	if err := e.Check(comm); err != nil {
		return e, err
	}
	if setThreads != nil {
		n, _ := e.Threads(runtime.NumCPU())
		setThreads(n)
	}
	return e, nil
}
