"""fastnn's matrix-product core (csrc/gemm.c) through Linear: every path against the NumPy twin
at the shapes that hit its edges, the AVX-512 and AVX2 paths bit for bit, 1 and 2 threads bit
for bit, and the choice of path (FASTNN_ISA, set_isa, build_info)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _native
from fastnn import functional as F
from helpers import assert_close
from test_linear import ACTS, DTYPES, check_native_matches_reference, make_problem

SUPPORTED = [name for name in fastnn.runtime.ISAS if _native.isa_supported(name)]
FMA_PATHS = [name for name in ("avx512", "avx2") if name in SUPPORTED]

# Tiles are 8x48 / 6x16 floats (8x24 / 6x8 doubles), row blocks of 64 to 256 rows, column
# blocks up to 4 panels, K chunks of 512 floats / 256 doubles: sizes 1, primes, one past a
# tile, a block or a chunk, 256-row blocks (520, 300, 700), K = 1, an empty batch, no input
# features and no outputs.
EDGE_SHAPES = [(1, 1, 1), (2, 3, 5), (7, 13, 29), (8, 48, 48), (9, 49, 97), (6, 16, 17),
               (65, 257, 193), (3, 1, 17), (131, 1031, 37), (600, 20, 31), (520, 300, 700),
               (0, 5, 3), (4, 0, 3), (4, 3, 0)]


@pytest.fixture
def isa():
    """Restores the matrix-product path a test changes."""
    saved = fastnn.get_isa()
    yield
    fastnn.set_isa(saved)


def all_outputs(x, w, b, dy, act):
    """Forward, then backward onto non-zero dweight/dbias (they accumulate)."""
    y = F.linear_forward(x, w, b, act)
    dw = np.full_like(w, 0.5)
    db = None if b is None else np.full_like(b, -0.25)
    dx = F.linear_backward(dy, x, w, y, act, dw, db)
    return [y, dx, dw] + ([] if db is None else [db])


@pytest.mark.parametrize("path", SUPPORTED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_every_path_matches_reference(path, shape, dtype, isa):
    fastnn.set_isa(path)
    for act in ACTS:
        for bias in (True, False):
            check_native_matches_reference(*shape, dtype, act, bias=bias, seed=sum(shape))


@pytest.mark.skipif(len(FMA_PATHS) < 2, reason="this CPU has not both AVX-512 and AVX2")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EDGE_SHAPES + [(128, 784, 512)])
def test_avx512_and_avx2_bitwise_equal_on_one_and_two_threads(shape, dtype, isa, threads):
    x, w, b, dy = make_problem(*shape, dtype, seed=7)
    for act in ACTS:
        results = {}
        for path in FMA_PATHS:
            for n in (1, 2):
                fastnn.set_isa(path)
                fastnn.set_num_threads(n)
                results[path, n] = all_outputs(x, w, b, dy, act)
        first = results[FMA_PATHS[0], 1]
        for key, outputs in results.items():
            for name, a, r in zip(["y", "dx", "dweight", "dbias"], outputs, first):
                assert a.tobytes() == r.tobytes(), f"{name} of {key} differs ({act})"


@pytest.mark.parametrize("path", SUPPORTED)
def test_accumulated_weight_gradient_is_the_product_added_once(path, isa):
    # dweight starts at 0.5 and ends near 0.02 (found by hypothesis): summed onto 0.5 term by
    # term, the product rounded at 0.5's scale gave 1.9e-5 relative error; summed first, then
    # added once (as numpy's dw += dz.T @ x), it stays within float32's tolerance
    fastnn.set_isa(path)
    x, w, _, dy = make_problem(25, 1, 1, np.float32, seed=0, bias=False)
    dw = np.full_like(w, 0.5)
    F.linear_backward(dy, x, w, None, "none", dw)
    exact = 0.5 + dy.astype(np.float64).T @ x.astype(np.float64)
    assert abs(exact[0, 0]) < 0.05
    assert_close(dw, exact, np.float32)


@pytest.mark.parametrize("path", ["generic", "blas"])
@pytest.mark.parametrize("shape", [(131, 1031, 37), (300, 97, 513)])
def test_generic_and_blas_paths_do_not_depend_on_the_thread_count(path, shape, isa, threads):
    fastnn.set_isa(path)
    x, w, b, dy = make_problem(*shape, np.float32, seed=8)
    results = []
    for n in (1, 2):
        fastnn.set_num_threads(n)
        results.append(all_outputs(x, w, b, dy, "relu"))
    for a, r in zip(*results):
        assert a.tobytes() == r.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", SUPPORTED)
def test_relu_passes_nan_through(path, dtype, isa):
    fastnn.set_isa(path)
    x = np.array([[1.0, 0.0], [np.nan, 0.0], [-1.0, 0.0], [0.0, 0.0]], dtype)
    w = np.array([[1.0, 3.0], [2.0, 3.0]], dtype)
    b = np.array([0.0, -0.5], dtype)
    y = F.linear_forward(x, w, b, "relu")
    # as the twin's y < 0 ? 0 : y: NaN stays NaN, negatives become +0.0
    expected = np.array([[1.0, 1.5], [np.nan, np.nan], [0.0, 0.0], [0.0, 0.0]], dtype)
    np.testing.assert_array_equal(y, expected)
    assert not np.signbit(y[2:]).any()


def test_set_isa_rejects_unknown_and_unsupported_paths(isa):
    with pytest.raises(ValueError, match=r"name must be one of .*got 'sse9'"):
        fastnn.set_isa("sse9")
    for name in fastnn.runtime.ISAS:
        if name not in SUPPORTED:
            with pytest.raises(ValueError, match="this CPU cannot run"):
                fastnn.set_isa(name)
    assert fastnn.get_isa() in SUPPORTED


def test_build_info_names_the_path(isa):
    for name in SUPPORTED:
        fastnn.set_isa(name)
        assert fastnn.build_info()["isa"] == name


def run_with_isa(value):
    code = "import warnings, fastnn; warnings.simplefilter('always'); print(fastnn.build_info()['isa'])"
    env = dict(os.environ, FASTNN_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(__file__))


def test_fastnn_isa_environment_variable_forces_a_path():
    default = run_with_isa("").stdout.strip()
    assert default == (FMA_PATHS[0] if FMA_PATHS else "blas")
    for name in ("generic", "blas") + tuple(FMA_PATHS):
        assert run_with_isa(name).stdout.strip() == name
    bad = run_with_isa("avx9000")
    assert bad.stdout.strip() == default
    assert "ignoring FASTNN_ISA='avx9000'" in bad.stderr


@pytest.mark.skipif(not FMA_PATHS, reason="no FMA micro-kernel on this CPU")
def test_fma_peak_probe_counts_its_flops(isa):
    # 2 flops per lane per FMA; 24 zmm or 12 ymm chains, as the micro-kernels' accumulators
    per_round = {"avx512": 2 * 16 * 24, "avx2": 2 * 8 * 12}
    for path in FMA_PATHS:
        fastnn.set_isa(path)
        assert _native.fma_peak(1000, 1) == per_round[path] * 1000
        ran = 2 if fastnn.build_info()["openmp"] else 1  # the threads that ran are counted
        assert _native.fma_peak(1000, 2) == ran * per_round[path] * 1000
    fastnn.set_isa("generic")
    assert _native.fma_peak(1000, 1) == 0
