"""Threads, backends and build information."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastnn
from fastnn import _native
from fastnn._wait_policy import SPIN_COUNT
from fastnn import functional as F
from fastnn.fused import FusedStep
from helpers import train_one_step

CORES = len(os.sched_getaffinity(0))
needs_two_threads = pytest.mark.skipif(
    CORES < 2 or not fastnn.build_info()["openmp"], reason="needs OpenMP and 2 usable cores")


def test_build_info():
    info = fastnn.build_info()
    assert info["version"] == fastnn.__version__
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] == fastnn.get_num_threads() >= 1
    assert "cython_blas" in info["blas"]
    assert "-O3" in info["compile_args"]
    assert ("-fopenmp" in info["compile_args"]) == info["openmp"]
    assert "-march=native" not in info["compile_args"]  # portable unless asked for
    assert info["adaptive_threads"] is True
    assert 1 <= info["threads_in_use"] <= info["num_threads"]


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
    with pytest.raises(TypeError, match="adaptive must be a bool, got str"):
        fastnn.set_num_threads(1, adaptive="no")
    fastnn.set_num_threads(1, adaptive=False)
    assert fastnn.build_info()["adaptive_threads"] is False


def test_default_threads_honour_omp_num_threads():
    code = "import fastnn; print(fastnn.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.strip() == "1"


def blas_threads():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_blas_threads_restored_after_a_kernel(blas_path):
    before = blas_threads()
    x = np.ones((600, 300), np.float32)
    F.linear_forward(x, np.ones((200, 300), np.float32))
    assert blas_threads() == before


@pytest.fixture
def blas_path():
    """Linear on scipy's BLAS, the path that holds the BLAS's threads."""
    saved = fastnn.get_isa()
    fastnn.set_isa("blas")
    yield
    fastnn.set_isa(saved)


def linear_work():
    x, w = np.ones((256, 300), np.float32), np.ones((400, 300), np.float32)
    F.linear_backward(np.ones((256, 400), np.float32), x, w, F.linear_forward(x, w))


@pytest.fixture
def scipy_blas():
    """threadpoolctl's controller of the BLAS fastnn holds, at 2 threads (restored after)."""
    blas = fastnn.runtime._blas
    if blas is None or blas.internal_api != "openblas":
        pytest.skip("the BLAS's threads are not managed here")
    saved = blas.num_threads
    blas.set_num_threads(2)
    yield blas
    blas.set_num_threads(saved)


def test_blas_holds_are_counted(scipy_blas):
    """Two kernels holding the BLAS at once (two Python threads): it stays at one thread until
    the last is done, then comes back to what it was (a saved-and-restored hold gave the
    BLAS back its threads while the second kernel still ran)."""
    _native.blas_hold()
    try:
        assert scipy_blas.num_threads == 1
        _native.blas_hold()
        _native.blas_release()
        assert scipy_blas.num_threads == 1
    finally:
        _native.blas_release()
    assert scipy_blas.num_threads == 2
    _native.blas_release()  # one release too many changes nothing
    _native.blas_hold()
    assert scipy_blas.num_threads == 1
    _native.blas_release()
    assert scipy_blas.num_threads == 2


def test_a_blas_limit_set_during_a_hold_stays(scipy_blas):
    _native.blas_hold()
    scipy_blas.set_num_threads(3)  # someone else's limit, while a kernel runs
    _native.blas_release()
    assert scipy_blas.num_threads == 3


@needs_two_threads
@pytest.mark.parametrize("limit", [1, 2])
def test_threadpoolctl_limits_hold_through_fastnn_work(threads, blas_path, limit):
    fastnn.set_num_threads(2)
    before = blas_threads()
    with threadpool_limits(limits=limit, user_api="blas"):
        inside = blas_threads()
        linear_work()
        assert blas_threads() == inside
        assert set(inside.values()) == {limit}
    assert blas_threads() == before


def test_openmp_wait_policy():
    """fastnn bounds libgomp's spinning unless the user chose a wait policy, and only while
    libgomp loads: the environment fastnn leaves behind is the user's."""
    code = ("import os, fastnn; print(fastnn.build_info()['openmp_wait']); "
            "print('GOMP_SPINCOUNT' in os.environ)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for extra, want in [({}, f"GOMP_SPINCOUNT={SPIN_COUNT} (set by fastnn"),
                        ({"OMP_WAIT_POLICY": "passive"}, "the user's OMP_WAIT_POLICY=passive")]:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, check=True,
                             capture_output=True, text=True, cwd=os.path.dirname(__file__))
        policy, spin_left = out.stdout.splitlines()
        assert policy.startswith(want)
        assert spin_left == "False"


WINDOW_NS = 50_000_000  # more than a decision window (10 ms) of timed regions


def small_parallel_linear():
    """A product that runs on the team, well within a probe's window (2 ms)."""
    F.linear_forward(np.ones((128, 64), np.float32), np.ones((64, 64), np.float32))


@needs_two_threads
def test_adaptive_thread_count_follows_the_parallelism_regions_get(threads):
    fastnn.set_num_threads(2)
    assert _native.threads_in_use() == 2
    # 2-thread regions that kept 1.9 threads busy: stay at 2
    _native.adapt_observe(2, WINDOW_NS, int(1.9 * WINDOW_NS))
    assert _native.threads_in_use() == 2
    # ... that kept 0.8 busy (a thread parked by the scheduler): one thread is as fast
    _native.adapt_observe(2, WINDOW_NS, int(0.8 * WINDOW_NS))
    assert _native.threads_in_use() == 1
    _native.adapt_observe(2, WINDOW_NS, int(0.8 * WINDOW_NS))  # stale: no 2-thread region ran
    assert _native.threads_in_use() == 1
    # a probe that finds the machine still busy: stays at 1
    _native.adapt_probe_now()
    assert _native.threads_in_use() == 2  # the probe window runs at 2
    _native.adapt_observe(2, WINDOW_NS, int(1.0 * WINDOW_NS))
    failed = time.monotonic()
    assert _native.threads_in_use() == 1
    small_parallel_linear()
    if time.monotonic() - failed < 0.09:  # the next probe is not due for 100 ms
        assert _native.threads_in_use() == 1
    # a probe that finds it quiet again: back to 2
    _native.adapt_probe_now()
    _native.adapt_observe(2, WINDOW_NS, int(1.9 * WINDOW_NS))
    assert _native.threads_in_use() == 2
    # a cap of 1 never probes; a pinned count never drops
    fastnn.set_num_threads(1)
    _native.adapt_probe_now()
    small_parallel_linear()
    assert _native.threads_in_use() == 1
    fastnn.set_num_threads(2, adaptive=False)
    _native.adapt_observe(2, WINDOW_NS, int(0.5 * WINDOW_NS))
    assert _native.threads_in_use() == 2


def s2_like_step(replay):
    """A training step (784-512-512-10, BatchNorm1d + ReLU, Adam) of timed regions; returns
    the function taking one step and the parameters."""
    fastnn.manual_seed(3)
    model = fastnn.Sequential(
        fastnn.Linear(784, 512, bias=False), fastnn.BatchNorm1d(512, activation="relu"),
        fastnn.Linear(512, 512, bias=False), fastnn.BatchNorm1d(512, activation="relu"),
        fastnn.Linear(512, 10))
    opt = fastnn.optim.Adam(model.parameters())
    loss_fn = fastnn.CrossEntropyLoss()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    fused = FusedStep(model, loss_fn) if replay else None

    def step():
        opt.zero_grad()
        if fused:
            fused(x, y)
        else:
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
        opt.step()

    return step, model.parameters()


@needs_two_threads
@pytest.mark.parametrize("replay", [False, True], ids=["layers", "replayed"])
def test_results_do_not_change_while_the_thread_count_does(threads, replay):
    """Steps on exactly 2 threads, and steps taken while the thread count changes between
    kernels (another Python thread setting it, the adaptive count dropping and probing), give
    the 1-thread steps' bits."""
    fastnn.set_num_threads(1, adaptive=False)
    step, params = s2_like_step(replay)
    for _ in range(6):
        step()
    want = [p.data.copy() for p in params]

    step, params = s2_like_step(replay)
    for i in range(6):
        if i % 2 == 0:  # a step on exactly 2 threads
            fastnn.set_num_threads(2, adaptive=False)
            step()
            continue
        fastnn.set_num_threads(2)
        stop = threading.Event()

        def change_threads():
            j = 0
            while not stop.is_set():
                j += 1
                if j % 3 == 0:
                    fastnn.set_num_threads(1 + j % 2)
                else:  # what a busy machine would report, then a probe
                    _native.adapt_observe(2, WINDOW_NS, int(0.8 * WINDOW_NS))
                    _native.adapt_probe_now()
                time.sleep(0.0005)

        changer = threading.Thread(target=change_threads)
        changer.start()
        try:
            step()
        finally:
            stop.set()
            changer.join()
    for p, w in zip(params, want):
        assert np.array_equal(p.data, w), p


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


@pytest.mark.skipif(not fastnn.build_info()["openmp"], reason="a serial build warns otherwise")
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
