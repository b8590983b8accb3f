"""How long fastnn's idle OpenMP threads spin before they sleep: set before libgomp loads.

libgomp reads GOMP_SPINCOUNT once, when it is loaded. Its default (300,000 spins: 7.6-8.2 ms
of CPU after each region on the development machine, an AMD EPYC under KVM) keeps an idle
team thread burning a core long after the last parallel region; on a busy machine that core
is the one another process, or a parked thread of the team, needed. Spinning too briefly
costs too: a thread that went to sleep takes 43-56 us to wake there, a spinning one 1-2 us.
Unless the user chose a wait policy, fastnn asks for SPIN_COUNT spins (about 1 ms there:
longer than the gaps between the kernels of a training step and, mostly, between steps), and
for its own loading of libgomp only: the variable is removed again, so child processes and
libraries loaded later see the environment the user gave.
"""
import os

SPIN_COUNT = 30000
_USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _libgomp_loaded():
    """Whether the system's libgomp, the one fastnn links, is loaded already (torch's own
    copy, libgomp-<hash>.so.1, is a separate runtime)."""
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.basename(line.split()[-1]).startswith("libgomp.so")
                       for line in f if "/" in line)
    except OSError:
        return False


def _load_native():
    """Import fastnn._native under the bounded spin; returns what the OpenMP runtime waits
    with, for build_info()."""
    try:
        return _import_native()
    except ImportError as e:
        if "_native" not in str(e):
            raise
        here = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"fastnn's compiled extension (fastnn._native) is not in {here}: this is the "
            "source tree, not an installed fastnn. Install it (pip install .) and run from "
            "outside this folder (Python puts the current folder first on sys.path), or "
            "build it here (python setup.py build_ext --inplace)") from None


def _import_native():
    user = [f"{name}={os.environ[name]}" for name in _USER_SETTINGS if name in os.environ]
    if user:
        from . import _native  # noqa: F401
        return f"the user's {', '.join(user)}"
    if _libgomp_loaded():
        from . import _native  # noqa: F401
        return "libgomp's default (libgomp was loaded before fastnn)"
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        from . import _native  # noqa: F401
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return f"GOMP_SPINCOUNT={SPIN_COUNT} (set by fastnn while loading libgomp)"


WAIT_POLICY = _load_native()
