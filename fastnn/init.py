"""Weight initialisation, in place, drawing from fastnn's generator (fastnn.manual_seed).

Fans follow PyTorch for a weight of shape (fan_out, fan_in) (Linear's (out, in)):
  xavier_* (Glorot): std = gain * sqrt(2 / (fan_in + fan_out))
  he_* (Kaiming, fan_in mode): std = gain / sqrt(fan_in), gain = calculate_gain(nonlinearity)
  *_uniform: U(-sqrt(3) * std, sqrt(3) * std), the same variance as *_normal.
"""
import math

import numpy as np

from .random import get_rng

__all__ = ["INITS", "calculate_gain", "he_normal", "he_uniform", "normal", "ones", "uniform",
           "xavier_normal", "xavier_uniform", "zeros"]


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for an activation, as torch.nn.init.calculate_gain."""
    gains = {"linear": 1.0, "none": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3,
             "relu": math.sqrt(2.0), "selu": 3.0 / 4}
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity not in gains:
        raise ValueError(f"nonlinearity: expected one of {sorted(gains) + ['leaky_relu']}, "
                         f"got {nonlinearity!r}")
    return gains[nonlinearity]


def _fans(a):
    if a.ndim < 2:
        raise ValueError(f"array: fans need at least 2 dimensions, got shape {a.shape}")
    receptive = int(np.prod(a.shape[2:], dtype=np.int64))
    return a.shape[1] * receptive, a.shape[0] * receptive


def _fill(a, values):
    a[...] = values.astype(a.dtype, copy=False)
    return a


def normal(a, mean=0.0, std=1.0):
    """a ~ N(mean, std^2)."""
    return _fill(a, get_rng().normal(mean, std, a.shape))


def uniform(a, low=0.0, high=1.0):
    """a ~ U(low, high)."""
    return _fill(a, get_rng().uniform(low, high, a.shape))


def zeros(a):
    a[...] = 0
    return a


def ones(a):
    a[...] = 1
    return a


def xavier_normal(a, gain=1.0):
    fan_in, fan_out = _fans(a)
    return normal(a, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def xavier_uniform(a, gain=1.0):
    fan_in, fan_out = _fans(a)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(a, -bound, bound)


def he_normal(a, nonlinearity="relu", param=None):
    fan_in, _ = _fans(a)
    return normal(a, 0.0, calculate_gain(nonlinearity, param) / math.sqrt(fan_in))


def he_uniform(a, nonlinearity="relu", param=None):
    fan_in, _ = _fans(a)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, param) / math.sqrt(fan_in)
    return uniform(a, -bound, bound)


# The weight initialisations a layer's init= accepts; the activation picks the gain.
INITS = {
    "xavier_normal": lambda a, act: xavier_normal(a, calculate_gain(act)),
    "xavier_uniform": lambda a, act: xavier_uniform(a, calculate_gain(act)),
    "he_normal": lambda a, act: he_normal(a, act),
    "he_uniform": lambda a, act: he_uniform(a, act),
}
