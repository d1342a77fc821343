"""Reference formulations of OpenCLIP's losses in plain PyTorch, over
torch.distributed: what clipmpi is compared with in the training tests and
in `make bench-torch`. Written from the formulas (README.md, the loss
package's documentation), not from OpenCLIP's code.

Rank r holds b rows of image features I_r and text features T_r; the
global batch is their concatenation in rank order (N = W*b) and the
positive pairs are (image i, text i).

ClipLoss, with logits S = scale * I T^T (+ bias) and CE the mean
cross-entropy against the positives:
  global (local_loss=False):  L = (CE(S, rows) + CE(S^T, rows)) / 2 over all
                              N rows, on every rank;
  local (local_loss=True):    rank r's loss uses only its own rows against
                              all N columns: (CE(s I_r T^T) + CE(s T_r I^T)) / 2
                              with labels r*b + i.
  gather_with_grad:           the all-gather is differentiable: its backward
                              sums every rank's gradient into the rows' owner.
  Without it a rank's own rows keep their gradient and the other rows are
  constants (OpenCLIP's semantics, which make the local mode's feature
  gradients incomplete).
SigLipLoss: z_ij = scale * I_i . T_j + bias, y_ij = +1 if i == j else -1,
  loss_r = -(1/b) sum_{i on r} sum_{j=1..N} log sigmoid(y_ij z_ij), the texts
  gathered with gradient.
"""

import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "siglip_loss"]


def _world(distributed=True):
    import torch.distributed as dist

    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(x, with_grad, rank, world):
    """All ranks' x concatenated in rank order (N x d)."""
    import torch.distributed as dist

    if with_grad:
        import torch.distributed.nn.functional as dnn

        return torch.cat(dnn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x  # the rank's own rows keep their gradient
    return torch.cat(parts, dim=0)


def clip_loss(image, text, logit_scale, logit_bias=None, local_loss=False, gather_with_grad=False,
              distributed=True):
    """This rank's OpenCLIP ClipLoss (see the module doc); logit_scale is the
    exponentiated scale. With distributed=False, or when torch.distributed
    is not initialised, this process alone is the world."""
    rank, world = _world(distributed)
    b = image.shape[0]
    if world > 1:
        all_img = _gather(image, gather_with_grad, rank, world)
        all_txt = _gather(text, gather_with_grad, rank, world)
    else:
        all_img, all_txt = image, text
    if world > 1 and local_loss:
        li = logit_scale * image @ all_txt.T
        lt = logit_scale * text @ all_img.T
        labels = torch.arange(b, device=image.device) + rank * b
    else:
        li = logit_scale * all_img @ all_txt.T
        lt = li.T
        labels = torch.arange(all_img.shape[0], device=image.device)
    if logit_bias is not None:
        li = li + logit_bias
        lt = lt + logit_bias
    return (F.cross_entropy(li, labels) + F.cross_entropy(lt, labels)) / 2


def siglip_loss(image, text, logit_scale, logit_bias=None, distributed=True):
    """This rank's OpenCLIP SigLipLoss (see the module doc)."""
    rank, world = _world(distributed)
    b = image.shape[0]
    all_txt = _gather(text, True, rank, world) if world > 1 else text
    z = logit_scale * image @ all_txt.T
    if logit_bias is not None:
        z = z + logit_bias
    y = -torch.ones_like(z)
    idx = torch.arange(b, device=image.device)
    y[idx, idx + rank * b] = 1
    return -F.logsigmoid(y * z).sum() / b
