"""Weights to and from PyTorch, under torch.nn's state_dict keys.

    torch_model.load_state_dict(interop.to_torch_state_dict(model, tensors=True))
    interop.load_torch_state_dict(model, torch_model.state_dict())

The keys are those of the model's torch.nn equivalent (fastnn.benchmark.torch_equivalent
builds one): a Sequential's modules are numbered as torch numbers them, counting an activation
fused into a Linear or BatchNorm1d as a module of its own (fastnn's Linear(4, 3,
activation="relu") is torch's Linear(4, 3) then ReLU()); other modules' parts are named by
their attributes, as in torch. Each module lists its parameters (weight, bias), its buffers
(BatchNorm1d's running_mean, running_var and num_batches_tracked; not Dropout's generator
state, which torch does not keep), in torch's order. torch is needed only to
pass tensors; NumPy arrays work both ways.
"""
from collections import OrderedDict

import numpy as np

from .layers import BatchNorm1d, Dropout, Linear, Module, Parameter, Sequential

__all__ = ["load_torch_state_dict", "to_torch_state_dict", "torch_keys"]


def torch_keys(model):
    """[(torch key, module, attribute)] for every parameter and buffer of `model`, in the
    order of torch's state_dict."""
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a fastnn Module, got {type(model).__name__}")
    entries = []

    def walk(module, prefix):
        if isinstance(module, Sequential):
            index = 0
            for layer in module:
                walk(layer, f"{prefix}{index}.")
                fused = isinstance(layer, (Linear, BatchNorm1d)) and layer.activation != "none"
                index += 2 if fused else 1
            return
        own = vars(module)
        entries.extend((prefix + name, module, name) for name, v in own.items()
                       if isinstance(v, Parameter))
        if not isinstance(module, Dropout):  # its generator's state: torch keeps none
            entries.extend((prefix + name, module, name) for name in module._buffer_names)
        if isinstance(module, BatchNorm1d):
            entries.append((prefix + "num_batches_tracked", module, "num_batches_tracked"))
        for name, v in own.items():
            if isinstance(v, Module):
                walk(v, f"{prefix}{name}.")

    walk(model, "")
    return entries


def to_torch_state_dict(model, tensors=False):
    """The model's parameters and buffers under torch's keys, as copies: NumPy arrays, or
    with tensors=True torch tensors (torch's load_state_dict takes only tensors)."""
    state = OrderedDict()
    for key, module, name in torch_keys(model):
        value = getattr(module, name)
        if isinstance(value, Parameter):
            value = value.data
        state[key] = np.array(value, dtype=np.int64 if name == "num_batches_tracked" else None)
    if tensors:
        try:
            import torch
        except ImportError:
            raise ImportError("to_torch_state_dict(tensors=True) needs torch: pip install "
                              "torch") from None
        state = OrderedDict((key, torch.from_numpy(value)) for key, value in state.items())
    return state


def load_torch_state_dict(model, state_dict):
    """Copy a torch state_dict (tensors or NumPy arrays under torch's keys, as
    to_torch_state_dict gives them) into `model`, in place, all or nothing. Every key must
    match, and every shape; values are cast to the model's dtypes, as torch's
    load_state_dict casts them. ValueError names the first key that does not match."""
    entries = torch_keys(model)
    expected = [key for key, _, _ in entries]
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in set(expected)]
    if missing or unexpected:
        first = (f"missing key {missing[0]!r}" if missing
                 else f"unexpected key {unexpected[0]!r}")
        raise ValueError(f"state_dict: {first} ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected); this model's keys are {expected}")
    values = []
    for key, module, name in entries:
        value = state_dict[key]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        target = getattr(module, name)
        if isinstance(target, Parameter):
            target = target.data
        if name == "num_batches_tracked":
            if value.shape != () or value.dtype.kind not in "iu" or value < 0:
                raise ValueError(f"state_dict: {key!r}: expected a count (a 0-d integer "
                                 f"array), got shape {value.shape}, dtype {value.dtype}")
        elif value.shape != target.shape or value.dtype.kind not in "fiu":
            raise ValueError(f"state_dict: {key!r}: expected shape {target.shape}, got "
                             f"shape {value.shape}, dtype {value.dtype}")
        values.append(value)
    for (key, module, name), value in zip(entries, values):
        if name == "num_batches_tracked":
            module.num_batches_tracked = int(value)
        else:
            target = getattr(module, name)
            (target.data if isinstance(target, Parameter) else target)[...] = value
