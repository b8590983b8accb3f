"""Numerical comparison helpers for the tests."""
import numpy as np

import fastnn

# Normwise relative tolerance of native vs reference, per dtype: a kernel matches its NumPy
# twin to ~1e-5 in float32 and ~1e-12 in float64.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def rel_error(actual, expected):
    """max|actual - expected| / max|expected| (0 for empty arrays)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1))


def assert_close(actual, expected, dtype=None):
    dtype = np.dtype(dtype or np.asarray(expected).dtype)
    err = rel_error(actual, expected)
    assert err <= TOL[dtype], f"relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def on_one_and_two_threads(run):
    """[run() with 1 thread, run() with 2]: the thread count is left at 2, so a test calling
    this takes the `threads` fixture, which restores it."""
    results = []
    for n in (1, 2):
        fastnn.set_num_threads(n)
        results.append(run())
    return results


def train_one_step(seed):
    """One small training step (Linear, BatchNorm1d + ReLU, Linear; Adam) from a seeded start:
    (loss, threads used, build_info's one_thread_because). Lives here, not in a test module,
    so that spawned workers can import it."""
    fastnn.manual_seed(seed)
    model = fastnn.Sequential(fastnn.Linear(64, 128, bias=False),
                              fastnn.BatchNorm1d(128, activation="relu"), fastnn.Linear(128, 10))
    opt = fastnn.optim.Adam(model.parameters())
    x = np.random.default_rng(seed).standard_normal((256, 64)).astype(np.float32)
    y = np.arange(256) % 10
    loss_fn = fastnn.CrossEntropyLoss()
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    return loss, fastnn.get_num_threads(), fastnn.build_info()["one_thread_because"]
