"""clipmpi for PyTorch: drop-in replacements of OpenCLIP's ClipLoss and
SigLipLoss that compute the loss across MPI ranks in clipmpi.

    from clipmpi.torch import ClipLoss, init_distributed
    rank, world_size = init_distributed()          # torch.distributed (gloo) on MPI's ranks
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    ...
    loss = loss_fn(image_features, text_features, logit_scale.exp())
    loss.backward()

Both modules take OpenCLIP's constructor arguments and forward signature,
return what OpenCLIP returns (a 0-dim tensor, or {"contrastive_loss": loss}
with output_dict=True), and leave on each rank exactly the .grad OpenCLIP
leaves there on image features, text features, the logit scale as passed
(the exponentiated one; autograd chains it to the log parameter) and the
logit bias. Features stay in PyTorch's memory: the library reads them and
writes the gradients into new tensors, copying nothing (a non-contiguous
input is made contiguous first).

Inputs must be CPU tensors of float32, float64, bfloat16 or float16, b x d
on every rank; the gradients come back in the features' dtype. precision
is OpenCLIP's: "amp_bf16" multiplies bf16-rounded operands with float32
sums, as OpenCLIP's loss does under torch.autocast("cpu",
dtype=torch.bfloat16); "fp32" multiplies in float32 (float64 for float64
features). The default, None, follows the call: amp_bf16 under a CPU
autocast to bfloat16 or for bfloat16 features, else fp32. bfloat16 and
float16 features are computed in float32 (converted for the call), and so
are float64 features under amp_bf16; the loss is a float32 tensor then, as
OpenCLIP's is under autocast. A rank whose inputs are of another dtype, on
a GPU or of the wrong shape raises InvalidInputError (a TypeError and
ValueError), and so does every other rank of the step, naming it; ranks
that disagree on b, d, dtype or precision raise RanksDisagreeError, NaN or
Inf raises NonFiniteError, on every rank.
"""

import ctypes
import json
import os
import socket

import torch

from . import Communicator, world
from . import _lib

__all__ = ["ClipLoss", "SigLipLoss", "init_distributed"]

# The dtypes the modules take; the library computes in _COMPUTE's.
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_COMPUTE = {torch.float32: (_lib.FLOAT32, "f32"), torch.float64: (_lib.FLOAT64, "f64")}

# Precision names as OpenCLIP's --precision spells them ("bf16" is taken
# for amp_bf16, as the library takes it); others go to the library, whose
# UsageError names them.
FP32, AMP_BF16 = "fp32", "amp_bf16"
_PRECISION_ALIASES = {"bf16": AMP_BF16}


def _canonical_precision(precision, who):
    if precision is None:
        return None
    if not isinstance(precision, str):
        raise TypeError(f"{who}: precision is a {type(precision).__name__}; want \"amp_bf16\", \"fp32\" or None")
    return _PRECISION_ALIASES.get(precision, precision)


def _autocast_bf16():
    """Whether a CPU autocast to bfloat16 is on (torch.autocast("cpu",
    dtype=torch.bfloat16))."""
    try:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.bfloat16


def _resolve(precision, dtype):
    """The precision and the dtype the library computes in, for features of
    dtype under the module's precision (None: follow the call). float64
    features stay float64 under autocast, as autocast leaves float64
    matmuls alone."""
    if precision is None:
        if dtype == torch.float64:
            precision = FP32
        elif dtype == torch.bfloat16 or _autocast_bf16():
            precision = AMP_BF16
        else:
            precision = FP32
    compute = torch.float64 if dtype == torch.float64 and precision == FP32 else torch.float32
    return precision, compute


def _communicator(comm):
    if comm is None:
        return world()
    if isinstance(comm, Communicator):
        return comm
    return Communicator(comm)


def _check_rank(rank, world_size, comm, who):
    if world_size is not None and world_size != comm.size:
        raise ValueError(f"{who}: world_size={world_size}, but MPI has {comm.size} ranks")
    if rank is not None and rank != comm.rank:
        raise ValueError(f"{who}: rank={rank}, but this process is MPI rank {comm.rank}")


class _Bridge:
    """One loss configuration on one communicator; the C losses are made on
    first use for each (dtype, dimension, precision), which communicates
    nothing."""

    def __init__(self, kind, comm, options):
        self.kind, self.comm, self.options = kind, comm, options
        self._losses = {}

    def loss(self, dtype, dim, precision):
        key = (dtype, dim, precision)
        p = self._losses.get(key)
        if p is None:
            p = ctypes.c_void_p()
            new = _lib.lib.clipmpi_clip_new if self.kind == "clip" else _lib.lib.clipmpi_siglip_new
            self.options.precision = precision.encode()  # read by new only
            _lib.check(new(ctypes.byref(p), self.comm.handle, dtype, dim, ctypes.byref(self.options)))
            self._losses[key] = p
        return p

    def close(self):
        losses, self._losses = self._losses, {}
        for p in losses.values():
            _lib.lib.clipmpi_loss_free(p)


def _rates(rates):
    return None if rates is None else json.dumps(rates).encode()


def _scalar(x):
    return x.reshape(()).item() if isinstance(x, torch.Tensor) else float(x)


def _validate(image, text, logit_scale, logit_bias):
    """(reason, detail) of this rank's inputs: (0, "") when the library can
    take them."""
    for name, t in (("image_features", image), ("text_features", text)):
        if not isinstance(t, torch.Tensor):
            return _lib.REJECT_ARGUMENT, f"{name} is a {type(t).__name__}, not a torch.Tensor"
        if t.device.type != "cpu":
            return _lib.REJECT_DEVICE, (f"{name} is on {t.device}; clipmpi computes on the CPU: "
                                        "pass features.cpu() (the GPU path does not exist)")
        if t.layout != torch.strided:
            return _lib.REJECT_ARGUMENT, f"{name} has layout {t.layout}; clipmpi takes dense tensors"
        if t.dtype not in _DTYPES:
            return _lib.REJECT_DTYPE, (f"{name} has dtype {t.dtype}; clipmpi takes torch.float32, float64, "
                                       "bfloat16 or float16")
    if text.dtype != image.dtype:
        return _lib.REJECT_DTYPE, f"image_features is {image.dtype} but text_features is {text.dtype}"
    if image.dim() != 2 or image.shape[1] < 1:
        return _lib.REJECT_SHAPE, f"image_features has shape {tuple(image.shape)}; want (batch, dim) with dim >= 1"
    if text.shape != image.shape:
        return _lib.REJECT_SHAPE, (f"text_features has shape {tuple(text.shape)}, "
                                   f"image_features {tuple(image.shape)}")
    for name, t in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                return _lib.REJECT_SHAPE, f"{name} has {t.numel()} elements; want one"
            if t.device.type != "cpu":
                return _lib.REJECT_DEVICE, f"{name} is on {t.device}; clipmpi computes on the CPU"
        elif t is not None and not isinstance(t, (int, float)):
            return _lib.REJECT_ARGUMENT, f"{name} is a {type(t).__name__}"
    if logit_scale is None:
        return _lib.REJECT_ARGUMENT, "logit_scale is None"
    return 0, ""


class _LossFunction(torch.autograd.Function):
    """The loss and its gradients from one call of the library; backward
    hands them out scaled by the incoming gradient."""

    @staticmethod
    def forward(ctx, bridge, backward, precision, image, text, logit_scale, logit_bias):
        precision, compute = _resolve(precision, image.dtype)
        # Contiguous, in the dtype computed in: no copy when they are already.
        img, txt = image.to(compute).contiguous(), text.to(compute).contiguous()
        code, suffix = _COMPUTE[compute]
        loss = bridge.loss(code, img.shape[1], precision)
        scale = _scalar(logit_scale)
        has_bias = logit_bias is not None
        bias = _scalar(logit_bias) if has_bias else 0.0
        rows = img.shape[0]
        if backward:
            gi, gt = torch.empty_like(img), torch.empty_like(txt)
            res = _lib.Result()
            fb = getattr(_lib.lib, "clipmpi_forward_backward_" + suffix)
            _lib.check(fb(loss, rows, img.data_ptr(), txt.data_ptr(), gi.data_ptr(), gt.data_ptr(),
                          scale, bias, has_bias, ctypes.byref(res)))
            ctx.results = (gi, gt, res.grad_logit_scale, res.grad_logit_bias)
            ctx.feature_dtype = image.dtype
            value = res.loss
        else:
            out = ctypes.c_double()
            fwd = getattr(_lib.lib, "clipmpi_forward_" + suffix)
            _lib.check(fwd(loss, rows, img.data_ptr(), txt.data_ptr(), scale, bias, has_bias, ctypes.byref(out)))
            ctx.results = None
            value = out.value
        ctx.scalar_like = (logit_scale if isinstance(logit_scale, torch.Tensor) else None,
                           logit_bias if isinstance(logit_bias, torch.Tensor) else None)
        return torch.tensor(value, dtype=compute)

    @staticmethod
    def backward(ctx, grad):
        if ctx.results is None:
            raise RuntimeError("clipmpi: backward through a loss computed without gradients")
        gi, gt, gs, gb = ctx.results
        ctx.results = None
        g = grad.item()
        if g != 1.0:
            gi, gt, gs, gb = gi * g, gt * g, gs * g, gb * g
        gi, gt = gi.to(ctx.feature_dtype), gt.to(ctx.feature_dtype)  # no-ops unless converted
        s, b = ctx.scalar_like
        need = ctx.needs_input_grad
        return (None, None, None, gi if need[3] else None, gt if need[4] else None,
                torch.full_like(s, gs) if s is not None and need[5] else None,
                torch.full_like(b, gb) if b is not None and need[6] else None)


def _apply(bridge, precision, image, text, logit_scale, logit_bias):
    reason, detail = _validate(image, text, logit_scale, logit_bias)
    if reason:
        bridge.comm.reject_step(reason, detail)
    backward = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (image, text, logit_scale, logit_bias))
    # The autocast state is read here, outside the autograd.Function.
    precision, _ = _resolve(precision, image.dtype)
    return _LossFunction.apply(bridge, backward, precision, image, text, logit_scale, logit_bias)


class _Base(torch.nn.Module):
    def close(self):
        """Free the library's losses, and the communicator if this module
        made it from an mpi4py communicator or handle (collective then)."""
        self._bridge.close()
        if self._own_comm:
            self.comm.free()
            self._own_comm = False

    def __del__(self):
        bridge = self.__dict__.get("_bridge")
        if bridge is not None:
            bridge.close()


class ClipLoss(_Base):
    """OpenCLIP's ClipLoss over MPI.

    local_loss, gather_with_grad: OpenCLIP's options (see its docs and the
    mode table of README.md). rank, world_size: optional; when given they
    must be MPI's (OpenCLIP's scripts pass them). cache_labels is accepted
    and has no effect; use_horovod must be False.

    algorithm: "fused" (default), "naive" (OpenCLIP's computation), "tiled",
    "ring", or "auto" (the fastest whose memory fits memory_budget, by the
    library's cost model, chosen at the first call); tile: the column tile
    of tiled and ring (0: default); threads: threads of the loss's
    elementwise kernels (0: the BLAS threads; results are bit-identical for
    every value); blas_threads: if > 0, the GEMM threads of the whole
    process (OpenBLAS's are process-wide); memory_budget: bytes per rank for auto (0: the
    node's available memory / its ranks); rates: auto's machine rates, a
    dict of loss.Rates' JSON fields (None: measured at the first call).
    comm: None (MPI_COMM_WORLD), an mpi4py communicator, a Fortran handle,
    or a clipmpi.Communicator.

    precision: "amp_bf16" (OpenCLIP's --precision amp_bf16: the GEMMs take
    bf16-rounded operands and sum in float32), "fp32", or None (default):
    amp_bf16 under torch.autocast("cpu", dtype=torch.bfloat16) or for
    bfloat16 features, fp32 otherwise (see the module's doc for dtypes).
    An unknown name raises UsageError here.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=None, world_size=None,
                 use_horovod=False, *, algorithm="fused", tile=0, threads=0, blas_threads=0, memory_budget=0,
                 rates=None, comm=None, precision=None):
        super().__init__()
        if use_horovod:
            raise ValueError("clipmpi.torch.ClipLoss: use_horovod is not supported; clipmpi communicates over MPI")
        self._own_comm = comm is not None and not isinstance(comm, Communicator)
        self.comm = _communicator(comm)
        _check_rank(rank, world_size, self.comm, "clipmpi.torch.ClipLoss")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size = self.comm.rank, self.comm.size
        self.algorithm, self.tile, self.threads = algorithm, tile, threads
        o = _lib.ClipOptions()
        _lib.lib.clipmpi_clip_options_init(ctypes.byref(o))
        o.local_loss, o.gather_with_grad = int(bool(local_loss)), int(bool(gather_with_grad))
        self._keep = (algorithm.encode(), _rates(rates))  # kept alive for the options' pointers
        o.algorithm, o.tile, o.threads, o.blas_threads = self._keep[0], tile, threads, blas_threads
        o.memory_budget, o.rates_json = memory_budget, self._keep[1]
        self.precision = _canonical_precision(precision, "clipmpi.torch.ClipLoss")
        self._bridge = _Bridge("clip", self.comm, o)
        # Checks the options now (UsageError).
        self._bridge.loss(_lib.FLOAT32, 1, FP32 if self.precision is None else self.precision)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss = _apply(self._bridge, self.precision, image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self):
        return (f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
                f"algorithm={self.algorithm!r}, precision={self.precision!r}, rank={self.rank}, "
                f"world_size={self.world_size}")


class SigLipLoss(_Base):
    """OpenCLIP's SigLipLoss over MPI.

    dist_impl: "bidir" (default, also None), "shift", "reduce", "gather" or
    "auto"; chunk_size (or tile): the logit tile (0: default). rank,
    world_size, cache_labels, threads, blas_threads, memory_budget, rates,
    comm and precision as for ClipLoss.
    """

    def __init__(self, cache_labels=False, rank=None, world_size=None, dist_impl=None, *, chunk_size=0, tile=None,
                 threads=0, blas_threads=0, memory_budget=0, rates=None, comm=None, precision=None):
        super().__init__()
        self._own_comm = comm is not None and not isinstance(comm, Communicator)
        self.comm = _communicator(comm)
        _check_rank(rank, world_size, self.comm, "clipmpi.torch.SigLipLoss")
        self.cache_labels = cache_labels
        self.rank, self.world_size = self.comm.rank, self.comm.size
        self.dist_impl = dist_impl or "bidir"
        self.tile = chunk_size if tile is None else tile
        o = _lib.SigLipOptions()
        _lib.lib.clipmpi_siglip_options_init(ctypes.byref(o))
        self._keep = (self.dist_impl.encode(), _rates(rates))
        o.dist_impl, o.tile, o.threads, o.blas_threads = self._keep[0], self.tile or 0, threads, blas_threads
        o.memory_budget, o.rates_json = memory_budget, self._keep[1]
        self.precision = _canonical_precision(precision, "clipmpi.torch.SigLipLoss")
        self._bridge = _Bridge("siglip", self.comm, o)
        self._bridge.loss(_lib.FLOAT32, 1, FP32 if self.precision is None else self.precision)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss = _apply(self._bridge, self.precision, image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def extra_repr(self):
        return (f"dist_impl={self.dist_impl!r}, precision={self.precision!r}, rank={self.rank}, "
                f"world_size={self.world_size}")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_distributed(backend="gloo", timeout=None, comm=None):
    """Start torch.distributed (for DDP's gradient averaging) on the ranks
    MPI started, and return (rank, world_size).

    Rank and world size are MPI's, which the library has checked against
    the launcher's variables (Open MPI's OMPI_COMM_WORLD_*, Slurm's
    SLURM_PROCID/SLURM_NTASKS ...). The rendezvous is rank 0's MASTER_ADDR
    and MASTER_PORT when set there, else rank 0's host name and a free
    port, sent to every rank over MPI. Collective. Does nothing but return
    the ranks if torch.distributed is already initialised.
    """
    import torch.distributed as dist

    c = _communicator(comm)
    if dist.is_initialized():
        return c.rank, c.size
    msg = b""
    if c.rank == 0:
        addr = os.environ.get("MASTER_ADDR") or socket.gethostname()
        port = os.environ.get("MASTER_PORT") or str(_free_port())
        msg = f"{addr}:{port}".encode()
    msg = c.bcast_bytes(msg.ljust(512, b"\0"), root=0).rstrip(b"\0").decode()
    addr, port = msg.rsplit(":", 1)
    kwargs = {"timeout": timeout} if timeout is not None else {}
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=c.rank, world_size=c.size, **kwargs)
    return c.rank, c.size
