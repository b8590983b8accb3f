"""Shared pieces of the benchmark suites: thread and backend settings, the once-per-session
oracle results, the timing helper, the correctness check, and the extra facts (fastnn build,
library versions, the command) recorded in the JSON output.

Run the suites on their own: `pytest bench/ --benchmark-only` to measure, or
`pytest bench/ --benchmark-disable` as a fast smoke test (each benchmark still checks its
results once, then runs its step a single time).
"""
import contextlib
import functools
import math
import os
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnn

# Per benchmark: time spent in measured rounds (seconds), and the bounds on the round count.
BUDGET_SECONDS = 1.5
MIN_ROUNDS = 5
MAX_ROUNDS = 1000
# A round repeats the step until it lasts at least this long, so the timer's resolution and
# the per-call overhead of the harness stay small next to what is measured.
MIN_ROUND_SECONDS = 1e-3
# Warm up for about this long (and at least one round) before measuring.
WARMUP_SECONDS = 0.2
# Idle time before a benchmark starts: OpenMP and OpenBLAS threads keep spinning for a while
# after their last parallel region, and a previous benchmark's spinning pool would steal a
# core from this one's.
SETTLE_SECONDS = 0.1


def cores():
    """The usable cores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def fastnn_threads(n, adaptive=True):
    previous = fastnn.get_num_threads(), fastnn.build_info()["adaptive_threads"]
    fastnn.set_num_threads(n, adaptive=adaptive)
    try:
        yield
    finally:
        fastnn.set_num_threads(previous[0], adaptive=previous[1])


@contextlib.contextmanager
def torch_threads(torch, n):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def setting(impl, threads, stack, step, no_grad=False, adaptive=True):
    """Enter, on `stack`, what `impl` runs under: thread counts and, for fastnn, the backend
    ("kernel", a bare kernel call, and "layers", plain layer calls, run natively; "numpy" is
    numpy alone, its BLAS limited); no_grad: torch without an autograd graph, as for
    inference; adaptive: fastnn's thread count adapts to the load (its default) or is pinned."""
    if impl == "torch":
        stack.enter_context(torch_threads(step.torch, threads))
        if no_grad:
            stack.enter_context(step.torch.no_grad())
    elif impl == "numpy":
        stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
    else:
        backend = "native" if impl in ("kernel", "layers") else impl
        stack.enter_context(fastnn.use_backend(backend))
        stack.enter_context(fastnn_threads(threads, adaptive))
        # The reference runs on numpy's BLAS; native holds scipy's BLAS at one thread itself.
        stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))


@functools.cache
def results_once(make_step, impl, *key):
    """make_step(impl, *key).results() at 2 threads (or the cores there are), computed once per
    session: the oracle a suite's benchmarks check against."""
    step = make_step(impl, *key)
    with contextlib.ExitStack() as stack:
        setting(impl, min(2, cores()), stack, step)
        return step.results()


def rel_err(a, r):
    """Normwise relative error max|a - r| / max|r|, computed in float64."""
    a = np.asarray(a, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return float(np.max(np.abs(a - r)) / max(float(np.max(np.abs(r))), np.finfo(np.float64).tiny))


def assert_close(results, expected, tol, label):
    """Every array in `results` within normwise relative error `tol` of `expected`; returns the
    largest error seen."""
    assert results.keys() == expected.keys(), (label, sorted(results), sorted(expected))
    worst = 0.0
    for name, r in expected.items():
        err = rel_err(results[name], r)
        assert err <= tol, f"{label}: {name} normwise relative error {err:.3g} > {tol:g}"
        worst = max(worst, err)
    return worst


@pytest.fixture
def measure(benchmark):
    """measure(step): time the no-argument callable `step` with benchmark.pedantic.

    The round count and the iterations per round are chosen from a short timing of `step`
    itself, so that tiny and large workloads both get a sensible number of rounds within
    BUDGET_SECONDS. With --benchmark-disable, `step` runs once and nothing is timed.
    """

    def run(step):
        if benchmark.disabled:
            return benchmark.pedantic(step)
        time.sleep(SETTLE_SECONDS)
        step()  # first touch of the buffers, thread pool start-up
        n, start = 0, time.perf_counter()
        while True:
            step()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= 0.05 or n >= 1000:
                break
        per_call = elapsed / n
        iterations = max(1, math.ceil(MIN_ROUND_SECONDS / per_call))
        per_round = per_call * iterations
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_SECONDS / per_round)))
        warmup = max(1, math.ceil(WARMUP_SECONDS / per_round))
        return benchmark.pedantic(step, rounds=rounds, iterations=iterations,
                                  warmup_rounds=warmup)

    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record what was measured with: the fastnn build, library versions, the command."""
    import scipy
    import threadpoolctl

    versions = {"python": sys.version.split()[0], "numpy": np.__version__,
                "scipy": scipy.__version__, "threadpoolctl": threadpoolctl.__version__}
    # Only report torch if a benchmark loaded it; importing it here would cost seconds.
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    output_json["fastnn"] = {
        "build_info": fastnn.build_info(),
        "versions": versions,
        "command": " ".join(["pytest", *config.invocation_params.args]),
    }
