"""The S2 training step on a busy machine: beside one busy-loop process, and quiet.

Users train on laptops and shared servers where something else runs. With one process
spinning beside it on the 2-core machine, a 2-thread team gets a thread parked by the
scheduler, and the other waits for it at every barrier. fastnn's default thread count adapts
(README, Threads): it notices and runs on fewer threads while the load lasts. This suite
measures that, side by side, at load 0 (quiet) and load 1 (one busy loop, a process the
benchmark starts before and stops after each measurement):

  layers         the S2 step through the plain layer calls (bench/test_bench_steps.py)
  native         the same step replayed by FusedStep
  torch          the same model in torch eager mode
each at 1 thread and at 2: fastnn's 2-thread cases run at its default (a cap of 2 that
adapts) and pinned at exactly 2 (set_num_threads(2, adaptive=False), what the adaptation
saves).

Under load the rounds' times spread widely, so the report uses the median round here.
"""
import contextlib
import subprocess
import sys
import time

import pytest

import fastnn

from .conftest import cores, setting
from .test_bench_steps import make_step

WORKLOAD = "S2"
PHASE = "busy-step"
# (impl, threads, adaptive)
CASES = [("layers", 1, False), ("layers", 2, True), ("layers", 2, False),
         ("native", 1, False), ("native", 2, True), ("native", 2, False),
         ("torch", 1, False), ("torch", 2, False)]
# The busy process gets this long to be running before the benchmark starts.
BUSY_START_SECONDS = 0.3


@contextlib.contextmanager
def busy_loop(n):
    """n processes spinning in a pure-Python loop for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if procs:
            time.sleep(BUSY_START_SECONDS)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def case_name(impl, threads, adaptive):
    """The impl as reported: "-pinned" added to fastnn's pinned 2-thread cases."""
    return impl if adaptive or threads == 1 or impl == "torch" else f"{impl}-pinned"


@pytest.mark.parametrize("load", [0, 1], ids=["quiet", "busy"])
@pytest.mark.parametrize("impl, threads, adaptive", CASES,
                         ids=[f"{case_name(*case)}-t{case[1]}" for case in CASES])
def test_busy_step(benchmark, measure, load, impl, threads, adaptive):
    if threads > cores() or cores() < 2:
        pytest.skip(f"needs 2 usable cores ({cores()} here)")
    name = case_name(impl, threads, adaptive)
    step = make_step(impl, WORKLOAD)
    benchmark.group = f"{WORKLOAD}-load{load}"
    benchmark.extra_info.update(workload=WORKLOAD, phase=PHASE, threads=threads, impl=name,
                                load=load, adaptive=adaptive and impl != "torch")
    with contextlib.ExitStack() as stack:
        setting(impl, threads, stack, step, adaptive=adaptive)
        stack.enter_context(busy_loop(load))
        measure(step)
        if impl != "torch":
            benchmark.extra_info["threads_in_use_after"] = fastnn.build_info()["threads_in_use"]
