"""bench_torch.py: `make bench-torch`. Under mpirun -np NP, for each batch
size b per rank (d = 512, float32 features, one thread per rank, OpenCLIP's
local_loss + gather_with_grad), time forward + backward of

  clipmpi   clipmpi.torch.ClipLoss inside PyTorch (examples/torch/bench.py),
  go        the same loss from Go (bin/bench -algo fused),
  pytorch   the reference formulation of OpenCLIP's loss in PyTorch over
            gloo (clipmpi.reference.clip_loss, examples/torch/bench.py),

in fp32, and each again in OpenCLIP's amp_bf16 (the _bf16 rows): the
reference under torch.autocast("cpu", dtype=torch.bfloat16), clipmpi with
precision="amp_bf16", Go with -precision amp_bf16 (bf16 GEMM operands,
float32 sums). Each runs in its own mpirun, REPS rounds interleaved (go,
clipmpi, pytorch, go_bf16, clipmpi_bf16, pytorch_bf16, go, ...); it prints
each run's JSON line, then a table with the ratios and peak RSS, and
whether the targets hold (judged in fp32): the bridge within 10% of the Go
step and at least 2x faster than the PyTorch reference, with a lower peak
RSS than the reference. The _bf16 rows give the same ratios in amp_bf16
and each implementation's fp32 step over its amp_bf16 step. A run's step is the median over its steps of the slowest
rank's; the table gives, per implementation, the best round's step (the
round least disturbed by other work on a shared machine; the targets are
judged on it) and every round's. Peak RSS is VmHWM of rank 0's process,
counted from just before the loss's first step (the process's own
baseline, PyTorch's ~250 MiB for the Python runs, included), the largest
over rounds.

    python3 examples/torch/bench_torch.py --bin bin --np 2 -b 1024 4096 --steps 10 --reps 1
"""

import argparse
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"bench_torch: {' '.join(cmd)} failed (exit {p.returncode})")
    return json.loads(lines[-1])


IMPLS = ("go", "clipmpi", "pytorch", "go_bf16", "clipmpi_bf16", "pytorch_bf16")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, "bin"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("-b", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("-d", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()

    mpirun = os.path.join(REPO, "scripts", "mpirun.sh")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.path.join(REPO, "python"))
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "-d", str(a.d)]
    results = {}
    for b in a.b:
        for rep in range(a.reps):
            for impl in IMPLS:
                base, prec = impl.split("_")[0], "amp_bf16" if impl.endswith("_bf16") else "fp32"
                if base == "go":
                    cmd = [mpirun, str(a.np), os.path.join(a.bin, "bench"), "-b", str(b), "-d", str(a.d),
                           "-mode", "local_gwg", "-algo", "fused", "-dtype", "float32", "-precision", prec,
                           "-steps", str(a.steps), "-warmup", str(a.warmup), "-json"]
                else:
                    e = dict(env, MASTER_PORT=str(free_port()))
                    cmd = [mpirun, str(a.np), "-x", "MASTER_PORT", "-x", "OMP_NUM_THREADS", "-x", "PYTHONPATH",
                           a.python, os.path.join(HERE, "bench.py"),
                           "--impl", "clipmpi" if base == "clipmpi" else "reference", "-b", str(b),
                           "--precision", prec] + common
                r = run(cmd, e if base != "go" else env)
                r["bench"] = impl
                print(json.dumps(r), flush=True)
                results.setdefault((b, impl), []).append(r)

    print()
    print(f"mpirun -np {a.np}, d = {a.d}, float32 features (fp32; _bf16: amp_bf16), local_loss + gather_with_grad, "
          f"1 thread per rank, {a.steps} steps x {a.reps} round(s); "
          f"load average now {open('/proc/loadavg').read().split()[0]}")
    bf16 = results[(a.b[0], "go_bf16")][0].get("gemm_path")
    if bf16:
        print(f"clipmpi's bf16 GEMM: {bf16} (blas.BF16Path)")
    print(f"{'b/rank':>7} {'impl':<12} {'best ms':>9} {'peak MiB':>9}   {'every round (median step ms)':<30} ratios")
    ok = True
    for b in a.b:
        rounds = {i: [r["step_ms_median"] for r in results[(b, i)]] for i in IMPLS}
        best = {i: min(v) for i, v in rounds.items()}
        rss = {i: max(r["peak_rss_mib"] for r in results[(b, i)]) for i in IMPLS}
        vs_go = best["clipmpi"] / best["go"]
        speedup = best["pytorch"] / best["clipmpi"]
        for i in IMPLS:
            note = ""
            if i == "clipmpi":
                note = f"{vs_go:.3f} x go;  pytorch / clipmpi = {speedup:.2f}"
            elif i == "clipmpi_bf16":
                note = (f"{best[i] / best['go_bf16']:.3f} x go_bf16;  pytorch_bf16 / clipmpi_bf16 = "
                        f"{best['pytorch_bf16'] / best[i]:.2f};  fp32 / bf16 = {best['clipmpi'] / best[i]:.2f}")
            elif i.endswith("_bf16"):
                base = i.split("_")[0]
                note = f"fp32 / bf16 = {best[base] / best[i]:.2f}"
            every = " ".join(f"{x:.1f}" for x in rounds[i])
            print(f"{b:>7} {i:<12} {best[i]:>9.1f} {rss[i]:>9.0f}   {every:<30} {note}")
        checks = [(vs_go <= 1.10, f"bridge within 10% of Go ({vs_go:.3f})"),
                  (speedup >= 2.0, f"bridge >= 2x faster than the PyTorch reference ({speedup:.2f}x)"),
                  (rss["clipmpi"] < rss["pytorch"],
                   f"bridge peak RSS below the reference's ({rss['clipmpi']:.0f} < {rss['pytorch']:.0f} MiB)")]
        for good, what in checks:
            ok &= good
            print(f"        {'met' if good else 'NOT MET'}: {what}")
    print("targets", "met" if ok else "NOT all met", "(times from a shared machine vary; compare ratios of one run)")


if __name__ == "__main__":
    main()
