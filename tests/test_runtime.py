"""Threads, backends and build information."""
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastnn
from fastnn import functional as F


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
