"""Training equivalence under mpirun -np 2: a small dual encoder (a
two-layer MLP per tower) trained for a few AdamW steps with DDP over gloo
(torch.distributed started by clipmpi.torch.init_distributed) and the loss
from clipmpi over MPI, each rank holding half of every batch, ends with the
same parameters as one process training on whole batches with the loss in
plain PyTorch (clipmpi.reference): to 1e-10 in float64 and 1e-5 in float32.
ClipLoss(local_loss=True, gather_with_grad=True) and SigLipLoss."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import clipmpi.torch as ct
from clipmpi import reference
from conftest import RANK, SIZE

pytestmark = pytest.mark.skipif(SIZE < 2, reason="training equivalence needs 2 ranks: mpirun -np 2")

IMG, TXT, HIDDEN, EMBED, LATENT = 12, 10, 16, 8, 4
B, STEPS = 8, 6  # rows per rank per step
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class Tower(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, EMBED)

    def forward(self, x):
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)


class DualEncoder(torch.nn.Module):
    def __init__(self, siglip):
        super().__init__()
        self.image, self.text = Tower(IMG), Tower(TXT)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0 if siglip else 1 / 0.07)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0)) if siglip else None

    def forward(self, x_img, x_txt):
        return self.image(x_img), self.text(x_txt), self.logit_scale.exp(), self.logit_bias


def batches(dtype):
    """STEPS global batches of SIZE*B pairs: 4 latent factors seen through
    two random maps plus noise (the same on every rank)."""
    g = torch.Generator().manual_seed(3)
    n = STEPS * SIZE * B
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    img = z @ torch.randn(LATENT, IMG, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, IMG, generator=g,
                                                                                             dtype=torch.float64)
    txt = z @ torch.randn(LATENT, TXT, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, TXT, generator=g,
                                                                                             dtype=torch.float64)
    return img.to(dtype).split(SIZE * B), txt.to(dtype).split(SIZE * B)


def model(siglip, dtype):
    torch.manual_seed(1)
    return DualEncoder(siglip).to(dtype)


def train(net, loss_fn, xs, ys, rows):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        fi, ft, s, b = net(x[rows], y[rows])
        loss = loss_fn(fi, ft, s, b)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module", autouse=True)
def distributed():
    rank, size = ct.init_distributed()
    assert (rank, size) == (RANK, SIZE) and dist.get_world_size() == SIZE
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_ranks_equal_one_process(kind, dtype):
    siglip = kind == "siglip"
    xs, ys = batches(dtype)

    # W ranks: DDP averages the encoders' gradients over gloo, clipmpi
    # computes the loss over MPI; rank r holds rows r*B .. r*B+B-1.
    net = model(siglip, dtype)
    ddp = DDP(net)
    lf = ct.SigLipLoss() if siglip else ct.ClipLoss(local_loss=True, gather_with_grad=True)
    mine = slice(RANK * B, (RANK + 1) * B)
    losses = train(ddp, lambda fi, ft, s, b: lf(fi, ft, s, b), xs, ys, mine)

    # One process, whole batches, the loss in plain PyTorch.
    ref = model(siglip, dtype)
    if siglip:
        ref_fn = lambda fi, ft, s, b: reference.siglip_loss(fi, ft, s, b, distributed=False)  # noqa: E731
    else:
        ref_fn = lambda fi, ft, s, b: reference.clip_loss(fi, ft, s, b, distributed=False)  # noqa: E731
    ref_losses = train(ref, ref_fn, xs, ys, slice(None))

    # The mean of the ranks' losses is the whole batch's loss.
    mean = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(mean)
    mean /= SIZE
    assert torch.allclose(mean, torch.tensor(ref_losses, dtype=torch.float64), rtol=0, atol=10 * TOL[dtype]), \
        (mean.tolist(), ref_losses)
    worst = max((p - q).abs().max().item() for p, q in zip(net.parameters(), ref.parameters()))
    moved = max((p - q).abs().max().item() for p, q in zip(net.parameters(), model(siglip, dtype).parameters()))
    print(f"rank {RANK} {kind} {dtype}: parameters moved up to {moved:.3g}; "
          f"largest difference from one process {worst:.3g}")
    assert moved > 0.01, "the parameters hardly moved: the test would prove nothing"
    assert worst <= TOL[dtype], f"rank {RANK}: parameters differ by {worst:.3g} > {TOL[dtype]}"
