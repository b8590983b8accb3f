"""Linear + bias + ReLU benchmarks: workloads L1..L4 (README), float32.

For each workload, phase ("forward", "forward+backward") and thread count (1, 2), three
implementations run side by side in one benchmark group:
  native     fastnn.functional on the C/OpenMP kernels (fastnn.set_num_threads)
  reference  fastnn.functional on the NumPy twin (numpy's BLAS limited with threadpoolctl)
  torch      torch eager: linear + relu, backward through autograd (torch.set_num_threads)
"forward+backward" is one forward then one backward that accumulates into dweight and dbias,
reusing every buffer (out=, dx=, work=), as a training step does.

Per workload, a plain sgemm of the forward's shape on 2 threads (scipy.linalg.blas.sgemm and
numpy.matmul with out=; bench/report.py takes the faster) gives the machine rate the forward
is compared to.

Each benchmark first checks its results once against another implementation (the reference
against native, everything else against the reference), so `pytest bench/
--benchmark-disable` is a quick smoke test that still checks numbers.
"""
import contextlib
import functools

import numpy as np
import pytest
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

import fastnn.functional as F

from .conftest import assert_close, cores, results_once, setting

WORKLOADS = {  # id: (batch, in_features, out_features)
    "L1": (32, 30, 200),
    "L2": (128, 784, 256),
    "L3": (512, 1024, 1024),
    "L4": (2048, 2048, 2048),
}
PHASES = ("forward", "forward+backward")
IMPLS = ("native", "reference", "torch")
THREADS = (1, 2)
SGEMM_THREADS = 2
SGEMM_APIS = ("scipy", "numpy")
DTYPE = np.float32
# float32 normwise relative error allowed between two implementations (as in tests/).
TOL = 1e-5
# Pre-activations closer than this to 0 get a zero upstream gradient (see inputs()). The
# pre-activations have standard deviation about 0.58 and float32 errors below 1e-6 here, so
# this zeroes about 0.1% of dy and removes every rounding-dependent mask flip.
KINK = 1e-3


def flops(workload, phase):
    """Floating-point operations of one step: 2*B*in*out per matrix product (3 in backward+
    forward: y = x W^T, dx = dz W, dW += dz^T x); bias and ReLU are not counted."""
    B, C, OC = WORKLOADS[workload]
    return (2 if phase in ("forward", "sgemm") else 6) * B * C * OC


@functools.cache
def inputs(workload):
    """x ~ N(0, 1), weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)) as PyTorch initialises
    them, and an upstream gradient dy ~ N(0, 1); fixed seed per workload.

    dy is set to 0 where the pre-activation lies within KINK of ReLU's kink at 0: there two
    correct float32 implementations may round to opposite sides of 0, and one such entry
    flipping the mask moves dbias, dx and dweight by about 1% (seen with torch at L4).
    """
    B, C, OC = WORKLOADS[workload]
    rng = np.random.default_rng(list(WORKLOADS).index(workload))
    bound = 1 / np.sqrt(C)
    x = rng.standard_normal((B, C), dtype=DTYPE)
    weight = rng.uniform(-bound, bound, (OC, C)).astype(DTYPE)
    bias = rng.uniform(-bound, bound, OC).astype(DTYPE)
    dy = rng.standard_normal((B, OC), dtype=DTYPE)
    dy[np.abs(x @ weight.T + bias) < KINK] = 0
    return x, weight, bias, dy


class FastnnStep:
    """One forward (and backward) through fastnn.functional with preallocated buffers; the
    backend is the one in force when it is called."""

    def __init__(self, workload, phase):
        self.x, self.weight, self.bias, self.dy = inputs(workload)
        B, C, OC = WORKLOADS[workload]
        self.phase = phase
        self.y = np.empty((B, OC), DTYPE)
        self.dx = np.empty((B, C), DTYPE)
        self.work = np.empty((B, OC), DTYPE)
        self.dweight = np.zeros((OC, C), DTYPE)
        self.dbias = np.zeros(OC, DTYPE)

    def __call__(self):
        F.linear_forward(self.x, self.weight, self.bias, "relu", out=self.y)
        if self.phase == "forward+backward":
            F.linear_backward(self.dy, self.x, self.weight, self.y, "relu", self.dweight,
                              self.dbias, dx=self.dx, work=self.work)

    def results(self):
        """Copies of the outputs of one step taken from zeroed gradients."""
        self.dweight.fill(0)
        self.dbias.fill(0)
        self()
        if self.phase == "forward":
            return {"y": self.y.copy()}
        return {"y": self.y.copy(), "dx": self.dx.copy(), "dweight": self.dweight.copy(),
                "dbias": self.dbias.copy()}


class TorchStep:
    """The same step in torch eager mode; the arrays are shared with numpy, not copied."""

    def __init__(self, workload, phase):
        self.torch = pytest.importorskip("torch")
        x, weight, bias, dy = inputs(workload)
        self.phase = phase
        grad = phase == "forward+backward"
        # Copies for the leaves that require grad, so torch cannot write into the shared inputs.
        self.x = self.torch.from_numpy(x.copy() if grad else x).requires_grad_(grad)
        self.weight = self.torch.from_numpy(weight.copy()).requires_grad_(grad)
        self.bias = self.torch.from_numpy(bias.copy()).requires_grad_(grad)
        self.dy = self.torch.from_numpy(dy)

    def __call__(self):
        y = self.torch.relu(self.torch.nn.functional.linear(self.x, self.weight, self.bias))
        if self.phase == "forward+backward":
            # dx is recomputed, not accumulated, as fastnn's backward does; dweight and dbias
            # accumulate in .grad.
            self.x.grad = None
            y.backward(self.dy)
        return y

    def results(self):
        self.weight.grad = self.bias.grad = None
        y = self()
        if self.phase == "forward":
            return {"y": y.detach().numpy().copy()}
        return {"y": y.detach().numpy().copy(), "dx": self.x.grad.numpy().copy(),
                "dweight": self.weight.grad.numpy().copy(),
                "dbias": self.bias.grad.numpy().copy()}


def make_step(impl, workload, phase):
    return TorchStep(workload, phase) if impl == "torch" else FastnnStep(workload, phase)


CASES = [
    pytest.param(w, p, t, i, id=f"{w}-{p}-t{t}-{i}")
    for w in WORKLOADS for p in PHASES for t in THREADS for i in IMPLS
]


@pytest.mark.parametrize("workload, phase, threads, impl", CASES)
def test_linear(benchmark, measure, workload, phase, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, workload, phase)
    B, C, OC = WORKLOADS[workload]
    benchmark.group = f"{workload}-{phase}-t{threads}"
    benchmark.extra_info.update(
        workload=workload, shape=[B, C, OC], dtype=np.dtype(DTYPE).name, threads=threads,
        impl=impl, phase=phase, flops=flops(workload, phase),
    )
    oracle = "native" if impl == "reference" else "reference"
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step, no_grad=phase == "forward")
        got = step.results()
    want = results_once(make_step, oracle, workload, phase)
    benchmark.extra_info["rel_err"] = assert_close(got, want, TOL, f"{impl} vs {oracle}")
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step, no_grad=phase == "forward")
        measure(step)


class Sgemm:
    """out (B, OC) = x (B, C) @ weight (OC, C).T, written in place, through one BLAS API."""

    def __init__(self, workload, api):
        self.x, self.weight, _, _ = inputs(workload)
        B, C, OC = WORKLOADS[workload]
        self.out = np.empty((B, OC), DTYPE)
        self.api = api
        # Column-major views, so that f2py passes them to sgemm without copying:
        # out.T (OC, B) = weight (OC, C) @ x.T (C, B), weight being the F-ordered weight.T.
        self.f_w, self.f_x, self.f_out = self.weight.T, self.x.T, self.out.T

    def __call__(self):
        if self.api == "scipy":
            return scipy.linalg.blas.sgemm(1.0, self.f_w, self.f_x, 0.0, self.f_out,
                                           trans_a=True, overwrite_c=True)
        return np.matmul(self.x, self.weight.T, out=self.out)

    def results(self):
        self.out.fill(np.nan)
        r = self()
        assert np.shares_memory(r, self.out), "the BLAS call copied its output"
        return {"y": self.out.copy()}


@pytest.mark.parametrize("workload, api", [
    pytest.param(w, a, id=f"{w}-sgemm-t{SGEMM_THREADS}-{a}") for w in WORKLOADS for a in SGEMM_APIS
])
def test_sgemm(benchmark, measure, workload, api):
    threads = min(SGEMM_THREADS, cores())
    B, C, OC = WORKLOADS[workload]
    benchmark.group = f"{workload}-sgemm-t{threads}"
    benchmark.extra_info.update(
        workload=workload, shape=[B, C, OC], dtype=np.dtype(DTYPE).name, threads=threads,
        impl=f"sgemm-{api}", phase="sgemm", flops=flops(workload, "sgemm"),
    )
    step = Sgemm(workload, api)
    with threadpool_limits(limits=threads, user_api="blas"):
        got = step.results()
        other = Sgemm(workload, "numpy" if api == "scipy" else "scipy").results()
        benchmark.extra_info["rel_err"] = assert_close(got, other, TOL, f"sgemm {api}")
        measure(step)
