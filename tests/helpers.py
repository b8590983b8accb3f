"""Numerical comparison helpers for the tests."""
import numpy as np

# Normwise relative tolerance of native vs reference, per dtype (DESIGN.md).
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def rel_error(actual, expected):
    """max|actual - expected| / max|expected| (0 for empty arrays)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1))


def assert_close(actual, expected, dtype=None):
    dtype = np.dtype(dtype or np.asarray(expected).dtype)
    err = rel_error(actual, expected)
    assert err <= TOL[dtype], f"relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"
