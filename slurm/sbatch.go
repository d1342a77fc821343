package slurm

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"text/template"
)

// Job describes an sbatch script for a training run: Nodes nodes with
// TasksPerNode MPI ranks each, CPUsPerTask CPUs (and BLAS threads) per
// rank. The script runs Program with Args and any arguments given to
// sbatch after the script name.
type Job struct {
	Name         string   // job name (--job-name); "clipmpi-train" if empty
	Nodes        int      // nodes (--nodes), at least 1
	TasksPerNode int      // MPI ranks per node (--ntasks-per-node), at least 1
	CPUsPerTask  int      // CPUs per rank (--cpus-per-task), at least 1
	Time         string   // time limit (--time): MM, HH:MM:SS or D-HH:MM:SS
	Partition    string   // partition (--partition); the cluster's default if empty
	Account      string   // account (--account); none if empty
	Output       string   // output file (--output); "clipmpi-%j.out" if empty
	Launcher     string   // default launcher, "srun" or "mpirun"; "srun" if empty
	Program      string   // program to run; "bin/train" (relative to the submit directory) if empty
	Args         []string // arguments of Program, before those given to sbatch
}

var (
	timeRE = regexp.MustCompile(`^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$`)
	// nameRE: what may appear unquoted in an #SBATCH line.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.%/+@=-]+$`)
)

// Validate returns an error naming the first field that an sbatch script
// cannot be written with.
func (j Job) Validate() error {
	switch {
	case j.Nodes < 1:
		return fmt.Errorf("slurm: nodes must be at least 1, not %d", j.Nodes)
	case j.TasksPerNode < 1:
		return fmt.Errorf("slurm: tasks per node must be at least 1, not %d", j.TasksPerNode)
	case j.CPUsPerTask < 1:
		return fmt.Errorf("slurm: cpus per task must be at least 1, not %d", j.CPUsPerTask)
	case !timeRE.MatchString(j.Time):
		return fmt.Errorf("slurm: time %q is not MM, HH:MM:SS or D-HH:MM:SS", j.Time)
	case j.Launcher != "" && j.Launcher != "srun" && j.Launcher != "mpirun":
		return fmt.Errorf("slurm: launcher %q is neither srun nor mpirun", j.Launcher)
	}
	for _, f := range []struct{ name, v string }{{"name", j.Name}, {"partition", j.Partition}, {"account", j.Account}, {"output", j.Output}} {
		if f.v != "" && !nameRE.MatchString(f.v) {
			return fmt.Errorf("slurm: %s %q has characters an #SBATCH line cannot hold", f.name, f.v)
		}
	}
	return nil
}

// Script returns the sbatch script for j, or Validate's error. The script
// starts the ranks with srun --mpi=pmix (or mpirun inside the allocation
// when CLIPMPI_LAUNCHER=mpirun at submission), one BLAS thread per CPU of a
// task, and the settings that end the job quickly when a rank or a node is
// lost (see the comments it contains).
func (j Job) Script() (string, error) {
	if err := j.Validate(); err != nil {
		return "", err
	}
	if j.Name == "" {
		j.Name = "clipmpi-train"
	}
	if j.Output == "" {
		j.Output = "clipmpi-%j.out"
	}
	if j.Launcher == "" {
		j.Launcher = "srun"
	}
	if j.Program == "" {
		j.Program = "bin/train"
	}
	var b bytes.Buffer
	err := scriptTmpl.Execute(&b, struct {
		Job
		Args, ProgramQ string
	}{j, shellJoin(j.Args), shellQuote(j.Program)})
	return b.String(), err
}

// shellQuote quotes s for bash, leaving plain words as they are.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

var scriptTmpl = template.Must(template.New("sbatch").Parse(`#!/bin/bash
# clipmpi training: {{.Nodes}} node(s) x {{.TasksPerNode}} rank(s), {{.CPUsPerTask}} CPU(s) per rank.
# Written by: go run ./slurm/cmd/sbatchgen (see its -h to change the numbers).
#
#   sbatch [sbatch options] THIS_SCRIPT [training flags...]
#   CLIPMPI_LAUNCHER=mpirun sbatch ...      mpirun inside the allocation instead of srun
#   CLIPMPI_PROGRAM=path sbatch ...         another program than {{.Program}}
#
# Options given to sbatch override the #SBATCH lines, e.g. sbatch --nodes=4 --time=2:00:00.
#SBATCH --job-name={{.Name}}
#SBATCH --nodes={{.Nodes}}
#SBATCH --ntasks-per-node={{.TasksPerNode}}
#SBATCH --cpus-per-task={{.CPUsPerTask}}
#SBATCH --time={{.Time}}
{{- if .Partition}}
#SBATCH --partition={{.Partition}}
{{- end}}
{{- if .Account}}
#SBATCH --account={{.Account}}
{{- end}}
#SBATCH --output={{.Output}}
# A job that lost a node ends; it is not started again from the beginning.
#SBATCH --no-requeue
set -euo pipefail

launcher=${CLIPMPI_LAUNCHER:-{{.Launcher}}}
program=${CLIPMPI_PROGRAM:-{{.ProgramQ}}}
case $program in /*) ;; *) program=${SLURM_SUBMIT_DIR:-$PWD}/$program ;; esac

# One BLAS thread per CPU Slurm gave a rank, so ranks x threads = CPUs.
export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$OPENBLAS_NUM_THREADS

# Fail fast when a node goes silent (cut link, crash, hung kernel). Open MPI
# declares a daemon lost after TCP keepalive on its out-of-band channel:
# first probe after 5 s idle, then every 2 s, lost after 3 missed probes,
# about 11 s in all (5 + 3 x 2; the defaults, 300 s + 9 x 20 s, let a job
# hang for 8 minutes). mpirun inside the allocation relies on this; ranks started by
# srun are ended by Slurm when slurmd stops answering (SlurmdTimeout).
export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-5}
export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-2}
export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-3}

echo "clipmpi: job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NTASKS:-?} ranks, $OPENBLAS_NUM_THREADS BLAS thread(s) each, launcher $launcher"
case $launcher in
srun)
	# --cpus-per-task: srun of Slurm 22.05 and 23.02 does not read
	# SLURM_CPUS_PER_TASK, and without it gives (and binds) each rank one
	# CPU whatever the job asked for, under the BLAS threads set above.
	# --kill-on-bad-exit: a rank that dies or exits non-zero ends every rank
	# at once. --wait: ranks still running 10 s after the first one ended
	# are killed, so a rank stuck in a collective cannot hold the job.
	exec srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 --wait=10 \
		"$program" {{.Args}}{{if .Args}} {{end}}"$@"
	;;
mpirun)
	# mpirun takes the nodes and slots from the allocation and starts its
	# daemons with srun. It ends every rank when one exits non-zero or dies,
	# and the job when a daemon is lost (the keepalive above). That srun
	# starts one daemon per node, unbound, and the ranks under it; it must
	# not get --cpus-per-task (nor SRUN_CPUS_PER_TASK, which means the
	# same): that implies --exact and would hold all the node's ranks to
	# one rank's CPUs. Without it the step gets all the job's CPUs there.
	unset SRUN_CPUS_PER_TASK
	root=()
	[ "$(id -u)" != 0 ] || root=(--allow-run-as-root)
	exec mpirun "${root[@]}" -np "$SLURM_NTASKS" --map-by "ppr:${SLURM_NTASKS_PER_NODE:-{{.TasksPerNode}}}:node" --bind-to none \
		-x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS \
		"$program" {{.Args}}{{if .Args}} {{end}}"$@"
	;;
*)
	echo "clipmpi: CLIPMPI_LAUNCHER=$launcher: want srun or mpirun" >&2
	exit 2
	;;
esac
`))
