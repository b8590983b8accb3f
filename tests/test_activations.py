"""Elementwise activations and softmax: native vs the NumPy twin, gradients vs finite
differences, threads, softmax properties, NaN, the layer classes, and PyTorch."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import assert_close, numerical_grad, on_one_and_two_threads

# (kind, negative_slope): every elementwise kind except the identity
KINDS = [("relu", 0.01), ("tanh", 0.01), ("sigmoid", 0.01), ("leaky_relu", 0.2),
         ("gelu", 0.01), ("gelu_tanh", 0.01)]
KIND_IDS = [k for k, _ in KINDS]
DTYPES = [np.float32, np.float64]
BACKENDS = ["reference", "native"]
# big enough to be split into several chunks and run on the whole team (>= 2**15 elements)
LARGE_SHAPES = [(40_001,), (200, 250), (7, 61, 97)]


def make_data(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = np.asarray(scale * rng.standard_normal(shape), dtype)
    dy = np.asarray(rng.standard_normal(shape), dtype)
    return x, dy


def well_conditioned_data(shape, dtype, seed):
    """Inputs for comparing tiny arrays, where the normwise error is the elementwise one.

    x ~ U([-2.5, -1] u [-0.5, 4]) avoids the two places where an elementwise relative error
    is ill-conditioned: GELU's tail below -2.5 (1 + erf(x / sqrt 2) cancels; see
    test_gelu_float32_negative_tail) and the root of GELU's derivative at x = -0.7518."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 5, shape)
    x = np.where(u < 1.5, u - 2.5, u - 1.0)
    dy = rng.standard_normal(shape)
    return np.asarray(x, dtype), np.asarray(dy, dtype)


def softmax_data(shape, dtype, seed):
    """Logits ~ N(0, 1) and an upstream gradient whose entries alternate in sign along each
    row with magnitude >= 1. softmax's backward cancels in dy - sum(dy * y) when a row's dy is
    nearly constant or its softmax saturates: then max|dx| << max|dy| and float32 rounding of
    the sum (in either implementation) is no longer small next to dx."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    sign = np.where(np.arange(shape[-1]) % 2 == 0, 1.0, -1.0)
    dy = sign * (1 + np.abs(rng.standard_normal(shape)))
    return np.asarray(x, dtype), np.asarray(dy, dtype)


def act_both(x, dy, kind, slope, backend, y_in=None):
    """Forward, then backward on one backend; the backward reads y_in when given, so that both
    backends' backwards see identical inputs."""
    with fastnn.use_backend(backend):
        y = F.activation_forward(x, kind, slope)
        dx = F.activation_backward(dy, x, y if y_in is None else y_in, kind, slope)
    return y, dx


def check_activation_matches_reference(x, dy, kind, slope):
    ref_y, ref_dx = act_both(x, dy, kind, slope, "reference")
    y, dx = act_both(x, dy, kind, slope, "native", y_in=ref_y)
    for name, a, r in [("y", y, ref_y), ("dx", dx, ref_dx)]:
        assert a.shape == x.shape and a.dtype == x.dtype, name
        assert_close(a, r, x.dtype)


def softmax_both(x, dy, backend, y_in=None):
    with fastnn.use_backend(backend):
        y = F.softmax_forward(x)
        dx = F.softmax_backward(dy, y if y_in is None else y_in)
    return y, dx


def check_softmax_matches_reference(x, dy):
    ref_y, ref_dx = softmax_both(x, dy, "reference")
    y, dx = softmax_both(x, dy, "native", y_in=ref_y)
    for name, a, r in [("y", y, ref_y), ("dx", dx, ref_dx)]:
        assert a.shape == x.shape and a.dtype == x.dtype, name
        assert_close(a, r, x.dtype)


# ---- native vs reference ----

@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=4).map(tuple),
       kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_activation_matches_reference_random_shapes(shape, kind, dtype, seed):
    x, dy = well_conditioned_data(shape, dtype, seed)
    check_activation_matches_reference(x, dy, *kind)


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.lists(st.integers(0, 6), min_size=0, max_size=3),
                       st.integers(1, 40)).map(lambda t: tuple(t[0]) + (t[1],)),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_softmax_matches_reference_random_shapes(shape, dtype, seed):
    x, dy = softmax_data(shape, dtype, seed)
    check_softmax_matches_reference(x, dy)




def test_activation_zero_dim_input():
    x, dy = make_data((), np.float64, seed=1)
    assert x.shape == ()
    for backend in BACKENDS:
        for kind in KINDS:
            with fastnn.use_backend(backend):
                y = F.activation_forward(x, *kind)
                assert y.shape == (), (backend, kind)
                dx = F.activation_backward(dy, x, y, *kind)
            assert dx.shape == (), (backend, kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_activation_matches_reference_large(shape, kind, dtype):
    x, dy = make_data(shape, dtype, seed=1)
    check_activation_matches_reference(x, dy, *kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(41, 1000), (3, 7, 2000), (40_000, 1), (1, 50_000)])
def test_softmax_matches_reference_large(shape, dtype):
    x, dy = softmax_data(shape, dtype, seed=2)
    check_softmax_matches_reference(x, dy)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # reference x**3
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_activation_extreme_inputs_match_reference(kind, dtype):
    # saturation, overflow of exp and x**3, subnormals, signed zeros: no NaN, same results.
    # (Beyond |x| ~ 1e19 in float32, gelu_tanh's derivative is 0 * inf = NaN, as in torch.)
    x = np.array([-1e15, -1e4, -100, -30, -5, -1e-30, -0.0, 0.0, 1e-30, 5, 30, 100, 1e4, 1e15],
                 dtype)
    dy = np.linspace(-2, 2, x.size).astype(dtype)
    check_activation_matches_reference(x, dy, *kind)
    y, dx = act_both(x, dy, *kind, "native")
    assert np.isfinite(y).all() and np.isfinite(dx).all()


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh"])
def test_gelu_float32_negative_tail(kind):
    for v in (-3.5, -4.0, -5.0):
        x = np.array([v], np.float32)
        with fastnn.use_backend("reference"):  # computes in float64, then rounds
            want = F.activation_forward(x, kind)
        assert_close(F.activation_forward(x, kind), want, np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_known_values(backend):
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    with fastnn.use_backend(backend):
        np.testing.assert_array_equal(F.activation_forward(x, "relu"), [0, 0, 0, 0.5, 2])
        np.testing.assert_array_equal(F.activation_forward(x, "leaky_relu", 0.25),
                                      [-0.5, -0.125, 0, 0.5, 2])
        np.testing.assert_allclose(F.activation_forward(x, "sigmoid"), 1 / (1 + np.exp(-x)),
                                   rtol=1e-15)
        # GELU(x) = x * Phi(x); Phi(2) = 0.97724986805182079
        np.testing.assert_allclose(F.activation_forward(x, "gelu")[-1], 2 * 0.97724986805182079,
                                   rtol=1e-15)


# ---- gradients vs finite differences (float64) ----

def finite_difference(f, x, eps=1e-6):
    """Central differences of an elementwise f: its Jacobian is diagonal, so every element
    can be perturbed at once."""
    return (f(x + eps) - f(x - eps)) / (2 * eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_activation_gradient_matches_finite_differences(kind, backend):
    kind, slope = kind
    rng = np.random.default_rng(3)
    x = rng.uniform(-4, 4, (6, 7))
    x[np.abs(x) < 0.05] = 0.5  # stay clear of the kinks of relu and leaky_relu
    dy = rng.standard_normal(x.shape)
    with fastnn.use_backend(backend):
        y = F.activation_forward(x, kind, slope)
        dx = F.activation_backward(dy, x, y, kind, slope)
        numeric = dy * finite_difference(lambda v: F.activation_forward(v, kind, slope), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(4)
    x = 2 * rng.standard_normal((2, 3, 5))
    g = rng.standard_normal(x.shape)  # loss = sum(g * softmax(x))
    with fastnn.use_backend(backend):
        dx = F.softmax_backward(g, F.softmax_forward(x))
        numeric = numerical_grad(lambda: float(np.sum(g * F.softmax_forward(x))), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-7, atol=1e-9)


# ---- threads ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_activation_one_and_two_threads_bitwise_equal(kind, dtype, threads):
    x, dy = make_data((300, 301), dtype, seed=5)
    results = on_one_and_two_threads(lambda: act_both(x, dy, *kind, "native"))
    for a, b in zip(*results):
        assert np.array_equal(a, b), "results differ between 1 and 2 threads"


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_one_and_two_threads_bitwise_equal(dtype, threads):
    x, dy = make_data((301, 257), dtype, seed=6)
    results = on_one_and_two_threads(lambda: softmax_both(x, dy, "native"))
    for a, b in zip(*results):
        assert np.array_equal(a, b), "results differ between 1 and 2 threads"


# ---- softmax properties ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (5, 1), (3, 4, 10), (200, 300)])
def test_softmax_rows_sum_to_one(shape, dtype, backend):
    x, _ = make_data(shape, dtype, seed=7, scale=5.0)
    with fastnn.use_backend(backend):
        y = F.softmax_forward(x)
    assert (y >= 0).all() and (y <= 1).all()
    K = shape[-1]
    tol = 4 * K * np.finfo(dtype).eps
    np.testing.assert_allclose(y.sum(axis=-1, dtype=np.float64), 1, rtol=0, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_logits_are_finite(dtype, backend):
    base = np.array([[0.0, -1.0, -2.0, 1.0], [3.0, 3.0, 0.0, -50.0]])
    dy = np.array([[1.0, -2.0, 0.5, 0.25], [-1.0, 0.0, 2.0, 1.0]], dtype)
    expected = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    expected_dx = expected * (dy - (dy * expected).sum(axis=1, keepdims=True))
    with fastnn.use_backend(backend):
        for shift in (1e3, -1e3):
            x = (base + shift).astype(dtype)  # exactly representable
            y = F.softmax_forward(x)
            dx = F.softmax_backward(dy, y)
            assert np.isfinite(y).all() and np.isfinite(dx).all()
            assert_close(y, expected.astype(dtype), dtype)
            assert_close(dx, expected_dx.astype(dtype), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_invariant_to_a_constant_per_row(dtype, backend):
    rng = np.random.default_rng(8)
    # multiples of 1/8 plus integers: every sum and difference below is exact, so the shifted
    # logits x - max(x) are the same numbers and the outputs must be bitwise equal
    x = (rng.integers(-64, 64, (6, 9, 17)) / 8).astype(dtype)
    c = rng.integers(-500, 500, (6, 9, 1)).astype(dtype)
    with fastnn.use_backend(backend):
        y = F.softmax_forward(x)
        y_shifted = F.softmax_forward(x + c)
    np.testing.assert_array_equal(y, y_shifted)




@pytest.mark.parametrize("backend", [
    "reference", "native"])
@pytest.mark.parametrize("shape", [(3, 0), (0,)])
def test_softmax_empty_last_axis(shape, backend):
    with fastnn.use_backend(backend):
        y = F.softmax_forward(np.zeros(shape))
        dx = F.softmax_backward(np.zeros(shape), y)
    assert y.shape == shape and dx.shape == shape


# ---- NaN ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_activation_nan_propagates_elementwise(kind, dtype, backend):
    kind, slope = kind
    x, dy = make_data((50_000,), dtype, seed=9)
    x[np.abs(x) < 0.1] = 1.0
    x[[3, 40_000]] = np.nan  # one in each chunk
    x[[4, 40_001]] = 2.0
    dy[[4, 40_001]] = np.nan  # NaN upstream gradient where the activation is not flat
    nan_y = np.zeros(x.shape, bool)
    nan_y[[3, 40_000]] = True
    with fastnn.use_backend(backend):
        y = F.activation_forward(x, kind, slope)
        dx = F.activation_backward(dy, x, y, kind, slope)
    np.testing.assert_array_equal(np.isnan(y), nan_y)
    assert np.isnan(dx[[4, 40_001]]).all()
    others = np.ones(x.shape, bool)
    others[[3, 4, 40_000, 40_001]] = False
    assert np.isfinite(dx[others]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_nan_stays_in_its_row(backend):
    x, dy = make_data((300, 200), np.float32, seed=10)
    x[7, 3] = np.nan
    dy[250, 9] = np.nan
    with fastnn.use_backend(backend):
        y = F.softmax_forward(x)
        dx = F.softmax_backward(dy, y)
    assert np.isnan(y[7]).all()
    assert np.isfinite(np.delete(y, 7, axis=0)).all()
    assert np.isnan(dx[[7, 250]]).all()
    assert np.isfinite(np.delete(dx, [7, 250], axis=0)).all()


# ---- layers ----

LAYERS = [
    (lambda: fastnn.ReLU(), "relu", 0.0),
    (lambda: fastnn.LeakyReLU(0.2), "leaky_relu", 0.2),
    (lambda: fastnn.Tanh(), "tanh", 0.0),
    (lambda: fastnn.Sigmoid(), "sigmoid", 0.0),
    (lambda: fastnn.GELU("none"), "gelu", 0.0),
    (lambda: fastnn.GELU("tanh"), "gelu_tanh", 0.0),
]
LAYER_IDS = ["ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU-none", "GELU-tanh"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, kind, slope", LAYERS, ids=LAYER_IDS)
def test_activation_layer_forward_backward(make, kind, slope, dtype):
    layer = make()
    x, dy = make_data((4, 3, 5), dtype, seed=11)
    y = layer(x)
    with fastnn.use_backend("reference"):
        want_y = F.activation_forward(x, kind, slope)
        want_dx = F.activation_backward(dy, x, want_y, kind, slope)
    assert y.dtype == dtype
    assert_close(y, want_y, dtype)
    y_values = y.copy()
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(dx, want_dx, dtype)
    # the same batch shape: the same buffers, rewritten
    x2, dy2 = make_data((4, 3, 5), dtype, seed=12)
    y2 = layer(x2)
    assert y2 is y and not np.array_equal(y2, y_values)
    dx2 = layer.backward(dy2)
    assert dx2 is dx
    with fastnn.use_backend("reference"):
        assert_close(dx2, F.activation_backward(dy2, x2, F.activation_forward(x2, kind, slope),
                                                kind, slope), dtype)
    # a new batch shape: new buffers of that shape
    assert layer(x[:2]).shape == (2, 3, 5)
    assert layer.backward(dy[:2]).shape == (2, 3, 5)


@pytest.mark.parametrize("make", [m for m, _, _ in LAYERS] + [lambda: fastnn.Softmax()],
                         ids=LAYER_IDS + ["Softmax"])
def test_layer_backward_errors(make):
    layer = make()
    with pytest.raises(ValueError, match="backward: called before forward"):
        layer.backward(np.ones((2, 3), np.float32))
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\), got \(3, 2\)"):
        layer.backward(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="dy: expected a 2-d array"):
        layer.backward(np.ones(6, np.float32))
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        layer.backward(np.ones((2, 3), np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_layer_forward_backward(dtype):
    layer = fastnn.Softmax()
    x, dy = make_data((6, 11), dtype, seed=13)
    y = layer(x)
    with fastnn.use_backend("reference"):
        want_y = F.softmax_forward(x)
        want_dx = F.softmax_backward(dy, want_y)
    assert_close(y, want_y, dtype)
    dx = layer.backward(dy)
    assert_close(dx, want_dx, dtype)
    x2, dy2 = make_data((6, 11), dtype, seed=14)
    assert layer(x2) is y
    assert layer.backward(dy2) is dx
    assert layer(x[:, :4]).shape == (6, 4)


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="negative_slope"):
        fastnn.LeakyReLU(float("nan"))
    with pytest.raises(ValueError, match="approximate: expected one of"):
        fastnn.GELU("erf")


def test_functional_rejects_bad_arguments():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="kind: expected one of"):
        F.activation_forward(x, "softplus")
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.activation_forward(np.ones(3, np.int64), "relu")
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\)"):
        F.activation_backward(np.ones((3, 2), np.float32), x, x, "relu")
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        F.activation_forward(x, "relu", out=x)
    with pytest.raises(ValueError, match="x: expected a 1-d array, got 0-d"):
        F.softmax_forward(np.float64(1.0))


# ---- PyTorch (float64) ----

@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_activation_matches_torch(kind):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    kind, slope = kind
    fns = {
        "relu": tf.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
        "leaky_relu": lambda t: tf.leaky_relu(t, slope),
        "gelu": lambda t: tf.gelu(t, approximate="none"),
        "gelu_tanh": lambda t: tf.gelu(t, approximate="tanh"),
    }
    x, dy = make_data((5, 6, 7), np.float64, seed=15)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = fns[kind](xt)
    yt.backward(torch.from_numpy(dy))
    y = F.activation_forward(x, kind, slope)
    dx = F.activation_backward(dy, x, y, kind, slope)
    assert_close(y, yt.detach().numpy(), np.float64)
    assert_close(dx, xt.grad.numpy(), np.float64)


def test_leaky_relu_gradient_at_zero_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.array([-1.0, -0.0, 0.0, 1.0])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    torch.nn.functional.leaky_relu(xt, 0.2).backward(torch.ones(4, dtype=torch.float64))
    y = F.activation_forward(x, "leaky_relu", 0.2)
    np.testing.assert_array_equal(F.activation_backward(np.ones(4), x, y, "leaky_relu", 0.2),
                                  xt.grad.numpy())


def test_softmax_matches_torch():
    torch = pytest.importorskip("torch")
    x, dy = make_data((4, 5, 33), np.float64, seed=16)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.softmax(xt, dim=-1)
    yt.backward(torch.from_numpy(dy))
    y = F.softmax_forward(x)
    assert_close(y, yt.detach().numpy(), np.float64)
    assert_close(F.softmax_backward(dy, y), xt.grad.numpy(), np.float64)


@pytest.mark.parametrize("kind, exact, max_ulp", [
    ("tanh", np.tanh, 6),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), 3),
])
def test_float32_fast_math_error_in_ulp(kind, exact, max_ulp):
    """float32 tanh and sigmoid (vectorised polynomial and rational approximations, not
    libm) within a few ulp of the float64 function everywhere: a dense grid over [-20, 20]
    plus magnitudes from 1e-30 to 20 of both signs."""
    mags = np.geomspace(1e-30, 20, 200_001)
    x = np.concatenate([np.linspace(-20, 20, 2_000_001), mags, -mags]).astype(np.float32)
    y = F.activation_forward(x, kind)
    ref = exact(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    err = np.abs(y - ref) / ulp
    worst = int(np.argmax(err))
    assert err[worst] <= max_ulp, f"{kind}({x[worst]}): {err[worst]:.2f} ulp"

