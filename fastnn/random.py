"""fastnn's random state: the generator parameter initialisation draws from, one per thread.

Each thread has its own generator, started from the seed of the last manual_seed (any
thread's), or from fresh entropy before any: two threads building models at once therefore
do not interleave their draws, and each gets the weights it would get alone.
"""
import threading

import numpy as np

__all__ = ["get_rng", "manual_seed"]

_local = threading.local()
_seed = None  # the last manual_seed: where a thread's generator starts


def manual_seed(seed):
    """Seed this thread's generator, and the one every thread that has not drawn yet starts
    from, so that model construction is reproducible."""
    global _seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _seed = int(seed)
    _local.rng = np.random.default_rng(_seed)


def get_rng():
    """This thread's generator, which layers draw their initial parameters from."""
    rng = getattr(_local, "rng", None)
    if rng is None:
        rng = _local.rng = np.random.default_rng(_seed)
    return rng
