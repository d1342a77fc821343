"""Every golden case of this world size (mpirun -np W) through
clipmpi.torch: the loss, and the .grad of every input (image and text
features, the logit scale as passed and the logit bias), to the golden
tolerances in float64 and to a float32 tolerance in float32; ClipLoss with
every algorithm, SigLipLoss with the case's dist_impl and chunk size; both
with "auto" too."""

import math

import pytest
import torch

import clipmpi.torch as ct
from conftest import CLIP_BIAS_ABS64, RANK, REL32, REL64, ABS32, SIZE, load_cases, mismatch

CASES = load_cases(SIZE)
ALGOS = ["naive", "fused", "tiled", "ring", "auto"]
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _params():
    for c in CASES:
        variants = ALGOS if c["loss_kind"] == "clip" else [c["siglip_dist_impl"], "auto"]
        for v in variants:
            for dt in DTYPES:
                yield pytest.param(c, v, dt, id=f"{c['file']}-{v}-{dt}")


def _module(c, variant):
    if c["loss_kind"] == "clip":
        return ct.ClipLoss(local_loss=c["local_loss"], gather_with_grad=c["gather_with_grad"], algorithm=variant,
                           rank=RANK, world_size=SIZE)
    return ct.SigLipLoss(dist_impl=variant, chunk_size=c["siglip_chunk_size"] or 0, rank=RANK, world_size=SIZE)


def _inputs(c, dtype, chain_scale=False):
    r = c["ranks"][RANK]
    img = torch.tensor(r["image_features"], dtype=dtype, requires_grad=True)
    txt = torch.tensor(r["text_features"], dtype=dtype, requires_grad=True)
    leaf = torch.tensor(math.log(c["logit_scale"]) if chain_scale else c["logit_scale"], dtype=dtype,
                        requires_grad=True)
    scale = leaf.exp() if chain_scale else leaf
    bias = None
    if c["logit_bias"] is not None:
        bias = torch.tensor(c["logit_bias"], dtype=dtype, requires_grad=True)
    return img, txt, leaf, scale, bias


def _check(c, dtype, loss, fwd, img, txt, scale_grad, bias):
    r = c["ranks"][RANK]
    f32 = dtype == "float32"
    rel, abs_tol = (REL32, ABS32) if f32 else (REL64, 0.0)
    bad = [mismatch("loss", loss, r["loss"], rel, abs_tol),
           mismatch("forward loss", fwd, r["loss"], rel, abs_tol),
           mismatch("image_features.grad", img.grad, r["grad_image_features"], rel, abs_tol),
           mismatch("text_features.grad", txt.grad, r["grad_text_features"], rel, abs_tol),
           mismatch("logit_scale.grad", scale_grad, r["grad_logit_scale"], rel, abs_tol)]
    if bias is not None:
        if c["loss_kind"] == "clip":
            bad.append(mismatch("logit_bias.grad", bias.grad, r["grad_logit_bias"], 0.0,
                                ABS32 if f32 else CLIP_BIAS_ABS64))
        else:
            bad.append(mismatch("logit_bias.grad", bias.grad, r["grad_logit_bias"], rel, abs_tol))
    bad = [b for b in bad if b]
    assert not bad, f"rank {RANK}: " + "; ".join(bad)


@pytest.mark.parametrize("case,variant,dtype", list(_params()))
def test_golden(case, variant, dtype):
    m = _module(case, variant)
    img, txt, leaf, scale, bias = _inputs(case, DTYPES[dtype])
    loss = m(img, txt, scale, bias)
    assert loss.dim() == 0 and loss.dtype == DTYPES[dtype]
    loss.backward()
    with torch.no_grad():
        fwd = m(img, txt, scale, bias)
    assert fwd.grad_fn is None
    _check(case, dtype, loss, fwd, img, txt, leaf.grad, bias)
    m.close()


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_golden_log_scale(case):
    """The scale as OpenCLIP passes it, logit_scale.exp() of a log
    parameter, with output_dict=True: autograd chains the scale's gradient,
    d loss / d log_scale = grad_logit_scale * scale."""
    m = _module(case, "fused" if case["loss_kind"] == "clip" else case["siglip_dist_impl"])
    img, txt, log_scale, scale, bias = _inputs(case, torch.float64, chain_scale=True)
    out = m(img, txt, scale, bias, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    out["contrastive_loss"].backward()
    r = case["ranks"][RANK]
    bad = mismatch("log_scale.grad", log_scale.grad, r["grad_logit_scale"] * case["logit_scale"], REL64)
    bad = bad or mismatch("image_features.grad", img.grad, r["grad_image_features"], REL64)
    assert not bad, f"rank {RANK}: {bad}"
    m.close()


def test_scaled_backward():
    """backward of 0.5 * loss halves every gradient (the incoming gradient
    scales what the library computed)."""
    c = next(c for c in CASES if c["loss_kind"] == "clip" and c["batch_per_rank"] > 1)
    m = _module(c, "fused")
    img, txt, leaf, scale, bias = _inputs(c, torch.float64)
    (0.5 * m(img, txt, scale, bias)).backward()
    r = c["ranks"][RANK]
    half = [[0.5 * x for x in row] for row in r["grad_image_features"]]
    bad = mismatch("image_features.grad", img.grad, half, REL64) or \
        mismatch("logit_scale.grad", leaf.grad, 0.5 * r["grad_logit_scale"], REL64)
    assert not bad, bad
