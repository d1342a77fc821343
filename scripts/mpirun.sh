#!/usr/bin/env bash
# mpirun.sh NP PROGRAM [ARGS...]: run PROGRAM on NP local MPI ranks with the
# flags this machine needs, so nobody has to remember them:
#   --allow-run-as-root     when running as root (CI, containers);
#   --oversubscribe         when NP exceeds the cores;
#   --bind-to none          ranks and BLAS threads are placed by the kernel;
#   OPENBLAS_NUM_THREADS    cores / NP (at least 1), unless already set, so
#                           ranks x threads never exceeds the cores;
#   OPENBLAS_THREAD_TIMEOUT 4, unless already set: an idle OpenBLAS thread
#                           sleeps after 2^4 cycles instead of spinning on
#                           sched_yield for 2^28 (about 0.1 s) after every
#                           GEMM, which took a core from the loss kernels'
#                           threads (README, "Threads inside a rank");
#   OMP_NUM_THREADS         as OPENBLAS_NUM_THREADS, and OMP_WAIT_POLICY
#                           PASSIVE, unless set: OpenMP's threads (oneDNN's
#                           bf16 GEMMs, PyTorch's) sleep when idle;
#   the OpenMPI TCP keepalive settings that turn a lost peer into an error
#   within seconds instead of minutes (README, "Clusters: Slurm and
#   several hosts").
# With CLIPMPI_TIMEOUT=SECONDS the whole run is bounded (timeout, SIGKILL 10 s
# after SIGTERM): the test suites and CI set it, so that a hang becomes a
# failure, never a stuck job. Without it there is no time limit: a training
# run takes as long as it takes.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NP PROGRAM [ARGS...]" >&2
  exit 2
fi
np=$1
shift
command -v mpirun >/dev/null || { echo "mpirun not found: run 'make deps' (Debian: apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 127; }
cores=$(nproc)
flags=(--bind-to none)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ "$np" -gt "$cores" ] && flags+=(--oversubscribe)
threads=$(( cores / np ))
[ "$threads" -ge 1 ] || threads=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$threads}
# OpenMP's threads (PyTorch's, oneDNN's) get the same share of the cores,
# and an idle one sleeps at once instead of spinning (libgomp's default
# spins a while after every parallel region: after every bf16 GEMM, while
# the loss kernels want the cores).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$OPENBLAS_NUM_THREADS}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# OpenBLAS picks its kernels by the CPU model it knows, and falls back to
# old ones on a newer CPU: Debian 12's 0.3.21 runs its Prescott (SSE3)
# kernels on Intel's Emerald Rapids (family 6, model 207), at a fifth of
# the SGEMM rate of its SkylakeX kernels there (32 against 145 GFLOP/s on
# one core, measured with go test -bench Gemm ./blas). Where the CPU has
# AVX-512 (F, BW, DQ, VL) and no core was chosen, choose SkylakeX's.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  cpuflags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  avx512=1
  for f in avx512f avx512bw avx512dq avx512vl; do
    [[ " $cpuflags " == *" $f "* ]] || avx512=0
  done
  [ "$avx512" = 1 ] && export OPENBLAS_CORETYPE=SkylakeX
fi
[ -n "${OPENBLAS_CORETYPE:-}" ] && flags+=(-x OPENBLAS_CORETYPE)
export OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-4}
export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-5}
export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-2}
export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-3}
# Containers and VMs often forbid the cross-memory attach that vader's
# single-copy path uses; copy-in/copy-out works everywhere.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
if [ -n "${CLIPMPI_TIMEOUT:-}" ]; then
  [[ $CLIPMPI_TIMEOUT =~ ^[0-9]+$ ]] || { echo "$0: CLIPMPI_TIMEOUT=$CLIPMPI_TIMEOUT: want whole seconds" >&2; exit 2; }
  exec timeout -k 10 "$CLIPMPI_TIMEOUT" mpirun "${flags[@]}" -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS -x OMP_WAIT_POLICY -x OPENBLAS_THREAD_TIMEOUT -np "$np" "$@"
fi
exec mpirun "${flags[@]}" -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS -x OMP_WAIT_POLICY -x OPENBLAS_THREAD_TIMEOUT -np "$np" "$@"
