"""The public kernel API: NumPy arrays in, NumPy arrays out, optional `out=`.

Each function validates its arguments once, then runs the native kernel (C/OpenMP) or its
NumPy twin in fastnn.reference, as chosen by fastnn.set_backend(). Inputs that are not
C-contiguous are copied once; output buffers must be C-contiguous.
"""
import numpy as np

from . import _native, reference
from . import _validate as check
from .runtime import get_backend

__all__ = [
    "ACTIVATIONS",
    "batchnorm_backward",
    "batchnorm_forward",
    "linear_backward",
    "linear_forward",
]

# Activation names and their codes in csrc/fastnn.h (FASTNN_ACT_*).
ACTIVATIONS = {"none": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def _linear_args(x, weight, bias):
    x = check.float_array("x", x, 2)
    weight = check.float_array("weight", weight, 2, x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"x: expected shape (batch, {weight.shape[1]}) to match weight {weight.shape}, "
            f"got {x.shape}"
        )
    if bias is not None:
        bias = check.float_array("bias", bias, 1, x.dtype)
        check.shape("bias", bias, (weight.shape[0],))
    return x, weight, bias


def linear_forward(x, weight, bias=None, activation="none", out=None):
    """y = act(x @ weight.T + bias).

    x: (B, C) float32 or float64; weight: (OC, C) and bias: (OC,) or None, same dtype;
    activation: "none", "relu", "tanh" or "sigmoid"; out: optional (B, OC) array to write into.
    Returns y (B, OC).
    """
    x, weight, bias = _linear_args(x, weight, bias)
    check.choice("activation", activation, ACTIVATIONS)
    out_shape = (x.shape[0], weight.shape[0])
    if out is None:
        out = np.empty(out_shape, dtype=x.dtype)
    else:
        check.output_array("out", out, out_shape, x.dtype)
        check.disjoint(("out", "x", "weight", "bias"), (out, x, weight, bias), 1)
    if get_backend() == "reference":
        return reference.linear_forward(x, weight, bias, activation, out)
    _native.linear_forward(out, x, weight, bias, ACTIVATIONS[activation])
    return out


def linear_backward(dy, x, weight, y=None, activation="none", dweight=None, dbias=None,
                    dx=None, work=None):
    """Backward of linear_forward.

    dy: (B, OC) gradient of the loss w.r.t. the output; x (B, C), weight (OC, C): the forward
    inputs; y (B, OC): the forward output, needed unless activation is "none".
    Accumulates (+=) dweight (OC, C) and dbias (OC,) when given. Returns dx (B, C), written
    into `dx` when given. work: optional (B, OC) scratch buffer, reused to avoid allocating.
    """
    x, weight, _ = _linear_args(x, weight, None)
    check.choice("activation", activation, ACTIVATIONS)
    B, C, OC = x.shape[0], x.shape[1], weight.shape[0]
    dy = check.float_array("dy", dy, 2, x.dtype)
    check.shape("dy", dy, (B, OC))
    if activation == "none":
        y = None  # not read
    else:
        if y is None:
            raise ValueError(f"y: the forward output is needed for activation={activation!r}")
        y = check.float_array("y", y, 2, x.dtype)
        check.shape("y", y, (B, OC))
    if dweight is not None:
        check.output_array("dweight", dweight, (OC, C), x.dtype)
    if dbias is not None:
        check.output_array("dbias", dbias, (OC,), x.dtype)
    if dx is None:
        dx = np.empty((B, C), dtype=x.dtype)
    else:
        check.output_array("dx", dx, (B, C), x.dtype)
    if activation != "none" and get_backend() == "native":
        if work is None:
            work = np.empty((B, OC), dtype=x.dtype)
        else:
            check.output_array("work", work, (B, OC), x.dtype)
    else:
        work = None
    check.disjoint(("dx", "dweight", "dbias", "work", "dy", "x", "weight", "y"),
                   (dx, dweight, dbias, work, dy, x, weight, y), 4)
    if get_backend() == "reference":
        return reference.linear_backward(dy, x, weight, y, activation, dweight, dbias, dx)
    _native.linear_backward(dx, dweight, dbias, work, dy, x, weight, y, ACTIVATIONS[activation])
    return dx


def _channel_vector(name, a, C, dtype):
    if a is None:
        return None
    a = check.float_array(name, a, 1, dtype)
    check.shape(name, a, (C,))
    return a


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training=True, momentum=0.1, eps=1e-5, activation="none", out=None,
                      save_mean=None, save_invstd=None):
    """BatchNorm1d over the batch axis of x, then an optional fused activation.

    x: (B, C) float32 or float64; weight (gamma), bias (beta): (C,) or None (no affine).
    training=True: normalise with the batch mean and biased variance and, when given, update
    running_mean and running_var (C,) in place with `momentum` (the unbiased variance goes
    into running_var, as in PyTorch). training=False: normalise with the running statistics.
    activation: "none", "relu", "tanh" or "sigmoid". out (B, C), save_mean, save_invstd (C,):
    optional buffers. Returns (y, mean, invstd), invstd = 1 / sqrt(var + eps); the backward
    takes mean and invstd.
    """
    x = check.float_array("x", x, 2)
    B, C = x.shape
    weight = _channel_vector("weight", weight, C, x.dtype)
    bias = _channel_vector("bias", bias, C, x.dtype)
    check.choice("activation", activation, ACTIVATIONS)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if running_mean is not None:
        check.output_array("running_mean", running_mean, (C,), x.dtype)
        check.output_array("running_var", running_var, (C,), x.dtype)
    if training and B <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if not training and running_mean is None:
        raise ValueError("running_mean, running_var: needed when training=False")
    out = _output("out", out, (B, C), x.dtype)
    save_mean = _output("save_mean", save_mean, (C,), x.dtype)
    save_invstd = _output("save_invstd", save_invstd, (C,), x.dtype)
    check.disjoint(
        ("out", "save_mean", "save_invstd", "running_mean", "running_var", "x", "weight",
         "bias"),
        (out, save_mean, save_invstd, running_mean, running_var, x, weight, bias), 5)
    if get_backend() == "reference":
        return reference.batchnorm_forward(x, weight, bias, running_mean, running_var,
                                           training, momentum, eps, activation, out,
                                           save_mean, save_invstd)
    _native.batchnorm_forward(out, save_mean, save_invstd, running_mean, running_var, x,
                              weight, bias, float(eps), float(momentum),
                              ACTIVATIONS[activation], bool(training))
    return out, save_mean, save_invstd


def batchnorm_backward(dy, x, y, mean, invstd, weight=None, training=True, activation="none",
                       dweight=None, dbias=None, dx=None):
    """Backward of batchnorm_forward.

    dy, x: (B, C); y: the forward output (read unless activation is "none"); mean, invstd:
    (C,) as batchnorm_forward returned; weight: (C,) or None; training: the mode of the
    forward. Accumulates (+=) dweight and dbias (C,) when given; returns dx (B, C), written
    into `dx` when given.
    """
    x = check.float_array("x", x, 2)
    B, C = x.shape
    dy = check.float_array("dy", dy, 2, x.dtype)
    check.shape("dy", dy, (B, C))
    check.choice("activation", activation, ACTIVATIONS)
    if activation == "none":
        y = None  # not read
    else:
        if y is None:
            raise ValueError(f"y: the forward output is needed for activation={activation!r}")
        y = check.float_array("y", y, 2, x.dtype)
        check.shape("y", y, (B, C))
    mean = _channel_vector("mean", mean, C, x.dtype)
    invstd = _channel_vector("invstd", invstd, C, x.dtype)
    if mean is None or invstd is None:
        raise ValueError("mean, invstd: needed (as batchnorm_forward returned them)")
    weight = _channel_vector("weight", weight, C, x.dtype)
    if dweight is not None:
        check.output_array("dweight", dweight, (C,), x.dtype)
    if dbias is not None:
        check.output_array("dbias", dbias, (C,), x.dtype)
    dx = _output("dx", dx, (B, C), x.dtype)
    check.disjoint(("dx", "dweight", "dbias", "dy", "x", "y", "mean", "invstd", "weight"),
                   (dx, dweight, dbias, dy, x, y, mean, invstd, weight), 3)
    if get_backend() == "reference":
        return reference.batchnorm_backward(dy, x, y, mean, invstd, weight, training,
                                            activation, dweight, dbias, dx)
    _native.batchnorm_backward(dx, dweight, dbias, dy, x, y, mean, invstd, weight,
                               ACTIVATIONS[activation], bool(training))
    return dx


def _output(name, a, shape, dtype):
    """A checked output buffer, or a new one."""
    if a is None:
        return np.empty(shape, dtype=dtype)
    return check.output_array(name, a, shape, dtype)
