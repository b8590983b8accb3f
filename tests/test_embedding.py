"""Embedding (gather / scatter-add) and Flatten: native vs the NumPy twin, index checks,
repeated indices, threads, the layers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from helpers import assert_close, on_one_and_two_threads

DTYPES = [np.float32, np.float64]
BACKENDS = ["reference", "native"]


def make_table(V, D, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((V, D)).astype(dtype)


# ---- forward ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 4)])
def test_forward_gathers_rows(shape, dtype, backend):
    V, D = 10, 6
    weight = make_table(V, D, dtype)
    idx = np.random.default_rng(1).integers(0, V, shape)
    with fastnn.use_backend(backend):
        out = F.embedding_forward(weight, idx)
    assert out.shape == shape + (D,) and out.dtype == dtype
    for pos in np.ndindex(shape):
        np.testing.assert_array_equal(out[pos], weight[idx[pos]])


@pytest.mark.parametrize("idx_dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8,
                                       np.uint16, np.uint32, np.uint64])
def test_integer_index_dtypes_accepted(idx_dtype):
    weight = make_table(7, 3, np.float32)
    idx = np.array([[6, 0], [3, 3]], idx_dtype)
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            np.testing.assert_array_equal(F.embedding_forward(weight, idx),
                                          weight[idx.astype(np.int64)])
    layer = fastnn.Embedding(7, 3)
    np.testing.assert_array_equal(layer(idx), layer.weight.data[idx.astype(np.int64)])
    assert np.array_equal(F.embedding_forward(weight, [1, 2]), weight[[1, 2]])  # a list too


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.array([1, 2], np.float32),
                                 np.array([True, False]), np.array(["1"])])
def test_non_integer_indices_raise_type_error(bad):
    weight = make_table(5, 2, np.float64)
    with pytest.raises(TypeError, match="idx: expected an integer array, got dtype"):
        F.embedding_forward(weight, bad)
    with pytest.raises(TypeError, match="idx: expected an integer array"):
        F.embedding_backward(np.zeros_like(weight), np.zeros((2, 2)), bad)
    with pytest.raises(TypeError, match="idx: expected an integer array"):
        fastnn.Embedding(5, 2)(bad)


@pytest.mark.parametrize("bad, named", [(10, "10"), (11, "11"), (-1, "-1"), (-10, "-10"),
                                        (2**40, str(2**40))])
def test_out_of_range_indices_raise_index_error(bad, named):
    weight = make_table(10, 3, np.float32)
    idx = np.array([[0, 9], [4, bad]])
    message = rf"idx: index {named} is out of range \[0, 10\)"
    with pytest.raises(IndexError, match=message):
        F.embedding_forward(weight, idx)
    with pytest.raises(IndexError, match=message):
        F.embedding_backward(np.zeros_like(weight), np.zeros((2, 2, 3), np.float32), idx)
    with pytest.raises(IndexError, match=message):
        fastnn.Embedding(10, 3)(idx)


def test_huge_unsigned_index_is_named():
    with pytest.raises(IndexError, match="index 18446744073709551615 is out of range"):
        F.embedding_forward(make_table(5, 2, np.float32), np.array([2**64 - 1], np.uint64))


def test_zero_dim_index():
    weight = make_table(5, 3, np.float64)
    out = F.embedding_forward(weight, np.int64(2))
    assert out.shape == (3,)


def test_forward_errors():
    weight = make_table(5, 3, np.float32)
    with pytest.raises(ValueError, match="weight: expected a 2-d array"):
        F.embedding_forward(weight[0], [1])
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3\)"):
        F.embedding_forward(weight, [1, 2], out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="out: must not share memory with weight"):
        F.embedding_forward(weight, [1], out=weight[:1])


# ---- backward ----

def scatter_add_loop(dweight, dy, idx):
    """The definition, one row at a time, in order."""
    for i, row in zip(idx.reshape(-1), dy.reshape(-1, dweight.shape[1])):
        dweight[i] += row
    return dweight


def backward_both(V, D, idx, dtype, seed=2):
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(idx.shape + (D,)).astype(dtype)
    start = rng.standard_normal((V, D)).astype(dtype)  # the gradient accumulates onto this
    results = {}
    for backend in BACKENDS:
        with fastnn.use_backend(backend):
            dweight = start.copy()
            assert F.embedding_backward(dweight, dy, idx) is dweight
            results[backend] = dweight
    return start, dy, results


@settings(max_examples=60, deadline=None)
@given(V=st.integers(1, 12), D=st.integers(1, 40),
       shape=st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_backward_matches_reference_small(V, D, shape, dtype, seed):
    idx = np.random.default_rng(seed).integers(0, V, shape)
    start, dy, got = backward_both(V, D, idx, dtype, seed)
    if dtype == np.float64:
        np.testing.assert_array_equal(got["native"], got["reference"])
    else:
        assert_close(got["native"], got["reference"], dtype)
    np.testing.assert_array_equal(got["reference"], scatter_add_loop(start.copy(), dy, idx))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V, D, shape", [(3, 100, (50, 40)), (1000, 64, (3000,)),
                                         (5, 17, (4, 25, 30))])
def test_backward_matches_reference_large(V, D, shape, dtype):
    idx = np.random.default_rng(3).integers(0, V, shape)
    _, _, got = backward_both(V, D, idx, dtype)
    if dtype == np.float64:
        np.testing.assert_array_equal(got["native"], got["reference"])
    else:
        assert_close(got["native"], got["reference"], dtype)


@pytest.mark.parametrize("backend", [
    "reference",
    "native"])
def test_backward_zero_width(backend):
    dweight = np.zeros((3, 0))
    with fastnn.use_backend(backend):
        assert F.embedding_forward(dweight, [[1, 2]]).shape == (1, 2, 0)
        assert F.embedding_backward(dweight, np.zeros((1, 2, 0)), [[1, 2]]) is dweight


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_indices_add_up(backend):
    idx = np.array([[2, 0, 2], [2, 4, 0]])
    dy = np.arange(6 * 2, dtype=np.float64).reshape(2, 3, 2) + 1
    dweight = np.full((5, 2), 0.5)
    with fastnn.use_backend(backend):
        F.embedding_backward(dweight, dy, idx)
    want = np.full((5, 2), 0.5)
    want[2] += dy[0, 0] + dy[0, 2] + dy[1, 0]
    want[0] += dy[0, 1] + dy[1, 2]
    want[4] += dy[1, 1]
    np.testing.assert_array_equal(dweight, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_one_and_two_threads_bitwise_equal(dtype, threads):
    # 20000 lookups of 5 rows: each row gets ~4000 additions, summed in a fixed order;
    # D = 64 splits the columns into blocks for two threads
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 5, 20_000)
    dy = rng.standard_normal((20_000, 64)).astype(dtype)
    results = on_one_and_two_threads(
        lambda: F.embedding_backward(np.zeros((5, 64), dtype), dy, idx))
    np.testing.assert_array_equal(results[0], results[1])
    with fastnn.use_backend("reference"):
        want = F.embedding_backward(np.zeros((5, 64), dtype), dy, idx)
    assert_close(results[0], want, dtype)


def test_forward_one_and_two_threads_bitwise_equal(threads):
    weight = make_table(50, 96, np.float32)
    idx = np.random.default_rng(5).integers(0, 50, (40, 30))
    results = on_one_and_two_threads(lambda: F.embedding_forward(weight, idx))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], weight[idx])


def test_backward_errors():
    dweight = np.zeros((5, 3), np.float32)
    idx = np.array([1, 2])
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\), got \(2, 4\)"):
        F.embedding_backward(dweight, np.zeros((2, 4), np.float32), idx)
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        F.embedding_backward(dweight, np.zeros((2, 3), np.float64), idx)
    with pytest.raises(TypeError, match="dweight: expected a float32 or float64"):
        F.embedding_backward(np.zeros((5, 3), np.int64), np.zeros((2, 3)), idx)
    with pytest.raises(ValueError, match="dweight: expected a C-contiguous array"):
        F.embedding_backward(np.zeros((3, 5), np.float32).T, np.zeros((2, 3), np.float32), idx)


# ---- the Embedding layer ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_layer(dtype):
    fastnn.manual_seed(0)
    layer = fastnn.Embedding(9, 4, dtype=dtype)
    assert layer.weight.shape == (9, 4) and layer.weight.dtype == dtype
    idx = np.array([[1, 8, 1], [0, 1, 8]])
    out = layer(idx)
    np.testing.assert_array_equal(out, layer.weight.data[idx])
    dy = np.random.default_rng(6).standard_normal((2, 3, 4)).astype(dtype)
    assert layer.backward(dy) is None
    want = scatter_add_loop(np.zeros((9, 4), dtype), dy, idx)
    np.testing.assert_array_equal(layer.weight.grad, want)
    layer.backward(dy)  # accumulates
    np.testing.assert_array_equal(layer.weight.grad, scatter_add_loop(want.copy(), dy, idx))
    assert layer(idx[::-1]) is out  # the output buffer is reused for the same shape
    layer.zero_grad()
    assert not layer.weight.grad.any()


def test_embedding_layer_errors():
    layer = fastnn.Embedding(4, 2)
    with pytest.raises(ValueError, match="Embedding.backward: called before forward"):
        layer.backward(np.zeros((1, 2), np.float32))
    layer(np.array([0, 3]))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 2\)"):
        layer.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(IndexError, match="idx: index 4 is out of range"):
        layer(np.array([4]))
    with pytest.raises(ValueError, match="num_embeddings: expected a positive int"):
        fastnn.Embedding(0, 2)
    with pytest.raises(TypeError, match="embedding_dim: expected a positive int"):
        fastnn.Embedding(3, 2.0)


# ---- Flatten ----

@pytest.mark.parametrize("shape, flat", [((2, 3, 4), (2, 12)), ((5, 7), (5, 7)), ((3,), (3, 1)),
                                         ((2, 1, 3, 2), (2, 6)), ((2, 0, 3), (2, 0))])
def test_flatten_forward_backward(shape, flat):
    layer = fastnn.Flatten()
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    y = layer(x)
    assert y.shape == flat
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    assert x.size == 0 or np.shares_memory(y, x)  # no copy for a contiguous input
    dy = -np.arange(np.prod(shape), dtype=np.float32).reshape(flat)
    dx = layer.backward(dy)
    assert dx.shape == shape
    np.testing.assert_array_equal(dx.reshape(-1), dy.reshape(-1))


def test_flatten_non_contiguous_input():
    x = np.arange(24.0).reshape(2, 3, 4).transpose(0, 2, 1)
    y = fastnn.Flatten()(x)
    np.testing.assert_array_equal(y, x.reshape(2, 12))


@pytest.mark.parametrize("shape, flat", [((0, 3, 4), (0, 12)), ((0, 5), (0, 5))])
def test_flatten_empty_batch(shape, flat):
    layer = fastnn.Flatten()
    assert layer(np.zeros(shape, np.float32)).shape == flat
    assert layer.backward(np.zeros(flat, np.float32)).shape == shape


def test_flatten_errors():
    layer = fastnn.Flatten()
    with pytest.raises(ValueError, match="Flatten.backward: called before forward"):
        layer.backward(np.zeros((2, 12)))
    with pytest.raises(ValueError, match="x: expected at least a 1-d array"):
        layer(np.float32(1.0))
    layer(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 12\), got \(2, 3, 4\)"):
        layer.backward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 12\), got \(12, 2\)"):
        layer.backward(np.zeros((12, 2)))
