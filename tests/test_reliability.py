"""Bad input and edge values: a clear exception or PyTorch's answer, never a crash or a silent
wrong result (issue 15)."""
import os

import numpy as np
import pytest

import fastnn
from fastnn import functional as F

f32 = np.float32


@pytest.mark.parametrize("call, name", [
    (lambda p: F.sgd_step(p, None, None, 0.1), "grad"),
    (lambda p: F.sgd_step(p, None, np.ones(4, f32), 0.1, momentum=0.9), "buf"),
    (lambda p: F.adagrad_step(p, None, np.ones(4, f32), 0.1), "state_sum"),
    (lambda p: F.rmsprop_step(p, None, None, None, np.ones(4, f32), 0.1), "square_avg"),
    (lambda p: F.rmsprop_step(p, np.ones(4, f32), None, None, np.ones(4, f32), 0.1,
                              momentum=0.9), "momentum_buf"),
    (lambda p: F.adam_step(p, None, None, None, np.ones(4, f32), 0.1), "exp_avg"),
    (lambda p: F.adam_step(p, np.ones(4, f32), None, None, np.ones(4, f32), 0.1),
     "exp_avg_sq"),
])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_optimizer_kernels_refuse_missing_state(call, name, backend):
    p = np.ones(4, f32)
    with fastnn.use_backend(backend), pytest.raises((TypeError, ValueError), match=name):
        call(p)
    np.testing.assert_array_equal(p, 1)  # untouched


@pytest.mark.parametrize("call, name", [
    (lambda p, s: F.adam_step(p, s(), s(), None, s(), 0.1, beta1=1.0), "beta1"),
    (lambda p, s: F.adam_step(p, s(), s(), None, s(), 0.1, beta2=1.5), "beta2"),
    (lambda p, s: F.adam_step(p, s(), s(), None, s(), float("nan")), "lr"),
    (lambda p, s: F.sgd_step(p, None, s(), float("nan")), "lr"),
    (lambda p, s: F.sgd_step(p, None, s(), -0.1), "lr"),
    (lambda p, s: F.sgd_step(p, s(), s(), 0.1, momentum=0.9, dampening=0.5, nesterov=True),
     "nesterov"),
    (lambda p, s: F.rmsprop_step(p, s(), None, None, s(), 0.1, alpha=2.0), "alpha"),
    (lambda p, s: F.adagrad_step(p, s(), s(), 0.1, eps=float("nan")), "eps"),
])
def test_optimizer_kernels_refuse_what_the_optimizers_refuse(call, name):
    p = np.ones(4, f32)
    with pytest.raises(ValueError, match=name):
        call(p, lambda: np.ones(4, f32))
    np.testing.assert_array_equal(p, 1)


def test_dropout_refuses_an_output_overlapping_its_input():
    big = np.ones(16, f32)
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        F.dropout_apply(big[:8], 0.0, seed=1, offset=0, out=big[1:9])


def test_clamp_with_lo_above_hi_gives_hi_as_numpy_and_torch():
    x = np.array([-2.0, 0.0, 2.0, np.nan], f32)
    want = np.clip(x, 1.0, -1.0)  # [-1, -1, -1, nan]
    F.clamp_inplace(x, 1.0, -1.0)
    np.testing.assert_array_equal(x, want)


def bn_train(x, weight=None, bias=None):
    C = x.shape[1]
    return F.batchnorm_forward(x, weight, bias, np.zeros(C, x.dtype), np.ones(C, x.dtype))[0]


def test_batchnorm_float32_normalises_centred_data_far_from_zero():
    x = np.full((8, 3), 1e4, f32)
    x[:, 1] += np.arange(8, dtype=f32)  # offset data, spread 8
    x[:, 2] = -3e4
    beta = np.array([0.5, -0.25, 2.0], f32)
    y = bn_train(x, np.ones(3, f32), beta)
    np.testing.assert_array_equal(y[:, 0], beta[0])  # a constant channel: exactly beta
    np.testing.assert_array_equal(y[:, 2], beta[2])
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5) + beta
    np.testing.assert_allclose(y[:, 1], want[:, 1], rtol=0, atol=1e-5)


def test_batchnorm_inf_weight_gives_the_limit():
    """torch's x * alpha + (beta - mean * alpha) gives NaN everywhere here (inf - inf); the
    centred form gives (x - mean) * invstd * inf: +-inf where x != mean, and 0 * inf = NaN
    only where x == mean (documented in batchnorm_forward)."""
    x = np.array([[1.0, 2.0], [3.0, 2.0]], f32)  # channel 1 constant: x - mean = 0
    y = bn_train(x, np.array([np.inf, np.inf], f32), np.zeros(2, f32))
    np.testing.assert_array_equal(y[:, 0], [-np.inf, np.inf])
    assert np.isnan(y[:, 1]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_eval_negative_running_var_is_nan_as_torch(dtype):
    x = np.ones((2, 3), dtype)
    y, _, _ = F.batchnorm_forward(x, None, None, np.zeros(3, dtype),
                                  np.array([-1.0, -np.inf, 1.0], dtype), training=False)
    assert np.isnan(y[:, :2]).all() and np.isfinite(y[:, 2]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_eval_backward_keeps_a_nan_of_x_out_of_dx(dtype):
    x = np.array([[np.nan, 1.0], [2.0, 3.0]], dtype)
    rm, rv = np.zeros(2, dtype), np.ones(2, dtype)
    y, mean, invstd = F.batchnorm_forward(x, None, None, rm, rv, training=False)
    dx = F.batchnorm_backward(np.ones_like(x), x, y, mean, invstd, training=False)
    np.testing.assert_allclose(dx, np.full_like(x, 1 / np.sqrt(1 + 1e-5)), rtol=1e-6)


def test_amsgrad_keeps_a_nan_of_max_exp_avg_sq_as_torch_maximum():
    p = np.ones(2, f32)
    vmax = np.array([np.nan, 0.0], f32)
    F.adam_step(p, np.zeros(2, f32), np.zeros(2, f32), vmax, np.ones(2, f32), 0.1)
    assert np.isnan(vmax[0]) and np.isnan(p[0])
    assert np.isfinite(p[1])


def test_clip_grad_norm_with_a_nan_norm_makes_the_gradients_nan_as_torch():
    layer = fastnn.Linear(2, 2)
    layer.weight.grad[...] = [[np.nan, 1.0], [1.0, 1.0]]
    layer.bias.grad[...] = 1.0
    total = fastnn.optim.clip_grad_norm_(layer.parameters(), 1.0)
    assert np.isnan(total)
    assert np.isnan(layer.weight.grad).all() and np.isnan(layer.bias.grad).all()


def test_float32_exp_gives_subnormals():
    """softmax's exp below -87.3 (2^-126): subnormal, not 0, as numpy and torch."""
    x = np.array([0.0, -88.0, -95.0, -100.0, -103.0, -104.0, -200.0], f32)
    got = F.softmax_forward(x)
    x64 = x.astype(np.float64)
    want = (np.exp(x64 - x64.max()) / np.exp(x64 - x64.max()).sum()).astype(f32)
    assert want[1:5].min() > 0 and want[1:5].max() < np.finfo(f32).tiny  # subnormal
    # within two subnormal steps (2^-149 each) or 2 ulp of the normal ones
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=3e-45)


def test_misaligned_inputs_are_copied_and_outputs_refused():
    x = np.frombuffer(bytearray(4 * 6 + 1), f32, 6, offset=1)  # np.frombuffer at an odd offset
    assert not x.flags.aligned
    np.testing.assert_array_equal(F.activation_forward(x, "relu"), 0)
    w = np.ones((3, 3), f32)
    out_buf = bytearray(4 * 6 + 1)
    out = np.frombuffer(out_buf, f32, 6, offset=1).reshape(2, 3)
    assert out.flags.writeable and not out.flags.aligned
    with pytest.raises(ValueError, match="out: expected an array aligned"):
        F.linear_forward(np.ones((2, 3), f32), w, out=out)
    idx = np.frombuffer(bytearray(8 * 3 + 1), np.int64, 3, offset=1)
    np.testing.assert_array_equal(F.embedding_forward(np.eye(3, dtype=f32), idx),
                                  np.eye(3)[[0, 0, 0]])
    with pytest.raises(ValueError, match="p: expected an array aligned"):
        F.sgd_step(np.frombuffer(bytearray(17), f32, 4, offset=1), None, np.ones(4, f32), 0.1)


def test_models_built_in_two_threads_at_once_get_the_weights_of_one_built_alone():
    import threading

    fastnn.manual_seed(5)
    alone = fastnn.Linear(300, 300).weight.data.copy()
    built, start = {}, threading.Barrier(2)

    def build(name):
        start.wait()
        built[name] = [fastnn.Linear(300, 300).weight.data.copy() for _ in range(3)][0]

    fastnn.manual_seed(5)
    threads = [threading.Thread(target=build, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(built["a"], alone)
    np.testing.assert_array_equal(built["b"], alone)


# ---- model files ----

def write_npz(path, members, compress=False):
    """A .npz by hand: members {name: array or bytes}."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, value in members.items():
            if isinstance(value, bytes):
                z.writestr(name, value)
            else:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
                z.writestr(name + ".npy", buf.getvalue())


def architecture(spec):
    import json

    return np.array(json.dumps(spec))


def peak_bytes(call):
    import tracemalloc

    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("spec, arrays", [
    ({"type": "Linear", "in_features": 30000, "out_features": 30000, "bias": True,
      "dtype": "float32", "activation": None, "init": None}, {}),
    ({"type": "Linear", "in_features": 30000, "out_features": 30000, "bias": False,
      "dtype": "float32", "activation": None, "init": None},
     {"weight": np.zeros((2, 2), f32)}),
    ({"type": "Embedding", "num_embeddings": 100000, "embedding_dim": 10000,
      "dtype": "float32"}, {}),
])
def test_a_small_file_claiming_a_huge_model_fails_before_allocating(tmp_path, spec, arrays):
    path = tmp_path / "huge.npz"
    write_npz(path, {"__fastnn_architecture__": architecture(spec), **arrays})
    assert path.stat().st_size < 2000

    def load():
        with pytest.raises(fastnn.ModelFileError, match="huge.npz"):
            fastnn.load(path)

    assert peak_bytes(load) < 1 << 20


def test_a_header_claiming_more_than_the_file_holds_fails_before_allocating(tmp_path):
    import zipfile

    spec = {"type": "Linear", "in_features": 30000, "out_features": 30000, "bias": False,
            "dtype": "float32", "activation": None, "init": None}
    path = tmp_path / "lying.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), f32))
    header["shape"] = (30000, 30000)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    write_npz(path, {"__fastnn_architecture__": architecture(spec)})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("weight.npy", buf.getvalue() + b"\0" * 64)  # data cut short

    def load():
        with pytest.raises(fastnn.ModelFileError, match="weight: the member holds 64 bytes"):
            fastnn.load(path)

    assert peak_bytes(load) < 1 << 20


def test_an_extra_compressed_member_is_never_inflated(tmp_path):
    import zipfile

    model = fastnn.Sequential(fastnn.Linear(4, 3))
    path = tmp_path / "bomb.npz"
    fastnn.save(model, path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("extra.npy", "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(256):  # 256 MB that deflate to about 256 KB
                f.write(zeros)
    assert path.stat().st_size < 2 << 20

    def load():
        with pytest.raises(fastnn.ModelFileError, match="unexpected.*extra.npy"):
            fastnn.load(path)

    assert peak_bytes(load) < 1 << 20


def test_every_malformed_file_raises_one_error_naming_the_file(tmp_path):
    good = tmp_path / "good.npz"
    fastnn.save(fastnn.Sequential(fastnn.Linear(3, 2), fastnn.Dropout(0.1)), good)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "text": b"not a zip file at all",
        "truncated": data[:len(data) // 2],
        "tail": data[len(data) // 2:],
        "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],
    }
    for name, content in cases.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
    specs = {
        "json": b'{"type": "Linear", ',
        "deep": b"[" * 100000 + b"]" * 100000,
        "number": b"3",
        "unknown": b'{"type": "Conv2d"}',
        "badsize": b'{"type": "Linear", "in_features": -1, "out_features": 2}',
        "baddtype": b'{"type": "Linear", "in_features": 1, "out_features": 2, "dtype": "int8"}',
        "nested": b'{"type": "Sequential", "layers": 5}',
    }
    for name, text in specs.items():
        write_npz(tmp_path / f"{name}.npz",
                  {"__fastnn_architecture__": np.array(text.decode())})
    write_npz(tmp_path / "noarch.npz", {"weight": np.zeros(2)})
    write_npz(tmp_path / "pickled.npz", {"__fastnn_architecture__.npy": b"\x93NUMPY garbage"})
    for path in sorted(tmp_path.glob("*.npz")):
        if path.name == "good.npz":
            continue
        with pytest.raises(fastnn.ModelFileError, match=path.name):
            fastnn.load(path)
    assert issubclass(fastnn.ModelFileError, ValueError)
    with pytest.raises(FileNotFoundError):
        fastnn.load(tmp_path / "missing.npz")


def test_a_save_removes_the_temporaries_a_killed_save_left(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "model.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".model.npz.{dead}.abc123.tmp"
    alive = tmp_path / f".model.npz.{os.getpid()}.def456.tmp"  # a save in progress here
    other = tmp_path / f".other.npz.{dead}.abc123.tmp"
    for p in (stale, alive, other):
        p.write_bytes(b"partial")
    fastnn.save(fastnn.Linear(2, 2), path)
    assert not stale.exists() and alive.exists() and other.exists()
    assert fastnn.load(path) is not None


def test_fuzz_the_functional_api_and_the_layers_in_a_subprocess():
    """tests/fuzz_api.py: seeded hypothesis examples of bad arguments; a crash (a signal)
    or an exception other than TypeError, ValueError and IndexError fails."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "fuzz_api.py")
    run = subprocess.run([sys.executable, script, "1500"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (f"exit {run.returncode}\n{run.stdout[-3000:]}\n"
                                 f"{run.stderr[-3000:]}")
