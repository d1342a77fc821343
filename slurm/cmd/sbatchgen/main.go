// Command sbatchgen writes an sbatch script for a clipmpi training job:
//
//	go run ./slurm/cmd/sbatchgen -nodes 4 -tasks-per-node 8 -cpus-per-task 4 \
//	    -time 12:00:00 -partition cpu -o train.sbatch -- --batch-size 256 --epochs 32
//	sbatch train.sbatch [more training flags...]
//
// Arguments after the flags (after --) are passed to the training program.
// The script launches with srun --mpi=pmix by default (-launcher mpirun, or
// CLIPMPI_LAUNCHER=mpirun at submission, for mpirun inside the allocation)
// and exports the BLAS thread count and Open MPI's fail-fast settings.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/clipmpi/clipmpi/slurm"
)

func main() {
	var j slurm.Job
	flag.IntVar(&j.Nodes, "nodes", 1, "nodes")
	flag.IntVar(&j.TasksPerNode, "tasks-per-node", 2, "MPI ranks per node")
	flag.IntVar(&j.CPUsPerTask, "cpus-per-task", 1, "CPUs per rank (and its BLAS threads)")
	flag.StringVar(&j.Time, "time", "01:00:00", "time limit: MM, HH:MM:SS or D-HH:MM:SS")
	flag.StringVar(&j.Partition, "partition", "", "partition (default: the cluster's default)")
	flag.StringVar(&j.Account, "account", "", "account to charge (default: none)")
	flag.StringVar(&j.Name, "job-name", "clipmpi-train", "job name")
	flag.StringVar(&j.Output, "output", "clipmpi-%j.out", "job output file (%j: job id)")
	flag.StringVar(&j.Launcher, "launcher", "srun", "default launcher: srun (--mpi=pmix) or mpirun")
	flag.StringVar(&j.Program, "program", "bin/train", "training program (relative paths: to the submit directory)")
	out := flag.String("o", "-", "file to write (- for standard output)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: sbatchgen [flags] [-- training flags...]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	j.Args = flag.Args()
	s, err := j.Script()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sbatchgen:", err)
		os.Exit(2)
	}
	if *out == "-" {
		_, err = os.Stdout.WriteString(s)
	} else {
		err = os.WriteFile(*out, []byte(s), 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sbatchgen:", err)
		os.Exit(1)
	}
}
