"""Threads, backends and build information."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastnn
from fastnn import functional as F
from helpers import train_one_step


def test_build_info():
    info = fastnn.build_info()
    assert info["version"] == fastnn.__version__
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] == fastnn.get_num_threads() >= 1
    assert "cython_blas" in info["blas"]
    assert "-O3" in info["compile_args"]
    assert ("-fopenmp" in info["compile_args"]) == info["openmp"]
    assert "-march=native" not in info["compile_args"]  # portable unless asked for


def test_set_num_threads(threads):
    cores = len(os.sched_getaffinity(0))
    fastnn.set_num_threads(1)
    assert fastnn.get_num_threads() == 1
    fastnn.set_num_threads(cores)
    assert fastnn.get_num_threads() == (cores if fastnn.build_info()["openmp"] else 1)
    for bad in [0, -1, cores + 1]:
        with pytest.raises(ValueError, match=rf"n must be in \[1, {cores}\].*got {bad}"):
            fastnn.set_num_threads(bad)
    for bad in [1.5, "2", True]:
        with pytest.raises(TypeError, match="n must be an int"):
            fastnn.set_num_threads(bad)


def test_default_threads_honour_omp_num_threads():
    code = "import fastnn; print(fastnn.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.strip() == "1"


def test_blas_threads_restored_after_a_kernel():
    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    x = np.ones((600, 300), np.float32)
    F.linear_forward(x, np.ones((200, 300), np.float32))
    after = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    assert before == after


def test_backend_switching():
    assert fastnn.get_backend() == "native"
    fastnn.set_backend("reference")
    assert fastnn.get_backend() == "reference"
    fastnn.set_backend("native")
    with pytest.raises(ValueError, match="name must be one of"):
        fastnn.set_backend("cuda")
    with pytest.raises(RuntimeError):
        with fastnn.use_backend("reference"):
            assert fastnn.get_backend() == "reference"
            raise RuntimeError
    assert fastnn.get_backend() == "native"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_worker_processes_after_two_thread_kernels(method, threads):
    """A process that ran 2-thread kernels starts workers that train a step each, on every
    start method; a forked child (whose OpenMP threads did not come along) runs on one thread
    and says why, instead of hanging in its first parallel region."""
    import multiprocessing

    fastnn.set_num_threads(2)
    expected = [train_one_step(seed)[0] for seed in (1, 2)]  # 2-thread regions in the parent
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map_async(train_one_step, (1, 2)).get(timeout=120)
    for (loss, n, because), want in zip(results, expected):
        assert loss == want  # results do not depend on the thread count
        if method == "fork":
            assert n == 1 and "child of a fork" in because
        else:
            assert because is None


def test_set_num_threads_in_a_forked_child_warns_and_stays_at_one(threads):
    fastnn.set_num_threads(2)
    F.linear_forward(np.ones((600, 300), np.float32), np.ones((200, 300), np.float32))
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never raise out of the test
        code = 1
        try:
            x, w = np.ones((600, 300), np.float32), np.ones((200, 300), np.float32)
            y = F.linear_forward(x, w)  # the first parallel region is where it hung
            with pytest.warns(UserWarning, match="child of a fork"):
                fastnn.set_num_threads(2)
            same = (y == 300).all() and (F.linear_forward(x, w) == y).all()
            code = 0 if fastnn.get_num_threads() == 1 and same else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung")
