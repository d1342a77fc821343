"""bench.py: one rank's part of `make bench-torch`: times OpenCLIP's ClipLoss
forward + backward inside PyTorch, computed by clipmpi.torch.ClipLoss
(--impl clipmpi) or by the PyTorch reference over gloo
(--impl reference, clipmpi.reference.clip_loss), and prints one JSON line on
rank 0 with the median step (the slowest rank's, as bin/bench reports it)
and the peak RSS.

    mpirun -np 2 python3 examples/torch/bench.py --impl clipmpi -b 1024 -d 512

The reference process does not load libclipmpi: it starts gloo from Open
MPI's (or Slurm's) environment variables with MASTER_ADDR/MASTER_PORT, so
its memory is PyTorch's alone. Features are random unit rows, the scale is
1/0.07 (OpenCLIP's initialisation), float32 unless --dtype float64; one
thread per rank unless --threads says otherwise. --precision amp_bf16 is
OpenCLIP's: the reference runs under torch.autocast("cpu",
dtype=torch.bfloat16), clipmpi with ClipLoss(precision="amp_bf16").
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))


def env_rank():
    for r, s in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                 ("PMI_RANK", "PMI_SIZE")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return 0, 1


def proc_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Restart VmHWM from the current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["clipmpi", "reference"], required=True)
    p.add_argument("-b", type=int, default=1024, help="rows per rank")
    p.add_argument("-d", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--mode", default="local_gwg", choices=["global", "global_gwg", "local", "local_gwg"])
    p.add_argument("--algo", default="fused", help="clipmpi's algorithm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"])
    a = p.parse_args()
    if a.precision == "amp_bf16" and a.dtype != "float32":
        p.error("--precision amp_bf16 takes --dtype float32")

    import torch

    torch.set_num_threads(a.threads)
    local, gwg = a.mode.startswith("local"), a.mode.endswith("_gwg")
    dtype = getattr(torch, a.dtype)
    if a.impl == "clipmpi":
        import clipmpi.torch as ct

        comm = ct.world()
        rank, size = comm.rank, comm.size
        loss_fn = ct.ClipLoss(local_loss=local, gather_with_grad=gwg, algorithm=a.algo, precision=a.precision)

        def barrier():
            comm.bcast_bytes(b"\0")

        def slowest(times):
            packed = torch.tensor(times, dtype=torch.float64)
            out = packed.clone()
            for r in range(size):
                got = torch.frombuffer(bytearray(comm.bcast_bytes(packed.numpy().tobytes(), root=r)),
                                       dtype=torch.float64)
                out = torch.maximum(out, got)
            return out.tolist()
    else:
        import torch.distributed as dist

        from clipmpi import reference

        rank, size = env_rank()
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size)

        def loss_fn(img, txt, scale):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "amp_bf16"):
                return reference.clip_loss(img, txt, scale, local_loss=local, gather_with_grad=gwg)

        def barrier():
            dist.barrier()

        def slowest(times):
            t = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return t.tolist()

    g = torch.Generator().manual_seed(1 + rank)
    img = torch.nn.functional.normalize(torch.randn(a.b, a.d, generator=g), dim=-1).to(dtype).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(a.b, a.d, generator=g), dim=-1).to(dtype).requires_grad_()
    scale = torch.tensor(1 / 0.07, dtype=dtype, requires_grad=True)
    base_kib = proc_kib("VmRSS:")
    reset_peak_rss()

    def step():
        img.grad = txt.grad = scale.grad = None
        loss = loss_fn(img, txt, scale)
        loss.backward()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        barrier()
        t0 = time.perf_counter()
        value = step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = proc_kib("VmHWM:") / 1024
    times = sorted(slowest(times))
    peaks = slowest([peak])
    if rank == 0:
        print(json.dumps({
            "impl": a.impl, "mode": a.mode, "algo": a.algo if a.impl == "clipmpi" else "openclip-formulas",
            "world": size, "b": a.b, "d": a.d, "dtype": a.dtype, "precision": a.precision, "steps": a.steps,
            "threads": a.threads,
            "step_ms_median": round(times[len(times) // 2], 2), "step_ms_min": round(times[0], 2),
            "step_ms_max": round(times[-1], 2), "peak_rss_mib": round(peaks[0], 1),
            "rss_before_mib": round(base_kib / 1024, 1), "loss_value": value,
        }), flush=True)
    if a.impl == "reference":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
