"""Optimizer step benchmarks: workloads O1..O3 (README) (Adam, and SGD with momentum 0.9,
over 10k, 1M and 16M float32 parameters).

For each workload, phase ("adam" or "sgd") and thread count (1, 2), three implementations of
one optimizer step over one Parameter of n elements (its gradient fixed, all state allocated
by the first step) run side by side in one benchmark group:
  native     fastnn.optim.Adam / SGD on the C/OpenMP kernels (fastnn.set_num_threads)
  reference  the same optimizer under fastnn.use_backend("reference") (the NumPy twin)
  torch      torch.optim.Adam / SGD with fused=True where the CPU build supports it, else
             foreach=True (extra_info["torch_variant"] says which; torch.set_num_threads)
At O1 (10k) a fourth entry, impl "kernel", times the bare kernel call (fastnn._native, no
argument checks, no Python optimizer logic): the gap between it and "native" is the cost of
the step's Python layer.

The step is memory-bound: "bytes" in extra_info is the traffic of one fused pass. Adam reads
p, g, m, v and writes p, m, v: 7 * 4 = 28 bytes per float32 parameter; SGD with momentum reads
p, g, buf and writes p, buf: 20 bytes. bench/report.py divides it by the best time; compare
the rate with the STREAM triad of bench/test_bench_batchnorm.py.

Each benchmark first checks a few steps from a fresh state against another implementation
(the reference against native, everything else against the reference): the parameters and
the state (Adam's exp_avg and exp_avg_sq, SGD's momentum buffer), float32 normwise relative
error 1e-5. `pytest bench/ --benchmark-disable` still checks numbers.
"""
import contextlib
import functools

import numpy as np
import pytest

from fastnn import Parameter, _native, optim

from .conftest import assert_close, cores, results_once, setting

WORKLOADS = {"O1": 10_000, "O2": 1_000_000, "O3": 16_000_000}  # id: parameters
PHASES = ("adam", "sgd")
IMPLS = ("native", "reference", "torch")
THREADS = (1, 2)
DTYPE = np.float32
LR, BETAS, EPS, MOMENTUM = 1e-3, (0.9, 0.999), 1e-8, 0.9
BYTES_PER_PARAM = {"adam": 7 * 4, "sgd": 5 * 4}
# float32 normwise relative error allowed between two implementations (as in tests/).
TOL = 1e-5
CHECK_STEPS = 3


def traffic(workload, phase):
    return BYTES_PER_PARAM[phase] * WORKLOADS[workload]


@functools.cache
def inputs(workload):
    """Initial parameters ~ N(0, 1) and the gradient ~ N(0, 1); fixed seed per workload."""
    n = WORKLOADS[workload]
    rng = np.random.default_rng(300 + list(WORKLOADS).index(workload))
    return rng.standard_normal(n, dtype=DTYPE), rng.standard_normal(n, dtype=DTYPE)


def state_of(state, p, phase):
    """Copies of the parameters and the state buffers compared between implementations."""
    keys = ("exp_avg", "exp_avg_sq") if phase == "adam" else ("momentum_buffer",)
    return {"p": np.array(p), **{k: np.array(state[k]) for k in keys}}


class FastnnStep:
    """fastnn.optim over one Parameter; the backend is the one in force when it is called."""

    def __init__(self, workload, phase):
        self.workload, self.phase = workload, phase
        self.reset()

    def reset(self):
        p0, g = inputs(self.workload)
        self.param = Parameter(p0.copy())
        self.param.grad[...] = g
        if self.phase == "adam":
            self.opt = optim.Adam([self.param], lr=LR, betas=BETAS, eps=EPS)
        else:
            self.opt = optim.SGD([self.param], lr=LR, momentum=MOMENTUM)

    def __call__(self):
        self.opt.step()

    def results(self):
        self.reset()
        for _ in range(CHECK_STEPS):
            self()
        return state_of(self.opt.state_dict()["state"][0][0], self.param.data, self.phase)


class KernelStep(FastnnStep):
    """The bare native kernel on the optimizer's flat buffers (after one optimizer step has
    created the state), with the step count frozen: the arithmetic without the Python layer."""

    def reset(self):
        super().reset()
        self.opt.step()
        arena, state = self.opt._arenas[0][0], self.opt._state[0][0]
        p, g = arena.data, arena.grad
        if self.phase == "adam":
            m, v = state["exp_avg"], state["exp_avg_sq"]
            b1, b2 = BETAS
            self.call = _native.Kernel("adam_step", (p, m, v, None, g, LR, b1, b2, EPS, 0.0,
                                                     0.0, False, 1)).run
        else:
            buf = state["momentum_buffer"]
            self.call = _native.Kernel("sgd_step", (p, buf, g, LR, MOMENTUM, 0.0, 0.0, 0.0,
                                                    False, False)).run

    def __call__(self):
        self.call()


class TorchStep:
    """torch.optim on one float32 tensor of n elements; the fused CPU kernel if available."""

    def __init__(self, workload, phase):
        self.torch = pytest.importorskip("torch")
        self.workload, self.phase = workload, phase
        self.variant = "fused"
        try:
            self.reset()
        except (RuntimeError, ValueError, TypeError):
            self.variant = "foreach"
            self.reset()

    def reset(self):
        torch = self.torch
        p0, g = inputs(self.workload)
        self.param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        self.param.grad = torch.from_numpy(g.copy())
        kw = {self.variant: True}
        if self.phase == "adam":
            self.opt = torch.optim.Adam([self.param], lr=LR, betas=BETAS, eps=EPS, **kw)
        else:
            self.opt = torch.optim.SGD([self.param], lr=LR, momentum=MOMENTUM, **kw)
        self.opt.step()  # fails here when the variant is unsupported
        self.param.data.copy_(torch.from_numpy(p0))
        self.opt.state.clear()

    def __call__(self):
        self.opt.step()

    def results(self):
        self.reset()
        for _ in range(CHECK_STEPS):
            self()
        state = {k: v.numpy() for k, v in self.opt.state[self.param].items()
                 if k != "step"}
        return state_of(state, self.param.detach().numpy(), self.phase)


def make_step(impl, workload, phase):
    if impl == "torch":
        return TorchStep(workload, phase)
    return (KernelStep if impl == "kernel" else FastnnStep)(workload, phase)


CASES = [
    pytest.param(w, ph, t, i, id=f"{w}-{ph}-t{t}-{i}")
    for w in WORKLOADS for ph in PHASES for t in THREADS for i in IMPLS
] + [pytest.param("O1", ph, 1, "kernel", id=f"O1-{ph}-t1-kernel") for ph in PHASES]


@pytest.mark.parametrize("workload, phase, threads, impl", CASES)
def test_optim_step(benchmark, measure, workload, phase, threads, impl):
    if threads > cores():
        pytest.skip(f"{threads} threads but {cores()} usable cores")
    step = make_step(impl, workload, phase)
    n = WORKLOADS[workload]
    benchmark.group = f"{workload}-{phase}-t{threads}"
    benchmark.extra_info.update(
        workload=workload, n=n, shape=[n], dtype=np.dtype(DTYPE).name, threads=threads,
        impl=impl, phase=phase, bytes=traffic(workload, phase),
    )
    if impl == "torch":
        benchmark.extra_info["torch_variant"] = step.variant
    if impl != "kernel":  # the kernel's numbers are native's, one step later
        oracle = "native" if impl == "reference" else "reference"
        with contextlib.ExitStack() as stack:
            setting(impl, threads, stack, step)
            got = step.results()
        want = results_once(make_step, oracle, workload, phase)
        benchmark.extra_info["rel_err"] = assert_close(got, want, TOL, f"{impl} vs {oracle}")
        step.reset()
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step)
        measure(step)
