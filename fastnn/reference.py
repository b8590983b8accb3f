"""The NumPy twin of every kernel: the numerical oracle, written for clarity, not speed.

Each function has the same signature and semantics as its counterpart in fastnn.functional,
which validates the arguments before calling here or into the native kernels.
"""
import numpy as np

__all__ = ["apply_activation", "activation_derivative", "linear_backward", "linear_forward"]


def apply_activation(z, kind):
    """act(z) for kind in {"none", "relu", "tanh", "sigmoid"}; a new array."""
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "tanh":
        return np.tanh(z)
    if kind == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-z) = inf for very negative z gives 0, rightly
            return 1 / (1 + np.exp(-z))
    return z.copy()


def activation_derivative(y, kind):
    """act'(z) written in terms of the output y = act(z)."""
    if kind == "relu":
        return (y > 0).astype(y.dtype)
    if kind == "tanh":
        return 1 - y * y
    if kind == "sigmoid":
        return y * (1 - y)
    return np.ones_like(y)


def linear_forward(x, weight, bias=None, activation="none", out=None):
    """y (B, OC) = act(x (B, C) @ weight (OC, C).T + bias (OC,))."""
    z = x @ weight.T
    if bias is not None:
        z += bias
    y = apply_activation(z, activation)
    if out is None:
        return y
    out[...] = y
    return out


def linear_backward(dy, x, weight, y=None, activation="none", dweight=None, dbias=None,
                    dx=None, work=None):
    """Backward of linear_forward; returns dx (B, C) and accumulates the parameter gradients.

    dz = dy * act'(y); dx = dz @ weight; dweight (OC, C) += dz.T @ x; dbias (OC,) += dz.sum(0).
    `work` is the native kernel's scratch space and is not used here.
    """
    dz = dy if activation == "none" else dy * activation_derivative(y, activation)
    if dweight is not None:
        dweight += dz.T @ x
    if dbias is not None:
        dbias += dz.sum(axis=0)
    result = dz @ weight
    if dx is None:
        return result
    dx[...] = result
    return dx
