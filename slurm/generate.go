package slurm

// The shipped scripts; TestShippedScripts checks that they are up to date.
//go:generate go run ./cmd/sbatchgen -nodes 1 -tasks-per-node 2 -cpus-per-task 1 -time 01:00:00 -o train.sbatch
//go:generate go run ./cmd/sbatchgen -nodes 2 -tasks-per-node 2 -cpus-per-task 1 -time 01:00:00 -o train-multinode.sbatch
