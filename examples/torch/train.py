"""train.py: train small PyTorch encoders with clipmpi's ClipLoss, the way an
OpenCLIP training script does, on MPI ranks.

    mpirun -np 2 python3 examples/torch/train.py                        # synthetic embeddings
    bin/train gen-data --out data --dtype float16                       # or .npy shards
    mpirun -np 4 python3 examples/torch/train.py --train-data data/train --val-data data/val
    sbatch slurm/train-torch.sbatch --epochs 10                         # under Slurm

Each tower is a two-layer MLP (Linear, GELU, Linear, then L2 normalisation)
over precomputed embeddings: the synthetic set of `make run` (32 latent
factors seen through 64-wide "image" and 48-wide "text" embeddings plus
noise), or any .npy set: a directory of image-*.npy and text-*.npy shards
(`bin/train gen-data`, or clip-retrieval's img_emb/ and text_emb/), or
IMAGE.npy,TEXT.npy; float32 or float16 arrays of shape [n, d].

PyTorch does what it does in OpenCLIP: DistributedDataParallel over gloo
averages the encoders' gradients (torch.distributed is started on MPI's
ranks by clipmpi.torch.init_distributed), AdamW with a cosine schedule and
warmup, no weight decay on biases, gains and the logit scale, the scale
clamped to 100. The contrastive loss is clipmpi's, over MPI in the same
processes: ClipLoss(local_loss=True, gather_with_grad=True) by default, or
SigLipLoss with --siglip. Rank 0 prints progress and held-out recall@K
before and after, and writes --summary as JSON.
"""

import argparse
import glob
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import clipmpi  # noqa: E402
import clipmpi.torch as ct  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-data", help="directory of image-*.npy/text-*.npy shards, or IMAGE.npy,TEXT.npy")
    p.add_argument("--val-data", help="held-out pairs, as --train-data (default: the last --val-size rows)")
    p.add_argument("--rows", type=int, default=32768, help="synthetic training rows")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1024, help="rows per rank per step")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=20, help="warmup steps")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--siglip", action="store_true", help="SigLipLoss (scale ln 10, bias -10) instead of ClipLoss")
    p.add_argument("--dist-impl", default="bidir", help="SigLIP's dist_impl")
    p.add_argument("--local-loss", type=int, default=1)
    p.add_argument("--gather-with-grad", type=int, default=1)
    p.add_argument("--algo", default="fused", help="ClipLoss algorithm: naive, fused, tiled, ring")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank (0: OMP_NUM_THREADS, else the node's cores / ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=0, help="steps between progress lines (0: about 20 lines)")
    p.add_argument("--summary", help="write a JSON summary here (rank 0)")
    return p.parse_args()


def synthetic(rows, seed=1, latent=32, image=64, text=48, noise=0.6):
    """Pairs that share latent factors: image = z A + noise, text = z B +
    noise, with unit signal variance per coordinate; the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, latent, generator=g)
    a = torch.randn(latent, image, generator=g) / math.sqrt(latent)
    b = torch.randn(latent, text, generator=g) / math.sqrt(latent)
    return (z @ a + noise * torch.randn(rows, image, generator=g)).numpy(), \
        (z @ b + noise * torch.randn(rows, text, generator=g)).numpy()


def load_pairs(spec):
    """(image, text) arrays of a directory of shards or IMAGE.npy,TEXT.npy,
    memory-mapped (rows are read when indexed)."""
    if "," in spec:
        paths = [spec.split(",", 1)]
    else:
        imgs = sorted(glob.glob(os.path.join(spec, "image-*.npy"))) or \
            sorted(glob.glob(os.path.join(spec, "img_emb", "*.npy")))
        txts = sorted(glob.glob(os.path.join(spec, "text-*.npy"))) or \
            sorted(glob.glob(os.path.join(spec, "text_emb", "*.npy")))
        if not imgs or len(imgs) != len(txts):
            raise SystemExit(f"train.py: {spec}: want as many image-*.npy as text-*.npy shards, "
                             f"found {len(imgs)} and {len(txts)}")
        paths = list(zip(imgs, txts))
    ims, txs = [], []
    for pi, pt in paths:
        a, b = np.load(pi, mmap_mode="r"), np.load(pt, mmap_mode="r")
        for path, x in ((pi, a), (pt, b)):
            if x.ndim != 2 or x.dtype not in (np.float32, np.float16):
                raise SystemExit(f"train.py: {path}: want a float32 or float16 array [n, d], got {x.dtype} {x.shape}")
        if a.shape[0] != b.shape[0]:
            raise SystemExit(f"train.py: {pi} has {a.shape[0]} rows, {pt} {b.shape[0]}")
        ims.append(a)
        txs.append(b)
    return (ims[0], txs[0]) if len(ims) == 1 else (np.concatenate(ims), np.concatenate(txs))


class Tower(torch.nn.Module):
    def __init__(self, width, hidden, embed):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, hidden)
        self.fc2 = torch.nn.Linear(hidden, embed)

    def forward(self, x):
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)


class DualEncoder(torch.nn.Module):
    def __init__(self, image_dim, text_dim, hidden, embed, siglip):
        super().__init__()
        self.image, self.text = Tower(image_dim, hidden, embed), Tower(text_dim, hidden, embed)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0) if siglip else math.log(1 / 0.07)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0)) if siglip else None

    def forward(self, x_img, x_txt):
        return self.image(x_img), self.text(x_txt), self.logit_scale.exp(), self.logit_bias


def rows(arr, idx, dtype):
    return torch.from_numpy(np.ascontiguousarray(arr[np.sort(idx)] if isinstance(arr, np.memmap) else arr[idx])
                            ).to(dtype)


@torch.no_grad()
def recall(model, img, txt, dtype, ks=(1, 5, 10)):
    """Held-out recall@K both ways; a tie with the positive counts against it."""
    fi, ft = model.image(torch.from_numpy(np.asarray(img)).to(dtype)), model.text(
        torch.from_numpy(np.asarray(txt)).to(dtype))
    s = fi @ ft.T
    pos = s.diagonal()
    out = {}
    for name, m, p in (("i2t", s, pos), ("t2i", s.T, pos)):
        rank = (m >= p[:, None]).sum(dim=1)  # 1 + the others scoring at least as high
        for k in ks:
            out[f"{name}_R@{k}"] = (rank <= k).double().mean().item()
    return out


def main():
    a = parse()
    t_start = time.time()
    rank, world = ct.init_distributed()
    threads = a.threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or max(1, (os.cpu_count() or 1) // max(
        1, int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")))))
    torch.set_num_threads(threads)
    dtype = getattr(torch, a.dtype)
    say = print if rank == 0 else (lambda *x, **k: None)

    if a.train_data:
        img, txt = load_pairs(a.train_data)
        src = a.train_data
    else:
        img, txt = synthetic(a.rows + (0 if a.val_data else a.val_size))
        src = f"synthetic(latent=32, image=64, text=48, noise=0.6, seed=1), {a.rows} rows"
    if a.val_data:
        vimg, vtxt = load_pairs(a.val_data)
    else:
        n = img.shape[0] - a.val_size
        if n < 1:
            raise SystemExit(f"train.py: {img.shape[0]} rows leave none for training after --val-size {a.val_size}")
        img, txt, vimg, vtxt = img[:n], txt[:n], img[n:], txt[n:]
    n = img.shape[0]
    global_batch = world * a.batch_size
    steps_per_epoch = n // global_batch
    if steps_per_epoch < 1:
        raise SystemExit(f"train.py: {n} training rows are fewer than one global batch of {global_batch}")
    total = steps_per_epoch * a.epochs

    torch.manual_seed(a.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = DualEncoder(img.shape[1], txt.shape[1], a.hidden, a.embed_dim, a.siglip).to(dtype)
    ddp = DDP(model)
    if a.siglip:
        loss_fn = ct.SigLipLoss(rank=rank, world_size=world, dist_impl=a.dist_impl)
    else:
        loss_fn = ct.ClipLoss(local_loss=bool(a.local_loss), gather_with_grad=bool(a.gather_with_grad),
                              rank=rank, world_size=world, algorithm=a.algo)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        e, es = step - a.warmup, max(1, total - a.warmup)
        return 0.5 * (1 + math.cos(math.pi * e / es)) * a.lr

    say(f"clipmpi torch train: {world} ranks, {a.dtype}, {threads} torch thread(s) per rank; {ct.world()!r}")
    say(f"data: {src}: {n} training pairs, {vimg.shape[0]} held out; image {img.shape[1]}, text {txt.shape[1]}")
    say(f"model: two-layer MLP towers {img.shape[1]}/{txt.shape[1]} -> {a.hidden} -> {a.embed_dim}, "
        f"{sum(p.numel() for p in model.parameters())} parameters; loss {loss_fn!r}")
    say(f"steps: {world} ranks x {a.batch_size} rows = global batch {global_batch}; "
        f"{a.epochs} epochs x {steps_per_epoch} steps = {total} steps")
    before = recall(model, vimg, vtxt, dtype)
    say("eval  step     0  " + "  ".join(f"{k} {v:.3f}" for k, v in before.items()))

    log_every = a.log_every or max(1, total // 20)
    step, count, loss_sum, t0, last = 0, 0, torch.zeros(1, dtype=torch.float64), time.time(), float("nan")
    t_train = time.time()
    for epoch in range(a.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed * 1000 + epoch)).numpy()
        for i in range(steps_per_epoch):
            mine = perm[i * global_batch + rank * a.batch_size:i * global_batch + (rank + 1) * a.batch_size]
            x_img, x_txt = rows(img, mine, dtype), rows(txt, mine, dtype)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            fi, ft, scale, bias = ddp(x_img, x_txt)
            loss = loss_fn(fi, ft, scale, bias)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            loss_sum += loss.item()
            step, count = step + 1, count + 1
            if step % log_every == 0 or step == total:
                dist.all_reduce(loss_sum)  # the mean over ranks is the global batch's loss
                last = loss_sum.item() / world / count
                dt = time.time() - t0
                say(f"step {step:5d}/{total}  epoch {epoch + 1:2d}  loss {last:.4f}  lr {lr_at(step - 1):.2e}  "
                    f"scale {model.logit_scale.exp().item():6.2f}  {count * global_batch / dt:8.0f} samples/s")
                loss_sum.zero_()
                count, t0 = 0, time.time()
    train_s = time.time() - t_train
    after = recall(model, vimg, vtxt, dtype)
    say(f"eval  step {step:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in after.items()))
    say(f"held-out recall@1 image->text {before['i2t_R@1']:.3f} -> {after['i2t_R@1']:.3f}, "
        f"text->image {before['t2i_R@1']:.3f} -> {after['t2i_R@1']:.3f} (chance {1 / vimg.shape[0]:.4f}); "
        f"{total} steps of {global_batch} pairs in {train_s:.1f} s ({total * global_batch / train_s:.0f} samples/s)")
    if rank == 0 and a.summary:
        summary = {"final_loss": last, "steps": total, "steps_run": step, "global_batch": global_batch, "world": world,
                   "mpi": True, "blas": clipmpi.build_info().split("blas=")[-1], "blas_threads": threads,
                   "logit_scale": model.logit_scale.exp().item(), "samples_per_s": total * global_batch / train_s,
                   "wall_s": time.time() - t_start, "loss": "siglip" if a.siglip else "clip"}
        for k, v in after.items():
            summary["recall_" + k.replace("@", "_at").replace("R_", "").lower()] = v
        for k, v in before.items():
            summary["recall_" + k.replace("@", "_at").replace("R_", "").lower() + "_before"] = v
        with open(a.summary, "w") as f:
            json.dump(summary, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
