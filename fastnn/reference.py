"""The NumPy twin of every kernel: the numerical oracle, written for clarity, not speed.

Each function has the same signature and semantics as its counterpart in fastnn.functional,
which validates the arguments before calling here or into the native kernels.
"""
import numpy as np
from scipy.special import erfc, expit

__all__ = [
    "activation_backward",
    "activation_derivative",
    "adagrad_step",
    "adam_step",
    "activation_forward",
    "apply_activation",
    "batchnorm_backward",
    "batchnorm_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_apply",
    "embedding_backward",
    "embedding_forward",
    "clamp_inplace",
    "mse_backward",
    "mse_forward",
    "rmsprop_step",
    "scale_inplace",
    "sgd_step",
    "softmax_backward",
    "softmax_forward",
    "sum_squares",
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
                    dx=None, work=None, input_grad=True):
    """Backward of linear_forward; returns dx (B, C) and accumulates the parameter gradients.

    dz = dy * act'(y); dx = dz @ weight; dweight (OC, C) += dz.T @ x; dbias (OC,) += dz.sum(0).
    `work` is the native kernel's scratch space and is not used here. input_grad=False skips
    dx and returns None.
    """
    dz = dy if activation == "none" else dy * activation_derivative(y, activation)
    if dweight is not None:
        dweight += dz.T @ x
    if dbias is not None:
        dbias += dz.sum(axis=0)
    if not input_grad:
        return None
    result = dz @ weight
    if dx is None:
        return result
    dx[...] = result
    return dx


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training=True, momentum=0.1, eps=1e-5, activation="none", out=None,
                      save_mean=None, save_invstd=None, running_var_unbiased=True):
    """BatchNorm1d over x (B, C), then the activation. Returns (y, mean, invstd).

    Training: the batch mean and biased variance normalise; running_mean/running_var (C,), when
    given, become (1 - momentum) * old + momentum * new, with the unbiased variance (the
    biased one with running_var_unbiased=False).
    Evaluation: the running statistics normalise. mean and invstd = 1 / sqrt(var + eps) (C,)
    are what the backward needs.
    """
    if training:
        B = x.shape[0]
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).mean(axis=0)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            stored = var * B / (B - 1) if running_var_unbiased else var
            running_var[...] = (1 - momentum) * running_var + momentum * stored
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


def _write(out, value):
    if out is None:
        return value
    out[...] = value
    return out


def activation_forward(x, kind, negative_slope=0.01, out=None):
    """act(x) elementwise, for kind in {"relu", "tanh", "sigmoid", "leaky_relu", "gelu",
    "gelu_tanh"} (gelu: x * Phi(x); gelu_tanh: its tanh approximation)."""
    if kind == "leaky_relu":
        y = np.where(x > 0, x, negative_slope * x)
    elif kind == "gelu":
        y = 0.5 * x * erfc(-x / np.sqrt(2))  # x * Phi(x), no cancellation for x << 0
    elif kind == "gelu_tanh":
        # x * (1 + tanh(u)) / 2 = x * sigmoid(2u)
        y = x * expit(2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
    else:
        y = apply_activation(x, kind)
    return _write(out, y.astype(x.dtype, copy=False))


def activation_backward(dy, x, y, kind, negative_slope=0.01, dx=None):
    """dy * act'(x), given the input x and the output y of activation_forward."""
    if kind == "leaky_relu":
        g = np.where(x > 0, 1, negative_slope)  # negative_slope at 0, as torch
    elif kind == "gelu":
        g = 0.5 * erfc(-x / np.sqrt(2)) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    elif kind == "gelu_tanh":
        s = expit(2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))
        g = s + 2 * x * s * (1 - s) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x * x)
    else:
        g = activation_derivative(y, kind)
    return _write(dx, (dy * g).astype(dy.dtype, copy=False))


def softmax_forward(x, out=None):
    """softmax along the last axis, shifted by the row maximum for stability."""
    if x.size == 0:
        return _write(out, x.copy())
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return _write(out, e / e.sum(axis=-1, keepdims=True))


def softmax_backward(dy, y, dx=None):
    """dx = y * (dy - sum(dy * y)) along the last axis, from the output y."""
    return _write(dx, y * (dy - (dy * y).sum(axis=-1, keepdims=True)))


def dropout_apply(x, p, seed, offset, out=None, scale=None):
    """x * scale * mask, mask[i] = uniform(seed, offset + i) >= p, with the same
    counter-based generator as csrc/dropout.c (splitmix64's finaliser); scale defaults to
    1 / (1 - p) (inverted dropout)."""
    def mix64(z):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    counter = np.uint64(offset) + np.arange(x.size, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as in C
        h = mix64(mix64(np.uint64(seed)) + counter * np.uint64(0x9E3779B97F4A7C15))
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    scale = x.dtype.type(1 / (1 - p) if scale is None else scale)
    return _write(out, np.where(u.reshape(x.shape) >= p, x * scale, 0).astype(x.dtype))


def embedding_forward(weight, idx, out=None):
    """weight (V, D)[idx] -> idx.shape + (D,)."""
    return _write(out, weight[idx])


def embedding_backward(dweight, dy, idx):
    """dweight (V, D)[idx[i]] += dy[i], repeated indices adding up."""
    np.add.at(dweight, idx.reshape(-1), dy.reshape(idx.size, dweight.shape[1]))
    return dweight


def _class_weights(target, weight, ignore_index, K):
    """(rows, w_t, w): the rows not ignored, their classes' weights, and the weights (K,)."""
    rows = np.flatnonzero(target != ignore_index)
    w = np.ones(K) if weight is None else weight.astype(np.float64)
    return rows, w[target[rows]], w


def cross_entropy_forward(logits, target, probs=None, weight=None, ignore_index=-100,
                          smoothing=0.0, mean=True, row_loss=None):
    """torch.nn.CrossEntropyLoss written out. Row r's loss is
    -(1 - smoothing) * w[t] * log p[t] - smoothing / K * sum_k w[k] * log p[k], with
    p = softmax(logits[r]), t = target[r] and w the class weights (ones when None); 0 for
    a row whose target is ignore_index. Returns (the sum of the rows' losses, or with mean
    that sum over the sum of w[t] of the rows not ignored; probs = softmax(logits)), and
    writes the rows' losses into row_loss when given."""
    N, K = logits.shape
    logp = np.zeros((N, K))
    if N and K:
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows, w_t, w = _class_weights(target, weight, ignore_index, K)
    losses = np.zeros(N)
    losses[rows] = (-(1 - smoothing) * w_t * logp[rows, target[rows]]
                    - smoothing / K * (logp[rows] * w).sum(axis=1))
    if row_loss is not None:
        row_loss[...] = losses
    total = float(losses.sum())
    if mean:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = float(np.float64(total) / w_t.sum())
    return total, _write(probs, softmax_forward(logits))


def cross_entropy_backward(probs, target, dloss, dlogits=None, weight=None, row_dloss=None,
                           ignore_index=-100, smoothing=0.0, mean=True):
    """The gradient of cross_entropy_forward's result times dloss (each row also times
    row_dloss[r] when given) with respect to the logits, from probs = softmax(logits):
    row r is (1 - smoothing) * w[t] * (p - onehot(t)) + smoothing / K * (sum(w) * p - w),
    0 for an ignored row."""
    N, K = probs.shape
    rows, w_t, w = _class_weights(target, weight, ignore_index, K)
    p = probs[rows].astype(np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(rows)), target[rows]] = 1
    g = np.full(len(rows), float(dloss))
    if mean:
        g /= w_t.sum()
    if row_dloss is not None:
        g *= row_dloss[rows]
    d = np.zeros((N, K))
    d[rows] = g[:, None] * ((1 - smoothing) * w_t[:, None] * (p - onehot)
                            + smoothing / K * (w.sum() * p - w))
    return _write(dlogits, d.astype(probs.dtype))


def mse_forward(pred, target):
    """mean((pred - target) ** 2), accumulated in float64."""
    d = pred.astype(np.float64) - target
    return float(np.mean(d * d)) if d.size else float("nan")


def mse_backward(pred, target, scale, dpred=None):
    """scale * (pred - target); scale = 2 * dloss / n for the mean."""
    return _write(dpred, (pred - target) * pred.dtype.type(scale))


def _penalised(grad, p, weight_decay, l1):
    """The gradient with the L2 (weight_decay * p) and L1 (l1 * sign(p)) penalties."""
    g = grad
    if weight_decay:
        g = g + weight_decay * p
    if l1:
        g = g + l1 * np.sign(p)
    return g


def sgd_step(p, buf, grad, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0,
             nesterov=False, first=False):
    """torch.optim.SGD on flat arrays, in place. buf: the momentum buffer (None without
    momentum); first: the first step, where buf takes the gradient itself."""
    g = _penalised(grad, p, weight_decay, l1)
    if buf is not None:
        buf[...] = g if first else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


def adagrad_step(p, state_sum, grad, clr, weight_decay=0.0, l1=0.0, eps=1e-10):
    """torch.optim.Adagrad on flat arrays, in place; clr = lr / (1 + (step - 1) * lr_decay)."""
    g = _penalised(grad, p, weight_decay, l1)
    state_sum += g * g
    p -= clr * g / (np.sqrt(state_sum) + eps)


def rmsprop_step(p, square_avg, grad_avg, momentum_buf, grad, lr, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, l1=0.0, momentum=0.0):
    """torch.optim.RMSprop on flat arrays, in place. grad_avg: the centered variant's mean
    (None when not centered); momentum_buf: None without momentum."""
    g = _penalised(grad, p, weight_decay, l1)
    square_avg[...] = alpha * square_avg + (1 - alpha) * g * g
    if grad_avg is not None:
        grad_avg += (1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum_buf is not None:
        momentum_buf[...] = momentum * momentum_buf + g / avg
        p -= lr * momentum_buf
    else:
        p -= lr * g / avg


def adam_step(p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, l1=0.0, decoupled=False, step=1):
    """torch.optim.Adam (decoupled=True: AdamW) on flat arrays, in place; step counts from 1;
    max_exp_avg_sq: the amsgrad state (None without amsgrad)."""
    if decoupled:
        p *= 1 - lr * weight_decay
        g = _penalised(grad, p, 0.0, l1)
    else:
        g = _penalised(grad, p, weight_decay, l1)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size = lr / (1 - beta1**step)
    bc2_sqrt = np.sqrt(1 - beta2**step)
    p -= step_size * exp_avg / (np.sqrt(v) / bc2_sqrt + eps)


def sum_squares(x):
    """sum(x ** 2) in float64."""
    x = x.astype(np.float64, copy=False)
    return float(np.dot(x.ravel(), x.ravel()))


def scale_inplace(x, s):
    x *= x.dtype.type(s)


def clamp_inplace(x, lo, hi):
    np.clip(x, lo, hi, out=x)
