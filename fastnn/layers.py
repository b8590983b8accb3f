"""Layers: Parameter, Module, Linear and the activation layers.

A layer keeps its output and gradient buffers for the batch shape it last saw and reuses
them, so a steady training loop allocates nothing. The arrays a layer returns are therefore
its own and are overwritten by its next forward/backward: copy one to keep it.
"""
import math
import numbers

import numpy as np

from . import functional as F
from .random import get_rng

__all__ = [
    "BatchNorm1d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GELU",
    "LeakyReLU",
    "Linear",
    "Module",
    "Parameter",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]


class Parameter:
    """A trainable array `.data` and its gradient `.grad` (same shape and dtype)."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: forward(x) / backward(dy), parameters(), zero_grad(), train() / eval()."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def parameters(self):
        """The layer's Parameters, in a fixed order."""
        return [v for v in vars(self).values() if isinstance(v, Parameter)]

    def zero_grad(self):
        for p in self.parameters():
            p.grad.fill(0)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


def _buffer(buf, shape, dtype):
    """buf if it already has this shape and dtype, else a new array: a layer allocates only
    when the batch shape changes."""
    if buf is not None and buf.shape == shape and buf.dtype == dtype:
        return buf
    return np.empty(shape, dtype)


class Linear(Module):
    """y = act(x @ weight.T + bias): x (B, in_features) -> y (B, out_features).

    weight: (out_features, in_features), bias: (out_features,), both initialised from
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch. `activation` ("relu", "tanh",
    "sigmoid" or None) is fused into the same kernel.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, activation=None):
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _float_dtype(dtype)
        self.activation = F.check.choice("activation", activation or "none", F.ACTIVATIONS)
        bound = 1 / math.sqrt(self.in_features)
        rng = get_rng()
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.bias = (
            Parameter(rng.uniform(-bound, bound, self.out_features).astype(self.dtype))
            if bias else None
        )
        self._x = self._y = self._dx = self._work = None

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(self, x):
        """x: (B, in_features) array of the layer's dtype -> (B, out_features)."""
        x = F.check.float_array("x", x, 2, self.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (batch, {self.in_features}), got {x.shape}")
        self._y = _buffer(self._y, (x.shape[0], self.out_features), self.dtype)
        bias = None if self.bias is None else self.bias.data
        self._x = x
        return F.linear_forward(x, self.weight.data, bias, self.activation, out=self._y)

    def backward(self, dy):
        """dy: (B, out_features) -> dx (B, in_features); accumulates weight.grad, bias.grad."""
        if self._x is None:
            raise ValueError("Linear.backward: called before forward")
        B = self._x.shape[0]
        self._dx = _buffer(self._dx, (B, self.in_features), self.dtype)
        if self.activation != "none":
            self._work = _buffer(self._work, (B, self.out_features), self.dtype)
        return F.linear_backward(
            dy, self._x, self.weight.data, self._y, self.activation, self.weight.grad,
            None if self.bias is None else self.bias.grad, dx=self._dx, work=self._work,
        )

    def __repr__(self):
        act = "" if self.activation == "none" else f", activation={self.activation!r}"
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}{act})")


class BatchNorm1d(Module):
    """Batch normalisation over the batch axis: x (B, num_features) -> (B, num_features).

    weight (gamma, ones) and bias (beta, zeros) are Parameters when affine; running_mean
    (zeros) and running_var (ones) are updated in training with `momentum` (the unbiased batch
    variance into running_var) and used in evaluation, exactly as torch.nn.BatchNorm1d.
    `activation` ("relu", "tanh", "sigmoid" or None) is fused after the affine map.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32,
                 activation=None):
        self.num_features = _positive_int("num_features", num_features)
        self.dtype = _float_dtype(dtype)
        if not (isinstance(eps, numbers.Real) and eps > 0):
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        if not (isinstance(momentum, numbers.Real) and 0 <= momentum <= 1):
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)
        self.activation = F.check.choice("activation", activation or "none", F.ACTIVATIONS)
        C = self.num_features
        self.weight = Parameter(np.ones(C, self.dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, self.dtype)) if affine else None
        self.running_mean = np.zeros(C, self.dtype)
        self.running_var = np.ones(C, self.dtype)
        self.num_batches_tracked = 0
        self._save_mean = np.empty(C, self.dtype)
        self._save_invstd = np.empty(C, self.dtype)
        self._x = self._y = self._dx = None
        self._trained_forward = True

    def parameters(self):
        return [self.weight, self.bias] if self.affine else []

    def forward(self, x):
        """x: (B, num_features) array of the layer's dtype -> (B, num_features)."""
        x = F.check.float_array("x", x, 2, self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x: expected shape (batch, {self.num_features}), got {x.shape}")
        self._y = _buffer(self._y, x.shape, self.dtype)
        F.batchnorm_forward(
            x, *self._affine("data"), self.running_mean, self.running_var, self.training,
            self.momentum, self.eps, self.activation, self._y, self._save_mean,
            self._save_invstd,
        )
        if self.training:
            self.num_batches_tracked += 1
        self._x, self._trained_forward = x, self.training
        return self._y

    def backward(self, dy):
        """dy: (B, num_features) -> dx; accumulates weight.grad and bias.grad."""
        if self._x is None:
            raise ValueError("BatchNorm1d.backward: called before forward")
        self._dx = _buffer(self._dx, self._x.shape, self.dtype)
        weight, _ = self._affine("data")
        dweight, dbias = self._affine("grad")
        return F.batchnorm_backward(
            dy, self._x, self._y, self._save_mean, self._save_invstd, weight,
            self._trained_forward, self.activation, dweight, dbias, self._dx,
        )

    def _affine(self, field):
        """(weight, bias) .data or .grad arrays, or (None, None) without affine."""
        if not self.affine:
            return None, None
        return getattr(self.weight, field), getattr(self.bias, field)

    def __repr__(self):
        act = "" if self.activation == "none" else f", activation={self.activation!r}"
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, dtype={self.dtype}{act})")


class _Elementwise(Module):
    """An elementwise activation layer on arrays of any shape; backward needs the saved input
    and output."""

    kind = "none"
    negative_slope = 0.0

    def __init__(self):
        self._x = self._y = self._dx = None

    def forward(self, x):
        x = F.check.float_array("x", x, np.ndim(x))
        self._y = _buffer(self._y, x.shape, x.dtype)
        self._x = x
        return F.activation_forward(x, self.kind, self.negative_slope, out=self._y)

    def backward(self, dy):
        if self._x is None:
            raise ValueError(f"{type(self).__name__}.backward: called before forward")
        self._dx = _buffer(self._dx, self._x.shape, self._x.dtype)
        return F.activation_backward(dy, self._x, self._y, self.kind, self.negative_slope,
                                     dx=self._dx)

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Elementwise):
    """max(x, 0)."""

    kind = "relu"


class Tanh(_Elementwise):
    kind = "tanh"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""

    kind = "sigmoid"


class LeakyReLU(_Elementwise):
    """x if x >= 0 else negative_slope * x."""

    kind = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if not isinstance(negative_slope, numbers.Real) or not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope: expected a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class GELU(_Elementwise):
    """x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh"), as
    torch.nn.GELU."""

    def __init__(self, approximate="none"):
        super().__init__()
        F.check.choice("approximate", approximate, {"none", "tanh"})
        self.approximate = approximate
        self.kind = "gelu" if approximate == "none" else "gelu_tanh"

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class Softmax(Module):
    """Softmax along the last axis: x (..., K) -> probabilities (..., K)."""

    def __init__(self):
        self._y = self._dx = None

    def forward(self, x):
        x = F.check.float_array("x", x, max(1, np.ndim(x)))
        self._y = _buffer(self._y, x.shape, x.dtype)
        return F.softmax_forward(x, out=self._y)

    def backward(self, dy):
        if self._y is None:
            raise ValueError("Softmax.backward: called before forward")
        self._dx = _buffer(self._dx, self._y.shape, self._y.dtype)
        return F.softmax_backward(dy, self._y, dx=self._dx)

    def __repr__(self):
        return "Softmax()"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1 / (1 - p); identity in evaluation.

    The mask comes from a counter-based generator keyed by `seed` (drawn from fastnn's
    generator, so fastnn.manual_seed makes it reproducible, unless given) and a counter that
    advances with every training forward: the same seed gives the same masks for any thread
    count, and the backward recomputes the forward's mask rather than storing it.
    """

    def __init__(self, p=0.5, seed=None):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = int(get_rng().integers(2**63)) if seed is None else int(seed)
        self.offset = 0  # counter of the next forward's first element
        self._shape = None
        self._mask_offset = 0
        self._out = self._dx = None

    def forward(self, x):
        x = F.check.float_array("x", x, np.ndim(x))
        self._shape, self._dtype = x.shape, x.dtype
        if not self.training or self.p == 0:
            self._identity = True
            return x
        self._identity = False
        self._out = _buffer(self._out, x.shape, x.dtype)
        self._mask_offset = self.offset
        self.offset = (self.offset + x.size) % 2**64
        return F.dropout_apply(x, self.p, self.seed, self._mask_offset, out=self._out)

    def backward(self, dy):
        if self._shape is None:
            raise ValueError("Dropout.backward: called before forward")
        dy = F.check.float_array("dy", dy, len(self._shape), self._dtype)
        F.check.shape("dy", dy, self._shape)
        if self._identity:
            return dy
        self._dx = _buffer(self._dx, dy.shape, dy.dtype)
        return F.dropout_apply(dy, self.p, self.seed, self._mask_offset, out=self._dx)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Embedding(Module):
    """A lookup table: integer indices of any shape -> idx.shape + (embedding_dim,).

    weight: (num_embeddings, embedding_dim) ~ N(0, 1), as torch.nn.Embedding. The backward
    adds the output gradient into weight.grad row by row (repeated indices add up, in a fixed
    order) and returns None: indices have no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32):
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        self.dtype = _float_dtype(dtype)
        shape = (self.num_embeddings, self.embedding_dim)
        self.weight = Parameter(get_rng().standard_normal(shape).astype(self.dtype))
        self._idx = self._out = None

    def forward(self, idx):
        idx = F.check.index_array("idx", idx, self.num_embeddings)
        shape = idx.shape + (self.embedding_dim,)
        self._out = _buffer(self._out, shape, self.dtype)
        self._idx = idx
        return F.embedding_forward(self.weight.data, idx, out=self._out)

    def backward(self, dy):
        if self._idx is None:
            raise ValueError("Embedding.backward: called before forward")
        F.embedding_backward(self.weight.grad, dy, self._idx)
        return None

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype})"


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...); backward restores the shape. No copy when the
    input is contiguous."""

    def __init__(self):
        self._shape = None

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"x: expected at least a 1-d array, got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))

    def backward(self, dy):
        if self._shape is None:
            raise ValueError("Flatten.backward: called before forward")
        dy = np.asarray(dy)
        expected = (self._shape[0], int(np.prod(self._shape[1:], dtype=np.int64)))
        if dy.shape != expected:
            raise ValueError(f"dy: expected shape {expected}, got {dy.shape}")
        return dy.reshape(self._shape)

    def __repr__(self):
        return "Flatten()"
