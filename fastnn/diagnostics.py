"""Watching a network learn: training callbacks that record the statistics the course
material plots ("activations, gradients and update ratios").

- UpdateRatio: per step and parameter, log10(std(lr * grad) / std(param)), the size of a
  step relative to the values it changes (about -3 is healthy: the 1e-3 rule of thumb).
- ActivationStats: per recorded step and activation layer, the mean, std, saturated fraction
  (tanh/sigmoid) and dead fraction (ReLU) of the layer's output, and a copy of the latest
  output for histograms.
- GradientStats: per recorded step, the mean and std of the gradient with respect to each
  activation layer's output, and per parameter the gradient's mean, std and grad:data ratio.
- memory_footprint: the bytes a model, its optimizer and loss hold, against the minimum a
  training step needs.

Each is a Trainer callback (on_train_begin, on_epoch_begin, on_step_end, on_epoch_end,
on_train_end; on_step_end runs after optimizer.step(), while the parameters' .grad still
hold the step's gradients) and can also be driven by hand through record(...). A callback
records the steps that are multiples of `every` and, so that the picture at initialisation is
never missing, the first step of every run. The model
must be a fastnn.Sequential: the statistics come from model.outputs[i] / model.grads[i].
fastnn.plot draws what they record. Standard deviations are population ones (ddof=0),
computed in float64.
"""
import math

import numpy as np

from .arena import Arena
from .layers import GELU, BatchNorm1d, LeakyReLU, Linear, Module, Parameter, ReLU, Sigmoid, Tanh
from .losses import CrossEntropyLoss, MSELoss
from .optim import Optimizer

from .train import Callback

__all__ = ["ActivationStats", "GradientStats", "UpdateRatio", "activation_layers",
           "memory_footprint"]

_NAN = float("nan")
_ELEMENTWISE = (ReLU, Tanh, Sigmoid, LeakyReLU, GELU)
# |tanh| > 0.97 is "saturated" (the course's threshold); for a sigmoid the same point of the
# curve, sigmoid(x) = (1 + tanh(x/2)) / 2, is |2y - 1| > 0.97.
SATURATION = 0.97


def _every(every):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: expected a positive int, got {every!r}")
    return every


def activation_layers(model):
    """[(i, label, kind)] for the layers of a Sequential whose output is an activation: the
    ReLU/Tanh/Sigmoid/LeakyReLU/GELU layers and the Linear/BatchNorm1d layers with a fused
    activation. label is e.g. "2 BatchNorm1d+tanh" or "3 ReLU"; kind the activation's name
    ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "gelu_tanh")."""
    if not hasattr(model, "layers") or not hasattr(model, "outputs"):
        raise TypeError(f"model: expected a fastnn.Sequential, got {type(model).__name__}")
    found = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, _ELEMENTWISE):
            found.append((i, f"{i} {type(layer).__name__}", layer.kind))
        elif isinstance(layer, (Linear, BatchNorm1d)) and layer.activation != "none":
            found.append((i, f"{i} {type(layer).__name__}+{layer.activation}",
                          layer.activation))
    return found


def _mean_std(a):
    a = np.asarray(a)
    if a.size == 0:
        return _NAN, _NAN
    return float(np.mean(a, dtype=np.float64)), float(np.std(a, dtype=np.float64))


def _std(a):
    return float(np.std(a, dtype=np.float64)) if np.size(a) else _NAN


def _log10_ratio(num, den):
    """log10(num / den), NaN where it is undefined (den == 0, num == 0, non-finite)."""
    if not (num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den)):
        return _NAN
    return math.log10(num / den)


def saturated_fraction(y, kind):
    """Fraction of the elements of a tanh (|y| > 0.97) or sigmoid (|2y - 1| > 0.97) output in
    the flat tails; NaN for other activations."""
    y = np.asarray(y)
    if y.size == 0:
        return _NAN
    if kind == "tanh":
        return float(np.count_nonzero(np.abs(y) > SATURATION) / y.size)
    if kind == "sigmoid":
        return float(np.count_nonzero(np.abs(2 * y.astype(np.float64) - 1) > SATURATION)
                     / y.size)
    return _NAN


def dead_fraction(y, kind):
    """Fraction of the units (last axis) of a ReLU output that are 0 for every sample of the
    batch; NaN for other activations."""
    y = np.asarray(y)
    if kind != "relu" or y.size == 0:
        return _NAN
    units = y.reshape(-1, y.shape[-1])
    return float(np.mean(np.all(units == 0, axis=0)))


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _table(headers, rows):
    cols = [headers] + rows
    widths = [max(len(str(r[j])) for r in cols) for j in range(len(headers))]
    lines = []
    for r in cols:
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _last(values):
    return values[-1] if values else _NAN


class UpdateRatio(Callback):
    """log10(std(lr * grad) / std(param)) per named parameter, every `every` steps.

    lr is read at every record from the optimizer's param group holding the parameter (found
    by identity), so schedules and per-group rates are honoured. With measure="update" the
    numerator is instead the std of the actual change of the parameter over the step (the
    difference from a copy taken after the previous step), which is what Adam-like optimizers
    really apply; the first recorded step is then NaN. 1-d parameters (biases, BatchNorm
    gains) are skipped unless include_1d=True, as in the course. A value is NaN where it is
    undefined (std(param) == 0, zero gradient, parameter in no param group).

    .steps: the recorded steps; .history: {name: [value per recorded step]}.
    """

    def __init__(self, every=1, include_1d=False, measure="grad"):
        self.every = _every(every)
        self.include_1d = bool(include_1d)
        if measure not in ("grad", "update"):
            raise ValueError(f"measure: expected 'grad' or 'update', got {measure!r}")
        self.measure = measure
        self.steps = []
        self.history = {}
        self._prev = None  # (step, {name: copy of the data}) for measure="update"

    def _selected(self, model):
        return [(n, p) for n, p in model.named_parameters()
                if self.include_1d or p.data.ndim >= 2]

    def on_train_begin(self, trainer):
        self._prev = None
        self._first = True

    def on_step_end(self, trainer, step, loss):
        if step % self.every == 0 or getattr(self, "_first", False):
            self._first = False
            self.record(trainer.model, trainer.optimizer, step)
        if self.measure == "update" and (step + 1) % self.every == 0:
            self._prev = (step, {n: p.data.copy() for n, p in self._selected(trainer.model)})

    def record(self, model, optimizer, step=None):
        """Record the ratios of the current parameters and gradients (call after step())."""
        step = len(self.steps) if step is None else step
        lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        prev = None
        if self.measure == "update" and self._prev is not None and self._prev[0] == step - 1:
            prev = self._prev[1]
        for name, p in self._selected(model):
            den = _std(p.data)
            if self.measure == "update":
                old = None if prev is None else prev.get(name)
                num = _NAN if old is None else _std(p.data.astype(np.float64) - old)
            elif id(p) in lr:
                num = abs(lr[id(p)]) * _std(p.grad)
            else:
                num = _NAN
            values = self.history.setdefault(name, [_NAN] * len(self.steps))
            values.append(_log10_ratio(num, den))
        self.steps.append(step)
        for values in self.history.values():  # parameters absent this time
            if len(values) < len(self.steps):
                values.append(_NAN)

    def summary(self):
        """The last recorded ratio of every parameter, as a text table."""
        rows = [[name, _fmt(_last(v), "+.2f")] for name, v in self.history.items()]
        step = self.steps[-1] if self.steps else "-"
        return f"update ratio, log10 (step {step}; about -3 is healthy)\n" + _table(
            ["parameter", "log10 ratio"], rows)


class _LayerStats(Callback):
    def __init__(self, every):
        self.every = _every(every)
        self.steps = []
        self.history = {}
        self.latest = {}  # layer index -> copy of the last recorded array
        self.labels = {}  # layer index -> label
        self.kinds = {}  # layer index -> activation name

    def on_train_begin(self, trainer):
        self._first = True

    def on_step_end(self, trainer, step, loss):
        if step % self.every == 0 or getattr(self, "_first", False):
            self._first = False
            self.record(trainer.model, step)

    def _append(self, key, stats):
        entry = self.history.setdefault(key, {k: [_NAN] * (len(self.steps) - 1) for k in stats})
        for k, v in stats.items():
            entry.setdefault(k, [_NAN] * (len(self.steps) - 1)).append(v)


class ActivationStats(_LayerStats):
    """Statistics of every activation layer's output (model.outputs[i]) every `every` steps.

    .history: {label: {"mean", "std", "saturated", "dead": [value per recorded step]}} with
    saturated the fraction of tanh/sigmoid outputs in the flat tails (|y| > 0.97 for tanh),
    dead the fraction of ReLU units that are 0 for every sample of the batch (NaN where not
    applicable); .latest[i]: a copy of layer i's last recorded output; .labels[i], .kinds[i];
    .steps: the recorded steps.
    """

    def __init__(self, every=100):
        super().__init__(every)

    def record(self, model, step=None):
        """Record the outputs of the model's last forward."""
        step = len(self.steps) if step is None else step
        self.steps.append(step)
        for i, label, kind in activation_layers(model):
            y = model.outputs[i]
            if y is None:
                stats = dict(mean=_NAN, std=_NAN, saturated=_NAN, dead=_NAN)
            else:
                self.latest[i] = y = np.array(y, copy=True)
                mean, std = _mean_std(y)
                stats = dict(mean=mean, std=std, saturated=saturated_fraction(y, kind),
                             dead=dead_fraction(y, kind))
            self.labels[i], self.kinds[i] = label, kind
            self._append(label, stats)

    def summary(self):
        """The last recorded statistics of every activation layer, as a text table."""
        rows = []
        for label, h in self.history.items():
            rows.append([label, _fmt(_last(h["mean"]), "+.3f"), _fmt(_last(h["std"]), ".3f"),
                         _fmt(_last(h["saturated"]), ".2%"), _fmt(_last(h["dead"]), ".2%")])
        step = self.steps[-1] if self.steps else "-"
        return f"activations (step {step})\n" + _table(
            ["layer", "mean", "std", "saturated", "dead"], rows)


class GradientStats(_LayerStats):
    """Gradient statistics every `every` steps.

    For every activation layer (as ActivationStats): the mean and std of the gradient with
    respect to its output (model.grads[i]); .history: {label: {"mean", "std": [...]}} and
    .latest[i]: a copy of the last recorded gradient. For every named parameter (2-d and
    up unless include_1d=True, as the course prints them): .param_history: {name: {"mean",
    "std", "ratio": [...]}} with ratio = std(grad) / std(data) (NaN when std(data) == 0).
    """

    def __init__(self, every=100, include_1d=False):
        super().__init__(every)
        self.include_1d = bool(include_1d)
        self.param_history = {}

    def record(self, model, step=None):
        """Record the gradients of the model's last backward (call before zero_grad)."""
        step = len(self.steps) if step is None else step
        self.steps.append(step)
        for i, label, kind in activation_layers(model):
            g = model.grads[i]
            if g is None:
                mean = std = _NAN
            else:
                self.latest[i] = g = np.array(g, copy=True)
                mean, std = _mean_std(g)
            self.labels[i], self.kinds[i] = label, kind
            self._append(label, dict(mean=mean, std=std))
        n = len(self.steps)
        for name, p in model.named_parameters():
            if not self.include_1d and p.data.ndim < 2:
                continue
            mean, std = _mean_std(p.grad)
            den = _std(p.data)
            ratio = std / den if den > 0 else _NAN
            entry = self.param_history.setdefault(
                name, {k: [_NAN] * (n - 1) for k in ("mean", "std", "ratio")})
            for k, v in (("mean", mean), ("std", std), ("ratio", ratio)):
                entry[k].append(v)

    def summary(self):
        """The last recorded gradient statistics, as two text tables (layers, parameters)."""
        rows = [[label, _fmt(_last(h["mean"]), "+.3e"), _fmt(_last(h["std"]), ".3e")]
                for label, h in self.history.items()]
        prows = [[name, _fmt(_last(h["mean"]), "+.3e"), _fmt(_last(h["std"]), ".3e"),
                  _fmt(_last(h["ratio"]), ".3e")] for name, h in self.param_history.items()]
        step = self.steps[-1] if self.steps else "-"
        return (f"gradients at layer outputs (step {step})\n"
                + _table(["layer", "mean", "std"], rows) + "\n\nparameter gradients\n"
                + _table(["parameter", "mean", "std", "grad:data"], prows))


# ---- memory held by a training setup ----

# the classes whose attributes hold a training setup's arrays (users' subclasses too)
_HOLDERS = (Module, Parameter, Optimizer, Arena, CrossEntropyLoss, MSELoss)


def _memory_root(a):
    """The array that owns a's memory (a view's ultimate base)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _reachable_arrays(obj, found, seen):
    """Add to `found` ({id: owning array}) every array reachable from `obj` through layers,
    Parameters, optimizers, arenas and losses (fastnn's or subclasses) and lists, tuples and
    dicts."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        root = _memory_root(obj)
        found[id(root)] = root
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _reachable_arrays(v, found, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            _reachable_arrays(v, found, seen)
    elif isinstance(obj, _HOLDERS):
        for v in vars(obj).values():
            _reachable_arrays(v, found, seen)


def _bytes(*objs, exclude=()):
    found = {}
    for obj in objs:
        _reachable_arrays(obj, found, set())
    for a in exclude:
        found.pop(id(_memory_root(a)), None)
    return sum(a.nbytes for a in found.values())


def memory_footprint(model, optimizer, loss_fn=None, inputs=()):
    """Bytes held by a training setup after a step, against the minimum a step needs.

    held: every array reachable from model, optimizer and loss_fn (parameters, gradients,
    optimizer state, the layers' saved outputs and gradient buffers, running statistics,
    scratch space), each memory block counted once; `inputs` (the batch, which the caller
    owns) is left out. minimum: parameters + gradients + optimizer state + the activations
    saved for backward, i.e. the outputs of model's layers (model.outputs of a Sequential,
    else its parameters only) and the loss's saved probabilities. Call it after one step,
    when every buffer exists. Returns a dict of byte counts and "ratio" = held / minimum.
    """
    params = model.parameters()
    parts = {
        "parameters": _bytes([p.data for p in params]),
        "gradients": _bytes([p.grad for p in params]),
        "optimizer_state": _bytes(getattr(optimizer, "_state", []), exclude=inputs),
        "activations": _bytes(list(getattr(model, "outputs", [])),
                              getattr(loss_fn, "_probs", None), exclude=inputs),
    }
    minimum = sum(parts.values())
    held = _bytes(model, optimizer, loss_fn, exclude=inputs)
    return {**parts, "minimum": minimum, "held": held, "ratio": held / minimum}

