"""Launch checks, run as plain pytest (not under mpirun): each case starts
Python (or mpirun) in a subprocess with a clean environment."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import HERE

PYTHON = sys.executable
PYDIR = os.path.dirname(HERE)


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = PYDIR
    env.update(extra)
    return env


def _run(code, timeout=120, **env):
    return subprocess.run([PYTHON, "-c", code], env=_env(**env), capture_output=True, text=True, timeout=timeout)


MAKE_LOSS = "import clipmpi.torch as ct; ct.ClipLoss(local_loss=True, gather_with_grad=True)"


def test_torchrun_style_launch_is_refused():
    """WORLD_SIZE=2 (torchrun, or a script that sets it) but MPI started the
    process alone: LaunchError, not a silent single-rank loss."""
    if os.environ.get("OMPI_COMM_WORLD_SIZE"):
        pytest.skip("run this file without mpirun: it starts its own processes")
    p = _run(MAKE_LOSS, WORLD_SIZE="2", RANK="0")
    assert p.returncode != 0
    assert "LaunchError" in p.stderr and "MPI started this process alone" in p.stderr, p.stderr


def test_single_process_without_mpirun():
    """One process without a launcher is a world of one rank; the library
    initialises and, at exit, finalises MPI (exit status 0)."""
    code = MAKE_LOSS + """
import torch
img = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
l = ct.ClipLoss()(img, img.detach() + 0.1, torch.tensor(10.0, requires_grad=True))
l.backward()
assert l.item() > 0 and img.grad.abs().sum() > 0
print("ok", ct.ClipLoss().world_size)
"""
    p = _run(code)
    assert p.returncode == 0 and "ok 1" in p.stdout, p.stdout + p.stderr


def test_missing_library():
    p = _run("import clipmpi", CLIPMPI_LIB="/nonexistent/libclipmpi.so")
    assert p.returncode != 0 and "ImportError" in p.stderr and "make lib" in p.stderr, p.stderr


def test_uncaught_exception_ends_the_job():
    """Rank 1 dies of an uncaught exception while rank 0 waits in a loss
    step: the job ends (MPI_Abort, naming the rank) instead of hanging."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        pytest.skip("mpirun not found")
    script = os.path.join(os.path.dirname(PYDIR), "scripts", "mpirun.sh")
    code = """
import torch, clipmpi.torch as ct
f = ct.ClipLoss(local_loss=True, gather_with_grad=True)
if f.rank == 1:
    raise KeyError("rank 1 lost its data")
f(torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.tensor(10.0))
"""
    p = subprocess.run([script, "2", PYTHON, "-c", code], env=_env(CLIPMPI_TIMEOUT="60"), capture_output=True,
                       text=True, timeout=90)
    out = p.stdout + p.stderr
    assert p.returncode not in (0, 124, 137), out  # failed, not timed out
    assert "rank 1 of 2: uncaught exception, ending the job: KeyError" in out, out
