"""Argument checks shared by the functional API: each error names the argument, the expected
and the actual value."""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# The BLAS takes 32-bit sizes.
MAX_DIM = 2**31 - 1


def float_array(name, a, ndim, dtype=None):
    """`a` as a C-contiguous float32/float64 array of `ndim` dimensions (copied only if needed).

    dtype: the dtype it must have (that of another argument), or None for either float dtype.
    """
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if dtype is None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (as the input), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got {a.ndim}-d with shape {a.shape}")
    if any(n > MAX_DIM for n in a.shape):
        raise ValueError(f"{name}: each dimension must be at most {MAX_DIM}, got shape {a.shape}")
    return np.ascontiguousarray(a)


def shape(name, a, expected):
    if a.shape != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {a.shape}")


def output_array(name, a, expected_shape, dtype, inputs=()):
    """Check an array the kernel writes into: exact shape and dtype, C-contiguous, writeable,
    and not overlapping any input (it cannot be copied, or the result would be lost)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    shape(name, a, expected_shape)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    for input_name, b in inputs:
        if b is not None and np.may_share_memory(a, b):
            raise ValueError(f"{name}: must not share memory with {input_name}")
    return a


def choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value
