"""Whole training-step benchmarks: workloads S1, S2 (README) and M3, float32.

One step is what a training loop does per batch: zero the gradients, forward, loss, backward,
optimizer step. For each workload and thread count (1, 2), four implementations of the same
model, started from the same weights, run side by side in one benchmark group:
  native     a fastnn model (Sequential of fastnn layers, fastnn.optim) on the C/OpenMP kernels;
             forward, loss and backward through fastnn.fused.FusedStep, as fastnn's Trainer
             runs them: the first step through the layers, the rest replayed in one C call
             (bit for bit the same results, tests/test_fused.py)
  layers     the same model and kernels through the plain layer calls a hand-written loop
             makes: opt.zero_grad(); loss_fn.forward(model.forward(x), y);
             model.backward(loss_fn.backward(), input_grad=False); opt.step()
  reference  the same fastnn model under fastnn.use_backend("reference") (numpy's BLAS limited
             with threadpoolctl)
  torch      the equivalent torch.nn model, weights copied from the fastnn model, torch eager,
             torch.optim with the same hyperparameters (torch.set_num_threads)

  S1  char-level MLP, batch 32, context 3, vocabulary 27: Embedding(27, 10) -> Flatten ->
      Linear(30, 200, bias=False) -> BatchNorm1d(200) + tanh -> Linear(200, 27);
      cross-entropy; SGD lr 0.1
  S2  784-512-512-10 MLP, batch 128: [Linear(no bias) -> BatchNorm1d + ReLU] x 2 -> Linear;
      cross-entropy; Adam (defaults)
  M3  the makemore part-3 model of `fastnn experiment charlm` (fastnn.experiments.charlm),
      batch 32, context 3, vocabulary 27: Embedding(27, 10) -> Flatten -> [Linear(no bias,
      100) -> BatchNorm1d(100) + tanh] x 2 -> Linear(100, 27); cross-entropy; SGD lr 0.1

Inputs and targets are fixed (seeded) random arrays; the model keeps training on the same
batch while it is timed, which costs the same as a fresh batch would.

Each benchmark first checks one step taken from fresh, identical weights against another
implementation (native against the reference, reference and torch against native): the loss,
every gradient and every parameter after the step within normwise relative error 1e-4 (for
Adam, parameter entries with |grad| < 1e-6, where its first step is ill-conditioned, only
within Adam's bound on an update; see ADAM_TINY_GRAD), so `pytest bench/
--benchmark-disable` is a quick smoke test that still checks numbers.

Recorded with each benchmark: `flops`, the step's matrix-product operations (matmul_flops;
bench/report.py divides by the step time and by the run's best raw sgemm rate); for native,
and layers, the peak memory growth of a steady step (asserted below 4 KB: no array is
created; what remains is argument tuples) and, for native, the
bytes held by model, optimizer and loss against the minimum (fastnn.diagnostics.
memory_footprint).
"""
import contextlib
import functools
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn import layers as L

from fastnn.benchmark import torch_equivalent
from fastnn.diagnostics import memory_footprint
from fastnn.experiments import charlm
from fastnn.fused import FusedStep

from .conftest import assert_close, cores, results_once, setting

WORKLOADS = {  # id: batch size
    "S1": 32,
    "S2": 128,
    "M3": 32,
}
PHASE = "step"
IMPLS = ("native", "layers", "reference", "torch")
THREADS = (1, 2)
DTYPE = np.float32
# S1
VOCAB, CONTEXT, EMBED, HIDDEN1 = 27, 3, 10, 200
SGD_LR = 0.1
# S2
IN2, HIDDEN2, CLASSES2 = 784, 512, 10
# float32 normwise relative error allowed between two implementations, for the loss, every
# gradient and every parameter after one step.
TOL = 1e-4
# Adam's first step moves each parameter by lr * g / (|g| + eps) (eps = 1e-8): where |g| is
# within a few hundred eps of 0 that is ill-conditioned, and the float32 rounding of g (about
# 1e-8 absolute at S2, gradients agree to ~5e-7 normwise) moves the update by up to ~0.3 lr,
# about 1e-3 of the largest weight. Seen at S2: 0.weight, |g| = 4e-9, updates 3e-5 apart. Such
# entries (|g| below ADAM_TINY_GRAD in the oracle) are checked only against the bound
# |update| <= lr that every Adam step obeys; everything else is held to TOL.
ADAM_TINY_GRAD = 1e-6
ADAM_LR = 1e-3  # torch.optim.Adam's and fastnn.optim.Adam's default
MODEL_SEED = 1234


def build_model(workload):
    """The fastnn model of `workload`, with weights fixed by a seed (the same every call)."""
    fastnn.manual_seed(MODEL_SEED + list(WORKLOADS).index(workload))
    if workload == "M3":
        return charlm.build_model(VOCAB, CONTEXT)
    if workload == "S1":
        return L.Sequential(
            L.Embedding(VOCAB, EMBED, dtype=DTYPE),
            L.Flatten(),
            L.Linear(CONTEXT * EMBED, HIDDEN1, bias=False, dtype=DTYPE),
            L.BatchNorm1d(HIDDEN1, dtype=DTYPE, activation="tanh"),
            L.Linear(HIDDEN1, VOCAB, dtype=DTYPE),
        )
    return L.Sequential(
        L.Linear(IN2, HIDDEN2, bias=False, dtype=DTYPE),
        L.BatchNorm1d(HIDDEN2, dtype=DTYPE, activation="relu"),
        L.Linear(HIDDEN2, HIDDEN2, bias=False, dtype=DTYPE),
        L.BatchNorm1d(HIDDEN2, dtype=DTYPE, activation="relu"),
        L.Linear(HIDDEN2, CLASSES2, dtype=DTYPE),
    )


def build_optimizer(workload, params, optim):
    """SGD(lr 0.1) for S1 and M3, Adam with its defaults for S2; `optim` is fastnn.optim or
    torch.optim (same names, same hyperparameters)."""
    return optim.Adam(params) if workload == "S2" else optim.SGD(params, lr=SGD_LR)


@functools.cache
def inputs(workload):
    """Fixed random batch: S1 and M3 int64 character indices (B, 3) in [0, 27); S2 float32
    x ~ N(0, 1) (B, 784); integer class targets (B,)."""
    B = WORKLOADS[workload]
    rng = np.random.default_rng(200 + list(WORKLOADS).index(workload))
    if workload != "S2":
        x = rng.integers(0, VOCAB, (B, CONTEXT), dtype=np.int64)
        target = rng.integers(0, VOCAB, B, dtype=np.int64)
    else:
        x = rng.standard_normal((B, IN2), dtype=DTYPE)
        target = rng.integers(0, CLASSES2, B, dtype=np.int64)
    return x, target


class FastnnStep:
    """One training step of the fastnn model; the backend is the one in force when called."""

    replay = True

    def __init__(self, workload):
        self.x, self.target = inputs(workload)
        self.model = build_model(workload)
        self.loss_fn = fastnn.CrossEntropyLoss()
        self.optimizer = build_optimizer(workload, self.model.parameters(), fastnn.optim)
        # forward, loss and backward: replayed in one C call on the native backend (as
        # fastnn.train.Trainer does), the layer path on the reference backend
        self.forward_backward = FusedStep(self.model, self.loss_fn) if self.replay else None

    def __call__(self):
        self.optimizer.zero_grad()
        loss = self.forward_backward(self.x, self.target)
        self.optimizer.step()
        return loss

    def results(self):
        """The loss of one step from the initial weights, and copies of the parameters after
        it. Call on a fresh instance."""
        loss = self()
        params = list(self.model.named_parameters())
        return {"loss": np.float64(loss),
                **{name: p.data.copy() for name, p in params},
                **{f"grad:{name}": p.grad.copy() for name, p in params}}


class LayerCallsStep(FastnnStep):
    """The same step through the plain layer calls, no replay."""

    replay = False

    def __call__(self):
        self.optimizer.zero_grad()
        loss = self.loss_fn.forward(self.model.forward(self.x), self.target)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step()
        return loss


class TorchStep:
    """The same step in torch eager mode, from the same initial weights."""

    def __init__(self, workload):
        self.torch = pytest.importorskip("torch")
        x, target = inputs(workload)
        self.x = self.torch.from_numpy(x)
        self.target = self.torch.from_numpy(target)
        self.model, self.names = torch_equivalent(build_model(workload), self.torch)
        self.loss_fn = self.torch.nn.CrossEntropyLoss()
        self.optimizer = build_optimizer(workload, self.model.parameters(), self.torch.optim)

    def __call__(self):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.target)
        loss.backward()
        self.optimizer.step()
        return loss

    def results(self):
        loss = self()
        return {"loss": np.float64(loss.item()),
                **{name: p.detach().numpy().copy() for name, p in self.names},
                **{f"grad:{name}": p.grad.numpy().copy() for name, p in self.names}}


def make_step(impl, workload):
    return {"torch": TorchStep, "layers": LayerCallsStep}.get(impl, FastnnStep)(workload)


def check(got, want, workload, label):
    """assert_close on one step's results; for Adam (S2), parameter entries whose gradient is
    tiny (see ADAM_TINY_GRAD) are only checked against the bound on Adam's update. Returns the
    largest normwise relative error and the number of entries so treated."""
    got = dict(got)
    loose = 0
    if workload == "S2":
        for name in [k for k in want if not k.startswith("grad:") and k != "loss"]:
            tiny = np.abs(want[f"grad:{name}"]) < ADAM_TINY_GRAD
            if tiny.any():
                diff = np.abs(got[name][tiny].astype(np.float64) - want[name][tiny])
                assert diff.max() <= 2 * ADAM_LR, f"{label}: {name} Adam update out of bounds"
                got[name] = np.where(tiny, want[name], got[name])
                loose += int(tiny.sum())
    return assert_close(got, want, TOL, label), loose


CASES = [
    pytest.param(w, t, i, id=f"{w}-t{t}-{i}")
    for w in WORKLOADS for t in THREADS for i in IMPLS
]


def matmul_flops(model, batch):
    """Floating-point operations of one step's matrix products: per Linear 2*B*in*out for
    the forward, the weight gradient and (unless it is the first layer, whose input is data)
    the input gradient. The rest of the step (BatchNorm, activations, loss, optimizer) is not
    counted, so flops / step time understates the rate the products run at."""
    flops = 0
    for i, layer in enumerate(model):
        if isinstance(layer, L.Linear):
            flops += 2 * batch * layer.in_features * layer.out_features * (3 if i > 0 else 2)
    return flops


def numpy_peak_growth(step, n=5):
    """Peak bytes traced over n calls of step() beyond what was held before them (0 when no
    array is created), after two warm-up calls."""
    step(), step()
    tracemalloc.start()
    try:
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(n):
            step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - current


def record_memory(benchmark, step):
    """fastnn's replayed and plain steps: no array allocated after the first (asserted), and
    the bytes the model, optimizer and loss hold against the minimum (recorded)."""
    growth = numpy_peak_growth(step)
    assert growth < 4096, f"a steady step's peak memory grew by {growth} bytes"
    mem = memory_footprint(step.model, step.optimizer, step.loss_fn,
                           inputs=(step.x, step.target))
    benchmark.extra_info.update(alloc_growth=growth, mem_held=mem["held"],
                                mem_minimum=mem["minimum"], mem_ratio=mem["ratio"])


@pytest.mark.parametrize("workload, threads, impl", CASES)
def test_step(benchmark, measure, workload, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, workload)
    benchmark.group = f"{workload}-t{threads}"
    benchmark.extra_info.update(
        workload=workload, batch=WORKLOADS[workload], dtype=np.dtype(DTYPE).name,
        threads=threads, impl=impl, phase=PHASE,
    )
    oracle = "reference" if impl in ("native", "layers") else "native"
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        got = step.results()
    want = results_once(make_step, oracle, workload)
    err, loose = check(got, want, workload, f"{impl} vs {oracle}")
    benchmark.extra_info.update(rel_err=err, tiny_grad_entries=loose,
                                flops=matmul_flops(build_model(workload), WORKLOADS[workload]))
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        if impl in ("native", "layers"):
            record_memory(benchmark, step)
        measure(step)
    if impl == "native":
        assert step.forward_backward._plan is not None, "native steps were not replayed"
