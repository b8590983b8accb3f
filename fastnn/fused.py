"""A training step's forward, loss and backward in one call into C.

A Sequential runs each layer through Python: argument checks, buffer bookkeeping, then a
call into C. For a small model that costs as much as the arithmetic (workload S1 of the README, a
character-level MLP on 32 samples, has eleven kernel calls of a few microseconds each).
FusedStep takes one step through the layers, which check everything, records the kernel
calls that step made and the buffers it used, and replays them for the following steps as one
call without the GIL:

    step = FusedStep(model, loss_fn)
    loss = step(x, target)  # as loss_fn(model(x), target) and
                            # model.backward(loss_fn.backward(), input_grad=False)

The replay is the same kernels on the same buffers in the same order, so its results are the
layer path's bit for bit; parameter gradients accumulate into .grad, BatchNorm's running
statistics update, and model.outputs / model.grads, the layers' saved inputs and the loss's
probabilities are left as the layer path leaves them (diagnostics read them as usual).
Before each replay the step checks that nothing the record depends on has changed (the batch
shape and dtype, the targets, every parameter, buffer and output array, each layer's mode and
settings); if something has, it takes the layer path again and records anew.

Replayed: a Sequential of Embedding, Flatten (not first), Linear, BatchNorm1d, ReLU, Tanh,
Sigmoid, LeakyReLU and GELU (these classes exactly, with their own forward and backward;
a BatchNorm1d not synchronised over processes: fastnn.distributed), with CrossEntropyLoss,
on the native backend. Anything else (Dropout, a subclass, another loss, the reference
backend) always takes the layer path.
"""
import collections

import numpy as np

from . import _native
from .layers import (
    GELU,
    BatchNorm1d,
    Embedding,
    Flatten,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    _Elementwise,
)
from .losses import CrossEntropyLoss
from .runtime import get_backend

__all__ = ["FusedStep"]

# exactly these classes: a subclass, or a layer whose forward or backward was replaced on
# the instance (fastnn.distributed's synchronised BatchNorm), may do something else
_REPLAYED = (Embedding, Flatten, Linear, BatchNorm1d, ReLU, Tanh, Sigmoid, LeakyReLU, GELU)


class FusedStep:
    """forward + loss + backward of `model` (a Sequential) with `loss_fn`, replayed in one C
    call after the first step; see the module docstring. Gradients accumulate: zero them
    (optimizer.zero_grad()) between steps as usual."""

    def __init__(self, model, loss_fn):
        if not isinstance(model, Sequential):
            raise TypeError(f"model: expected a fastnn.Sequential, got {type(model).__name__}")
        if not hasattr(loss_fn, "forward") or not hasattr(loss_fn, "backward"):
            raise TypeError(f"loss_fn: expected a fastnn loss, got {type(loss_fn).__name__}")
        self.model, self.loss_fn = model, loss_fn
        self._plan = self._checks = None
        self._tracking = []  # BatchNorm1d layers whose num_batches_tracked a replay counts

    @property
    def replayable(self):
        """Whether steps can be replayed: exactly a Sequential of the layer classes above
        (Flatten not first), none with a forward or backward of its own or synchronised,
        and CrossEntropyLoss."""
        model, layers = self.model, self.model.layers
        return (type(model) is Sequential and type(self.loss_fn) is CrossEntropyLoss
                and self.loss_fn.reduction != "none"
                and len(layers) > 0 and type(layers[0]) is not Flatten
                and all(type(layer) in _REPLAYED and not _overridden(layer)
                        and getattr(layer, "sync", None) is None for layer in layers))

    def __call__(self, x, target):
        """x: the model's input batch (B, ...); target: (B,) integer classes. Returns the
        loss, as loss_fn returns it."""
        native = get_backend() == "native"
        if native and self._plan is not None and self._unchanged(x, target):
            return self._replay(x, target)
        loss = self.loss_fn(self.model(x), target)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        if native and self.replayable and self._used_as_is(x, target):
            self._plan = self._record(x, target)
            self._checks = self._dependencies(x, target)
        else:
            self._plan = self._checks = None
        return loss

    def _used_as_is(self, x, target):
        """Whether the layer path just used x and target themselves: when a layer converted
        one (another dtype, byte order or layout), a replay would read the unconverted array."""
        first = self.model.layers[0]
        saved = first._idx if isinstance(first, Embedding) else first._x
        return saved is x and self.loss_fn._target is target

    def _replay(self, x, target):
        loss = self._plan.run(x, target)
        first = self.model.layers[0]
        if isinstance(first, Embedding):
            first._idx = x
        else:
            first._x = x
        for layer in self._tracking:
            layer.num_batches_tracked += 1
        self.loss_fn._target = target
        return loss

    def _dependencies(self, x, target):
        """What the plan just recorded depends on, for _unchanged: (object, attribute,
        value) triples that must still hold the same object, and ones that must still
        compare equal (settings)."""
        model, loss_fn = self.model, self.loss_fn
        same = [(model, "layers", model.layers), (model, "outputs", model.outputs),
                (model, "grads", model.grads)]
        same += [(loss_fn, name, getattr(loss_fn, name))
                 for name in ("_probs", "_dlogits", "_row_loss", "_forward", "_backward")]
        for p in model.parameters():
            same += [(p, "data", p.data), (p, "grad", p.grad)]
        equal = []
        for layer in model.layers:
            kind = next((k for k in _ARRAYS if isinstance(layer, k)), None)
            same += [(layer, name, getattr(layer, name)) for name in _ARRAYS.get(kind, ())]
            equal += [(layer, name, getattr(layer, name)) for name in _SETTINGS.get(kind, ())]
        self._tracking = [m for m in model.layers if isinstance(m, BatchNorm1d) and m.training]
        # the buffers a replay writes, which the next batch must not overlap
        written = (*model.outputs, *model.grads, loss_fn._probs, loss_fn._dlogits)
        return _Checks(x.shape, x.dtype, target.shape, [list(t) for t in zip(*same)],
                       [list(t) for t in zip(*equal)] if equal else [[], [], []],
                       list(model.layers), list(model.outputs), list(model.grads),
                       [vars(layer) for layer in model.layers],
                       tuple(a for a in written if isinstance(a, np.ndarray)))

    def _unchanged(self, x, target):
        """Whether the plan still applies to this x and target: the same shapes and dtypes
        (byte order included), contiguous, in range and not overlapping the model's buffers
        (otherwise the layer path converts or rejects them), and every dependency unchanged.
        Each test is one loop in C."""
        c, model = self._checks, self.model
        if not (type(x) is np.ndarray and x.shape == c.shape and x.dtype == c.dtype
                and x.flags.c_contiguous and type(target) is np.ndarray
                and target.shape == c.target_shape and target.dtype == np.int64
                and target.flags.c_contiguous):
            return False
        if not (_native.attributes_are(*c.same, False)
                and _native.attributes_are(*c.equal, True)
                and _native.items_are(model.layers, c.layers)
                and _native.items_are(model.outputs, c.outputs)
                and _native.items_are(model.grads, c.grads)
                and not any(map(_overridden_in, c.dicts))
                and _native.first_overlap((x, *c.written), 1) is None):
            return False
        first = model.layers[0]
        if isinstance(first, Embedding) and not _native.index_in_range(
                x, first.num_embeddings):
            return False
        return _native.index_in_range(target, self.loss_fn._probs.shape[1],
                                      self.loss_fn.ignore_index)

    def _record(self, x, target):
        """The plan of the step the layers just took: the Kernels each layer and the loss
        ran (forwards in order, then the loss, then the backwards in reverse), with x and
        target as the slots a replay fills."""
        model, loss_fn = self.model, self.loss_fn
        plan = _native.Plan()
        layers = [layer for layer in model.layers if not isinstance(layer, Flatten)]
        # Flatten has no kernel: its output and gradient are views of its neighbours' buffers
        for kernel in [*(layer._forward for layer in layers), loss_fn._forward,
                       loss_fn._backward, *(layer._backward for layer in reversed(layers))]:
            plan.add(kernel, x, target)
        return plan


# the arrays and the Parameter objects of each layer kind that the plan points into or reads
_ARRAYS = {BatchNorm1d: ("weight", "bias", "running_mean", "running_var", "_dx", "_save_mean",
                         "_save_invstd"),
           Linear: ("weight", "bias", "_dx", "_work"), Embedding: ("weight",),
           _Elementwise: ("_dx",)}
# the settings a plan fixes
_SETTINGS = {BatchNorm1d: ("training", "eps", "momentum", "activation", "sync",
                           "running_var_unbiased"),
             Linear: ("activation",), _Elementwise: ("kind", "negative_slope")}
_Checks = collections.namedtuple("_Checks", "shape dtype target_shape same equal layers "
                                            "outputs grads dicts written")


def _overridden_in(attributes):
    return "forward" in attributes or "backward" in attributes


def _overridden(layer):
    """Whether the layer's forward or backward was replaced on the instance."""
    return _overridden_in(vars(layer))
