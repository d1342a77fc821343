"""The mpi4py path, under mpirun -np 2: mpi4py initialises MPI (before
clipmpi), communicators are passed as mpi4py objects (their Fortran
handles), and clipmpi's finalize leaves mpi4py's MPI running."""

from mpi4py import MPI  # first: mpi4py initialises MPI, MPI_THREAD_MULTIPLE

import pytest
import torch

import clipmpi
import clipmpi.torch as ct
from conftest import RANK, REL64, SIZE, load_cases, mismatch


def _module(c, comm):
    if c["loss_kind"] == "clip":
        return ct.ClipLoss(local_loss=c["local_loss"], gather_with_grad=c["gather_with_grad"], comm=comm)
    return ct.SigLipLoss(dist_impl=c["siglip_dist_impl"], chunk_size=c["siglip_chunk_size"] or 0, comm=comm)


def _run(c, m, img, txt, want):
    dt = torch.float64
    img = torch.tensor(img, dtype=dt, requires_grad=True)
    txt = torch.tensor(txt, dtype=dt, requires_grad=True)
    s = torch.tensor(c["logit_scale"], dtype=dt, requires_grad=True)
    b = None if c["logit_bias"] is None else torch.tensor(c["logit_bias"], dtype=dt)
    loss = m(img, txt, s, b)
    loss.backward()
    bad = [mismatch("loss", loss, want["loss"], REL64),
           mismatch("image_features.grad", img.grad, want["grad_image_features"], REL64),
           mismatch("text_features.grad", txt.grad, want["grad_text_features"], REL64),
           mismatch("logit_scale.grad", s.grad, want["grad_logit_scale"], REL64)]
    return [x for x in bad if x]


def test_mpi4py_initialised_mpi():
    assert MPI.Is_initialized() and MPI.Query_thread() == MPI.THREAD_MULTIPLE
    assert MPI.COMM_WORLD.Get_size() == SIZE


@pytest.mark.parametrize("case", load_cases(SIZE), ids=lambda c: c["file"])
def test_duplicate_of_world(case):
    """A communicator of the caller's (a Dup of COMM_WORLD), freed by the
    caller as soon as the loss has its own duplicate."""
    comm = MPI.COMM_WORLD.Dup()
    m = _module(case, comm)
    comm.Free()
    assert (m.rank, m.world_size) == (RANK, SIZE)
    r = case["ranks"][RANK]
    bad = _run(case, m, r["image_features"], r["text_features"], r)
    m.close()  # frees the library's duplicate: collective
    assert not bad, f"rank {RANK}: {bad}"


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c["file"])
def test_one_rank_split(case):
    """COMM_WORLD.Split by rank: each rank computes the case's
    single_process outputs alone, on all ranks' rows."""
    sub = MPI.COMM_WORLD.Split(color=RANK, key=0)
    m = _module(case, sub)
    sub.Free()
    assert (m.rank, m.world_size) == (0, 1)
    img = [row for r in case["ranks"] for row in r["image_features"]]
    txt = [row for r in case["ranks"] for row in r["text_features"]]
    bad = _run(case, m, img, txt, case["single_process"])
    m.close()
    assert not bad, f"rank {RANK}: {bad}"


def test_errors_on_a_caller_communicator():
    """The agreement works on a caller's communicator too."""
    comm = MPI.COMM_WORLD.Dup()
    m = ct.ClipLoss(local_loss=True, gather_with_grad=True, comm=comm)
    img = torch.randn(4 - (RANK == 1), 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(clipmpi.RanksDisagreeError, match="batch size"):
        m(img, img.detach(), torch.tensor(10.0))
    m.close()
    comm.Free()


def test_finalize_leaves_mpi4py_mpi():
    """clipmpi.finalize does not finalise MPI that mpi4py initialised; MPI
    keeps working for mpi4py; clipmpi cannot be used afterwards."""
    clipmpi.finalize()
    assert not MPI.Is_finalized()
    assert MPI.COMM_WORLD.allreduce(1) == SIZE
    with pytest.raises(clipmpi.UsageError, match="finalize"):
        ct.ClipLoss(comm=MPI.COMM_WORLD)
