"""Threads, the kernel backend, the matrix-product path, and what the build contains.

One thread pool at a time: fastnn's kernels parallelise with their own OpenMP team. Matrix
products run on fastnn's own core (csrc/gemm.c) where the CPU has an FMA micro-kernel for
it; elsewhere they call the BLAS (scipy's, through scipy.linalg.cython_blas) on one thread
per block, so the BLAS's own threads are held at one while a kernel runs and restored
afterwards.
"""
import contextlib
import ctypes
import itertools
import os
import warnings

import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS library the kernels call)
from threadpoolctl import ThreadpoolController

from . import _native
from ._wait_policy import WAIT_POLICY
from .ops import NativeOps, ReferenceOps

__all__ = [
    "build_info",
    "get_backend",
    "get_isa",
    "get_num_threads",
    "set_backend",
    "set_isa",
    "set_num_threads",
    "use_backend",
]

def _find_scipy_blas():
    """The threadpoolctl controller of the BLAS library scipy.linalg.cython_blas calls."""
    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    from_scipy = [c for c in blas if "scipy" in os.path.basename(os.path.dirname(c.filepath))]
    if len(from_scipy) == 1:
        return from_scipy[0]
    return blas[0] if len(blas) == 1 else None


def _openblas_thread_functions(controller):
    """Addresses of (set_num_threads, get_num_threads) in an OpenBLAS, or (0, 0)."""
    if controller is None or controller.internal_api != "openblas":
        return 0, 0
    for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
        set_name = f"{prefix}openblas_set_num_threads{suffix}"
        get_name = f"{prefix}openblas_get_num_threads{suffix}"
        if hasattr(controller.dynlib, set_name) and hasattr(controller.dynlib, get_name):
            return (
                ctypes.cast(getattr(controller.dynlib, set_name), ctypes.c_void_p).value,
                ctypes.cast(getattr(controller.dynlib, get_name), ctypes.c_void_p).value,
            )
    return 0, 0


_blas = _find_scipy_blas()
_native.register_blas(*_openblas_thread_functions(_blas))


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n, *, adaptive=True):
    """Let fastnn's kernels use up to n threads (1 <= n <= usable cores).

    adaptive=True (the default): n is a cap, and while the machine is busy (another process
    holds a core, so a thread of the team gets parked) the kernels use fewer, probing again
    later; see README, Threads. adaptive=False pins the count: exactly n, whatever the load.
    Results are bitwise the same for any thread count, so neither changes an answer."""
    cores = _usable_cores()
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not 1 <= n <= cores:
        raise ValueError(f"set_num_threads: n must be in [1, {cores}] (usable cores), got {n}")
    if not isinstance(adaptive, bool):
        raise TypeError(f"set_num_threads: adaptive must be a bool, got {type(adaptive).__name__}")
    if n > 1 and not _native.has_openmp():
        warnings.warn("fastnn was built without OpenMP: kernels run on one thread", stacklevel=2)
    elif n > 1 and _native.forked_child():
        warnings.warn(f"set_num_threads({n}): {FORKED_CHILD}", stacklevel=2)
    _native.set_num_threads(n, adaptive)


FORKED_CHILD = ("this process is the child of a fork, and the OpenMP runtime's threads do not "
                "survive a fork: fastnn's kernels run on one thread here (start worker "
                "processes with the 'spawn' or 'forkserver' method for threads)")


def get_num_threads():
    """The thread count set (see set_num_threads; 1 in a build without OpenMP, and in the
    child of a fork: see build_info()["one_thread_because"]). While adapting to a busy
    machine the kernels may use fewer: build_info()["threads_in_use"]."""
    return _native.get_num_threads()


def _default_num_threads():
    cores = _usable_cores()
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            return max(1, min(int(env), cores))
        except ValueError:
            warnings.warn(f"ignoring OMP_NUM_THREADS={env!r}: not an integer", stacklevel=2)
    return cores


_native.set_num_threads(_default_num_threads(), True)


ISAS = _native.ISAS


def set_isa(name):
    """Choose the matrix-product path: "avx512", "avx2" (fastnn's FMA micro-kernels, which
    give the same bits), "generic" (plain C, no FMA: may differ in the last bits) or "blas"
    (scipy's BLAS). The default is the fastest this CPU runs; FASTNN_ISA sets it at import.
    Results never depend on the thread count, whichever path."""
    if name not in ISAS:
        raise ValueError(f"set_isa: name must be one of {ISAS}, got {name!r}")
    if not _native.set_isa(name):
        supported = tuple(n for n in ISAS if _native.isa_supported(n))
        raise ValueError(f"set_isa: this CPU cannot run {name!r}; it runs {supported}")


def get_isa():
    """The matrix-product path in use (see set_isa)."""
    return _native.get_isa()


def _isa_from_environment():
    name = os.environ.get("FASTNN_ISA", "").strip().lower()
    if not name:
        return
    try:
        set_isa(name)
    except ValueError as e:
        warnings.warn(f"ignoring FASTNN_ISA={name!r}: {e}; using {get_isa()!r}", stacklevel=2)


_isa_from_environment()


# The kernel backend in use: an Ops object (fastnn.ops), chosen by set_backend. Layers,
# losses, optimizers and fastnn.functional call this one; nothing else reads the name.
BACKENDS = {"native": NativeOps(), "reference": ReferenceOps()}
ops = BACKENDS["native"]


def set_backend(name):
    """Choose the kernel backend: "native" (C/OpenMP) or "reference" (the NumPy twin)."""
    global ops
    if name not in BACKENDS:
        raise ValueError(f"set_backend: name must be one of {tuple(BACKENDS)}, got {name!r}")
    ops = BACKENDS[name]


def get_backend():
    """The kernel backend in use: "native" or "reference"."""
    return ops.name


@contextlib.contextmanager
def use_backend(name):
    """Context manager: run the block with the given backend, then restore the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def build_info():
    """What this build of fastnn is and runs on, as a dict."""
    from . import __version__

    if _blas is None:
        blas = "scipy.linalg.cython_blas (library not identified; its threads not managed)"
    else:
        blas = (
            f"scipy.linalg.cython_blas -> {_blas.internal_api} {_blas.version} "
            f"({os.path.basename(_blas.filepath)}, {getattr(_blas, 'threading_layer', 'unknown')} threading, "
            "the matrix products' path where the CPU has no FMA micro-kernel or FASTNN_ISA=blas, "
            "held at 1 thread inside fastnn kernels)"
        )
    return {
        "version": __version__,
        "openmp": _native.has_openmp(),
        "num_threads": get_num_threads(),
        "adaptive_threads": _native.threads_adaptive(),
        "threads_in_use": _native.threads_in_use(),
        "openmp_wait": WAIT_POLICY,
        "num_procs": _native.num_procs(),
        "blas": blas,
        "compile_args": _native.compile_args(),
        "backend": get_backend(),
        "isa": get_isa(),
        "one_thread_because": FORKED_CHILD if _native.forked_child() else None,
    }
