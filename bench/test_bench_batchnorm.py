"""BatchNorm1d training benchmarks: workloads N1..N3 (README), float32, and the machine's
memory bandwidth (STREAM triad) they are compared to.

For each workload and thread count (1, 2), three implementations of one training step (one
forward that normalises with the batch statistics and updates the running statistics, then
one backward that accumulates dweight and dbias, every buffer preallocated and reused) run
side by side in one benchmark group:
  native     fastnn.functional on the C/OpenMP kernels (fastnn.set_num_threads)
  reference  fastnn.functional on the NumPy twin
  torch      torch.nn.functional.batch_norm, backward through autograd (torch.set_num_threads)

The step is memory-bound: "bytes" in extra_info is the traffic of its minimal passes,
8 * B * C * 4 (forward: read x for the statistics, read x and write y; backward: read dy and
x for the sums, read dy and x and write dx). bench/report.py divides it by the best time and
compares the rate with the triad's: fastnn._native.stream_triad (a = b + s * c over float64
arrays, 24 bytes per element), same compiler flags and thread team as the kernels.

Each benchmark first checks its results once against another implementation (the reference
against native, everything else against the reference), so `pytest bench/
--benchmark-disable` is a quick smoke test that still checks numbers.
"""
import contextlib
import functools

import numpy as np
import pytest

import fastnn.functional as F
from fastnn import _native

from .conftest import assert_close, cores, fastnn_threads, results_once, setting

WORKLOADS = {  # id: (batch, channels)
    "N1": (128, 256),
    "N2": (512, 1024),
    "N3": (4096, 4096),
}
PHASE = "forward+backward"
IMPLS = ("native", "reference", "torch")
THREADS = (1, 2)
DTYPE = np.float32
EPS, MOMENTUM = 1e-5, 0.1
# float32 normwise relative error allowed between two implementations (as in tests/).
TOL = 1e-5
# STREAM triad: float64 elements per array (three arrays of 160 MB: far beyond any cache).
TRIAD_N = 20_000_000
TRIAD_BYTES_PER_ELEMENT = 24


def traffic(workload):
    """Bytes moved by the minimal passes of one training forward+backward: 8 passes of B*C
    float32 (forward: x for the statistics, x in and y out; backward: dy and x for the sums,
    dy and x in and dx out)."""
    B, C = WORKLOADS[workload]
    return 8 * B * C * np.dtype(DTYPE).itemsize


@functools.cache
def inputs(workload):
    """x ~ N(3, 2^2) (a nonzero mean, as after a Linear layer), weight ~ U(0.5, 1.5),
    bias ~ N(0, 1), upstream gradient dy ~ N(0, 1); fixed seed per workload."""
    B, C = WORKLOADS[workload]
    rng = np.random.default_rng(100 + list(WORKLOADS).index(workload))
    x = (3 + 2 * rng.standard_normal((B, C), dtype=DTYPE)).astype(DTYPE)
    weight = rng.uniform(0.5, 1.5, C).astype(DTYPE)
    bias = rng.standard_normal(C, dtype=DTYPE)
    dy = rng.standard_normal((B, C), dtype=DTYPE)
    return x, weight, bias, dy


class FastnnStep:
    """One training forward and backward through fastnn.functional with preallocated
    buffers; the backend is the one in force when it is called."""

    def __init__(self, workload):
        self.x, self.weight, self.bias, self.dy = inputs(workload)
        B, C = WORKLOADS[workload]
        self.running_mean = np.zeros(C, DTYPE)
        self.running_var = np.ones(C, DTYPE)
        self.y = np.empty((B, C), DTYPE)
        self.save_mean = np.empty(C, DTYPE)
        self.save_invstd = np.empty(C, DTYPE)
        self.dx = np.empty((B, C), DTYPE)
        self.dweight = np.zeros(C, DTYPE)
        self.dbias = np.zeros(C, DTYPE)

    def __call__(self):
        F.batchnorm_forward(self.x, self.weight, self.bias, self.running_mean,
                            self.running_var, True, MOMENTUM, EPS, "none", out=self.y,
                            save_mean=self.save_mean, save_invstd=self.save_invstd)
        F.batchnorm_backward(self.dy, self.x, self.y, self.save_mean, self.save_invstd,
                             self.weight, True, "none", self.dweight, self.dbias, dx=self.dx)

    def results(self):
        """Copies of the outputs of one step from fresh running statistics and zeroed
        gradients."""
        self.running_mean.fill(0)
        self.running_var.fill(1)
        self.dweight.fill(0)
        self.dbias.fill(0)
        self()
        return {"y": self.y.copy(), "dx": self.dx.copy(), "dweight": self.dweight.copy(),
                "dbias": self.dbias.copy(), "running_mean": self.running_mean.copy(),
                "running_var": self.running_var.copy()}


class TorchStep:
    """The same step in torch eager mode; the inputs are shared with numpy, not copied."""

    def __init__(self, workload):
        self.torch = pytest.importorskip("torch")
        x, weight, bias, dy = inputs(workload)
        C = WORKLOADS[workload][1]
        # Copies for the leaves that require grad, so torch cannot write into the shared inputs.
        self.x = self.torch.from_numpy(x.copy()).requires_grad_(True)
        self.weight = self.torch.from_numpy(weight.copy()).requires_grad_(True)
        self.bias = self.torch.from_numpy(bias.copy()).requires_grad_(True)
        self.dy = self.torch.from_numpy(dy)
        self.running_mean = self.torch.zeros(C, dtype=self.torch.float32)
        self.running_var = self.torch.ones(C, dtype=self.torch.float32)

    def __call__(self):
        y = self.torch.nn.functional.batch_norm(
            self.x, self.running_mean, self.running_var, self.weight, self.bias,
            training=True, momentum=MOMENTUM, eps=EPS)
        # dx is recomputed, not accumulated, as fastnn's backward does; dweight and dbias
        # accumulate in .grad.
        self.x.grad = None
        y.backward(self.dy)
        return y

    def results(self):
        self.running_mean.fill_(0)
        self.running_var.fill_(1)
        self.weight.grad = self.bias.grad = None
        y = self()
        return {"y": y.detach().numpy().copy(), "dx": self.x.grad.numpy().copy(),
                "dweight": self.weight.grad.numpy().copy(),
                "dbias": self.bias.grad.numpy().copy(),
                "running_mean": self.running_mean.numpy().copy(),
                "running_var": self.running_var.numpy().copy()}


def make_step(impl, workload):
    return TorchStep(workload) if impl == "torch" else FastnnStep(workload)


CASES = [
    pytest.param(w, t, i, id=f"{w}-t{t}-{i}")
    for w in WORKLOADS for t in THREADS for i in IMPLS
]


@pytest.mark.parametrize("workload, threads, impl", CASES)
def test_batchnorm(benchmark, measure, workload, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, workload)
    B, C = WORKLOADS[workload]
    benchmark.group = f"{workload}-{PHASE}-t{threads}"
    benchmark.extra_info.update(
        workload=workload, shape=[B, C], dtype=np.dtype(DTYPE).name, threads=threads,
        impl=impl, phase=PHASE, bytes=traffic(workload),
    )
    oracle = "native" if impl == "reference" else "reference"
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        got = step.results()
    want = results_once(make_step, oracle, workload)
    benchmark.extra_info["rel_err"] = assert_close(got, want, TOL, f"{impl} vs {oracle}")
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        measure(step)


@functools.cache
def triad_arrays():
    """a, b, c for the triad, every page touched once."""
    a = np.zeros(TRIAD_N)
    b = np.full(TRIAD_N, 1.5)
    c = np.arange(TRIAD_N, dtype=np.float64)
    return a, b, c


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{t}" for t in THREADS])
def test_stream_triad(benchmark, measure, threads):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    a, b, c = triad_arrays()
    s = 3.0
    benchmark.group = f"triad-t{threads}"
    benchmark.extra_info.update(
        workload="triad", shape=[TRIAD_N], dtype="float64", threads=threads, impl="native",
        phase="triad", bytes=TRIAD_BYTES_PER_ELEMENT * TRIAD_N,
    )
    with fastnn_threads(threads, adaptive=False):  # the machine's limit at exactly `threads`
        a.fill(0)
        _native.stream_triad(a, b, c, s)
        benchmark.extra_info["rel_err"] = assert_close({"a": a}, {"a": b + s * c}, 1e-15,
                                                       "stream_triad")
        measure(lambda: _native.stream_triad(a, b, c, s))
