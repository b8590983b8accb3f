"""Layers: Parameter, Module, Linear and the activation layers.

A layer keeps its output and gradient buffers for the batch shape it last saw and reuses
them, so a steady training loop allocates nothing. The arrays a layer returns are therefore
its own and are overwritten by its next forward/backward: copy one to keep it.
"""
import math
import numbers

import numpy as np

from . import _native, runtime
from . import functional as F
from .arena import Arena
from .init import INITS
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
    "Sequential",
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
    """Base class of layers and models.

    forward(x) (also __call__) and backward(dy) -> dx; parameters() / named_parameters()
    over this module and its sub-modules, num_parameters(), summary(x), predict(x),
    zero_grad(), train() / eval(), state_dict() /
    load_state_dict() (parameters and buffers such as BatchNorm's running statistics), and
    config(): the constructor arguments, from which fastnn.load rebuilds a saved model.
    """

    training = True
    # names of non-trainable arrays that belong in the state_dict (e.g. running statistics)
    _buffer_names = ()

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def children(self):
        """The direct sub-modules, in order."""
        return [v for v in vars(self).values() if isinstance(v, Module)]

    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, e.g. ("0.weight", ...), in a fixed order."""
        for name, v in vars(self).items():
            if isinstance(v, Parameter):
                yield prefix + name, v
            elif isinstance(v, Module):
                yield from v.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        """The Parameters of this module and its sub-modules, in a fixed order, each once
        (a Parameter assigned to two layers, to share it, is listed once)."""
        return list({id(p): p for _, p in self.named_parameters()}.values())

    def named_buffers(self, prefix=""):
        for name in self._buffer_names:
            yield prefix + name, getattr(self, name)
        for name, v in vars(self).items():
            if isinstance(v, Module):
                yield from v.named_buffers(f"{prefix}{name}.")

    def zero_grad(self):
        for p in self.parameters():
            p.grad.fill(0)

    def train(self, mode=True):
        """Training mode (mode=True) or evaluation mode, for this module and its children."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_arrays(self, prefix=""):
        """{name: the array itself} for every parameter (its .data) and buffer."""
        items = list(self.named_parameters(prefix)) + list(self.named_buffers(prefix))
        return {name: v.data if isinstance(v, Parameter) else v for name, v in items}

    def state_dict(self):
        """{name: copy of the array} for every parameter and buffer."""
        return {name: v.copy() for name, v in self.state_arrays().items()}

    def load_state_dict(self, state):
        """Copy arrays into this module's parameters and buffers, in place (views, such as an
        optimizer's arena, stay valid). The names, shapes and dtypes must match exactly."""
        targets = self.state_arrays()
        missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(f"state_dict: does not match this model: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, target in targets.items():
            value = np.asarray(state[name])
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"state_dict: {name} has shape {value.shape} and dtype "
                                 f"{value.dtype}, this model's has {target.shape}, {target.dtype}")
        for name, target in targets.items():
            target[...] = state[name]

    def config(self):
        """The constructor arguments of this module, as JSON-friendly values."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def num_parameters(self):
        """The number of trainable values: every Parameter's size, each Parameter once (as
        torch's sum(p.numel() for p in model.parameters()))."""
        return sum(p.data.size for p in self.parameters())

    def predict(self, x, batch_size=None):
        """The outputs for x in evaluation mode, as a new array the caller owns; the mode is
        restored after. batch_size: run x in chunks of that many rows (None: all at once)."""
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, numbers.Integral)
                                       or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        training = self.training
        self.eval()
        try:
            if batch_size is None or len(x) <= batch_size:
                return np.array(self.forward(x))
            return np.concatenate([np.array(self.forward(x[i:i + batch_size]))
                                   for i in range(0, len(x), batch_size)])
        finally:
            self.train(training)

    def summary(self, x=None):
        """A table of the layers: name, type, output shape (for an example input x, run in
        evaluation mode; "?" without one) and parameters, with the totals. Returns the
        text (print it)."""
        layers = self.children() or [self]
        shapes = ["?"] * len(layers)
        if x is not None:
            training = self.training
            self.eval()
            try:
                out = x
                for i, layer in enumerate(layers):
                    out = layer(out)
                    shapes[i] = str(tuple(np.shape(out)))
            finally:
                self.train(training)
        rows = [(f"{i}", type(layer).__name__, shapes[i], f"{layer.num_parameters():,}")
                for i, layer in enumerate(layers)]
        header = ("layer", "type", "output shape", "parameters")
        widths = [max(len(r[k]) for r in rows + [header]) for k in range(4)]
        line = "  ".join("{:<%d}" % w for w in widths[:3]) + "  {:>%d}" % widths[3]
        text = [line.format(*header), "-" * (sum(widths) + 6)]
        text += [line.format(*r) for r in rows]
        params = self.parameters()
        nbytes = sum(p.data.nbytes for p in params)
        text.append("-" * (sum(widths) + 6))
        text.append(f"total: {self.num_parameters():,} parameters in {len(params)} arrays "
                    f"({nbytes / 1e6:.3g} MB, and as much again for their gradients)")
        return "\n".join(text)

    def save(self, path):
        """Save to a .npz file (see fastnn.save)."""
        from .checkpoint import save

        save(self, path)

    def load(self, path):
        """Load a file saved from a model of the same architecture into this one."""
        from .checkpoint import load_into

        return load_into(self, path)


class Sequential(Module):
    """Layers applied in order: forward runs them first to last, backward last to first.

    net[i] is the i-th layer; len(net) and iteration work as for a list. net.outputs[i] and
    net.grads[i] hold the last forward's output of layer i and the last backward's gradient
    with respect to it (the layer's own buffers, not copies). Building one packs
    the parameters of all its layers into one flat arena per dtype (fastnn.arena), so an
    optimizer over net.parameters() updates one buffer. An Embedding first in the stack
    takes the integer input.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}]: expected a fastnn Module, got "
                                f"{type(layer).__name__}")
        _each_module_once(layers)
        self.layers = list(layers)
        self.outputs = [None] * len(self.layers)  # the last forward's output of each layer
        self.grads = [None] * len(self.layers)  # the last backward's gradient at each output
        params = self.parameters()
        for dtype in dict.fromkeys(p.data.dtype for p in params):
            Arena([p for p in params if p.data.dtype == dtype])

    def children(self):
        return list(self.layers)

    def named_parameters(self, prefix=""):
        for i, layer in enumerate(self.layers):
            yield from layer.named_parameters(f"{prefix}{i}.")

    def named_buffers(self, prefix=""):
        for i, layer in enumerate(self.layers):
            yield from layer.named_buffers(f"{prefix}{i}.")

    def __getitem__(self, index):
        return Sequential(*self.layers[index]) if isinstance(index, slice) else self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    # set by backward, cleared by forward: a second backward would add the gradients twice
    _backward_done = False

    def forward(self, x):
        """Run the layers in order; outputs[i] keeps layer i's output (for diagnostics)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            self.outputs[i] = x
        self._backward_done = False
        return x

    def backward(self, dy, input_grad=True):
        """Run the backwards in reverse; grads[i] keeps the gradient w.r.t. layer i's output.
        Returns the gradient w.r.t. the input. input_grad=False: the input is data, so a
        first layer that can (Linear) skips that gradient and None is returned; for a
        784-512-512-10 MLP that is a fifth of the step's multiply-adds. A second backward
        after the same forward raises (as in PyTorch): it would add the gradients twice."""
        if self._backward_done:
            raise ValueError("Sequential.backward: called again after the same forward, which "
                             "would add the parameter gradients twice; run forward first")
        dx = self._backward(dy, input_grad)
        self._backward_done = True
        return dx

    def _backward(self, dy, input_grad):
        for i in range(len(self.layers) - 1, 0, -1):
            self.grads[i] = dy
            dy = self.layers[i].backward(dy)
        if not self.layers:
            return dy
        self.grads[0] = dy
        first = self.layers[0]
        if not input_grad and getattr(first, "skips_input_grad", False):
            return first.backward(dy, input_grad=False)
        return first.backward(dy)

    def config(self):
        return {"layers": [{"type": type(layer).__name__, **layer.config()}
                           for layer in self.layers]}

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def _each_module_once(layers):
    """Refuse a model that holds one module object twice (Sequential(l, Tanh(), l)): a layer
    keeps what its last forward saw for its backward, so the first use's weight gradient
    would come out wrong, silently. PyTorch allows it; here, build two layers (to share their
    weights, assign one's Parameter to the other after building)."""
    seen = {}

    def walk(module, where):
        if id(module) in seen:
            raise ValueError(f"layers{where}: the same {type(module).__name__} object as "
                             f"layers{seen[id(module)]}; a layer keeps its last forward's "
                             "input for its backward, so one object cannot be used twice "
                             "in a model: build two")
        seen[id(module)] = where
        for i, child in enumerate(module.children()):
            walk(child, f"{where}[{i}]")

    for i, layer in enumerate(layers):
        walk(layer, f"[{i}]")


# fastnn.h's activation codes by name (the fast paths look them up unchecked: an unknown
# name gives None, which no Kernel accepts, so the checked path reports it)
_ACT, _FUSED = F.ELEMENTWISE, F.ACTIVATIONS


def _fused_code(activation):
    """fastnn.h's code of an activation Linear and BatchNorm1d fuse, checked by name."""
    return _FUSED[F.check.choice("activation", activation, _FUSED)]


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


def _param_array(p, field, shape, dtype, name):
    """p.data or p.grad, checked (see _owned_array)."""
    return _owned_array(getattr(p, field), shape, dtype, f"{name}.{field}",
                        writeable=field == "grad")


def _gradient(dy, like):
    """dy checked as the gradient of the array `like`: its dtype, C-contiguous, its shape."""
    dy = F.check.float_array("dy", dy, like.ndim, like.dtype)
    F.check.shape("dy", dy, like.shape)
    return dy


def _owned_array(a, shape, dtype, name, writeable=True):
    """An array a layer passes to the kernels unchecked by fastnn.functional: its own, but
    a user may have replaced it, so shape, dtype and layout are checked once per call."""
    if not _native.is_owned_array(a, shape, dtype.num, writeable):
        got = f"{a.shape}, {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name}: expected a C-contiguous {dtype} array of shape {shape}, "
                         f"got {got}")
    return a


class Linear(Module):
    """y = act(x @ weight.T + bias): x (B, in_features) -> y (B, out_features).

    weight: (out_features, in_features), bias: (out_features,), both initialised from
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch, unless init= names a scheme
    of fastnn.init ("xavier_normal", "xavier_uniform", "he_normal", "he_uniform"; the gain
    follows the activation; the bias is then zero). `activation` ("relu", "tanh", "sigmoid"
    or None) is fused into the same kernel.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, activation=None,
                 init=None):
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _float_dtype(dtype)
        self.activation = F.check.choice("activation", activation or "none", F.ACTIVATIONS)
        if init is not None:
            F.check.choice("init", init, INITS)
        self.init = init
        bound = 1 / math.sqrt(self.in_features)
        rng = get_rng()
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.bias = (
            Parameter(rng.uniform(-bound, bound, self.out_features).astype(self.dtype))
            if bias else None
        )
        if init is not None:  # the chosen scheme for the weight, zero bias
            INITS[init](self.weight.data, self.activation)
            if self.bias is not None:
                self.bias.data[...] = 0
        self._x = self._y = self._dx = self._work = None
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": self.dtype.name,
                "activation": None if self.activation == "none" else self.activation,
                "init": self.init}

    def forward(self, x):
        """x: (B, in_features) array of the layer's dtype -> (B, out_features)."""
        bias = self.bias
        args = (self._y, x, self.weight.data, None if bias is None else bias.data,
                _FUSED.get(self.activation))
        if self._forward is not None and self._forward.update(args):
            self._x = x
        else:
            self._forward = self._forward_kernel(x)
        runtime.ops.run(self._forward)
        return self._y

    def _forward_kernel(self, x):
        """The forward's call for a new input shape, buffer or parameter, checked in full."""
        x = F.check.float_array("x", x, 2, self.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (batch, {self.in_features}), got {x.shape}")
        self._y = _buffer(self._y, (x.shape[0], self.out_features), self.dtype)
        weight, bias = self._arrays("data")
        self._x = x
        return _native.Kernel("linear_forward",
                              (self._y, x, weight, bias, _fused_code(self.activation)))

    # Sequential.backward(input_grad=False) may skip this layer's input gradient
    skips_input_grad = True

    def backward(self, dy, input_grad=True):
        """dy: (B, out_features) -> dx (B, in_features); accumulates weight.grad, bias.grad.
        input_grad=False skips dx (one matrix product of three) and returns None."""
        bias, fused = self.bias, self.activation != "none"
        args = (self._dx if input_grad else None, self.weight.grad,
                None if bias is None else bias.grad, self._work if fused else None, dy,
                self._x, self.weight.data, self._y if fused else None,
                _FUSED.get(self.activation))
        if (self._backward is None or (input_grad and self._dx is None)
                or not self._backward.update(args)):
            self._backward = self._backward_kernel(dy, input_grad)
        runtime.ops.run(self._backward)
        return self._dx if input_grad else None

    def _backward_kernel(self, dy, input_grad):
        if self._x is None:
            raise ValueError("Linear.backward: called before forward")
        B = self._x.shape[0]
        dy = F.check.float_array("dy", dy, 2, self.dtype)
        F.check.shape("dy", dy, (B, self.out_features))
        if input_grad:
            self._dx = _buffer(self._dx, (B, self.in_features), self.dtype)
        y = work = None
        if self.activation != "none":
            y = self._y
            work = self._work = _buffer(self._work, (B, self.out_features), self.dtype)
        weight, _ = self._arrays("data")
        dweight, dbias = self._arrays("grad")
        return _native.Kernel("linear_backward",
                              (self._dx if input_grad else None, dweight, dbias, work, dy,
                               self._x, weight, y, _fused_code(self.activation)))

    def _arrays(self, field):
        """(weight, bias) .data or .grad, checked to still be what the kernels expect."""
        weight = _param_array(self.weight, field, (self.out_features, self.in_features),
                              self.dtype, "weight")
        bias = None if self.bias is None else _param_array(
            self.bias, field, (self.out_features,), self.dtype, "bias")
        return weight, bias

    def __repr__(self):
        act = "" if self.activation == "none" else f", activation={self.activation!r}"
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}{act})")


class BatchNorm1d(Module):
    """Batch normalisation over the batch axis: x (B, num_features) -> (B, num_features).

    weight (gamma, ones) and bias (beta, zeros) are Parameters when affine; running_mean
    (zeros) and running_var (ones) are updated in training with `momentum` (the unbiased batch
    variance into running_var; running_var_unbiased=False: the biased batch variance, as the
    textbook's BatchNormalization) and used in evaluation, as torch.nn.BatchNorm1d (normalising
    centred first: more accurate in float32 far from zero; see
    fastnn.functional.batchnorm_forward).
    `activation` ("relu", "tanh", "sigmoid" or None) is fused after the affine map.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32,
                 activation=None, running_var_unbiased=True):
        self.num_features = _positive_int("num_features", num_features)
        self.dtype = _float_dtype(dtype)
        if not (isinstance(eps, numbers.Real) and eps > 0):
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        if not (isinstance(momentum, numbers.Real) and 0 <= momentum <= 1):
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)
        if not isinstance(running_var_unbiased, bool):
            raise TypeError(f"running_var_unbiased: expected a bool, got {running_var_unbiased!r}")
        self.running_var_unbiased = running_var_unbiased
        self.activation = F.check.choice("activation", activation or "none", F.ACTIVATIONS)
        C = self.num_features
        self.weight = Parameter(np.ones(C, self.dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, self.dtype)) if affine else None
        self.running_mean = np.zeros(C, self.dtype)
        self.running_var = np.ones(C, self.dtype)
        self.num_batches_tracked = 0
        self._save_mean = np.empty(C, self.dtype)
        self._save_invstd = np.empty(C, self.dtype)
        # None, or what normalises over several processes (fastnn.distributed's
        # BatchNormSync: batch_stats(x) and sum_(array) across them)
        self.sync = None
        self._x = self._y = self._dx = None
        self._trained_forward = True
        self._sync_count = None  # the global batch size of a synchronised forward
        # the Kernels of the last training and evaluation forward, the last forward, backward
        self._train_forward = self._eval_forward = self._forward = self._backward = None

    _buffer_names = ("running_mean", "running_var")

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "dtype": self.dtype.name,
                "activation": None if self.activation == "none" else self.activation,
                "running_var_unbiased": self.running_var_unbiased}

    def forward(self, x):
        """x: (B, num_features) array of the layer's dtype -> (B, num_features)."""
        if self.training and self.sync is not None:
            return self._synchronised_forward(x)
        self._sync_count = None
        weight, bias = (self.weight.data, self.bias.data) if self.affine else (None, None)
        act = _FUSED.get(self.activation)
        if self.training:
            kernel = self._train_forward
            args = (self._y, self._save_mean, self._save_invstd, self.running_mean,
                    self.running_var, x, weight, bias, self.eps, self.momentum, act,
                    self.running_var_unbiased)
        else:
            kernel = self._eval_forward
            args = (self._y, self._save_mean, self._save_invstd, self.running_mean,
                    self.running_var, x, weight, bias, self.eps, act)
        if kernel is not None and kernel.update(args):
            self._x = x
        else:
            kernel = self._forward_kernel(x)
        runtime.ops.run(kernel)
        if self.training:
            self.num_batches_tracked += 1
        self._forward, self._trained_forward = kernel, self.training
        return self._y

    def _forward_kernel(self, x):
        """The forward's call in this mode for a new input shape, buffer or parameter,
        checked in full."""
        x = F.check.float_array("x", x, 2, self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x: expected shape (batch, {self.num_features}), got {x.shape}")
        B, C = x.shape
        if self.training and B <= 1:
            raise ValueError("Expected more than 1 value per channel when training, got input "
                             f"size {x.shape}")
        self._y = _buffer(self._y, x.shape, self.dtype)
        running_mean = _owned_array(self.running_mean, (C,), self.dtype, "running_mean")
        running_var = _owned_array(self.running_var, (C,), self.dtype, "running_var")
        weight, bias = self._affine("data")
        act = _fused_code(self.activation)
        self._x = x
        common = (self._y, self._save_mean, self._save_invstd, running_mean, running_var, x,
                  weight, bias, self.eps)
        if self.training:
            self._train_forward = _native.Kernel(
                "batchnorm_forward_train", common + (self.momentum, act, self.running_var_unbiased))
            return self._train_forward
        self._eval_forward = _native.Kernel("batchnorm_forward_eval", common + (act,))
        return self._eval_forward

    def backward(self, dy):
        """dy: (B, num_features) -> dx; accumulates weight.grad and bias.grad."""
        if self._sync_count is not None:
            return self._synchronised_backward(dy)
        weight, dweight, dbias = ((self.weight.data, self.weight.grad, self.bias.grad)
                                  if self.affine else (None, None, None))
        args = (self._dx, dweight, dbias, dy, self._x,
                None if self.activation == "none" else self._y, self._save_mean,
                self._save_invstd, weight, _FUSED.get(self.activation), self._trained_forward)
        if self._backward is None or not self._backward.update(args):
            self._backward = self._backward_kernel(dy)
        runtime.ops.run(self._backward)
        return self._dx

    def _backward_kernel(self, dy):
        if self._x is None:
            raise ValueError("BatchNorm1d.backward: called before forward")
        dy = F.check.float_array("dy", dy, 2, self.dtype)
        F.check.shape("dy", dy, self._x.shape)
        self._dx = _buffer(self._dx, self._x.shape, self.dtype)
        weight, _ = self._affine("data")
        dweight, dbias = self._affine("grad")
        act = _fused_code(self.activation)
        y = None if act == _FUSED["none"] else self._y
        return _native.Kernel("batchnorm_backward",
                              (self._dx, dweight, dbias, dy, self._x, y, self._save_mean,
                               self._save_invstd, weight, act, self._trained_forward))

    def _synchronised_forward(self, x):
        """The training forward with the statistics of the batch over all processes."""
        x = F.check.float_array("x", x, 2, self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x: expected shape (batch, {self.num_features}), got {x.shape}")
        if x.shape[0] < 1:
            raise ValueError(f"x: expected at least one sample on every rank, got shape {x.shape}")
        n, mean, var = self.sync.batch_stats(x)
        if n <= 1:
            raise ValueError("Expected more than 1 value per channel when training, got a "
                             f"global batch of {n}")
        C, m = self.num_features, self.momentum
        running_mean = _owned_array(self.running_mean, (C,), self.dtype, "running_mean")
        running_var = _owned_array(self.running_var, (C,), self.dtype, "running_var")
        # torch's convention: the unbiased variance of the global batch goes into running_var
        running_mean[...] = (1 - m) * running_mean + m * mean
        running_var[...] = (1 - m) * running_var + m * (var * (n / (n - 1))
                                                        if self.running_var_unbiased else var)
        self._y = _buffer(self._y, x.shape, self.dtype)
        weight, bias = self._affine("data")
        act = _fused_code(self.activation)
        # The evaluation kernel normalises with given statistics (and writes them, with
        # 1 / sqrt(var + eps), into save_mean / save_invstd for the backward).
        runtime.ops.batchnorm_forward_eval(self._y, self._save_mean, self._save_invstd,
                                           mean.astype(self.dtype), var.astype(self.dtype), x,
                                           weight, bias, self.eps, act)
        self.num_batches_tracked += 1
        self._x, self._trained_forward, self._sync_count = x, True, n
        self._forward = None  # nothing a replay could repeat (fastnn.fused)
        return self._y

    def _synchronised_backward(self, dy):
        """The backward through the statistics over all processes: dy (B, C) -> dx (B, C).

        weight.grad and bias.grad get this process's sums (DataParallel averages them, like
        every gradient); dx needs the global sums of dz and dz * xhat:
        dx = k * (dz - sum(dz) / n - xhat * sum(dz * xhat) / n), k = weight * invstd, n the
        global batch size, dz = dy * act'(y)."""
        dy = F.check.float_array("dy", dy, 2, self.dtype)
        F.check.shape("dy", dy, self._x.shape)
        self._dx = _buffer(self._dx, self._x.shape, self.dtype)
        weight, _ = self._affine("data")
        act = _fused_code(self.activation)
        y = None if act == _FUSED["none"] else self._y
        # The evaluation-mode backward gives dx = k * dz and adds sum(dz * xhat), sum(dz)
        # into the two rows of `sums`: the local sums the correction below needs.
        sums = np.zeros((2, self.num_features), self.dtype)
        runtime.ops.batchnorm_backward(self._dx, sums[0], sums[1], dy, self._x, y,
                                       self._save_mean, self._save_invstd, weight, act, False)
        if self.affine:
            dweight, dbias = self._affine("grad")
            dweight += sums[0]
            dbias += sums[1]
        self.sync.sum_(sums)
        invstd, n = self._save_invstd, self._sync_count
        k = invstd if weight is None else weight * invstd
        shift = k * (sums[1] / n)
        slope = k * invstd * (sums[0] / n)
        self._dx -= shift + (self._x - self._save_mean) * slope
        self._backward = None
        return self._dx

    def _affine(self, field):
        """(weight, bias) .data or .grad arrays, checked, or (None, None) without affine."""
        if not self.affine:
            return None, None
        C = (self.num_features,)
        return (_param_array(self.weight, field, C, self.dtype, "weight"),
                _param_array(self.bias, field, C, self.dtype, "bias"))

    def __repr__(self):
        act = "" if self.activation == "none" else f", activation={self.activation!r}"
        if not self.running_var_unbiased:
            act += ", running_var_unbiased=False"
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, dtype={self.dtype}{act})")


class _Elementwise(Module):
    """An elementwise activation layer on arrays of any shape; backward needs the saved input
    and output."""

    kind = "none"
    negative_slope = 0.0

    def __init__(self):
        self._x = self._y = self._dx = None
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def forward(self, x):
        args = (self._y, x, _ACT.get(self.kind), self.negative_slope)
        if self._forward is not None and self._forward.update(args):
            self._x = x
        else:
            x = F.check.float_array("x", x, np.ndim(x))
            self._y = _buffer(self._y, x.shape, x.dtype)
            self._x = x
            self._forward = _native.Kernel("activation_forward", (self._y, x) + self._settings())
        runtime.ops.run(self._forward)
        return self._y

    def backward(self, dy):
        args = (self._dx, dy, self._x, self._y, _ACT.get(self.kind), self.negative_slope)
        if self._backward is None or not self._backward.update(args):
            if self._x is None:
                raise ValueError(f"{type(self).__name__}.backward: called before forward")
            dy = _gradient(dy, self._x)
            self._dx = _buffer(self._dx, self._x.shape, self._x.dtype)
            self._backward = _native.Kernel("activation_backward",
                                            (self._dx, dy, self._x, self._y) + self._settings())
        runtime.ops.run(self._backward)
        return self._dx

    def _settings(self):
        """(act, negative_slope) checked."""
        kind = F.check.choice("kind", self.kind, F.ELEMENTWISE)
        slope = self.negative_slope
        if not isinstance(slope, (int, float)) or not math.isfinite(slope):
            raise ValueError(f"negative_slope: expected a finite number, got {slope!r}")
        return _ACT[kind], float(slope)

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

    def config(self):
        return {"negative_slope": self.negative_slope}

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

    def config(self):
        return {"approximate": self.approximate}

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class Softmax(Module):
    """Softmax along the last axis: x (..., K) -> probabilities (..., K)."""

    def __init__(self):
        self._y = self._dx = None
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def forward(self, x):
        if self._forward is None or not self._forward.update((self._y, x)):
            x = F.check.float_array("x", x, max(1, np.ndim(x)))
            self._y = _buffer(self._y, x.shape, x.dtype)
            self._forward = _native.Kernel("softmax_forward", (self._y, x))
        runtime.ops.run(self._forward)
        return self._y

    def backward(self, dy):
        if self._backward is None or not self._backward.update((self._dx, dy, self._y)):
            if self._y is None:
                raise ValueError("Softmax.backward: called before forward")
            dy = _gradient(dy, self._y)
            self._dx = _buffer(self._dx, self._y.shape, self._y.dtype)
            self._backward = _native.Kernel("softmax_backward", (self._dx, dy, self._y))
        runtime.ops.run(self._backward)
        return self._dx

    def __repr__(self):
        return "Softmax()"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1 / (1 - p); identity in evaluation, as torch.nn.Dropout. inverted=False is the
    textbook's form ("Deep Learning from Scratch"): training keeps or zeroes x unscaled, and
    evaluation multiplies by 1 - p.

    The mask comes from a counter-based generator keyed by `seed` (drawn from fastnn's
    generator, so fastnn.manual_seed makes it reproducible, unless given) and a counter that
    advances with every training forward: the same seed gives the same masks for any thread
    count, and the backward recomputes the forward's mask rather than storing it.
    """

    def __init__(self, p=0.5, seed=None, inverted=True):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        if not isinstance(inverted, bool):
            raise TypeError(f"inverted: expected a bool, got {inverted!r}")
        self.p, self.inverted = float(p), inverted
        # The mask generator's key and the counter of the next forward's first element are
        # buffers, so that a checkpoint resumes the same sequence of masks.
        self.seed = np.array(get_rng().integers(2**63) if seed is None else seed, np.uint64)
        self.counter = np.zeros((), np.uint64)
        # (rank, ranks) when each of `ranks` processes takes one slice of every batch
        # (fastnn.distributed): the mask is then this rank's slice of the one a single process
        # would draw for the whole batch
        self.shard = None
        self._shape = None
        self._out = self._dx = None
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def forward(self, x):
        x = F.check.float_array("x", x, np.ndim(x))
        if not (isinstance(self.p, (int, float)) and 0 <= self.p < 1):  # p may be reassigned
            raise ValueError(f"p: expected a probability in [0, 1), got {self.p!r}")
        self._shape, self._dtype = x.shape, x.dtype
        if self.p == 0 or (self.inverted and not self.training):
            self._identity = True
            return x
        self._identity = False
        if self.training:
            rank, ranks = self.shard or (0, 1)
            base = int(self.counter)
            offset = (base + rank * x.size) % 2**64
            self.counter[...] = (base + ranks * x.size) % 2**64
            scale = 1 / (1 - self.p) if self.inverted else 1.0
            args = (self._out, x, self.p, scale, int(self.seed), offset)
        else:  # the textbook's evaluation, x * (1 - p): the same kernel keeping every element
            args = (self._out, x, 0.0, 1 - self.p, int(self.seed), 0)
        if self._forward is None or not self._forward.update(args):
            self._out = _buffer(self._out, x.shape, x.dtype)
            self._forward = _native.Kernel("dropout_apply", (self._out,) + args[1:])
        runtime.ops.run(self._forward)
        return self._out

    def backward(self, dy):
        if self._shape is None:
            raise ValueError("Dropout.backward: called before forward")
        dy = F.check.float_array("dy", dy, len(self._shape), self._dtype)
        F.check.shape("dy", dy, self._shape)
        if self._identity:
            return dy
        args = (self._dx, dy) + self._forward.args[2:]  # the forward's mask
        if self._backward is None or not self._backward.update(args):
            self._dx = _buffer(self._dx, dy.shape, dy.dtype)
            self._backward = _native.Kernel("dropout_apply", (self._dx,) + args[1:])
        runtime.ops.run(self._backward)
        return self._dx

    _buffer_names = ("seed", "counter")

    def config(self):
        return {"p": self.p, "seed": int(self.seed), "inverted": self.inverted}

    def __repr__(self):
        return f"Dropout(p={self.p})" if self.inverted else f"Dropout(p={self.p}, inverted=False)"


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
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def forward(self, idx):
        """idx: integers in [0, num_embeddings) of any shape -> idx.shape + (embedding_dim,)."""
        # (update checks the indices' range too, on every call)
        if self._forward is not None and self._forward.update((self._out, self.weight.data, idx)):
            self._idx = idx
        else:
            idx = F.check.index_array("idx", idx, self.num_embeddings)
            self._out = _buffer(self._out, idx.shape + (self.embedding_dim,), self.dtype)
            self._idx = idx
            self._forward = _native.Kernel("embedding_forward",
                                           (self._out, self._table("data"), idx))
        runtime.ops.run(self._forward)
        return self._out

    def backward(self, dy):
        if self._backward is None or not self._backward.update(
                (self.weight.grad, dy, self._idx)):
            if self._idx is None:
                raise ValueError("Embedding.backward: called before forward")
            dy = F.check.float_array("dy", dy, self._idx.ndim + 1, self.dtype)
            F.check.shape("dy", dy, self._idx.shape + (self.embedding_dim,))
            self._backward = _native.Kernel("embedding_backward",
                                            (self._table("grad"), dy, self._idx))
        runtime.ops.run(self._backward)
        return None

    def _table(self, field):
        shape = (self.num_embeddings, self.embedding_dim)
        return _param_array(self.weight, field, shape, self.dtype, "weight")

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "dtype": self.dtype.name}

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype})"


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...); backward restores the shape. No copy when the
    input is contiguous; the same input array again gives the same view again."""

    def __init__(self):
        self._shape = None
        self._x = self._y = self._dy = self._dx = None  # the last input, its view, gradients

    def forward(self, x):
        if x is not self._x or x.shape != self._shape:
            x = np.asarray(x)
            if x.ndim < 1:
                raise ValueError(f"x: expected at least a 1-d array, got shape {x.shape}")
            self._x, self._shape = x, x.shape
            self._y = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        return self._y

    def backward(self, dy):
        if self._dx is None or dy is not self._dy or self._dx.shape != self._shape:
            if self._shape is None:
                raise ValueError("Flatten.backward: called before forward")
            dy = np.asarray(dy)
            expected = (self._shape[0], math.prod(self._shape[1:]))
            if dy.shape != expected:
                raise ValueError(f"dy: expected shape {expected}, got {dy.shape}")
            self._dy, self._dx = dy, dy.reshape(self._shape)
        return self._dx

    def __repr__(self):
        return "Flatten()"
