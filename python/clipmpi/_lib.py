"""ctypes bindings of lib/libclipmpi.so (see include/clipmpi.h, from capi/clipmpi.h).

Loading: $CLIPMPI_LIB if set, else lib/libclipmpi.so of the repository this
package lives in (python/clipmpi/../../lib). Open MPI's libmpi is loaded
first with RTLD_GLOBAL, as mpi4py does, so that Open MPI's plugins find its
symbols when the library initialises MPI.
"""

import atexit
import ctypes
import ctypes.util
import os
import sys
import threading

# Return codes, element types and reject reasons of clipmpi.h.
OK = 0
ERR_INVALID = 1
ERR_DISAGREE = 2
ERR_EMPTY = 3
ERR_NONFINITE = 4
ERR_MPI = 5
ERR_LAUNCH = 6
ERR_USAGE = 7
ERR_INTERNAL = 8
ERR_NOFIT = 9

FLOAT32 = 1
FLOAT64 = 2

REJECT_DTYPE = 1
REJECT_DEVICE = 2
REJECT_SHAPE = 3
REJECT_ARGUMENT = 4

ABI_VERSION = 2


class Error(Exception):
    """An error returned by libclipmpi; ``code`` is its CLIPMPI_ERR_* code."""

    code = None

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInputError(Error, ValueError, TypeError):
    """An invalid input on some rank (wrong dtype, device or shape, a NULL
    buffer): raised on every rank of the step, naming the rank."""

    code = ERR_INVALID


class RanksDisagreeError(Error, ValueError):
    """The ranks passed different batch sizes, dimensions, dtypes, options,
    logit scales or biases: raised on every rank."""

    code = ERR_DISAGREE


class EmptyBatchError(Error, ValueError):
    """The batch has no rows: raised on every rank."""

    code = ERR_EMPTY


class NonFiniteError(Error, ValueError):
    """NaN or Inf in some rank's features, logit scale or bias: raised on
    every rank, naming the rank."""

    code = ERR_NONFINITE


class MPIError(Error, RuntimeError):
    """MPI failed (initialisation, thread level, an invalid communicator)."""

    code = ERR_MPI


class LaunchError(Error, RuntimeError):
    """The launch environment says this process is one of several ranks,
    but MPI started it alone: start it with mpirun or srun --mpi=pmix."""

    code = ERR_LAUNCH


class UsageError(Error, RuntimeError):
    """Local misuse of the library (an unknown option, a freed object, a
    call after finalize); only this rank knows."""

    code = ERR_USAGE


class InternalError(Error, RuntimeError):
    """A bug in clipmpi; please report the message."""

    code = ERR_INTERNAL


class NoFitError(Error, MemoryError):
    """algorithm="auto" found no algorithm whose memory fits the budget:
    raised on every rank."""

    code = ERR_NOFIT


_ERRORS = {c.code: c for c in (InvalidInputError, RanksDisagreeError, EmptyBatchError, NonFiniteError,
                               MPIError, LaunchError, UsageError, InternalError, NoFitError)}


class ClipOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_int64),
        ("local_loss", ctypes.c_int32),
        ("gather_with_grad", ctypes.c_int32),
        ("algorithm", ctypes.c_char_p),
        ("tile", ctypes.c_int64),
        ("threads", ctypes.c_int32),
        ("memory_budget", ctypes.c_int64),
        ("rates_json", ctypes.c_char_p),
        ("blas_threads", ctypes.c_int32),
        ("precision", ctypes.c_char_p),  # ABI 2
    ]


class SigLipOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_int64),
        ("dist_impl", ctypes.c_char_p),
        ("tile", ctypes.c_int64),
        ("threads", ctypes.c_int32),
        ("memory_budget", ctypes.c_int64),
        ("rates_json", ctypes.c_char_p),
        ("blas_threads", ctypes.c_int32),
        ("precision", ctypes.c_char_p),  # ABI 2
    ]


class Result(ctypes.Structure):
    _fields_ = [
        ("loss", ctypes.c_double),
        ("grad_logit_scale", ctypes.c_double),
        ("grad_logit_bias", ctypes.c_double),
    ]


def library_path():
    """The path of libclipmpi.so this package loads."""
    p = os.environ.get("CLIPMPI_LIB")
    if p:
        return p
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "lib", "libclipmpi.so"))


def _load():
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"clipmpi: {path} does not exist; build it with `make lib` in the clipmpi repository "
            "(or set CLIPMPI_LIB to the library's path)")
    mpi = ctypes.util.find_library("mpi")
    for name in ([mpi] if mpi else []) + ["libmpi.so.40", "libmpi.so"]:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError:
            continue
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"clipmpi: cannot load {path}: {e}") from e
    P = ctypes.c_void_p
    i32, i64, dbl, cp = ctypes.c_int32, ctypes.c_int64, ctypes.c_double, ctypes.c_char_p
    sigs = {
        "clipmpi_abi_version": ([], ctypes.c_int),
        "clipmpi_build_info": ([], cp),
        "clipmpi_last_error": ([], cp),
        "clipmpi_init": ([], ctypes.c_int),
        "clipmpi_finalize": ([], ctypes.c_int),
        "clipmpi_abort": ([i32, cp], None),
        "clipmpi_comm_from_fortran": ([ctypes.POINTER(P), i64], ctypes.c_int),
        "clipmpi_comm_free": ([P], ctypes.c_int),
        "clipmpi_comm_rank": ([P, ctypes.POINTER(i32), ctypes.POINTER(i32)], ctypes.c_int),
        "clipmpi_comm_bcast": ([P, P, i64, i32], ctypes.c_int),
        "clipmpi_reject_step": ([P, i32, cp], ctypes.c_int),
        "clipmpi_clip_options_init": ([ctypes.POINTER(ClipOptions)], None),
        "clipmpi_siglip_options_init": ([ctypes.POINTER(SigLipOptions)], None),
        "clipmpi_clip_new": ([ctypes.POINTER(P), P, i32, i64, ctypes.POINTER(ClipOptions)], ctypes.c_int),
        "clipmpi_siglip_new": ([ctypes.POINTER(P), P, i32, i64, ctypes.POINTER(SigLipOptions)], ctypes.c_int),
        "clipmpi_loss_free": ([P], ctypes.c_int),
    }
    for t in ("f32", "f64"):
        sigs[f"clipmpi_forward_backward_{t}"] = ([P, i64, P, P, P, P, dbl, dbl, i32, ctypes.POINTER(Result)],
                                                 ctypes.c_int)
        sigs[f"clipmpi_forward_{t}"] = ([P, i64, P, P, dbl, dbl, i32, ctypes.POINTER(dbl)], ctypes.c_int)
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = res
    if lib.clipmpi_abi_version() != ABI_VERSION:
        raise ImportError(f"clipmpi: {path} has ABI version {lib.clipmpi_abi_version()}, "
                          f"this package needs {ABI_VERSION}; rebuild with `make lib`")
    return lib


lib = _load()


def check(rc):
    """Raise the exception of return code rc, with the library's message."""
    if rc == OK:
        return
    msg = (lib.clipmpi_last_error() or b"").decode("utf-8", "replace")
    raise _ERRORS.get(rc, Error)(msg or f"clipmpi error {rc}", rc)


# Exit handling: once the library has been initialised, the process ends
# with clipmpi_finalize (which finalises MPI only if the library initialised
# it), unless an uncaught exception ends it: then, with several ranks, the
# job is aborted (MPI_Abort, naming the rank), since the other ranks may be
# waiting for this one in a collective and MPI_Finalize would wait for them.
_state = {"hooked": False, "uncaught": None, "several": False}
_lock = threading.Lock()


def _excepthook(tp, value, tb):
    _state["uncaught"] = f"{tp.__name__}: {value}"
    _state["prev_hook"](tp, value, tb)


def _at_exit():
    if (_state["uncaught"] is not None and _state["several"]
            and os.environ.get("CLIPMPI_ABORT_ON_EXCEPTION", "1") != "0"):
        sys.stdout.flush()
        sys.stderr.flush()
        lib.clipmpi_abort(1, ("uncaught exception, ending the job: " + _state["uncaught"]).encode())
    if lib.clipmpi_finalize() != OK:
        print("clipmpi: finalize:", lib.clipmpi_last_error().decode(), file=sys.stderr)


def hook_exit(size):
    """Register the exit handling above (once); size is the number of ranks
    of a communicator the library now uses."""
    with _lock:
        if size > 1:
            _state["several"] = True
        if _state["hooked"]:
            return
        _state["hooked"] = True
        _state["prev_hook"] = sys.excepthook
        sys.excepthook = _excepthook
        atexit.register(_at_exit)
