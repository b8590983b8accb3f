"""fastnn's random state: one seeded generator for parameter initialisation."""
import numpy as np

__all__ = ["get_rng", "manual_seed"]

_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed fastnn's generator, so that model construction is reproducible."""
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative int, got {seed!r}")
    _rng = np.random.default_rng(int(seed))


def get_rng():
    """The generator layers draw their initial parameters from."""
    return _rng
