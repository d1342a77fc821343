"""clipmpi from Python: OpenCLIP's ClipLoss and SigLipLoss computed across MPI
ranks by lib/libclipmpi.so (built by `make lib`), loaded with ctypes.

    import clipmpi.torch
    loss_fn = clipmpi.torch.ClipLoss(local_loss=True, gather_with_grad=True)

Run the program under mpirun or srun --mpi=pmix: one process per rank. The
library initialises MPI itself unless the program did (mpi4py, for one); it
finalises MPI at exit only if it initialised it. See clipmpi.torch for the
PyTorch modules and include/clipmpi.h for the C ABI underneath.

Errors are exceptions derived from clipmpi.Error; those a caller can act on
(InvalidInputError, RanksDisagreeError, EmptyBatchError, NonFiniteError) are
raised on every rank of the step, never leaving a rank waiting.
"""

import ctypes

from . import _lib
from ._lib import (EmptyBatchError, Error, InternalError, InvalidInputError, LaunchError, MPIError,  # noqa: F401
                   NoFitError, NonFiniteError, RanksDisagreeError, UsageError)

__all__ = ["Communicator", "world", "init", "finalize", "build_info", "library_path", "Error",
           "InvalidInputError", "RanksDisagreeError", "EmptyBatchError", "NonFiniteError", "MPIError",
           "LaunchError", "UsageError", "InternalError", "NoFitError"]

library_path = _lib.library_path


def build_info():
    """The library's build, e.g. "clipmpi abi 2; mpi=true; blas=openblas;
    bf16=avx512_bf16" (bf16: the GEMM of precision "amp_bf16", "amx",
    "avx512_bf16" or "emulated")."""
    return _lib.lib.clipmpi_build_info().decode()


def init():
    """Initialise MPI unless the program has, and check the launch
    environment against it (LaunchError when mpirun or srun did not start
    this process as one of several ranks that MPI knows). Collective over
    MPI_COMM_WORLD. Optional: the first use of the world communicator
    does it."""
    return world()


def finalize():
    """Free the library's communicators and losses and finalise MPI if the
    library initialised it. Collective. Called at exit when the library was
    used; afterwards the library cannot be used again."""
    _lib.check(_lib.lib.clipmpi_finalize())


class Communicator:
    """The ranks a loss spans: MPI_COMM_WORLD (comm=None), an mpi4py
    communicator, or a Fortran handle (an int, what MPI_Comm_c2f returns).

    Making one is collective over that communicator: the library works on a
    duplicate (MPI_Comm_dup), so the caller's communicator is left as it
    is and may be freed afterwards. free() is collective too.
    """

    def __init__(self, comm=None):
        self._ptr = None
        self._world = comm is None
        if comm is None:
            _lib.check(_lib.lib.clipmpi_init())
        else:
            handle = comm.py2f() if hasattr(comm, "py2f") else int(comm)
            p = ctypes.c_void_p()
            _lib.check(_lib.lib.clipmpi_comm_from_fortran(ctypes.byref(p), handle))
            self._ptr = p
        r, s = ctypes.c_int32(), ctypes.c_int32()
        _lib.check(_lib.lib.clipmpi_comm_rank(self._ptr, ctypes.byref(r), ctypes.byref(s)))
        self.rank, self.size = r.value, s.value
        _lib.hook_exit(self.size)

    @property
    def handle(self):
        """The ctypes pointer the C ABI takes (None for MPI_COMM_WORLD)."""
        return self._ptr

    def bcast_bytes(self, data, root=0):
        """Return root's data (bytes) on every rank. Every rank passes bytes
        of the same length (their content matters only on root). Collective."""
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        _lib.check(_lib.lib.clipmpi_comm_bcast(self._ptr, buf, len(data), root))
        return buf.raw

    def reject_step(self, reason, detail):
        """Take part in a step that this rank cannot compute: every rank of
        the step raises InvalidInputError naming this rank. Always raises."""
        _lib.check(_lib.lib.clipmpi_reject_step(self._ptr, reason, detail.encode()))
        raise InternalError("clipmpi_reject_step returned without an error")

    def free(self):
        """Free the library's duplicate (collective). The world communicator
        is never freed before finalize."""
        if self._ptr is not None:
            p, self._ptr = self._ptr, None
            _lib.check(_lib.lib.clipmpi_comm_free(p))

    def __repr__(self):
        what = "MPI_COMM_WORLD" if self._world else "duplicate"
        return f"<clipmpi.Communicator {what}: rank {self.rank} of {self.size}>"


_world = None


def world():
    """The world communicator (MPI_COMM_WORLD), made once."""
    global _world
    if _world is None:
        _world = Communicator(None)
    return _world
