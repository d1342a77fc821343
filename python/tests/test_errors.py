"""Errors under mpirun -np 2: whatever one rank gets wrong, every rank
raises the same exception (no rank is left waiting), and the loss works
again at the next step."""

import pytest
import torch

import clipmpi
import clipmpi.torch as ct
from conftest import RANK, SIZE

pytestmark = pytest.mark.skipif(SIZE < 2, reason="the error tests need 2 ranks: mpirun -np 2")

B, D = 4, 8


def feats(dtype=torch.float64, b=B, d=D, device="cpu"):
    g = torch.Generator().manual_seed(7 + RANK)
    img = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    txt = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    if device != "cpu":
        img, txt = img.to(device), txt.to(device)
    if not dtype.is_floating_point:
        return img, txt
    return img.requires_grad_(), txt.requires_grad_()


def scale(v=10.0, dtype=torch.float64):
    return torch.tensor(v, dtype=dtype, requires_grad=True)


@pytest.fixture(scope="module")
def clip():
    return ct.ClipLoss(local_loss=True, gather_with_grad=True)


@pytest.fixture(scope="module")
def siglip():
    return ct.SigLipLoss()


def raises_then_works(loss_fn, exc, call, *contains):
    """call() must raise exc on this rank (every rank runs this), with each
    of contains in the message; then a valid step must work."""
    with pytest.raises(exc) as info:
        call()
    for s in contains:
        assert s in str(info.value), f"{s!r} not in {info.value}"
    img, txt = feats()
    loss_fn(img, txt, scale()).backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    return info.value


def test_int32_everywhere(clip):
    img, txt = feats(torch.int32)
    e = raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "int32")
    assert isinstance(e, TypeError) and isinstance(e, ValueError)


def test_int32_on_rank_1(clip, siglip):
    for f in (clip, siglip):
        img, txt = feats(torch.int32 if RANK == 1 else torch.float64)
        raises_then_works(f, clipmpi.InvalidInputError, lambda: f(img, txt, scale()), "rank 1 (element type)")


def test_mixed_dtypes_on_one_rank(clip):
    img, txt = feats()
    if RANK == 0:
        txt = txt.detach().float()
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "rank 0 (element type)")


def test_float32_against_float64(clip):
    """float32 on one rank and float64 on the other: both valid, so the
    ranks disagree."""
    img, txt = feats(torch.float32 if RANK == 1 else torch.float64)
    raises_then_works(clip, clipmpi.RanksDisagreeError, lambda: clip(img, txt, scale(dtype=img.dtype)),
                      "element type")


def test_gpu_tensor_on_rank_1(clip):
    """A tensor that is not in host memory. Without CUDA, the meta device
    stands in for the GPU: the check is on the device type."""
    device = "cuda" if torch.cuda.is_available() else "meta"
    img, txt = feats(device=device if RANK == 1 else "cpu")
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "rank 1 (device)")
    if RANK == 1:
        with pytest.raises(clipmpi.InvalidInputError, match="CPU"):
            clip(img, txt, scale())
    else:
        with pytest.raises(clipmpi.InvalidInputError):
            clip(*feats(), scale())


def test_cuda_tensor(clip):
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA (the meta-device test above covers the device check)")
    img, txt = feats(device="cuda")
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "cuda")


def test_batch_size_differs(clip, siglip):
    for f in (clip, siglip):
        img, txt = feats(b=B - 1 if RANK == 1 else B)
        raises_then_works(f, clipmpi.RanksDisagreeError, lambda: f(img, txt, scale()), "batch size", "3 to 4")


def test_dimension_differs(clip):
    img, txt = feats(d=D + 1 if RANK == 1 else D)
    raises_then_works(clip, clipmpi.RanksDisagreeError, lambda: clip(img, txt, scale()), "dimension")


def test_local_shapes(clip):
    img, txt = feats()
    if RANK == 0:
        txt = txt[:-1]
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "rank 0 (shape)")
    img, txt = feats()
    if RANK == 1:
        img, txt = img.reshape(-1), txt.reshape(-1)
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(img, txt, scale()), "rank 1 (shape)")
    s = torch.ones(2, dtype=torch.float64) if RANK == 0 else scale()
    raises_then_works(clip, clipmpi.InvalidInputError, lambda: clip(*feats(), s), "rank 0 (shape)", )


def test_nan_on_rank_1(clip, siglip):
    for f in (clip, siglip):
        img, txt = feats()
        if RANK == 1:
            with torch.no_grad():
                img[2, 3] = float("nan")
        raises_then_works(f, clipmpi.NonFiniteError, lambda: f(img, txt, scale()), "NaN or Inf", "rank 1")


def test_infinite_scale(clip):
    raises_then_works(clip, clipmpi.NonFiniteError, lambda: clip(*feats(), scale(float("inf"))), "logit scale")


def test_scale_differs(clip):
    raises_then_works(clip, clipmpi.RanksDisagreeError, lambda: clip(*feats(), scale(10.0 + RANK)), "logit scale")


def test_grad_mode_differs(clip):
    def call():
        img, txt = feats()
        if RANK == 1:
            with torch.no_grad():
                return clip(img, txt, scale())
        return clip(img, txt, scale())
    raises_then_works(clip, clipmpi.RanksDisagreeError, call, "forward versus forward_backward")


def test_empty_batch(clip):
    raises_then_works(clip, clipmpi.EmptyBatchError, lambda: clip(*feats(b=0), scale()), "empty batch")


def test_local_misuse():
    """Options the library does not know: UsageError on the rank that made
    the mistake, at construction, before any communication."""
    with pytest.raises(clipmpi.UsageError, match="bogus"):
        ct.ClipLoss(algorithm="bogus")
    with pytest.raises(clipmpi.UsageError, match="sideways"):
        ct.SigLipLoss(dist_impl="sideways")
    with pytest.raises(clipmpi.UsageError, match="tile"):
        ct.ClipLoss(tile=-1)
    with pytest.raises(ValueError, match="world_size"):
        ct.ClipLoss(world_size=SIZE + 1)
    with pytest.raises(ValueError, match="rank"):
        ct.ClipLoss(rank=(RANK + 1) % SIZE)
    with pytest.raises(ValueError, match="horovod"):
        ct.ClipLoss(use_horovod=True)


def test_auto_nothing_fits():
    """algorithm="auto" with a budget nothing fits: NoFitError (a
    MemoryError) on every rank at the first call."""
    f = ct.ClipLoss(local_loss=True, gather_with_grad=True, algorithm="auto", memory_budget=1)
    with pytest.raises(clipmpi.NoFitError, match="fits") as e:
        f(*feats(), scale())
    assert isinstance(e.value, MemoryError)
    with pytest.raises(clipmpi.UsageError, match="rates_json"):
        ct.ClipLoss(algorithm="auto", rates={"no_such_rate": 1})


def test_non_contiguous_inputs(clip):
    """A transposed view is made contiguous; the numbers are those of the
    contiguous tensor."""
    img, txt = feats()
    a = clip(img, txt, scale())
    a.backward()
    want = img.grad.clone()
    img2 = img.detach().T.contiguous().T.requires_grad_()
    assert not img2.is_contiguous()
    b = clip(img2, txt.detach(), scale())
    b.backward()
    assert a.item() == b.item()
    assert torch.equal(img2.grad, want)


def test_backward_without_gradients(clip):
    """A loss computed under no_grad has no graph: backward is torch's own
    error, on every rank alike."""
    with torch.no_grad():
        v = clip(*feats(), scale())
    with pytest.raises(RuntimeError):
        v.backward()


def test_threads_change_no_bit():
    """The loss's kernel threads (loss.Threads) give the same bits."""
    out = []
    for threads in (1, 3):
        f = ct.ClipLoss(local_loss=True, gather_with_grad=True, threads=threads)
        img, txt = feats()
        loss = f(img, txt, scale())
        loss.backward()
        out.append((loss.item(), img.grad.clone(), txt.grad.clone()))
        f.close()
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1]) and torch.equal(out[0][2], out[1][2])
    with pytest.raises(clipmpi.UsageError):
        ct.ClipLoss(threads=-1)
