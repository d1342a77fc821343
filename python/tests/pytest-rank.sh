#!/bin/sh
# pytest-rank.sh ARGS...: pytest ARGS on this MPI rank, with PYTHON_TORCH
# (default /usr/bin/python3). Ranks other than 0 write their output to
# $CLIPMPI_PYTEST_LOGS/rank<r>.log when that is set, so that the terminal
# shows rank 0's report.
r=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-0}}}
if [ "$r" != 0 ] && [ -n "${CLIPMPI_PYTEST_LOGS:-}" ]; then
	mkdir -p "$CLIPMPI_PYTEST_LOGS"
	exec >"$CLIPMPI_PYTEST_LOGS/rank$r.log" 2>&1
fi
exec "${PYTHON_TORCH:-/usr/bin/python3}" -m pytest "$@"
