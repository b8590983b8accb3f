"""Dropout: argument checks, identity cases, the inverted scaling, the mask's statistics and
reproducibility, native vs the NumPy twin (bitwise), threads."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import on_one_and_two_threads

DTYPES = [np.float32, np.float64]
BACKENDS = ["reference", "native"]


def nonzero_data(shape, dtype, seed=0):
    """Values in +-[0.5, 2.5): never 0, so a zero in the output is a dropped unit."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2.5, shape) * rng.choice([-1.0, 1.0], shape)
    return np.asarray(x, dtype)


# ---- arguments ----

@pytest.mark.parametrize("p", [1, 1.0, -0.1, 1.5, float("nan"), True])
def test_layer_rejects_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match="p: expected a probability in"):
        fastnn.Dropout(p=p)


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan"), "0.5"])
def test_functional_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p: expected a probability in"):
        F.dropout_apply(np.ones(3), p, seed=0)


@pytest.mark.parametrize("name", ["seed", "offset"])
@pytest.mark.parametrize("value", [-1, 2**64, 1.5, True, "3", None, np.int64(-2)])
def test_functional_rejects_bad_seed_and_offset(name, value):
    kwargs = {"seed": 0, "offset": 0, name: value}
    with pytest.raises(ValueError, match=f"{name}: expected an integer in"):
        F.dropout_apply(np.ones(3), 0.5, **kwargs)


def test_functional_rejects_bad_x():
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        F.dropout_apply(np.ones(3, np.int64), 0.5, 0)


@pytest.mark.parametrize("value", [0, 2**64 - 1, np.uint64(2**64 - 1), np.int64(7)])
def test_functional_accepts_seed_and_offset_range(value):
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            assert F.dropout_apply(np.ones(4), 0.5, seed=value, offset=value).shape == (4,)


# ---- identity cases ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_in_eval_mode(dtype):
    layer = fastnn.Dropout(0.5, seed=1).eval()
    x = nonzero_data((8, 9), dtype)
    dy = nonzero_data((8, 9), dtype, seed=1)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(dy), dy)
    assert layer.counter == 0  # no mask drawn
    layer.train()
    assert (layer(x) == 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_for_p_zero(dtype):
    layer = fastnn.Dropout(0.0, seed=2)
    x = nonzero_data((50_000,), dtype)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * x)
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            np.testing.assert_array_equal(F.dropout_apply(x, 0.0, seed=3), x)


# ---- the training forward and backward ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1 / 3])
def test_kept_units_scaled_by_inverse_keep_probability(p, dtype, backend):
    x = nonzero_data((100, 457), dtype, seed=4)
    with fastnn.use_backend(backend):
        layer = fastnn.Dropout(p, seed=5)
        y = layer(x)
    kept = y != 0
    assert 0 < kept.sum() < kept.size
    assert y.dtype == dtype and y.shape == x.shape
    scale = dtype(1 / (1 - p))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_kept_fraction_close_to_keep_probability(p):
    n = 1_000_000
    y = fastnn.Dropout(p, seed=6)(np.ones(n, np.float32))
    kept = np.count_nonzero(y) / n
    sigma = np.sqrt(p * (1 - p) / n)  # binomial standard deviation of the fraction
    assert abs(kept - (1 - p)) < 5 * sigma, (kept, 1 - p, sigma)
    # and spread evenly: each tenth of the array keeps its share too
    tenths = np.count_nonzero(y.reshape(10, -1), axis=1) / (n / 10)
    assert np.all(np.abs(tenths - (1 - p)) < 5 * np.sqrt(10) * sigma), tenths


def test_masks_of_neighbouring_seeds_and_elements_are_independent():
    # a weak generator shows up as correlation between streams or between adjacent counters
    n = 400_000
    a = F.dropout_apply(np.ones(n), 0.5, seed=1) != 0
    b = F.dropout_apply(np.ones(n), 0.5, seed=2) != 0
    bound = 5 / np.sqrt(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    assert abs(np.corrcoef(a[1:], a[:-1])[0, 1]) < bound


def test_same_seed_reproduces_the_mask():
    x = nonzero_data((64, 33), np.float32)
    fastnn.manual_seed(123)
    first = fastnn.Dropout(0.5)
    fastnn.manual_seed(123)
    second = fastnn.Dropout(0.5)
    assert first.seed == second.seed
    y1, y2 = first(x).copy(), second(x).copy()
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(first(x), second(x))  # and the next masks too
    np.testing.assert_array_equal(fastnn.Dropout(0.5, seed=77)(x), fastnn.Dropout(0.5, seed=77)(x))
    fastnn.manual_seed(124)
    assert not np.array_equal(fastnn.Dropout(0.5)(x), y1)
    assert not np.array_equal(fastnn.Dropout(0.5, seed=78)(x), fastnn.Dropout(0.5, seed=77)(x))


def test_consecutive_forwards_use_fresh_masks():
    x = nonzero_data((32, 50), np.float64)
    layer = fastnn.Dropout(0.5, seed=8)
    y1 = layer(x).copy()
    y2 = layer(x).copy()
    assert not np.array_equal(y1 != 0, y2 != 0)
    # the counter advances by the element count: two forwards are one call over twice the data
    both = F.dropout_apply(np.concatenate([x, x]), 0.5, seed=8)
    np.testing.assert_array_equal(np.concatenate([y1, y2]), both)
    assert layer.counter == 2 * x.size


def test_counter_wraps_around_2_to_the_64():
    x = nonzero_data((10,), np.float64)
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            tail = F.dropout_apply(x[:4], 0.5, seed=9, offset=2**64 - 4)
            head = F.dropout_apply(x[4:], 0.5, seed=9, offset=0)
            whole = F.dropout_apply(x, 0.5, seed=9, offset=2**64 - 4)
        np.testing.assert_array_equal(whole, np.concatenate([tail, head]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_applies_the_forward_mask(dtype):
    p = 0.3
    layer = fastnn.Dropout(p, seed=10)
    x = nonzero_data((20, 30), dtype, seed=11)
    dy = nonzero_data((20, 30), dtype, seed=12)
    layer(x)
    y = layer(x).copy()  # the second forward's mask is the one to use
    dx = layer.backward(dy)
    kept = y != 0
    np.testing.assert_array_equal(dx, np.where(kept, dy * dtype(1 / (1 - p)), 0))
    # the backward draws nothing: a repeat gives the same, the next forward a new mask
    np.testing.assert_array_equal(layer.backward(dy), np.where(kept, dy * dtype(1 / (1 - p)), 0))
    assert not np.array_equal(layer(x) != 0, kept)


def test_backward_errors():
    layer = fastnn.Dropout(0.5, seed=0)
    with pytest.raises(ValueError, match="Dropout.backward: called before forward"):
        layer.backward(np.ones((2, 3), np.float32))
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\), got \(3, 2\)"):
        layer.backward(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        layer.backward(np.ones((2, 3), np.float64))


# ---- native vs reference, threads ----

@settings(max_examples=80, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from(DTYPES), p=st.floats(0, 0.99),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1))
def test_native_matches_reference_bitwise_small(shape, dtype, p, seed, offset):
    x = nonzero_data(shape, dtype, seed=seed % 1000)
    with fastnn.use_backend("reference"):
        want = F.dropout_apply(x, p, seed, offset)
    got = F.dropout_apply(x, p, seed, offset)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_native_matches_reference_bitwise_large(p, dtype):
    x = nonzero_data((333, 301), dtype, seed=13)
    with fastnn.use_backend("reference"):
        want = F.dropout_apply(x, p, seed=2**63 + 5, offset=12345)
    np.testing.assert_array_equal(F.dropout_apply(x, p, seed=2**63 + 5, offset=12345), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_bitwise_equal(dtype, threads):
    x = nonzero_data((100_003,), dtype, seed=14)

    def run():
        layer = fastnn.Dropout(0.4, seed=15)
        return layer(x).copy(), layer.backward(x).copy()

    for a, b in zip(*on_one_and_two_threads(run)):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_input():
    x = nonzero_data((40, 30), np.float64)
    np.testing.assert_array_equal(F.dropout_apply(x.T, 0.5, seed=16),
                                  F.dropout_apply(np.ascontiguousarray(x.T), 0.5, seed=16))


def test_reassigned_p_is_checked_by_name():
    layer = fastnn.Dropout(0.5)
    layer.p = 1.5
    with pytest.raises(ValueError, match=r"p: expected a probability in \[0, 1\), got 1.5"):
        layer(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_textbooks_dropout_written_out(dtype):
    """inverted=False ("Deep Learning from Scratch"): training x * mask, no scaling, and the
    backward dy * mask; evaluation x * (1 - p), the backward dy * (1 - p). The mask is the
    inverted form's (the same seed and counter): mask = inverted output != 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 50)).astype(dtype) + 3  # no zeros in x
    dy = rng.standard_normal((8, 50)).astype(dtype)
    book, inv = fastnn.Dropout(0.3, seed=7, inverted=False), fastnn.Dropout(0.3, seed=7)
    mask = inv(x) != 0
    y = book(x)
    np.testing.assert_array_equal(y, np.where(mask, x, 0))
    np.testing.assert_array_equal(book.backward(dy), np.where(mask, dy, 0))
    book.eval()
    np.testing.assert_array_equal(book(x), x * dtype(1 - 0.3))
    np.testing.assert_array_equal(book.backward(dy), dy * dtype(1 - 0.3))
    assert book.config()["inverted"] is False and "inverted=False" in repr(book)


def test_a_textbook_dropout_round_trips_through_a_file(tmp_path):
    model = fastnn.Sequential(fastnn.Linear(4, 4), fastnn.Dropout(0.2, inverted=False))
    fastnn.save(model, tmp_path / "m.npz")
    assert fastnn.load(tmp_path / "m.npz")[1].inverted is False
    with pytest.raises(TypeError, match="inverted"):
        fastnn.Dropout(0.2, inverted="no")
