"""Your own model's training step beside PyTorch's, measured the way bench/ measures fastnn.

    from fastnn import benchmark
    result = benchmark.compare_with_torch(model, x, target, optimizer="adam", lr=1e-3)
    print(benchmark.report(result))

or from the command line, for a saved model: `fastnn bench model.npz --batch-size 32`.

The same model and weights run as fastnn (forward, loss and backward replayed in one C call
by fastnn.fused.FusedStep, as Trainer runs them, then the optimizer step) and as its torch.nn
equivalent in eager mode (torch.optim with the same hyperparameters), side by side in one
process, on the same batch, at the same thread count. Each is timed as the best of `rounds`
rounds of repeated steps (noise on a shared machine only adds time), after a warm-up. First
the two are checked to compute the same function: their losses in evaluation mode must agree
to 1e-4 (relative).
torch is needed (pip install torch); the model must be a Sequential of Embedding, Flatten,
Linear, BatchNorm1d, ReLU, Tanh, Sigmoid, LeakyReLU, GELU and Dropout layers, with
cross-entropy.
"""
import math
import time

import numpy as np

from . import fused, interop, layers, optim, runtime
from .losses import CrossEntropyLoss

__all__ = ["compare_with_torch", "example_batch", "report", "torch_equivalent"]

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
              "adagrad": "Adagrad"}


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("fastnn.benchmark compares with PyTorch: pip install torch") from None
    return torch


def torch_equivalent(model, torch=None):
    """The torch.nn equivalent of the fastnn Sequential `model` with copies of its weights
    and BatchNorm state (fastnn.interop's keys), in training mode; also [(fastnn parameter
    name, torch parameter)], to compare the two. A layer without an equivalent raises
    TypeError."""
    torch = torch or _torch()
    nn = torch.nn
    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    modules = []
    if not isinstance(model, layers.Sequential):
        raise TypeError(f"model: expected a fastnn.Sequential, got {type(model).__name__}")
    for i, layer in enumerate(model):
        kind = type(layer)
        if kind is layers.Embedding:
            m = nn.Embedding(layer.num_embeddings, layer.embedding_dim)
        elif kind is layers.Flatten:
            m = nn.Flatten()
        elif kind is layers.Linear:
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        elif kind is layers.BatchNorm1d and layer.running_var_unbiased:
            m = nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                               affine=layer.affine)
        elif kind in (layers.ReLU, layers.Tanh, layers.Sigmoid):
            m = activations[layer.kind]()
        elif kind is layers.LeakyReLU:
            m = nn.LeakyReLU(layer.negative_slope)
        elif kind is layers.GELU:
            m = nn.GELU(approximate=layer.approximate)
        elif kind is layers.Dropout and layer.inverted:
            m = nn.Dropout(layer.p)
        else:
            raise TypeError(f"model[{i}]: no torch equivalent for {layer!r}")
        if hasattr(layer, "dtype"):
            m.to(getattr(torch, layer.dtype.name))  # before the weights: they are cast in
        modules.append(m)
        if kind in (layers.Linear, layers.BatchNorm1d) and layer.activation != "none":
            modules.append(activations[layer.activation]())
    net = nn.Sequential(*modules).train()
    net.load_state_dict(interop.to_torch_state_dict(model, tensors=True), strict=True)
    fastnn_names = {id(p): name for name, p in model.named_parameters()}
    names = [(fastnn_names[id(getattr(module, attr))], net.get_parameter(key))
             for key, module, attr in interop.torch_keys(model)
             if isinstance(getattr(module, attr), layers.Parameter)]
    return net, names


def _best_seconds(step, rounds, min_time):
    """The best over `rounds` rounds of the mean time of one step() in a round of at least
    min_time seconds (the steps per round calibrated once)."""
    step()  # warm-up: buffers, the replay's record, torch's allocator
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    n = max(1, math.ceil(min_time / max(once, 1e-9)))
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def compare_with_torch(model, x, target, optimizer="sgd", lr=0.01, threads=None, rounds=7,
                       min_time=0.2):
    """Time one training step of `model` (a fastnn Sequential) on the batch x (B, ...) with
    integer classes target (B,) against its torch.nn equivalent.

    optimizer: "sgd", "adam", "adamw", "rmsprop" or "adagrad" with learning rate lr (the
    other hyperparameters torch's defaults, in both). threads: the thread count of both
    (default: fastnn's current setting). The model trains during the measurement: pass a
    copy to keep it. Returns {"fastnn": seconds per step, "torch": seconds per step,
    "speedup": torch's time over fastnn's, "loss_fastnn", "loss_torch": the losses the
    check compared, "threads"}.
    """
    torch = _torch()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    threads = runtime.get_num_threads() if threads is None else threads
    x, target = np.ascontiguousarray(x), np.ascontiguousarray(target, dtype=np.int64)
    torch_model, _ = torch_equivalent(model, torch)  # before fastnn trains the weights
    tx, ttarget = torch.from_numpy(x), torch.from_numpy(target)
    torch_opt = getattr(torch.optim, OPTIMIZERS[optimizer])(torch_model.parameters(), lr=lr)
    torch_loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step():
        torch_opt.zero_grad()
        loss = torch_loss_fn(torch_model(tx), ttarget)
        loss.backward()
        torch_opt.step()
        return loss

    opt = getattr(optim, OPTIMIZERS[optimizer])(model.parameters(), lr=lr)
    step = fused.FusedStep(model, CrossEntropyLoss())

    def fastnn_step():
        opt.zero_grad()
        loss = step(x, target)
        opt.step()
        return loss

    saved_torch, saved = torch.get_num_threads(), runtime.get_num_threads()
    torch.set_num_threads(threads)
    runtime.set_num_threads(threads)
    try:
        # the same function first: the losses in evaluation mode (no dropout masks, which
        # the two draw differently), from the same weights
        model.eval()
        torch_model.eval()
        loss_fastnn = float(CrossEntropyLoss()(model(x), target))
        with torch.no_grad():
            loss_torch = float(torch_loss_fn(torch_model(tx), ttarget))
        if not math.isclose(loss_fastnn, loss_torch, rel_tol=1e-4, abs_tol=1e-6):
            raise ValueError(f"the losses differ: fastnn {loss_fastnn}, torch {loss_torch} "
                             "(is every layer one torch_equivalent knows?)")
        model.train()
        torch_model.train()
        fastnn_seconds = _best_seconds(fastnn_step, rounds, min_time)
        torch_seconds = _best_seconds(torch_step, rounds, min_time)
    finally:
        torch.set_num_threads(saved_torch)
        runtime.set_num_threads(saved)
    return {"fastnn": fastnn_seconds, "torch": torch_seconds,
            "speedup": torch_seconds / fastnn_seconds, "loss_fastnn": loss_fastnn,
            "loss_torch": loss_torch, "threads": threads}


def example_batch(model, batch_size, seed=0):
    """A random batch (x, target) of the shape `model` takes: standard-normal inputs of its
    first layer's width and dtype, or indices for a first Embedding (a context that fills
    the Linear after a Flatten), and classes of its last Linear."""
    rng = np.random.default_rng(seed)
    first, last = model[0], model[len(model) - 1]
    if not isinstance(last, layers.Linear):
        raise TypeError(f"model: expected a Linear last (the logits), got {last!r}")
    if isinstance(first, layers.Embedding):
        nxt = next((m for m in model if isinstance(m, layers.Linear)), None)
        context = nxt.in_features // first.embedding_dim if nxt is not None else 1
        x = rng.integers(0, first.num_embeddings, (batch_size, context))
    elif isinstance(first, (layers.Linear, layers.BatchNorm1d)):
        width = first.in_features if isinstance(first, layers.Linear) else first.num_features
        x = rng.standard_normal((batch_size, width)).astype(first.dtype)
    else:
        raise TypeError(f"model: cannot tell the input of a first {first!r}")
    return x, rng.integers(0, last.out_features, batch_size)


def report(result):
    """One line for a compare_with_torch result."""
    return (f"training step, {result['threads']} thread(s): fastnn {result['fastnn'] * 1e6:.1f} "
            f"us, torch {result['torch'] * 1e6:.1f} us: fastnn {result['speedup']:.2f}x "
            f"faster (the same loss: {result['loss_fastnn']:.6g} and "
            f"{result['loss_torch']:.6g})")
