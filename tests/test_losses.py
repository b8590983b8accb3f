"""Cross-entropy and MSE: native vs the NumPy twin vs the float64 formula, gradients vs
finite differences, large logits, bad targets, threads, the loss classes, and PyTorch."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import assert_close, numerical_grad, on_one_and_two_threads

DTYPES = [np.float32, np.float64]
BACKENDS = ["reference", "native"]


def log_sum_exp_loss(logits, target):
    """The float64 formula: mean over rows of log(sum(exp(l))) - l[target], and its gradient
    (softmax(l) - onehot(target)) / N."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    lse = np.log(e.sum(axis=1)) + m[:, 0]
    rows = np.arange(len(target))
    loss = float(np.mean(lse - z[rows, target]))
    grad = e / e.sum(axis=1, keepdims=True)
    grad[rows, target] -= 1
    return loss, grad / len(target)


def ce_problem(N, K, dtype, seed=0, scale=1.0, hard=False):
    """logits ~ N(0, scale^2); targets uniform, or (hard=True) the least likely class of each
    row, which keeps p[target] - 1 (and the loss) away from 0, where a last-bit difference in
    a saturated probability becomes a large relative error."""
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((N, K))).astype(dtype)
    target = logits.argmin(axis=1) if hard else rng.integers(0, K, N)
    return logits, target


def ce_both(logits, target, backend, dloss=1.0):
    with fastnn.use_backend(backend):
        loss, probs = F.cross_entropy_forward(logits, target)
        dlogits = F.cross_entropy_backward(probs, target, dloss)
    return loss, probs, dlogits


def check_cross_entropy(logits, target):
    dtype = logits.dtype
    want_loss, want_grad = log_sum_exp_loss(logits, target)
    z = logits.astype(np.float64)
    want_probs = np.exp(z - z.max(axis=1, keepdims=True))
    want_probs /= want_probs.sum(axis=1, keepdims=True)
    ref = ce_both(logits, target, "reference")
    native = ce_both(logits, target, "native")
    for got in (ref, native):
        loss, probs, dlogits = got
        assert isinstance(loss, float)
        assert probs.dtype == dtype and dlogits.dtype == dtype
        assert_close(loss, want_loss, dtype)
        assert_close(probs, want_probs, dtype)
        assert_close(dlogits, want_grad, dtype)
    assert_close(native[0], ref[0], dtype)
    assert_close(native[1], ref[1], dtype)
    # the backward on identical inputs
    with fastnn.use_backend("reference"):
        ref_d = F.cross_entropy_backward(ref[1], target)
    assert_close(F.cross_entropy_backward(ref[1], target), ref_d, dtype)


# ---- cross-entropy: values ----

@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 30), K=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_matches_formula_small(N, K, dtype, seed):
    check_cross_entropy(*ce_problem(N, K, dtype, seed, scale=3.0, hard=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", [(1, 1), (1, 2), (64, 10), (300, 257), (1000, 50)])
def test_cross_entropy_matches_formula(N, K, dtype):
    check_cross_entropy(*ce_problem(N, K, dtype, seed=1))


def test_cross_entropy_known_value():
    # uniform logits: loss = log K; one-hot-ish: -log softmax
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            loss, probs = F.cross_entropy_forward(np.zeros((3, 4)), [0, 1, 3])
            assert loss == pytest.approx(np.log(4), rel=1e-15, abs=0)
            np.testing.assert_allclose(probs, 0.25, rtol=1e-15)
            loss, _ = F.cross_entropy_forward(np.array([[np.log(3.0), 0.0]]), [1])
            assert loss == pytest.approx(np.log(4), rel=1e-15, abs=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_large_logits_are_finite(dtype, backend):
    logits = np.array([[1e3, 0, -1e3], [1e3, 1e3, 999], [-1e3, -1e3, -999], [1e3, -1e3, 1e3]],
                      dtype)
    target = np.array([1, 2, 0, 1])
    want_loss, want_grad = log_sum_exp_loss(logits, target)
    loss, probs, dlogits = ce_both(logits, target, backend)
    assert np.isfinite(loss) and np.isfinite(probs).all() and np.isfinite(dlogits).all()
    assert want_loss > 500  # the first and last rows' targets are 1000 below the max
    assert_close(loss, want_loss, dtype)
    assert_close(dlogits, want_grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_nan_logit(backend):
    logits, target = ce_problem(5, 4, np.float64, seed=2)
    logits[2, 1] = np.nan
    loss, probs, dlogits = ce_both(logits, target, backend)
    assert np.isnan(loss)
    assert np.isnan(probs[2]).all() and np.isfinite(np.delete(probs, 2, axis=0)).all()


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_empty_batch(backend):
    with fastnn.use_backend(backend):
        loss, probs = F.cross_entropy_forward(np.zeros((0, 4), np.float32), np.zeros(0, int))
        assert np.isnan(loss) and probs.shape == (0, 4)  # torch also gives nan
        assert F.cross_entropy_backward(probs, np.zeros(0, int)).shape == (0, 4)


# ---- cross-entropy: gradients ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_gradient_matches_finite_differences(backend):
    logits, target = ce_problem(4, 5, np.float64, seed=3, scale=2.0)
    with fastnn.use_backend(backend):
        loss = fastnn.CrossEntropyLoss()
        loss(logits, target)
        analytic = loss.backward(2.5).copy()  # d(2.5 * loss)
        numeric = numerical_grad(lambda: 2.5 * F.cross_entropy_forward(logits, target)[0],
                                 logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


# ---- cross-entropy: bad input ----

def test_cross_entropy_rejects_bad_targets():
    logits = np.zeros((4, 5), np.float32)
    for call in (lambda t: F.cross_entropy_forward(logits, t),
                 lambda t: F.cross_entropy_backward(logits, t),
                 lambda t: fastnn.CrossEntropyLoss()(logits, t)):
        with pytest.raises(IndexError, match=r"target: class 5 is out of range \[0, 5\)"):
            call(np.array([0, 1, 5, 2]))
        with pytest.raises(IndexError, match=r"target: class -1 is out of range \[0, 5\)"):
            call(np.array([0, -1, 4, 2]))
        with pytest.raises(TypeError, match="target: expected an integer array, got dtype float"):
            call(np.array([0.0, 1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match=r"target: expected shape \(4,\) to match logits"):
            call(np.array([0, 1, 2]))
        with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
            call(np.zeros((4, 1), int))
    with pytest.raises(ValueError, match="logits: expected a 2-d array"):
        F.cross_entropy_forward(np.zeros(5), [1])
    with pytest.raises(TypeError, match="logits: expected dtype float32 or float64"):
        F.cross_entropy_forward(np.zeros((1, 5), int), [1])
    with pytest.raises(ValueError, match=r"probs: expected shape \(4, 5\)"):
        F.cross_entropy_forward(logits, [0, 1, 2, 3], probs=np.empty((5, 4), np.float32))


def test_cross_entropy_loss_class():
    loss = fastnn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="CrossEntropyLoss.backward: called before forward"):
        loss.backward()
    logits, target = ce_problem(6, 3, np.float32, seed=4)
    value = loss(logits, target)
    want_loss, want_grad = log_sum_exp_loss(logits, target)
    assert_close(value, want_loss, np.float32)
    d = loss.backward()
    assert_close(d, want_grad, np.float32)
    assert_close(loss.backward(3.0), 3 * want_grad, np.float32)
    logits2, target2 = ce_problem(6, 3, np.float32, seed=5)
    loss(logits2, target2)
    assert loss.backward() is d  # buffers reused for the same shape
    assert_close(d, log_sum_exp_loss(logits2, target2)[1], np.float32)


def test_cross_entropy_failed_forward_leaves_no_garbage():
    loss = fastnn.CrossEntropyLoss()
    logits, target = ce_problem(4, 3, np.float64, seed=6)
    loss(logits, target)
    before = loss.backward().copy()
    with pytest.raises(IndexError):
        loss(logits.astype(np.float32), np.array([0, 1, 7, 0]))  # a new dtype, a bad target
    try:
        after = loss.backward()
    except ValueError:
        return  # refusing is fine
    np.testing.assert_array_equal(after, before)  # so is the last good forward's gradient


# ---- MSE ----

def mse_formula(pred, target):
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return float(np.mean(d * d)), 2 * d / d.size


def mse_both(pred, target, backend, dloss=1.0):
    with fastnn.use_backend(backend):
        loss = fastnn.MSELoss()
        value = loss(pred, target)
        return value, loss.backward(dloss).copy()


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_mse_matches_formula_small(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    if pred.size == 0:
        for backend in BACKENDS:
            value, grad = mse_both(pred, target, backend)
            assert np.isnan(value) and grad.shape == shape  # torch also gives nan
        return
    want_loss, want_grad = mse_formula(pred, target)
    for backend in BACKENDS:
        value, grad = mse_both(pred, target, backend)
        assert isinstance(value, float) and grad.dtype == dtype
        assert_close(value, want_loss, np.float64)  # accumulated in float64 from exact inputs
        assert_close(grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_formula_large(dtype):
    rng = np.random.default_rng(7)
    pred = rng.standard_normal((301, 333)).astype(dtype)
    target = rng.standard_normal((301, 333)).astype(dtype)
    want_loss, want_grad = mse_formula(pred, target)
    for backend in BACKENDS:
        value, grad = mse_both(pred, target, backend, dloss=0.5)
        assert_close(value, want_loss, np.float64)
        assert_close(grad, 0.5 * want_grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(8)
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with fastnn.use_backend(backend):
        analytic = F.mse_backward(pred, target)
        numeric = numerical_grad(lambda: F.mse_forward(pred, target), pred)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_mse_rejects_bad_arguments():
    pred = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 4\), got \(4, 3\)"):
        F.mse_forward(pred, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="target: expected a 2-d array, got 1-d"):
        F.mse_forward(pred, np.zeros(12, np.float32))
    with pytest.raises(TypeError, match="target: expected dtype float32"):
        F.mse_forward(pred, np.zeros((3, 4), np.float64))
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 4\)"):
        F.mse_backward(pred, np.zeros((3, 5), np.float32))
    loss = fastnn.MSELoss()
    with pytest.raises(ValueError, match="MSELoss.backward: called before forward"):
        loss.backward()
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 4\), got \(3, 1\)"):
        loss(pred, np.zeros((3, 1), np.float32))  # no broadcasting


def test_mse_zero_dim():
    assert F.mse_forward(np.array(1.5), np.array(0.5)) == 1.0


# ---- threads ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_one_and_two_threads_bitwise_equal(dtype, threads):
    logits, target = ce_problem(700, 101, dtype, seed=9, scale=3.0)  # >= 65536: parallel
    results = on_one_and_two_threads(lambda: ce_both(logits, target, "native"))
    assert results[0][0] == results[1][0]  # the loss value too
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_one_and_two_threads_bitwise_equal(dtype, threads):
    rng = np.random.default_rng(10)
    pred = rng.standard_normal(100_003).astype(dtype)
    target = rng.standard_normal(100_003).astype(dtype)
    results = on_one_and_two_threads(lambda: mse_both(pred, target, "native"))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---- PyTorch (float64) ----

def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    logits, target = ce_problem(37, 11, np.float64, seed=11, scale=3.0)
    lt = torch.from_numpy(logits.copy()).requires_grad_(True)
    want = torch.nn.functional.cross_entropy(lt, torch.from_numpy(target))
    want.backward()
    for backend in BACKENDS:
        loss, _, dlogits = ce_both(logits, target, backend)
        assert_close(loss, want.item(), np.float64)
        assert_close(dlogits, lt.grad.numpy(), np.float64)


def test_mse_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    pred, target = rng.standard_normal((9, 13)), rng.standard_normal((9, 13))
    pt = torch.from_numpy(pred.copy()).requires_grad_(True)
    want = torch.nn.functional.mse_loss(pt, torch.from_numpy(target))
    want.backward()
    for backend in BACKENDS:
        value, grad = mse_both(pred, target, backend)
        assert_close(value, want.item(), np.float64)
        assert_close(grad, pt.grad.numpy(), np.float64)


# ---- cross-entropy's options, as torch.nn.CrossEntropyLoss ----

OPTIONS = [dict(weight=weight, ignore_index=ignore, reduction=reduction, label_smoothing=ls)
           for weight in (None, "random") for ignore in (-100, 2)
           for reduction in ("mean", "sum", "none") for ls in (0.0, 0.3)]


def option_problem(dtype, options, N=9, K=5, seed=13):
    """logits, targets with two rows ignored (when ignore_index is one of the classes, the
    rows of that class), class weights, and the gradient the loss is given."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (N, K)).astype(dtype)
    target = rng.integers(0, K, N)
    target[[1, 6]] = options["ignore_index"]
    options = dict(options)
    if options["weight"] == "random":
        options["weight"] = rng.uniform(0.2, 2.0, K)
    dloss = rng.normal(size=N).astype(dtype) if options["reduction"] == "none" else 1.7
    return logits, target, options, dloss


def torch_cross_entropy(logits, target, options, dloss):
    """torch's loss and gradient with respect to the logits, in logits' dtype."""
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits, requires_grad=True)
    weight = options["weight"]
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if weight is None else torch.tensor(weight, dtype=z.dtype),
        ignore_index=options["ignore_index"], reduction=options["reduction"],
        label_smoothing=options["label_smoothing"])
    loss = loss_fn(z, torch.tensor(target))
    loss.backward(torch.tensor(dloss, dtype=z.dtype))
    return loss.detach().numpy(), z.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_cross_entropy_options_match_torch(options, dtype, backend):
    logits, target, options, dloss = option_problem(dtype, options)
    want_loss, want_grad = torch_cross_entropy(logits, target, options, dloss)
    with fastnn.use_backend(backend):
        loss_fn = fastnn.CrossEntropyLoss(**options)
        loss = loss_fn(logits, target)
        grad = loss_fn.backward(dloss)
        f_loss, probs = F.cross_entropy_forward(logits, target, **options)
        f_grad = F.cross_entropy_backward(probs, target, dloss, **options)
    if options["reduction"] == "none":
        assert loss.shape == (len(target),) and loss.dtype == dtype
        assert loss[1] == 0 and loss[6] == 0
    else:
        assert isinstance(loss, float)
    assert grad.dtype == dtype and not grad[1].any() and not grad[6].any()
    for got_loss, got_grad in ((loss, grad), (f_loss, f_grad)):
        assert_close(got_loss, want_loss, dtype)
        assert_close(got_grad, want_grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS[1::2], ids=lambda o: "-".join(map(str, o.values())))
def test_cross_entropy_options_gradient_matches_finite_differences(options, backend):
    logits, target, options, dloss = option_problem(np.float64, options, seed=14)
    # f of order 1 (a summed loss is about 15): the differences' rounding noise, an ulp of f
    # over 2e-6, stays far below the tolerance
    dloss = dloss / len(target)
    with fastnn.use_backend(backend):
        loss_fn = fastnn.CrossEntropyLoss(**options)
        loss_fn(logits, target)
        analytic = loss_fn.backward(dloss).copy()
        numeric = numerical_grad(
            lambda: float(np.sum(dloss * loss_fn(logits, target))), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_cross_entropy_every_row_ignored():
    torch = pytest.importorskip("torch")
    logits = np.ones((3, 4))
    target = np.full(3, -100)
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            for reduction, want in (("mean", np.nan), ("sum", 0.0)):
                loss_fn = fastnn.CrossEntropyLoss(reduction=reduction)
                torch_loss = torch.nn.functional.cross_entropy(
                    torch.tensor(logits), torch.tensor(target), reduction=reduction).item()
                np.testing.assert_array_equal([loss_fn(logits, target), torch_loss], want)
                assert not loss_fn.backward().any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_options_one_and_two_threads_bitwise_equal(dtype, threads):
    logits, target = ce_problem(700, 101, dtype, seed=15, scale=3.0)
    target[::7] = 5
    weight = np.random.default_rng(16).uniform(0.5, 2, 101)

    def run():
        loss_fn = fastnn.CrossEntropyLoss(weight=weight, ignore_index=5, label_smoothing=0.1)
        return loss_fn(logits, target), loss_fn.backward().copy()
    results = on_one_and_two_threads(run)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_cross_entropy_options_are_checked():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"reduction: expected one of \['mean', 'none', 'sum'\]"):
        fastnn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing: expected a value in \[0.0, 1.0\]"):
        fastnn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing: expected a number, got nan"):
        fastnn.CrossEntropyLoss(label_smoothing=float("nan"))
    with pytest.raises(ValueError, match="ignore_index: expected an integer"):
        fastnn.CrossEntropyLoss(ignore_index=True)
    with pytest.raises(TypeError, match="weight: expected real class weights, got dtype "
                                        "complex128"):
        fastnn.CrossEntropyLoss(weight=[1j, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"weight: expected a 1-d array of class weights"):
        fastnn.CrossEntropyLoss(weight=np.ones((3, 1)))
    with pytest.raises(ValueError, match="weight: expected one weight per class, 3, got 2"):
        fastnn.CrossEntropyLoss(weight=[1.0, 2.0])(logits, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="weight: expected one weight per class, 3, got 2"):
        F.cross_entropy_forward(logits, [0, 1, 2, 0], weight=[1.0, 2.0])
    with pytest.raises(IndexError, match=r"target: class -1 is out of range \[0, 3\) or -100"):
        fastnn.CrossEntropyLoss()(logits, [0, -1, 2, -100])
    loss_fn = fastnn.CrossEntropyLoss(reduction="none")
    loss_fn(logits, [0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"dloss: expected shape \(4,\)"):
        loss_fn.backward(np.ones(3))
    with pytest.raises(ValueError, match="dloss: expected a number"):
        loss_fn.backward("1")
    with pytest.raises(ValueError, match="dloss: expected a number, the gradient of the mean "
                                         r"loss, got an array of shape \(4,\)"):
        loss_fn = fastnn.CrossEntropyLoss()
        loss_fn(logits, [0, 1, 2, 0])
        loss_fn.backward(np.ones(4))
    with pytest.raises(ValueError, match="read-only"):
        fastnn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0]).weight[0] = 5


def test_cross_entropy_options_set_later_take_effect():
    logits, target = ce_problem(6, 3, np.float64, seed=17)
    loss_fn = fastnn.CrossEntropyLoss()
    plain = loss_fn(logits, target)
    loss_fn.label_smoothing = 0.2
    loss_fn.weight = [1.0, 2.0, 0.5]
    loss_fn.ignore_index = int(target[0])
    want = F.cross_entropy_forward(logits, target, weight=[1.0, 2.0, 0.5],
                                   ignore_index=int(target[0]), label_smoothing=0.2)[0]
    assert loss_fn(logits, target) == want != plain
    with pytest.raises(ValueError, match="reduction: expected one of"):
        loss_fn.reduction = "avg"
    assert loss_fn.reduction == "mean"
    assert repr(loss_fn) == (f"CrossEntropyLoss(weight=[1.0, 2.0, 0.5], "
                             f"ignore_index={target[0]}, label_smoothing=0.2)")
