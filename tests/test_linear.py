"""Linear kernel: native vs the NumPy twin, gradients vs finite differences, threads, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import TOL, assert_close, numerical_grad, on_one_and_two_threads

ACTS = ["none", "relu", "tanh", "sigmoid"]
DTYPES = [np.float32, np.float64]


def make_problem(B, C, OC, dtype, seed=0, bias=True):
    """x ~ N(0, 1); weight and bias ~ U(+-1/sqrt(C)) as Linear initialises them."""
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(max(C, 1))
    x = rng.standard_normal((B, C)).astype(dtype)
    w = rng.uniform(-bound, bound, (OC, C)).astype(dtype)
    b = rng.uniform(-bound, bound, OC).astype(dtype) if bias else None
    dy = rng.standard_normal((B, OC)).astype(dtype)
    return x, w, b, dy


def run_both_ways(x, w, b, dy, act, backend, y_in=None):
    """Forward and backward on one backend; gradients accumulate onto non-zero buffers.

    The backward reads y_in when given: each kernel is compared with its twin on identical
    inputs (near saturation, 1 - y*y magnifies a last-bit difference between the forwards)."""
    with fastnn.use_backend(backend):
        y = F.linear_forward(x, w, b, act)
        dw = np.full_like(w, 0.5)
        db = None if b is None else np.full_like(b, -0.25)
        dx = F.linear_backward(dy, x, w, y if y_in is None else y_in, act, dw, db)
    return y, dx, dw, db


def check_native_matches_reference(B, C, OC, dtype, act, bias=True, seed=0):
    x, w, b, dy = make_problem(B, C, OC, dtype, seed, bias)
    ref = run_both_ways(x, w, b, dy, act, "reference")
    native = run_both_ways(x, w, b, dy, act, "native", y_in=ref[0])
    scales = product_scales(x, w, b, dy, act, ref[0])
    for name, a, r, scale in zip(["y", "dx", "dweight", "dbias"], native, ref, scales):
        if r is None:
            assert a is None
            continue
        assert a.dtype == np.dtype(dtype), name
        assert_close_to_scale(a, r, scale, dtype, name)


def product_scales(x, w, b, dy, act, y):
    """The magnitudes the outputs' rounding errors scale with: a sum of products rounds at
    the size of its terms, |a| @ |b|, not at the size of a result they cancel to (the classic
    bound for a matrix product). Two correct float32 products summed in different orders
    differ by about eps * (|a| @ |b|); relative to a cancelled result that can be far more."""
    x, w, dy = (np.abs(a).astype(np.float64) for a in (x, w, dy))
    y = y.astype(np.float64)
    dy = dy * {"none": 1, "relu": y > 0, "tanh": 1 - y * y, "sigmoid": y * (1 - y)}[act]  # |dz|
    y_scale = x @ w.T + (0 if b is None else np.abs(b))
    dw_scale = dy.T @ x + 0.5   # dweight starts at 0.5 (run_both_ways)
    db_scale = None if b is None else dy.sum(0) + 0.25
    return y_scale, dy @ w, dw_scale, db_scale


def assert_close_to_scale(actual, expected, scale, dtype, name):
    """max|actual - expected| <= TOL * max(scale), TOL the dtype's normwise tolerance."""
    if expected.size == 0:
        return
    err = float(np.abs(actual.astype(np.float64) - expected).max() / max(scale.max(), 1e-300))
    assert err <= TOL[np.dtype(dtype)], f"{name}: error {err:.3e} of |a| @ |b| ({dtype})"


@settings(max_examples=80, deadline=None)
@given(
    B=st.integers(0, 40), C=st.integers(1, 70), OC=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES), act=st.sampled_from(ACTS), bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_small_shapes(B, C, OC, dtype, act, bias, seed):
    check_native_matches_reference(B, C, OC, dtype, act, bias, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 300, 7), (257, 129, 65), (300, 97, 513),
                                   (64, 300, 400)])
def test_matches_reference_blocked_shapes(shape, act, dtype):
    # the larger shapes are split into several blocks and run on the whole team
    check_native_matches_reference(*shape, dtype, act)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("act", ACTS)
def test_gradients_match_finite_differences(act, backend):
    x, w, b, _ = make_problem(5, 4, 3, np.float64, seed=1)
    g = np.random.default_rng(2).standard_normal((5, 3))  # loss = sum(g * y)
    with fastnn.use_backend(backend):
        def loss():
            return float(np.sum(g * F.linear_forward(x, w, b, act)))

        y = F.linear_forward(x, w, b, act)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = F.linear_backward(g, x, w, y, act, dw, db)
        for analytic, param in [(dx, x), (dw, w), (db, b)]:
            numeric = numerical_grad(loss, param)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


# (301, 203, 157) splits the batch rows for forward and dx, the in-features for dweight;
# (64, 300, 400) splits the out-features for forward and dweight, the in-features for dx.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(301, 203, 157), (64, 300, 400)])
def test_one_and_two_threads_bitwise_equal(shape, act, dtype, threads):
    x, w, b, dy = make_problem(*shape, dtype, seed=3)
    results = on_one_and_two_threads(lambda: run_both_ways(x, w, b, dy, act, "native"))
    for a, b_ in zip(*results):
        assert np.array_equal(a, b_), "results differ between 1 and 2 threads"


def test_out_is_written_and_returned():
    x, w, b, _ = make_problem(6, 5, 4, np.float32)
    out = np.empty((6, 4), np.float32)
    y = F.linear_forward(x, w, b, "relu", out=out)
    assert y is out
    assert_close(out, np.maximum(x @ w.T + b, 0), np.float32)


def test_non_contiguous_inputs_give_the_right_answer():
    x, w, b, dy = make_problem(8, 12, 6, np.float64)
    x_strided = np.repeat(x, 2, axis=1)[:, ::2]  # same values, not contiguous
    w_fortran = np.asfortranarray(w)
    b_strided = np.repeat(b, 2)[::2]
    dy_transposed = np.ascontiguousarray(dy.T).T
    assert not x_strided.flags.c_contiguous and not w_fortran.flags.c_contiguous
    y = F.linear_forward(x_strided, w_fortran, b_strided, "tanh")
    assert_close(y, np.tanh(x @ w.T + b))
    dw = np.zeros_like(w)
    dx = F.linear_backward(dy_transposed, x_strided, w_fortran, y, "tanh", dw)
    dz = dy * (1 - y * y)
    assert_close(dx, dz @ w)
    assert_close(dw, dz.T @ x)


@pytest.mark.parametrize("act", ACTS)
def test_nan_propagates_to_its_row_only(act):
    x, w, b, _ = make_problem(40, 300, 50, np.float32)  # big enough to use two blocks
    x[7, 3] = np.nan
    y = F.linear_forward(x, w, b, act)
    assert np.isnan(y[7]).all()
    assert np.isfinite(np.delete(y, 7, axis=0)).all()


def test_empty_batch():
    x, w, b, _ = make_problem(0, 5, 3, np.float32)
    y = F.linear_forward(x, w, b, "relu")
    assert y.shape == (0, 3)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = F.linear_backward(np.zeros((0, 3), np.float32), x, w, y, "relu", dw, db)
    assert dx.shape == (0, 5) and not dw.any() and not db.any()
    layer = fastnn.Linear(5, 3)
    assert layer(np.zeros((0, 5), np.float32)).shape == (0, 3)
    assert layer.backward(np.zeros((0, 3), np.float32)).shape == (0, 5)


# ---- bad input: a clear exception naming the argument, never a crash ----

def test_functional_rejects_bad_arguments():
    x, w, b, dy = make_problem(4, 3, 2, np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 3\).*got \(4, 5\)"):
        F.linear_forward(np.zeros((4, 5), np.float32), w, b)
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 1-d"):
        F.linear_forward(x[0], w, b)
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 3-d"):
        F.linear_forward(x[None], w, b)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.linear_forward(np.ones((4, 3), np.int64), w, b)
    with pytest.raises(TypeError, match=r"weight: expected dtype float32 \(as the input\), got float64"):
        F.linear_forward(x, w.astype(np.float64), b)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\), got \(3,\)"):
        F.linear_forward(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="activation: expected one of"):
        F.linear_forward(x, w, b, "softplus")
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 2\), got \(2, 4\)"):
        F.linear_forward(x, w, b, out=np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        F.linear_forward(x, w, b, out=np.empty((2, 4), np.float32).T)
    with pytest.raises(TypeError, match="out: expected dtype float32, got float64"):
        F.linear_forward(x, w, b, out=np.empty((4, 2), np.float64))
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        x_wide = np.zeros((4, 3), np.float32)
        F.linear_forward(x_wide, np.zeros((3, 3), np.float32), out=x_wide)
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2\), got \(4, 3\)"):
        F.linear_backward(np.zeros((4, 3), np.float32), x, w)
    with pytest.raises(ValueError, match="y: the forward output is needed"):
        F.linear_backward(dy, x, w, None, "relu")
    with pytest.raises(ValueError, match=r"dweight: expected shape \(2, 3\), got \(3, 2\)"):
        F.linear_backward(dy, x, w, dweight=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="dweight: expected a writeable array"):
        frozen = np.zeros_like(w)
        frozen.flags.writeable = False
        F.linear_backward(dy, x, w, dweight=frozen)


def test_layer_rejects_bad_arguments():
    layer = fastnn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear.backward: called before forward"):
        layer.backward(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 3\), got \(4, 5\)"):
        layer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 1-d"):
        layer(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 3-d"):
        layer(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(as the input\), got float64"):
        layer(np.zeros((4, 3)))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(as the input\), got int32"):
        layer(np.zeros((4, 3), np.int32))
    layer(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2\), got \(5, 2\)"):
        layer.backward(np.zeros((5, 2), np.float32))
    for bad in [float("nan"), float("inf"), 2.5, "3", None]:
        with pytest.raises(TypeError, match="in_features: expected a positive int"):
            fastnn.Linear(bad, 2)
    for bad in [0, -1]:
        with pytest.raises(ValueError, match=f"out_features: expected a positive int, got {bad}"):
            fastnn.Linear(3, bad)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int64"):
        fastnn.Linear(3, 2, dtype=np.int64)
    with pytest.raises(ValueError, match="activation: expected one of"):
        fastnn.Linear(3, 2, activation="swish")


# ---- the layer ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_layer(dtype):
    fastnn.manual_seed(0)
    layer = fastnn.Linear(6, 4, dtype=dtype, activation="relu")
    assert layer.weight.data.shape == (4, 6) and layer.bias.data.shape == (4,)
    assert layer.weight.data.dtype == dtype and layer.weight.grad.dtype == dtype
    assert np.abs(layer.weight.data).max() <= 1 / np.sqrt(6)
    assert layer.parameters() == [layer.weight, layer.bias]
    x, _, _, dy = make_problem(5, 6, 4, dtype)
    y = layer(x)
    assert_close(y, np.maximum(x @ layer.weight.data.T + layer.bias.data, 0))
    dx = layer.backward(dy)
    dz = dy * (y > 0)
    assert_close(dx, dz @ layer.weight.data)
    assert_close(layer.weight.grad, dz.T @ x)
    layer.backward(dy)  # gradients accumulate
    assert_close(layer.weight.grad, 2 * (dz.T @ x))
    assert_close(layer.bias.grad, 2 * dz.sum(0))
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_linear_layer_reuses_its_buffers():
    layer = fastnn.Linear(6, 4, activation="tanh")
    x = np.ones((5, 6), np.float32)
    y1, dx1 = layer(x), layer.backward(np.ones((5, 4), np.float32))
    y2, dx2 = layer(x), layer.backward(np.ones((5, 4), np.float32))
    assert y1 is y2 and dx1 is dx2
    assert layer(np.ones((3, 6), np.float32)).shape == (3, 4)  # a new batch shape


def test_linear_without_bias_and_seeded_construction():
    fastnn.manual_seed(42)
    a = fastnn.Linear(3, 2, bias=False)
    fastnn.manual_seed(42)
    b = fastnn.Linear(3, 2, bias=False)
    assert a.bias is None and a.parameters() == [a.weight]
    assert np.array_equal(a.weight.data, b.weight.data)
    x = np.ones((2, 3), np.float32)
    assert_close(a(x), x @ a.weight.data.T)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        fastnn.manual_seed(-1)


@pytest.mark.parametrize("layer_type, f, df", [
    (fastnn.ReLU, lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    (fastnn.Tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    (fastnn.Sigmoid, lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2),
])
def test_activation_layers(layer_type, f, df):
    z = np.random.default_rng(0).standard_normal((7, 5))
    dy = np.random.default_rng(1).standard_normal((7, 5))
    layer = layer_type()
    with pytest.raises(ValueError, match="called before forward"):
        layer.backward(dy)
    np.testing.assert_allclose(layer(z), f(z), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), dy * df(z), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"dy: expected shape \(7, 5\), got \(5, 7\)"):
        layer.backward(dy.T)
