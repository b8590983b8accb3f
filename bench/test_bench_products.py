"""Matrix-product benchmarks: every product of the S1 and S2 steps, and 2048^3, float32,
against the machine's FMA peak.

Per Linear layer of the README's workloads S1 and S2 (and a 2048-wide layer at batch 2048), phase and
thread count (1, 2), three implementations of the same products run side by side:
  native  through a fastnn.Linear layer (no activation): forward = layer.forward(x), one
          product x @ W.T (+ b); backward = layer.backward(dy), dx = dy @ W and dW += dy.T @ x
          (+ db), dx skipped for the first layer of S2, whose input is data, as in the step
  torch   torch.mm of the same products into preallocated outputs (MKL/oneDNN on x86)
  numpy   numpy.matmul(out=) of the same products (numpy's OpenBLAS, limited by threadpoolctl)

The FMA peak (fastnn._native.fma_peak: independent chains of the widest FMAs the path has, as
many as its micro-kernel's accumulators: 24 zmm, 12 ymm) is measured at 1 and 2 threads;
bench/report.py reports every product's rate as a fraction of it.
"""
import contextlib
import functools

import numpy as np
import pytest

import fastnn
from fastnn import _native

from .conftest import assert_close, cores, setting

LAYERS = {  # id: (batch, in_features, out_features, bias, input gradient)
    "S1.1": (32, 30, 200, False, True),
    "S1.2": (32, 200, 27, True, True),
    "S2.1": (128, 784, 512, False, False),
    "S2.2": (128, 512, 512, False, True),
    "S2.3": (128, 512, 10, True, True),
    "G2048": (2048, 2048, 2048, False, True),
}
PHASES = ("forward", "backward")
IMPLS = ("native", "torch", "numpy")
THREADS = (1, 2)
DTYPE = np.float32
TOL = 1e-5  # float32 normwise relative error between two implementations
PEAK_ITERS = 2_000_000  # about 20 ms of FMAs per call


def flops(layer, phase):
    """2*B*in*out per product: one in the forward, two (one without the input gradient) in the
    backward; bias terms not counted."""
    B, C, OC, _, input_grad = LAYERS[layer]
    return 2 * B * C * OC * (1 if phase == "forward" else 1 + input_grad)


@functools.cache
def inputs(layer):
    """x, dy ~ N(0, 1); weight and bias ~ U(+-1/sqrt(in)); a fixed seed per layer."""
    B, C, OC, bias, _ = LAYERS[layer]
    rng = np.random.default_rng(300 + list(LAYERS).index(layer))
    bound = 1 / np.sqrt(C)
    x = rng.standard_normal((B, C), dtype=DTYPE)
    weight = rng.uniform(-bound, bound, (OC, C)).astype(DTYPE)
    b = rng.uniform(-bound, bound, OC).astype(DTYPE) if bias else None
    dy = rng.standard_normal((B, OC), dtype=DTYPE)
    return x, weight, b, dy


class NativeProducts:
    """The layer's products through a fastnn.Linear holding the shared weights."""

    def __init__(self, layer, phase):
        B, C, OC, bias, self.input_grad = LAYERS[layer]
        self.x, weight, b, self.dy = inputs(layer)
        self.phase = phase
        self.linear = fastnn.Linear(C, OC, bias=bias)
        self.linear.weight.data[...] = weight
        if bias:
            self.linear.bias.data[...] = b
        self.linear.forward(self.x)  # the backward reads the saved input

    def __call__(self):
        if self.phase == "forward":
            return self.linear.forward(self.x)
        return self.linear.backward(self.dy, input_grad=self.input_grad)

    def results(self):
        if self.phase == "forward":
            return {"y": self().copy()}
        for p in self.linear.parameters():
            p.grad.fill(0)
        dx = self()
        out = {"dweight": self.linear.weight.grad.copy()}
        if dx is not None:
            out["dx"] = dx.copy()
        if self.linear.bias is not None:
            out["dbias"] = self.linear.bias.grad.copy()
        return out


class LibraryProducts:
    """The same products with torch.mm or numpy.matmul, into preallocated outputs; the bias
    gradient as a column sum."""

    def __init__(self, layer, phase, impl):
        B, C, OC, bias, self.input_grad = LAYERS[layer]
        x, weight, b, dy = inputs(layer)
        self.phase, self.bias = phase, b is not None
        if impl == "torch":
            self.torch = pytest.importorskip("torch")
            t = self.torch.from_numpy
            self.x, self.w, self.dy = t(x), t(weight), t(dy)
            self.b = t(b) if self.bias else None
            self.y, self.dx = self.torch.empty(B, OC), self.torch.empty(B, C)
            self.dw, self.db = self.torch.empty(OC, C), self.torch.empty(OC)
        else:
            self.torch = None
            self.x, self.w, self.b, self.dy = x, weight, b, dy
            self.y, self.dx = np.empty((B, OC), DTYPE), np.empty((B, C), DTYPE)
            self.dw, self.db = np.empty((OC, C), DTYPE), np.empty(OC, DTYPE)

    def __call__(self):
        if self.torch is not None:
            mm, tr = self.torch.mm, lambda a: a.t()
            if self.phase == "forward":
                if self.bias:
                    return self.torch.addmm(self.b, self.x, self.w.t(), out=self.y)
                return mm(self.x, self.w.t(), out=self.y)
            colsum = lambda: self.torch.sum(self.dy, 0, out=self.db)  # noqa: E731
        else:
            mm, tr = np.matmul, np.transpose
            if self.phase == "forward":
                mm(self.x, self.w.T, out=self.y)
                if self.bias:
                    self.y += self.b
                return self.y
            colsum = lambda: np.sum(self.dy, 0, out=self.db)  # noqa: E731
        if self.input_grad:
            mm(self.dy, self.w, out=self.dx)
        mm(tr(self.dy), self.x, out=self.dw)
        if self.bias:
            colsum()
        return self.dx

    def results(self):
        self()
        arrays = ({"y": self.y} if self.phase == "forward" else
                  {"dweight": self.dw, **({"dx": self.dx} if self.input_grad else {}),
                   **({"dbias": self.db} if self.bias else {})})
        return {k: np.array(v.numpy() if self.torch is not None else v, dtype=DTYPE)
                for k, v in arrays.items()}


def make_step(impl, layer, phase):
    return NativeProducts(layer, phase) if impl == "native" else LibraryProducts(layer, phase, impl)


@functools.cache
def oracle(layer, phase):
    """The products in float64 numpy, for checking every implementation."""
    x, weight, b, dy = (None if a is None else a.astype(np.float64) for a in inputs(layer))
    _, _, _, bias, input_grad = LAYERS[layer]
    if phase == "forward":
        return {"y": x @ weight.T + (b if bias else 0)}
    out = {"dweight": dy.T @ x}
    if input_grad:
        out["dx"] = dy @ weight
    if bias:
        out["dbias"] = dy.sum(0)
    return out


CASES = [
    pytest.param(w, p, t, i, id=f"{w}-{p}-t{t}-{i}")
    for w in LAYERS for p in PHASES for t in THREADS for i in IMPLS
]


@pytest.mark.parametrize("layer, phase, threads, impl", CASES)
def test_product(benchmark, measure, layer, phase, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, layer, phase)
    B, C, OC, bias, input_grad = LAYERS[layer]
    benchmark.group = f"{layer}-{phase}-t{threads}"
    benchmark.extra_info.update(
        workload=layer, shape=[B, C, OC], dtype=np.dtype(DTYPE).name, threads=threads,
        impl=impl, phase=phase, flops=flops(layer, phase), bias=bias, input_grad=input_grad,
        isa=fastnn.get_isa(),
    )
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        got = step.results()
        benchmark.extra_info["rel_err"] = assert_close(got, oracle(layer, phase), TOL,
                                                       f"{impl} vs float64")
        measure(step)


class FmaPeak:
    def __init__(self, threads):
        self.threads = threads

    def __call__(self):
        return _native.fma_peak(PEAK_ITERS, self.threads)


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{t}" for t in THREADS])
def test_fma_peak(benchmark, measure, threads):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    if fastnn.get_isa() not in ("avx512", "avx2"):
        pytest.skip(f"no FMA probe on the {fastnn.get_isa()!r} path")
    step = FmaPeak(threads)
    benchmark.group = f"fma-peak-t{threads}"
    benchmark.extra_info.update(workload="fma-peak", phase="peak", threads=threads,
                                impl="native", flops=step(), isa=fastnn.get_isa())
    measure(step)
