"""Data-parallel training over MPI: what the gradient all-reduce costs, and what 2 ranks buy.

Workload S2 (README) (784-512-512-10 MLP, batch 128, float32, Adam), timed by
bench/distributed_steps.py in separate jobs, since pytest-benchmark runs in one process:
  2 ranks   mpirun -n 2, one thread per rank, batch 128 per rank (global batch 256),
            DataParallel: one in-place Allreduce over the flat float32 gradient buffer (about
            0.67M parameters, 2.7 MB) per step
  1 process 2 threads, batch 128 (S2 itself) and batch 256 (the 2 ranks' global batch);
            and 1 thread, batch 128
Recorded in the benchmark's extra_info: the all-reduce time per step and its fraction of the
2-rank step (time spent in Allreduce, which includes waiting for the slower rank), the
all-reduce alone (back to back, no steps) as a fraction of the 1-thread S2 step, and
samples/s of each. The timed figure of the benchmark itself is only the wall time of
launching the jobs. Skipped without mpirun or mpi4py; with --benchmark-disable
each job runs 3 steps, as a smoke test.

On a 2-core machine two ranks of one thread each use the same cores as one process of two
threads, so the comparison is of parallelism across processes (data parallel) against
parallelism inside the kernels (OpenMP), on the same hardware.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")
TIMEOUT = 600

_missing = [what for what, ok in (("mpirun", shutil.which("mpirun") is not None),
                                  ("mpi4py", importlib.util.find_spec("mpi4py") is not None))
            if not ok]
# CI sets FASTNN_REQUIRE_MPI=1 after installing MPI: there the MPI tests must run, not skip.
REQUIRE_MPI = os.environ.get("FASTNN_REQUIRE_MPI") == "1"


def run(command):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(bool(_missing) and not REQUIRE_MPI, reason=f"needs MPI: {' and '.join(_missing)} not installed "
                    "(pip install 'fastnn[mpi]'; apt-get install openmpi-bin libopenmpi-dev)")
def test_allreduce_cost_and_throughput_S2(benchmark):
    from fastnn import distributed

    steps, warmup = (3, 1) if benchmark.disabled else (200, 20)
    timing = ["--steps", str(steps), "--warmup", str(warmup)]
    python = [sys.executable, SCRIPT, *timing]
    results = {}

    def jobs():
        results["2 ranks"] = run(distributed.local_mpirun(2) + python + ["--threads", "1"])
        results["1 process"] = run(python + ["--single", "--threads", "2"])
        results["1 process, 1 thread"] = run(python + ["--single", "--threads", "1"])
        results["1 process, batch 256"] = run(python + ["--single", "--threads", "2",
                                                       "--batch", "256"])

    benchmark.pedantic(jobs, rounds=1, iterations=1)
    two, one, one256 = results["2 ranks"], results["1 process"], results["1 process, batch 256"]
    one1 = results["1 process, 1 thread"]
    assert two["ranks"] == 2 and 0 < two["allreduce_seconds"] < two["step_seconds"]
    summary = {
        "allreduce_ms_per_step": 1e3 * two["allreduce_seconds"],
        "allreduce_alone_ms": 1e3 * two["allreduce_alone_seconds"],
        "allreduce_fraction_of_2rank_step": two["allreduce_fraction"],
        "allreduce_alone_fraction_of_1thread_S2_step": two["allreduce_alone_seconds"]
        / one1["step_seconds"],
        "step_ms": {k: 1e3 * r["step_seconds"] for k, r in results.items()},
        "samples_per_second": {k: r["samples_per_second"] for k, r in results.items()},
        "speedup_2ranks_vs_1process": two["samples_per_second"] / one["samples_per_second"],
        "speedup_2ranks_vs_1process_batch256": two["samples_per_second"]
        / one256["samples_per_second"],
    }
    benchmark.extra_info.update(summary)
    print(json.dumps(summary, indent=2))
