"""The public kernel API: NumPy arrays in, NumPy arrays out, optional `out=`.

Each function validates its arguments once, then runs the native kernel (C/OpenMP) or its
NumPy twin in fastnn.reference, as chosen by fastnn.set_backend(). Inputs that are not
C-contiguous are copied once; output buffers must be C-contiguous.
"""
import numpy as np

from . import _native, reference
from . import _validate as check
from .runtime import get_backend

__all__ = ["ACTIVATIONS", "linear_backward", "linear_forward"]

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
