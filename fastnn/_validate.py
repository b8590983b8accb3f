"""Argument checks shared by the functional API: each error names the argument, the expected
and the actual value."""
import math
import numbers

import numpy as np

from . import _native

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# The BLAS takes 32-bit sizes.
MAX_DIM = 2**31 - 1


def float_array(name, a, ndim, dtype=None):
    """`a` as a C-contiguous float32/float64 array of `ndim` dimensions (copied only if needed).

    dtype: the dtype it must have (that of another argument), or None for either float dtype.
    """
    if dtype is not None and _native.is_c_array(a, ndim, dtype.num, MAX_DIM):
        return a  # the common case, in one C call
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if dtype is None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (as the input), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got {a.ndim}-d with shape {a.shape}")
    if max(a.shape, default=0) > MAX_DIM:
        raise ValueError(f"{name}: each dimension must be at most {MAX_DIM}, got shape {a.shape}")
    # a misaligned array (np.frombuffer at an odd offset) is copied: the kernels read whole
    # elements; np.ascontiguousarray would turn a 0-d array into shape (1,)
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def shape(name, a, expected):
    if a.shape != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {a.shape}")


def output_array(name, a, expected_shape, dtype):
    """Check an array the kernel writes into: exact shape and dtype, C-contiguous, writeable
    (it cannot be copied, or the result would be lost)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    shape(name, a, expected_shape)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    if not a.flags.aligned:
        raise ValueError(f"{name}: expected an array aligned to its {a.dtype.itemsize}-byte "
                         f"elements, got one at address {a.ctypes.data:#x}")
    return a


def disjoint(names, arrays, n_outputs):
    """Raise ValueError if one of the first n_outputs arrays (those a kernel writes) overlaps
    any other array in memory. arrays: C-contiguous arrays or None; names: their names."""
    hit = _native.first_overlap(arrays, n_outputs)
    if hit is not None:
        raise ValueError(f"{names[hit[0]]}: must not share memory with {names[hit[1]]}")


def number(name, value, low=0.0, high=None, high_open=False):
    """A real number (not NaN, not a bool) in [low, high] ([low, high) with high_open; no
    upper bound without high)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high})" if high_open else f">= {low}" if high is None \
            else f"[{low}, {high}]"
        raise ValueError(f"{name}: expected a value in {bound}, got {value!r}")
    return value


def integer(name, value, low=-2**63, high=2**63 - 1):
    """An int (not a bool) in [low, high]; the default range is C's int64."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not low <= value <= high:
        raise ValueError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")
    return int(value)


def real(name, value):
    """A real number (not a bool) as a float; NaN and infinities pass."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return float(value)


def choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def index_array(name, a, bound, what="index", also=None):
    """`a` as a C-contiguous int64 array whose values lie in [0, bound) (or equal `also`,
    when given); IndexError names the first bad value."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    # checked before the conversion, which would wrap a huge unsigned value; min and max
    # allocate nothing, so a training step with valid indices stays allocation-free
    if a.size and (a.min() < 0 or a.max() >= bound):
        flat = a.reshape(-1)
        bad = (flat < 0) | (flat >= bound)
        if also is not None:
            bad &= flat != also
        if bad.any():
            value = flat[np.argmax(bad)]
            allowed = "" if also is None else f" or {also}"
            raise IndexError(f"{name}: {what} {value} is out of range [0, {bound}){allowed}")
    a = np.asarray(a, dtype=np.int64, order="C")
    return a if a.flags.aligned else a.copy()
