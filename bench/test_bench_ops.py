"""Memory-bound kernels: activations, softmax and cross-entropy, forward+backward, float32.

  relu, tanh, gelu   elementwise activation on (2048, 4096): forward, then backward from dy
  softmax            softmax along the last axis of (4096, 1000), forward then backward
  cross_entropy      mean cross-entropy of (4096, 1000) logits against integer targets,
                     forward then backward (d loss / d logits)

For each op and thread count (1, 2), three implementations run side by side in one benchmark
group "{op}-t{threads}":
  native     fastnn.functional on the C/OpenMP kernels (fastnn.set_num_threads)
  reference  fastnn.functional on the NumPy twin (single-threaded NumPy)
  torch      torch eager, backward through autograd (torch.set_num_threads)
fastnn reuses every buffer (out=, dx=, probs=, dlogits=); torch allocates as eager mode does.

extra_info["bytes"] is the least memory traffic of one step (each array read or written once
per pass): activation and softmax read x, write y, read dy and x (or y), write dx = 5 arrays;
cross-entropy reads logits, writes probs, reads probs, writes dlogits = 4 arrays (the targets
are negligible). bytes / time is the effective bandwidth, to compare with STREAM.

Each benchmark first checks its results once against another implementation (the reference
against native, everything else against the reference), so `pytest bench/test_bench_ops.py
--benchmark-disable` is a quick smoke test that still checks numbers.
"""
import contextlib
import functools

import numpy as np
import pytest

import fastnn.functional as F

from .conftest import assert_close, cores, results_once, setting

OPS = {  # op: (kind, shape)
    "relu": ("activation", (2048, 4096)),
    "tanh": ("activation", (2048, 4096)),
    "gelu": ("activation", (2048, 4096)),
    "softmax": ("softmax", (4096, 1000)),
    "cross_entropy": ("cross_entropy", (4096, 1000)),
}
IMPLS = ("native", "reference", "torch")
THREADS = (1, 2)
PHASE = "forward+backward"
DTYPE = np.float32
# float32 normwise relative error allowed between two implementations (as in tests/).
TOL = 1e-5


def traffic_bytes(op):
    """The least memory traffic of one forward+backward, in bytes."""
    kind, shape = OPS[op]
    n = int(np.prod(shape))
    arrays = 4 if kind == "cross_entropy" else 5
    return arrays * n * np.dtype(DTYPE).itemsize


@functools.cache
def inputs(op):
    """Fixed-seed inputs per op: x ~ N(0, 1) (logits ~ N(0, 2^2)), dy ~ N(0, 1), targets
    uniform. For relu, dy is 0 where |x| < 1e-30, so no result depends on the side of the kink
    a tiny x is rounded to (none is, with this seed; the guard makes it explicit)."""
    kind, shape = OPS[op]
    rng = np.random.default_rng(list(OPS).index(op))
    if kind == "cross_entropy":
        logits = 2 * rng.standard_normal(shape, dtype=DTYPE)
        target = rng.integers(0, shape[1], shape[0])
        return logits, target
    x = rng.standard_normal(shape, dtype=DTYPE)
    dy = rng.standard_normal(shape, dtype=DTYPE)
    if op == "relu":
        dy[np.abs(x) < 1e-30] = 0
    return x, dy


class FastnnStep:
    """One forward and backward through fastnn.functional with preallocated buffers; the
    backend is the one in force when it is called."""

    def __init__(self, op):
        self.op = op
        self.kind, shape = OPS[op]
        if self.kind == "cross_entropy":
            self.logits, self.target = inputs(op)
            self.probs = np.empty(shape, DTYPE)
            self.dlogits = np.empty(shape, DTYPE)
            self.loss = None
        else:
            self.x, self.dy = inputs(op)
            self.y = np.empty(shape, DTYPE)
            self.dx = np.empty(shape, DTYPE)

    def __call__(self):
        if self.kind == "activation":
            F.activation_forward(self.x, self.op, out=self.y)
            F.activation_backward(self.dy, self.x, self.y, self.op, dx=self.dx)
        elif self.kind == "softmax":
            F.softmax_forward(self.x, out=self.y)
            F.softmax_backward(self.dy, self.y, dx=self.dx)
        else:
            self.loss, _ = F.cross_entropy_forward(self.logits, self.target, probs=self.probs)
            F.cross_entropy_backward(self.probs, self.target, dlogits=self.dlogits)

    def results(self):
        self()
        if self.kind == "cross_entropy":
            return {"loss": np.float64(self.loss), "dlogits": self.dlogits.copy()}
        return {"y": self.y.copy(), "dx": self.dx.copy()}


class TorchStep:
    """The same step in torch eager mode; inputs shared with numpy, not copied."""

    def __init__(self, op):
        self.torch = pytest.importorskip("torch")
        torch = self.torch
        self.op = op
        self.kind, _ = OPS[op]
        if self.kind == "cross_entropy":
            logits, target = inputs(op)
            self.x = torch.from_numpy(logits.copy()).requires_grad_(True)
            self.target = torch.from_numpy(target)
            self.dy = None
        else:
            x, dy = inputs(op)
            self.x = torch.from_numpy(x.copy()).requires_grad_(True)
            self.dy = torch.from_numpy(dy)
        self.fn = {
            "relu": torch.relu,
            "tanh": torch.tanh,
            "gelu": lambda t: torch.nn.functional.gelu(t, approximate="none"),
            "softmax": lambda t: torch.softmax(t, dim=-1),
            "cross_entropy": lambda t: torch.nn.functional.cross_entropy(t, self.target),
        }[op]

    def __call__(self):
        self.x.grad = None  # dx is recomputed, not accumulated, as fastnn's backward does
        out = self.fn(self.x)
        if self.dy is None:
            out.backward()
        else:
            out.backward(self.dy)
        return out

    def results(self):
        out = self()
        grad = self.x.grad.numpy().copy()
        if self.kind == "cross_entropy":
            return {"loss": np.float64(out.item()), "dlogits": grad}
        return {"y": out.detach().numpy().copy(), "dx": grad}


def make_step(impl, op):
    return TorchStep(op) if impl == "torch" else FastnnStep(op)


CASES = [
    pytest.param(o, t, i, id=f"{o}-t{t}-{i}") for o in OPS for t in THREADS for i in IMPLS
]


@pytest.mark.parametrize("op, threads, impl", CASES)
def test_ops(benchmark, measure, op, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, op)
    _, shape = OPS[op]
    benchmark.group = f"{op}-t{threads}"
    benchmark.extra_info.update(
        op=op, shape=list(shape), dtype=np.dtype(DTYPE).name, threads=threads, impl=impl,
        phase=PHASE, bytes=traffic_bytes(op),
    )
    oracle = "native" if impl == "reference" else "reference"
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        got = step.results()
    want = results_once(make_step, oracle, op)
    benchmark.extra_info["rel_err"] = assert_close(got, want, TOL, f"{impl} vs {oracle}")
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        measure(step)
