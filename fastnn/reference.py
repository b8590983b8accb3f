"""The NumPy twin of every kernel: the numerical oracle, written for clarity, not speed.

Each function has the same signature and semantics as its counterpart in fastnn.functional,
which validates the arguments before calling here or into the native kernels.
"""
import numpy as np

__all__ = [
    "activation_derivative",
    "apply_activation",
    "batchnorm_backward",
    "batchnorm_forward",
    "linear_backward",
    "linear_forward",
]


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


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training=True, momentum=0.1, eps=1e-5, activation="none", out=None,
                      save_mean=None, save_invstd=None):
    """BatchNorm1d over x (B, C), then the activation. Returns (y, mean, invstd).

    Training: the batch mean and biased variance normalise; running_mean/running_var (C,), when
    given, become (1 - momentum) * old + momentum * new, with the unbiased variance.
    Evaluation: the running statistics normalise. mean and invstd = 1 / sqrt(var + eps) (C,)
    are what the backward needs.
    """
    if training:
        B = x.shape[0]
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).mean(axis=0)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * B / (B - 1)
    else:
        mean, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + eps)
    z = (x - mean) * invstd
    if weight is not None:
        z = z * weight
    if bias is not None:
        z = z + bias
    y = apply_activation(z, activation)
    results = []
    for given, value in [(out, y), (save_mean, mean), (save_invstd, invstd)]:
        if given is None:
            results.append(np.array(value, dtype=x.dtype))
        else:
            given[...] = value
            results.append(given)
    return tuple(results)


def batchnorm_backward(dy, x, y, mean, invstd, weight=None, training=True, activation="none",
                       dweight=None, dbias=None, dx=None):
    """Backward of batchnorm_forward; returns dx (B, C), accumulates dweight, dbias (C,).

    With dz = dy * act'(y) and xhat = (x - mean) * invstd:
    dbias += sum(dz); dweight += sum(dz * xhat); dx = weight * invstd * dz in evaluation, and
    in training, through the batch statistics, weight * invstd * (dz - mean(dz) - xhat *
    mean(dz * xhat)).
    """
    dz = dy if activation == "none" else dy * activation_derivative(y, activation)
    xhat = (x - mean) * invstd
    sum_dz = dz.sum(axis=0)
    sum_dz_xhat = (dz * xhat).sum(axis=0)
    if dweight is not None:
        dweight += sum_dz_xhat
    if dbias is not None:
        dbias += sum_dz
    k = invstd if weight is None else weight * invstd
    if training:
        B = x.shape[0]
        result = k * (dz - sum_dz / B - xhat * (sum_dz_xhat / B))
    else:
        result = k * dz
    if dx is None:
        return result.astype(x.dtype, copy=False)
    dx[...] = result
    return dx
