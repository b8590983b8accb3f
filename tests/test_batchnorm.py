"""BatchNorm1d kernel: native vs the NumPy twin, gradients vs finite differences, threads,
PyTorch semantics, numerics, bad input, the layer."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import assert_close, numerical_grad, on_one_and_two_threads

ACTS = ["none", "relu", "tanh", "sigmoid"]
DTYPES = [np.float32, np.float64]
BACKENDS = ["reference", "native"]


def make_problem(B, C, dtype, seed=0, affine=True):
    """x = 3 + 2 z, z random with each channel's batch mean 0 and std 1; gamma ~ U(0.5, 1.5),
    beta ~ N(0, 1), running stats as after some training (mean ~ N(3, 1), var ~ U(0.5, 4)),
    upstream gradient dy ~ N(0, 1).

    The channels are standardised so that |mean| / std = 1.5 in every channel: normalising
    amplifies the rounding of x itself by |x| / std, and a chance near-constant channel (two
    close values at B = 2) would leave any float32 implementation, the twin included, off by
    more than 1e-5 (see test_constant_channel_gives_finite_results)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, C))
    if B >= 2:
        z = (z - z.mean(0)) / z.std(0)
    x = (3 + 2 * z).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm = (rng.standard_normal(C) + 3).astype(dtype)
    rv = rng.uniform(0.5, 4, C).astype(dtype)
    dy = rng.standard_normal((B, C)).astype(dtype)
    return x, w, b, rm, rv, dy


def run_both_ways(x, w, b, rm, rv, dy, training, act, backend, momentum=0.1, eps=1e-5,
                  fwd=None):
    """Forward (running stats updated on copies) and backward on one backend; dweight and
    dbias accumulate onto non-zero buffers.

    The backward reads fwd = (y, mean, invstd) when given: each kernel is compared with its
    twin on identical inputs (near saturation, 1 - y*y magnifies a last-bit difference)."""
    rm, rv = rm.copy(), rv.copy()
    with fastnn.use_backend(backend):
        y, mean, invstd = F.batchnorm_forward(x, w, b, rm, rv, training, momentum, eps, act)
        y_in, mean_in, invstd_in = (y, mean, invstd) if fwd is None else fwd
        dw = None if w is None else np.full_like(w, 0.5)
        db = None if b is None else np.full_like(b, -0.25)
        dx = F.batchnorm_backward(dy, x, y_in, mean_in, invstd_in, w, training, act, dw, db)
    return {"y": y, "mean": mean, "invstd": invstd, "running_mean": rm, "running_var": rv,
            "dx": dx, "dweight": dw, "dbias": db}


def term_scales(ref, x, dy, w, act):
    """The size of the terms each backward output is computed from, by output name.

    A result that cancels (much smaller than its terms) is only as accurate as its terms'
    rounding, in any implementation; the normwise error is then taken relative to
    max(|result|, size of the terms) (see with_scale):
      dx (training) = k * (dz - mean(dz) - xhat * mean(dz * xhat)), k = gamma * invstd: a
        difference of terms of size |k dz|; at B = 2 it is O(eps / var) * k * dz.
      dweight = sum over the batch of dz * xhat, dbias = sum of dz: float32 sums of random
        signs, accurate relative to sum |terms| (one channel may sum to nearly 0 by chance)."""
    dz = (dy * fastnn.reference.activation_derivative(ref["y"], act)).astype(np.float64)
    invstd = ref["invstd"].astype(np.float64)
    k = invstd if w is None else w * invstd
    xhat = (x - ref["mean"].astype(np.float64)) * invstd
    return {"dx": np.abs(k).max(initial=0) * np.abs(dz).max(initial=0),
            "dweight": np.abs(dz * xhat).sum(0).max(initial=0),
            "dbias": np.abs(dz).sum(0).max(initial=0)}


def with_scale(r, a, scale):
    """(r, a) with one extra element each, equal in both and of size `scale`."""
    pad = np.array([scale], r.dtype)
    return np.concatenate([r.ravel(), pad]), np.concatenate([a.ravel(), pad])


def check_native_matches_reference(B, C, dtype, act, training, affine=True, seed=0,
                                   momentum=0.1, eps=1e-5):
    x, w, b, rm, rv, dy = make_problem(B, C, dtype, seed, affine)
    ref = run_both_ways(x, w, b, rm, rv, dy, training, act, "reference", momentum, eps)
    native = run_both_ways(x, w, b, rm, rv, dy, training, act, "native", momentum, eps,
                           fwd=(ref["y"], ref["mean"], ref["invstd"]))
    scales = term_scales(ref, x, dy, w, act)
    for name, r in ref.items():
        a = native[name]
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == np.dtype(dtype), name
        if name in scales and (training or name != "dx"):
            r, a = with_scale(r, a, scales[name])
        try:
            assert_close(a, r, dtype)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    if not training:  # the running statistics are only read
        assert np.array_equal(native["running_mean"], rm)
        assert np.array_equal(native["running_var"], rv)


@settings(max_examples=80, deadline=None)
@given(
    B=st.integers(2, 40), C=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
    act=st.sampled_from(ACTS), training=st.booleans(), affine=st.booleans(),
    momentum=st.sampled_from([0.0, 0.1, 0.37, 1.0]), eps=st.sampled_from([1e-5, 1e-3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_small_shapes(B, C, dtype, act, training, affine, momentum, eps, seed):
    check_native_matches_reference(B, C, dtype, act, training, affine, seed, momentum, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(2, 1), (2, 5), (3, 1), (7, 13), (65, 17), (129, 300)])
def test_matches_reference_edge_shapes(shape, act, training, dtype):
    check_native_matches_reference(*shape, dtype, act, training)


# (300, 1000): two channel blocks of two 256-channel segments each, five 64-row chunks;
# (4100, 70): two blocks, 65 row chunks (the last one partial). Both run on two threads.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", [(300, 1000), (4100, 70)])
def test_matches_reference_blocked_shapes(shape, affine, act, training, dtype):
    check_native_matches_reference(*shape, dtype, act, training, affine)


def test_eval_with_a_batch_of_one_matches_reference():
    for dtype in DTYPES:
        check_native_matches_reference(1, 9, dtype, "tanh", training=False)


# ---- gradients vs central differences, float64 ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
def test_gradients_match_finite_differences(act, training, backend):
    x, w, b, rm, rv, _ = make_problem(6, 4, np.float64, seed=1)
    g = np.random.default_rng(2).standard_normal((6, 4))  # loss = sum(g * y)
    with fastnn.use_backend(backend):
        def forward():
            # training: no running stats, so repeated forwards see the same state
            stats = (None, None) if training else (rm, rv)
            return F.batchnorm_forward(x, w, b, *stats, training=training, activation=act)

        def loss():
            return float(np.sum(g * forward()[0]))

        y, mean, invstd = forward()
        if act == "relu":  # keep away from the kink, where differences are meaningless
            z = (x - mean) * invstd * w + b
            assert np.abs(z).min() > 1e-3
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = F.batchnorm_backward(g, x, y, mean, invstd, w, training, act, dw, db)
        for name, analytic, param in [("dx", dx, x), ("dweight", dw, w), ("dbias", db, b)]:
            numeric = numerical_grad(loss, param)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_without_affine_matches_finite_differences(backend):
    x, _, _, _, _, _ = make_problem(5, 3, np.float64, seed=4, affine=False)
    g = np.random.default_rng(5).standard_normal((5, 3))
    with fastnn.use_backend(backend):
        def loss():
            return float(np.sum(g * F.batchnorm_forward(x, activation="sigmoid")[0]))

        y, mean, invstd = F.batchnorm_forward(x, activation="sigmoid")
        dx = F.batchnorm_backward(g, x, y, mean, invstd, None, True, "sigmoid")
        np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


# ---- threads: bitwise identical results for 1 and 2 threads ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(300, 1000), (4100, 70), (128, 600)])
def test_one_and_two_threads_bitwise_equal(shape, act, training, dtype, threads):
    assert shape[0] * shape[1] >= 65536  # large enough to run on the team
    x, w, b, rm, rv, dy = make_problem(*shape, dtype, seed=3)
    results = on_one_and_two_threads(
        lambda: run_both_ways(x, w, b, rm, rv, dy, training, act, "native"))
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), \
            f"{name} differs between 1 and 2 threads"


# ---- semantics pinned to PyTorch ----

def test_layer_defaults_match_pytorch():
    layer = fastnn.BatchNorm1d(5)
    assert layer.eps == 1e-5 and layer.momentum == 0.1 and layer.affine
    assert layer.dtype == np.float32 and layer.training
    assert np.array_equal(layer.weight.data, np.ones(5)) and layer.weight.dtype == np.float32
    assert np.array_equal(layer.bias.data, np.zeros(5)) and layer.bias.dtype == np.float32
    assert np.array_equal(layer.running_mean, np.zeros(5))
    assert np.array_equal(layer.running_var, np.ones(5))
    assert layer.running_mean.dtype == layer.running_var.dtype == np.float32
    assert layer.num_batches_tracked == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_and_eval_follow_pytorch_formulas(backend):
    C, eps, m = 4, 1e-5, 0.1
    layer = fastnn.BatchNorm1d(C, dtype=np.float64)
    rng = np.random.default_rng(6)
    layer.weight.data[:] = rng.uniform(0.5, 1.5, C)
    layer.bias.data[:] = rng.standard_normal(C)
    w, b = layer.weight.data.copy(), layer.bias.data.copy()
    rm, rv = np.zeros(C), np.ones(C)
    with fastnn.use_backend(backend):
        for step, B in enumerate([8, 3, 2]):
            x = rng.standard_normal((B, C)) * 2 + 3
            y = layer(x)
            mean, var = x.mean(0), x.var(0)  # the batch mean and biased variance normalise
            np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + eps) * w + b, rtol=1e-12,
                                       atol=1e-12)
            rm = (1 - m) * rm + m * mean
            rv = (1 - m) * rv + m * x.var(0, ddof=1)  # unbiased, n / (n - 1)
            np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-13)
            np.testing.assert_allclose(layer.running_var, rv, rtol=1e-13)
            assert layer.num_batches_tracked == step + 1
        layer.eval()
        x = rng.standard_normal((5, C)) * 2 + 3
        y = layer(x)  # evaluation normalises with the running statistics
        np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + eps) * w + b, rtol=1e-12,
                                   atol=1e-12)
        assert layer.num_batches_tracked == 3  # not counted in evaluation
        np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-13)
        dy = rng.standard_normal((5, C))
        np.testing.assert_allclose(layer.backward(dy), dy * w / np.sqrt(rv + eps), rtol=1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_matches_torch(affine, act):
    torch = pytest.importorskip("torch")
    C = 7
    rng = np.random.default_rng(7)
    ours = fastnn.BatchNorm1d(C, eps=1e-4, momentum=0.2, affine=affine, dtype=np.float64,
                              activation=None if act == "none" else act)
    theirs = torch.nn.BatchNorm1d(C, eps=1e-4, momentum=0.2, affine=affine,
                                  dtype=torch.float64)
    if affine:
        w, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
        ours.weight.data[:], ours.bias.data[:] = w, b
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(w))
            theirs.bias.copy_(torch.from_numpy(b))
    activation = {"none": lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
                  "sigmoid": torch.sigmoid}[act]

    def step(B):
        x = rng.standard_normal((B, C)) * 2 + 3
        dy = rng.standard_normal((B, C))
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = activation(theirs(xt))
        yt.backward(torch.from_numpy(dy))
        y = ours(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
        if affine:  # both accumulate over the steps
            np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(),
                                       rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-12,
                                       atol=1e-12)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
        assert ours.num_batches_tracked == int(theirs.num_batches_tracked)

    for B in (16, 2, 33):
        step(B)
    ours.eval()
    theirs.eval()
    step(5)
    step(1)  # evaluation takes a batch of one


# ---- numerics ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_constant_channel_gives_finite_results(act, dtype, backend):
    x, w, b, rm, rv, dy = make_problem(50, 6, dtype)
    x[:, 2] = 0.1  # not exactly representable: the mean may round, the variance must not go < 0
    x[:, 4] = 7
    rv_old = rv.copy()
    with fastnn.use_backend(backend):
        y, mean, invstd = F.batchnorm_forward(x, w, b, rm, rv, True, activation=act)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = F.batchnorm_backward(dy, x, y, mean, invstd, w, True, act, dw, db)
    for a in (y, mean, invstd, rm, rv, dx, dw, db):
        assert np.isfinite(a).all()
    assert_close(invstd[4], 1 / np.sqrt(1e-5), dtype)  # variance 0 (the float32 twin adds
    # float32(1e-5), which is not 1e-5)
    assert_close(rv[4], np.asarray(0.9 * rv_old[4], dtype))
    if act == "none":
        # xhat = 0: the output is beta, up to the rounding of the terms of the native kernel's
        # fused x * (gamma * invstd) + (beta - mean * gamma * invstd), of size 7 * 316 * gamma
        # (PyTorch's CPU kernel uses the same form); the twin's (x - mean) is exactly 0
        terms = 7 * w[4] / np.sqrt(1e-5)
        np.testing.assert_allclose(y[:, 4], b[4], rtol=0, atol=4 * np.finfo(dtype).eps * terms)
    # xhat = 0, so dx = gamma / sqrt(eps) * (dz - mean(dz)), as in PyTorch
    dz = dy[:, 4] * fastnn.reference.activation_derivative(y[:, 4], act)
    assert_close(dx[:, 4], w[4] / np.sqrt(1e-5) * (dz - dz.mean()), dtype)


@pytest.mark.parametrize("dtype, offset, noise, rtol", [
    (np.float32, 1e4, 1e-2, 1e-6),  # E[x^2] - E[x]^2 would lose every digit, even in float64
    (np.float64, 1e8, 1.0, 1e-7),  # naive: relative error about 1; spacing at 1e8 is 1.5e-8
])
def test_variance_of_a_huge_offset_has_no_cancellation(dtype, offset, noise, rtol):
    rng = np.random.default_rng(8)
    B, C = 1000, 40  # several row chunks, two channel blocks
    x = (offset + noise * rng.standard_normal((B, C))).astype(dtype)
    x64 = x.astype(np.float64)
    var64 = ((x64 - x64.mean(0)) ** 2).mean(0)  # two-pass, float64
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, mean, invstd = F.batchnorm_forward(x, running_mean=rm, running_var=rv, eps=1e-5)
    var = 1 / invstd.astype(np.float64) ** 2 - 1e-5
    np.testing.assert_allclose(var, var64, rtol=rtol * 10)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var64 + 1e-5), rtol=rtol)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * var64 * B / (B - 1), rtol=rtol)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=rtol)
    # y itself is as ill-conditioned as the data: within a few units in the last place of x
    # times invstd (twin and PyTorch alike; a float32 1e4 has a last place of 1e-3)
    exact = (x64 - x64.mean(0)) / np.sqrt(var64 + 1e-5)
    ulp_x = np.spacing(np.abs(x)).astype(np.float64)
    assert (np.abs(y - exact) <= 4 * ulp_x * invstd + 1e-6).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_variance_never_negative(dtype, backend):
    # constant channels of values whose mean rounds: any cancellation shows as var < 0
    values = np.array([0.1, 1 / 3, 1e4 + 0.1, 3.3e7, -2.7e-3, 123456.789], dtype)
    B = 777
    x = np.tile(values, (B, 1))
    x[::2, 0] += np.asarray(1e-7, dtype)  # nearly constant
    rm, rv = np.zeros(values.size, dtype), np.zeros(values.size, dtype)
    with fastnn.use_backend(backend):
        y, mean, invstd = F.batchnorm_forward(x, running_mean=rm, running_var=rv, eps=1e-5)
    # var + eps >= eps, up to the rounding of eps and invstd to the dtype (the float32 twin
    # adds float32(1e-5) < 1e-5)
    bound = 1 / np.sqrt(1e-5) * (1 + 4 * np.finfo(dtype).eps)
    assert (invstd <= bound).all(), invstd
    assert (rv >= 0).all()
    assert np.isfinite(y).all() and np.isfinite(invstd).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_nan_stays_in_its_channel(act, dtype):
    x, w, b, rm, rv, dy = make_problem(200, 600, dtype)  # two blocks, on two threads
    x[7, 3] = np.nan
    y, mean, invstd = F.batchnorm_forward(x, w, b, rm, rv, True, activation=act)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = F.batchnorm_backward(dy, x, y, mean, invstd, w, True, act, dw, db)
    others = np.arange(600) != 3
    assert np.isnan(y[:, 3]).all() and np.isfinite(y[:, others]).all()
    for a in (mean, rm, rv, dw):
        assert np.isnan(a[3]) and np.isfinite(a[others]).all()
    assert np.isfinite(invstd[others]).all()
    assert np.isnan(dx[:, 3]).all() and np.isfinite(dx[:, others]).all()
    assert np.isfinite(db[others]).all()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_nan_variance_gives_nan_invstd(training):
    x, w, b, rm, rv, _ = make_problem(10, 4, np.float64)
    x[2, 1] = np.nan
    rv[1] = np.nan
    with fastnn.use_backend("reference"):
        expected = F.batchnorm_forward(x, w, b, rm.copy(), rv.copy(), training)[2]
    invstd = F.batchnorm_forward(x, w, b, rm.copy(), rv.copy(), training)[2]
    assert np.isnan(expected[1])
    np.testing.assert_array_equal(invstd, expected)


def test_eval_of_an_empty_batch_uses_the_running_variance():
    x, w, b, rm, rv, _ = make_problem(0, 4, np.float64)
    y, mean, invstd = F.batchnorm_forward(x, w, b, rm, rv, training=False)
    assert y.shape == (0, 4)
    assert_close(mean, rm)
    assert_close(invstd, 1 / np.sqrt(rv + 1e-5))


# ---- bad input: a clear exception naming the argument, never a crash ----

def test_functional_rejects_bad_arguments():
    x, w, b, rm, rv, dy = make_problem(4, 3, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batchnorm_forward(x[:1], w, b)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batchnorm_forward(x[:1], w, b, rm, rv, training=True)
    with pytest.raises(ValueError, match=r"weight: expected shape \(5,\), got \(3,\)"):
        F.batchnorm_forward(np.zeros((4, 5), np.float32), w, None)
    with pytest.raises(ValueError, match=r"bias: expected shape \(3,\), got \(2,\)"):
        F.batchnorm_forward(x, w, b[:2])
    with pytest.raises(ValueError, match=r"running_mean: expected shape \(3,\), got \(4,\)"):
        F.batchnorm_forward(x, w, b, np.zeros(4, np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 1-d"):
        F.batchnorm_forward(x[0], w, b)
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 3-d"):
        F.batchnorm_forward(x[None], w, b)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.batchnorm_forward(np.ones((4, 3), np.int64))
    with pytest.raises(TypeError, match=r"weight: expected dtype float32 \(as the input\), got float64"):
        F.batchnorm_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="running_var: expected dtype float32, got float64"):
        F.batchnorm_forward(x, w, b, rm, rv.astype(np.float64))
    for bad in [0, -1e-5, 0.0, float("nan"), "1e-5", None]:
        with pytest.raises(ValueError, match="eps: expected a positive number"):
            F.batchnorm_forward(x, w, b, eps=bad)
    for bad in [-0.1, 1.5, float("nan"), None, "0.1"]:
        with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\]"):
            F.batchnorm_forward(x, w, b, momentum=bad)
    with pytest.raises(ValueError, match="running_mean, running_var: give both or neither"):
        F.batchnorm_forward(x, w, b, rm, None)
    with pytest.raises(ValueError, match="running_mean, running_var: needed when training=False"):
        F.batchnorm_forward(x, w, b, training=False)
    with pytest.raises(ValueError, match="activation: expected one of"):
        F.batchnorm_forward(x, w, b, activation="gelu")
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        F.batchnorm_forward(x, w, b, out=x)
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        big = np.zeros((5, 3), np.float32)
        F.batchnorm_forward(big[1:], out=big[:4])
    with pytest.raises(ValueError, match="save_mean: must not share memory with weight"):
        F.batchnorm_forward(x, w, b, save_mean=w)
    with pytest.raises(ValueError, match="running_mean: expected a writeable array"):
        frozen = rm.copy()
        frozen.flags.writeable = False
        F.batchnorm_forward(x, w, b, frozen, rv)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 3\), got \(3, 4\)"):
        F.batchnorm_forward(x, w, b, out=np.empty((3, 4), np.float32))
    y, mean, invstd = F.batchnorm_forward(x, w, b, activation="relu")
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 3\), got \(3, 4\)"):
        F.batchnorm_backward(dy.T.copy(), x, y, mean, invstd, w)
    with pytest.raises(ValueError, match="y: the forward output is needed"):
        F.batchnorm_backward(dy, x, None, mean, invstd, w, activation="relu")
    with pytest.raises(ValueError, match="mean, invstd: needed"):
        F.batchnorm_backward(dy, x, y, None, invstd, w)
    with pytest.raises(ValueError, match=r"invstd: expected shape \(3,\), got \(2,\)"):
        F.batchnorm_backward(dy, x, y, mean, invstd[:2], w)
    with pytest.raises(TypeError, match=r"dy: expected dtype float32 \(as the input\), got float64"):
        F.batchnorm_backward(dy.astype(np.float64), x, y, mean, invstd, w)
    with pytest.raises(ValueError, match=r"dweight: expected shape \(3,\), got \(4,\)"):
        F.batchnorm_backward(dy, x, y, mean, invstd, w, dweight=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dx: must not share memory with dy"):
        F.batchnorm_backward(dy, x, y, mean, invstd, w, dx=dy)


def test_eval_takes_a_batch_of_one():
    x, w, b, rm, rv, dy = make_problem(1, 5, np.float32)
    y, mean, invstd = F.batchnorm_forward(x, w, b, rm, rv, training=False)
    assert_close(y, (x - rm) / np.sqrt(rv + 1e-5) * w + b)
    dx = F.batchnorm_backward(dy, x, y, mean, invstd, w, training=False)
    assert_close(dx, dy * w / np.sqrt(rv + 1e-5))
    layer = fastnn.BatchNorm1d(5).eval()
    assert_close(layer(x), x / np.sqrt(1 + 1e-5), np.float32)


def test_layer_rejects_bad_arguments():
    layer = fastnn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="BatchNorm1d.backward: called before forward"):
        layer.backward(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(np.zeros((1, 3), np.float32))
    assert layer.num_batches_tracked == 0  # a rejected batch is not counted
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 3\), got \(4, 5\)"):
        layer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 1-d"):
        layer(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-d array, got 3-d"):
        layer(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(as the input\), got float64"):
        layer(np.zeros((4, 3)))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(as the input\), got int64"):
        layer(np.zeros((4, 3), np.int64))
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 3\), got \(5, 3\)"):
        layer.backward(np.zeros((5, 3), np.float32))
    for bad in [0, -1e-3, float("nan"), "1e-5"]:
        with pytest.raises(ValueError, match="eps: expected a positive number"):
            fastnn.BatchNorm1d(3, eps=bad)
    for bad in [-0.5, 1.01, float("nan"), "0.1"]:
        with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\]"):
            fastnn.BatchNorm1d(3, momentum=bad)
    with pytest.raises(TypeError, match="num_features: expected a positive int"):
        fastnn.BatchNorm1d(2.5)
    with pytest.raises(ValueError, match="num_features: expected a positive int, got 0"):
        fastnn.BatchNorm1d(0)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int64"):
        fastnn.BatchNorm1d(3, dtype=np.int64)
    with pytest.raises(ValueError, match="activation: expected one of"):
        fastnn.BatchNorm1d(3, activation="swish")


# ---- the layer ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_layer(dtype):
    layer = fastnn.BatchNorm1d(6, eps=1e-3, momentum=0.25, dtype=dtype, activation="tanh")
    assert layer.weight.data.shape == layer.bias.data.shape == (6,)
    assert isinstance(layer.weight, fastnn.Parameter) and isinstance(layer.bias, fastnn.Parameter)
    assert layer.weight.grad.dtype == dtype and not layer.weight.grad.any()
    assert layer.parameters() == [layer.weight, layer.bias]
    assert layer.train() is layer and layer.training
    x, w, b, _, _, dy = make_problem(9, 6, dtype)
    layer.weight.data[:], layer.bias.data[:] = w, b
    y = layer(x)
    mean, var = x.mean(0, dtype=np.float64), x.var(0, dtype=np.float64)
    assert_close(y, np.tanh((x - mean) / np.sqrt(var + 1e-3) * w + b), dtype)
    assert_close(layer.running_mean, 0.25 * mean, dtype)
    assert_close(layer.running_var, 0.75 + 0.25 * var * 9 / 8, dtype)
    ref_dx = F.batchnorm_backward(dy, x, y, mean.astype(dtype),
                                  (1 / np.sqrt(var + 1e-3)).astype(dtype), w, True, "tanh")
    dx = layer.backward(dy)
    assert_close(dx, ref_dx, dtype)
    dz = dy * (1 - y * y)
    xhat = (x - mean) / np.sqrt(var + 1e-3)
    assert_close(layer.weight.grad, (dz * xhat).sum(0), dtype)
    assert_close(layer.bias.grad, dz.sum(0), dtype)
    layer.backward(dy)  # gradients accumulate
    assert_close(layer.weight.grad, 2 * (dz * xhat).sum(0), dtype)
    assert_close(layer.bias.grad, 2 * dz.sum(0), dtype)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()
    assert layer.eval() is layer and not layer.training
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    assert_close(y, np.tanh((x - rm) / np.sqrt(rv + 1e-3) * w + b), dtype)
    assert np.array_equal(layer.running_mean, rm) and layer.num_batches_tracked == 1
    assert_close(layer.backward(dy), dy * (1 - y * y) * w / np.sqrt(rv + 1e-3), dtype)


def test_batchnorm_layer_without_affine():
    layer = fastnn.BatchNorm1d(4, affine=False, dtype=np.float64)
    assert layer.weight is None and layer.bias is None and layer.parameters() == []
    x, _, _, _, _, dy = make_problem(10, 4, np.float64)
    y = layer(x)
    assert_close(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5))
    with fastnn.use_backend("reference"):
        expected = F.batchnorm_backward(dy, x, y, x.mean(0), 1 / np.sqrt(x.var(0) + 1e-5))
    assert_close(layer.backward(dy), expected)
    layer.zero_grad()  # nothing to zero


def test_batchnorm_layer_reuses_its_buffers():
    layer = fastnn.BatchNorm1d(6, activation="relu")
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    dy = np.ones((5, 6), np.float32)
    y1, dx1 = layer(x), layer.backward(dy)
    y2, dx2 = layer(x), layer.backward(dy)
    assert y1 is y2 and dx1 is dx2
    rm = layer.running_mean
    layer.eval()
    y3, dx3 = layer(x), layer.backward(dy)
    assert y3 is y1 and dx3 is dx1 and layer.running_mean is rm
    assert layer.train()(x[:3]).shape == (3, 6)  # a new batch shape
    assert layer.backward(dy[:3]).shape == (3, 6)


def test_non_contiguous_inputs_give_the_right_answer():
    x, w, b, rm, rv, dy = make_problem(8, 12, np.float64)
    x_strided = np.repeat(x, 2, axis=1)[:, ::2]
    x_fortran = np.asfortranarray(x)
    w_strided = np.repeat(w, 2)[::2]
    assert not x_strided.flags.c_contiguous and not x_fortran.flags.c_contiguous
    y, mean, invstd = F.batchnorm_forward(x_strided, w_strided, b, activation="sigmoid")
    expected = F.batchnorm_forward(x, w, b, activation="sigmoid")
    for a, e in zip((y, mean, invstd), expected):
        assert_close(a, e)
    dx = F.batchnorm_backward(np.asfortranarray(dy), x_fortran, y, mean, invstd, w_strided,
                              True, "sigmoid")
    assert_close(dx, F.batchnorm_backward(dy, x, y, mean, invstd, w, True, "sigmoid"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_running_var_biased_is_the_textbooks_written_out(dtype, backend):
    """running_var_unbiased=False ("Deep Learning from Scratch"): running_var = momentum' *
    running_var + (1 - momentum') * var with the biased batch variance (the book's momentum'
    0.9 is fastnn's momentum 0.1); the default keeps PyTorch's unbiased variance."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((10, 6)).astype(dtype) * 3 + 1 for _ in range(5)]
    rv = np.zeros(6)  # the book starts it at 0
    rm = np.zeros(6)
    for x in batches:
        x64 = x.astype(np.float64)
        rm = 0.9 * rm + 0.1 * x64.mean(0)
        rv = 0.9 * rv + 0.1 * x64.var(0)
    layer = fastnn.BatchNorm1d(6, dtype=dtype, running_var_unbiased=False)
    layer.running_var[...] = 0
    with fastnn.use_backend(backend):
        for x in batches:
            layer(x)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(layer.running_mean, rm, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.running_var, rv, rtol=tol, atol=tol)
    torch_form = fastnn.BatchNorm1d(6, dtype=dtype)
    torch_form.running_var[...] = 0
    for x in batches:
        torch_form(x)
    np.testing.assert_allclose(torch_form.running_var, layer.running_var * 10 / 9, rtol=1e-5)
    assert layer.config()["running_var_unbiased"] is False
    assert "running_var_unbiased=False" in repr(layer)
