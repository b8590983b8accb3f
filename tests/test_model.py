"""Model-level API: Sequential, named parameters, the flat arena, train/eval, state_dict,
save/load (atomic, pickle-free), fastnn.init, and allocation-free steady-state training."""
import math
import os
import stat
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn import checkpoint, init, optim

# ------------------------------------------------------------------------------ helpers


def char_model(seed=0, dtype=np.float32):
    """The S1 char-level MLP: Embedding(27,10) -> Flatten -> Linear(30,200,no bias) ->
    BatchNorm1d(200, tanh) -> Linear(200,27)."""
    fastnn.manual_seed(seed)
    return fastnn.Sequential(
        fastnn.Embedding(27, 10, dtype=dtype),
        fastnn.Flatten(),
        fastnn.Linear(30, 200, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(200, activation="tanh", dtype=dtype),
        fastnn.Linear(200, 27, dtype=dtype),
    )


def mlp(seed=0, dtype=np.float32, n_in=20, hidden=64, n_out=5, p=0.2):
    fastnn.manual_seed(seed)
    return fastnn.Sequential(
        fastnn.Linear(n_in, hidden, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(hidden, dtype=dtype),
        fastnn.ReLU(),
        fastnn.Dropout(p),
        fastnn.Linear(hidden, n_out, dtype=dtype),
    )


def char_batch(n=32, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 27, (n, 3)), rng.integers(0, 27, n)


def float_batch(n=32, n_in=20, n_out=5, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(dtype), rng.integers(0, n_out, n)


def train_steps(model, X, y, steps=3, lr=0.1):
    opt = optim.SGD(model.parameters(), lr=lr)
    loss_fn = fastnn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), y)
        model.backward(loss_fn.backward())
        opt.step()
    return model


def snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- Sequential


def test_sequential_indexing_len_iter():
    net = char_model()
    layers = list(net)
    assert len(net) == 5 == len(layers)
    assert [type(layer).__name__ for layer in net] == [
        "Embedding", "Flatten", "Linear", "BatchNorm1d", "Linear"]
    assert net[0] is layers[0] and net[-1] is layers[4] and net[3] is layers[3]
    with pytest.raises(IndexError):
        net[5]


def test_sequential_slice_is_sequential_of_same_layers():
    net = char_model()
    head = net[:3]
    assert isinstance(head, fastnn.Sequential)
    assert len(head) == 3 and all(a is b for a, b in zip(head, net.layers[:3]))
    assert [type(m).__name__ for m in net[::2]] == ["Embedding", "Linear", "Linear"]
    assert net[-2:][0] is net[3]
    assert len(net[10:]) == 0
    # slicing must not move parameters out of the parent's arena
    w = net[2].weight
    base = w.data.base
    _ = net[1:4]
    assert w.data.base is base
    x, _ = char_batch()
    # the slice computes the same as the first three layers of the whole
    h = head(x).copy()
    net(x)
    np.testing.assert_array_equal(net.outputs[2], h)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        fastnn.Sequential(fastnn.ReLU(), lambda x: x)


def test_sequential_refuses_a_module_used_twice():
    """One layer object twice would keep only its last use's input for both backwards (the
    weight gradient came out 50-100% off, silently): refused when the model is built."""
    lin, relu = fastnn.Linear(4, 4), fastnn.ReLU()
    with pytest.raises(ValueError, match=r"layers\[2\]: the same Linear object as layers\[0\]"):
        fastnn.Sequential(lin, fastnn.Tanh(), lin)
    with pytest.raises(ValueError, match=r"layers\[3\]: the same ReLU object as layers\[1\]"):
        fastnn.Sequential(fastnn.Linear(4, 4), relu, fastnn.Linear(4, 4), relu)
    with pytest.raises(ValueError, match=r"layers\[1\]: the same Linear object as layers\[0\]\[0\]"):
        fastnn.Sequential(fastnn.Sequential(lin), lin)


def test_second_backward_after_one_forward_raises():
    """It used to double the gradients, silently (PyTorch raises too)."""
    model = fastnn.Sequential(fastnn.Linear(4, 3), fastnn.ReLU(), fastnn.Linear(3, 2))
    x, dy = np.ones((5, 4), np.float32), np.ones((5, 2), np.float32)
    model(x)
    model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="called again after the same forward"):
        model.backward(dy)
    assert all(np.array_equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    model(x)
    model.backward(dy)  # a new forward: accumulates once more
    assert all(np.array_equal(p.grad, 2 * g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_model_trains_exactly_like_the_original(how):
    """A pickled (or deep-copied) model, 64-wide layers, packed into the arena and trained a
    step first: an optimizer takes the copy (it used to fail in the arena: 'bytes' object has
    no attribute 'ndim'), and the two train to the same bits."""
    import copy
    import pickle

    fastnn.manual_seed(5)
    model = fastnn.Sequential(fastnn.Linear(64, 64), fastnn.BatchNorm1d(64, activation="relu"),
                              fastnn.Linear(64, 10))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)

    def train(m, steps):
        opt, loss_fn = optim.Adam(m.parameters()), fastnn.CrossEntropyLoss()
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(m(x), y)
            m.backward(loss_fn.backward())
            opt.step()
        return [p.data.copy() for p in m.parameters()]

    train(model, 1)
    clone = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    for a, b in zip(train(clone, 3), train(model, 3)):
        assert np.array_equal(a, b)


def test_sequential_repr():
    net = char_model()
    r = repr(net)
    assert r.startswith("Sequential(")
    for i, layer in enumerate(net):
        assert f"({i}): {layer!r}" in r
    assert "Embedding(27, 10" in r and "BatchNorm1d(200" in r and "tanh" in r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_forward_backward_equals_layers_by_hand(dtype):
    net = char_model(seed=5, dtype=dtype)
    emb, flat, lin1, bn, lin2 = char_model(seed=5, dtype=dtype).layers  # same init, unpacked
    x, y = char_batch(64)
    loss_a, loss_b = fastnn.CrossEntropyLoss(), fastnn.CrossEntropyLoss()

    out = net(x)
    la = loss_a(out, y)
    dx = net.backward(loss_a.backward())
    assert dx is None  # the Embedding first in the stack: indices have no gradient

    h = x
    for layer in (emb, flat, lin1, bn, lin2):
        h = layer(h)
    lb = loss_b(h, y)
    dy = loss_b.backward()
    for layer in (lin2, bn, lin1, flat, emb):
        dy = layer.backward(dy)

    assert la == lb
    np.testing.assert_array_equal(out, h)
    assert out.shape == (64, 27) and out.dtype == dtype
    for (name, p), q in zip(net.named_parameters(),
                            [emb.weight, lin1.weight, bn.weight, bn.bias, lin2.weight,
                             lin2.bias]):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
        assert np.any(p.grad != 0), name
    np.testing.assert_array_equal(net[3].running_mean, bn.running_mean)
    np.testing.assert_array_equal(net[3].running_var, bn.running_var)
    # outputs / grads record every layer
    assert net.outputs[-1] is out
    assert net.outputs[1].shape == (64, 30)
    assert [g.shape for g in net.grads] == [(64, 3, 10), (64, 30), (64, 200), (64, 200),
                                            (64, 27)]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_without_input_grad_skips_only_dx(backend, dtype):
    """input_grad=False: the first Linear skips dx; every parameter gradient is unchanged."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 12)).astype(dtype)
    dy = rng.standard_normal((16, 5)).astype(dtype)
    nets = []
    for input_grad in (True, False):
        fastnn.manual_seed(7)
        net = fastnn.Sequential(fastnn.Linear(12, 8, dtype=dtype, activation="tanh"),
                                fastnn.BatchNorm1d(8, dtype=dtype),
                                fastnn.Linear(8, 5, dtype=dtype))
        with fastnn.use_backend(backend):
            net(x)
            dx = net.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        nets.append(net)
    assert nets[0][0]._dx.shape == x.shape and nets[1][0]._dx is None
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
        assert np.any(p.grad != 0), name


def test_named_parameters_names():
    names = [n for n, _ in char_model().named_parameters()]
    assert names == ["0.weight", "2.weight", "3.weight", "3.bias", "4.weight", "4.bias"]
    nested = fastnn.Sequential(fastnn.Linear(4, 3), fastnn.Sequential(fastnn.ReLU(),
                                                                      fastnn.Linear(3, 2)))
    assert [n for n, _ in nested.named_parameters()] == [
        "0.weight", "0.bias", "1.1.weight", "1.1.bias"]
    assert [n for n, _ in fastnn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    assert [n for n, _ in mlp().named_buffers()] == [
        "1.running_mean", "1.running_var", "3.seed", "3.counter"]
    assert len(char_model().parameters()) == 6


# ------------------------------------------------------------------------------- arena


def test_parameters_live_in_one_arena_per_dtype():
    net = char_model()
    params = net.parameters()
    base = params[0].data.base
    gbase = params[0].grad.base
    assert base is not None and base.ndim == 1
    assert base.size == sum(p.data.size for p in params)
    for p in params:
        assert p.data.base is base and p.grad.base is gbase
        assert np.shares_memory(p.data, base) and np.shares_memory(p.grad, gbase)
    # different layers share one buffer, packed back to back in named_parameters order
    assert np.shares_memory(net[0].weight.data.base, net[4].bias.data)
    assert np.shares_memory(net[2].weight.grad.base, net[3].weight.grad)
    offset = 0
    for p in params:
        start = (p.data.__array_interface__["data"][0]
                 - base.__array_interface__["data"][0]) // base.itemsize
        assert start == offset
        offset += p.data.size
    # one write to the flat buffer reaches every layer
    base[...] = 0.5
    assert all(np.all(p.data == 0.5) for p in params)
    gbase[...] = 1.0
    net.zero_grad()
    assert not gbase.any()
    # an optimizer over the model keeps the same buffer (no re-packing)
    opt = optim.SGD(net.parameters(), lr=0.1)
    assert net[2].weight.data.base is base
    assert len(opt._arenas[0][0].runs) == 1


def test_one_arena_per_dtype_mixed():
    net = fastnn.Sequential(fastnn.Linear(3, 4), fastnn.Linear(5, 6, dtype=np.float64),
                            fastnn.Linear(4, 2), fastnn.BatchNorm1d(6, dtype=np.float64))
    b32 = net[0].weight.data.base
    b64 = net[1].weight.data.base
    assert b32.dtype == np.float32 and b64.dtype == np.float64
    assert net[2].bias.data.base is b32 and net[3].bias.data.base is b64
    assert b32.size == 3 * 4 + 4 + 4 * 2 + 2 and b64.size == 5 * 6 + 6 + 6 + 6


def test_values_kept_when_packed():
    fastnn.manual_seed(3)
    a = fastnn.Linear(4, 3)
    w, b = a.weight.data.copy(), a.bias.data.copy()
    fastnn.Sequential(a)
    np.testing.assert_array_equal(a.weight.data, w)
    np.testing.assert_array_equal(a.bias.data, b)


# ----------------------------------------------------------------------------- train/eval


def test_train_eval_recursive():
    inner = fastnn.Sequential(fastnn.BatchNorm1d(8), fastnn.Dropout(0.5))
    net = fastnn.Sequential(fastnn.Linear(4, 8), inner, fastnn.Linear(8, 2))
    assert net.eval() is net
    assert not any(m.training for m in (net, inner, *inner, *net))
    net.train()
    assert all(m.training for m in (net, inner, *inner, *net))
    net.train(False)
    assert not inner[0].training and not inner[1].training


def test_batchnorm_and_dropout_follow_mode():
    net = mlp(p=0.5, dtype=np.float64)
    X, y = float_batch(64, dtype=np.float64)
    train_steps(net, X, y, steps=2)
    bn, drop = net[1], net[3]
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    counter = int(drop.counter)
    net.eval()
    h = net[0](X).copy()
    out = net(X)
    # eval: BatchNorm uses running stats, and doesn't update them; Dropout is the identity
    expected = (h - rm) / np.sqrt(rv + bn.eps) * bn.weight.data + bn.bias.data
    np.testing.assert_allclose(net.outputs[1], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(net.outputs[3], net.outputs[2])
    np.testing.assert_array_equal(bn.running_mean, rm)
    assert int(drop.counter) == counter
    out_eval = out.copy()
    np.testing.assert_array_equal(net(X), out_eval)  # deterministic in eval
    # train: Dropout zeroes about half and scales the rest by 2; running stats move
    net.train()
    net(X)
    relu_out, drop_out = net.outputs[2], net.outputs[3]
    kept = drop_out != 0
    np.testing.assert_allclose(drop_out[kept], 2 * relu_out[kept])
    frac = np.count_nonzero(relu_out[~kept]) / max(np.count_nonzero(relu_out), 1)
    assert 0.35 < frac < 0.65
    assert int(drop.counter) == counter + X.shape[0] * 64
    assert not np.array_equal(bn.running_mean, rm)


# ----------------------------------------------------------------------------- state_dict


def test_state_dict_contents():
    fastnn.manual_seed(0)
    net = fastnn.Sequential(fastnn.Embedding(27, 10), fastnn.Flatten(),
                            fastnn.Linear(30, 200, bias=False),
                            fastnn.BatchNorm1d(200, activation="tanh"), fastnn.Dropout(0.1),
                            fastnn.Linear(200, 27))
    x, y = char_batch()
    train_steps(net, x, y, steps=2)
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "2.weight", "3.weight", "3.bias", "5.weight", "5.bias",
                        "3.running_mean", "3.running_var", "4.seed", "4.counter"]
    np.testing.assert_array_equal(sd["3.running_mean"], net[3].running_mean)
    np.testing.assert_array_equal(sd["3.running_var"], net[3].running_var)
    assert int(sd["4.counter"]) == 2 * 32 * 200
    assert sd["4.counter"].dtype == np.uint64
    # copies, not views
    for k, v in sd.items():
        assert v.base is None or not np.shares_memory(v, net[0].weight.data.base), k
    sd["0.weight"][...] = 123
    assert not np.any(net[0].weight.data == 123)


def test_load_state_dict_round_trip_and_in_place():
    a, b = mlp(seed=1), mlp(seed=2)
    X, y = float_batch(32)
    train_steps(a, X, y)
    base = b[0].weight.data.base
    b.load_state_dict(a.state_dict())
    assert_state_equal(a.state_dict(), b.state_dict())
    assert b[0].weight.data.base is base  # copied in place: arena views stay valid
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(X), b(X))


def test_load_state_dict_errors_name_the_keys():
    net = char_model()
    good = net.state_dict()
    before = snapshot(net)

    missing = dict(good)
    del missing["3.running_var"]
    with pytest.raises(ValueError, match=r"missing.*3\.running_var"):
        net.load_state_dict(missing)

    extra = {**good, "7.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"unexpected.*7\.weight"):
        net.load_state_dict(extra)

    bad_shape = {**good, "2.weight": np.zeros((200, 31), np.float32)}
    with pytest.raises(ValueError, match=r"2\.weight.*\(200, 31\)"):
        net.load_state_dict(bad_shape)

    bad_dtype = {**good, "4.bias": good["4.bias"].astype(np.float64)}
    with pytest.raises(ValueError, match=r"4\.bias.*float64"):
        net.load_state_dict(bad_dtype)

    # a partly bad state changes nothing
    bad_late = {k: v + 1 if v.dtype.kind == "f" else v for k, v in good.items()}
    bad_late["4.bias"] = np.zeros(28, np.float32)
    with pytest.raises(ValueError):
        net.load_state_dict(bad_late)
    assert_state_equal(net.state_dict(), before)


# ------------------------------------------------------------------------------ save/load


def trained_model_and_input(dtype=np.float32):
    fastnn.manual_seed(0)
    net = fastnn.Sequential(fastnn.Embedding(27, 10, dtype=dtype), fastnn.Flatten(),
                            fastnn.Linear(30, 64, bias=False, dtype=dtype, init="he_normal"),
                            fastnn.BatchNorm1d(64, activation="tanh", dtype=dtype),
                            fastnn.Dropout(0.3), fastnn.Linear(64, 32, dtype=dtype),
                            fastnn.LeakyReLU(0.2), fastnn.GELU("tanh"),
                            fastnn.Linear(32, 27, dtype=dtype, activation="sigmoid"))
    x, y = char_batch(48)
    train_steps(net, x, y, steps=3)
    return net, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip_exact(tmp_path, dtype):
    net, x = trained_model_and_input(dtype)
    path = tmp_path / "model.npz"
    fastnn.save(net, path)
    loaded = fastnn.load(path)
    assert isinstance(loaded, fastnn.Sequential) and repr(loaded) == repr(net)
    assert loaded.config() == net.config()
    assert_state_equal(loaded.state_dict(), net.state_dict())
    net.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded(x), net(x))
    assert loaded[-1].weight.dtype == dtype
    # the dropout counter continues where it was
    assert int(loaded[4].counter) == int(net[4].counter) and loaded[4].seed == net[4].seed
    # loaded parameters are packed into an arena too
    assert loaded[2].weight.data.base is loaded[-1].bias.data.base


def test_module_save_and_load_into(tmp_path):
    net, x = trained_model_and_input()
    path = tmp_path / "m.npz"
    net.save(path)
    fastnn.manual_seed(99)
    other, _ = trained_model_and_input()
    train_steps(other, *char_batch(48, seed=7))
    assert other.load(path) is other
    net.eval(), other.eval()
    np.testing.assert_array_equal(other(x), net(x))


def test_load_into_different_architecture_raises(tmp_path):
    path = tmp_path / "m.npz"
    char_model().save(path)
    for different in (mlp(), fastnn.Sequential(*char_model().layers[:4],
                                               fastnn.Linear(200, 26))):
        before = snapshot(different)
        with pytest.raises(ValueError, match="different architecture"):
            different.load(path)
        assert_state_equal(different.state_dict(), before)
    # same shapes, other hyper-parameters (activation) is a different architecture too
    fastnn.manual_seed(0)
    lookalike = fastnn.Sequential(fastnn.Embedding(27, 10), fastnn.Flatten(),
                                  fastnn.Linear(30, 200, bias=False),
                                  fastnn.BatchNorm1d(200, activation="relu"),
                                  fastnn.Linear(200, 27))
    with pytest.raises(ValueError):
        lookalike.load(path)


@fastnn.register_module
class Residual(fastnn.Module):
    """A user's layer: x + relu(x W^T + b), its Linear built by its constructor."""

    def __init__(self, features, dtype="float32"):
        self.features, self.dtype = features, dtype
        self.inner = fastnn.Linear(features, features, activation="relu", dtype=dtype)

    def forward(self, x):
        return x + self.inner(x)

    def backward(self, dy):
        return dy + self.inner.backward(dy)

    def config(self):
        return {"features": self.features, "dtype": self.dtype}


def test_a_registered_layer_of_your_own_round_trips(tmp_path, monkeypatch):
    fastnn.manual_seed(3)
    model = fastnn.Sequential(fastnn.Linear(4, 6), Residual(6), fastnn.BatchNorm1d(6),
                              fastnn.Linear(6, 2))
    model(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    fastnn.save(model, tmp_path / "m.npz")
    loaded = fastnn.load(tmp_path / "m.npz")
    assert type(loaded[1]) is Residual
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    fastnn.save(Residual(3, "float64"), tmp_path / "top.npz")  # a model that is one
    assert fastnn.load(tmp_path / "top.npz").inner.weight.data.dtype == np.float64
    monkeypatch.delitem(checkpoint._REGISTERED, "Residual")  # a process that never registered
    with pytest.raises(fastnn.ModelFileError, match="unknown layer type 'Residual'.*"
                                                    "register its class"):
        fastnn.load(tmp_path / "m.npz")


def test_save_refuses_what_load_could_not_rebuild(tmp_path):
    class Unregistered(Residual):
        pass

    class Tweaked(fastnn.Linear):
        pass

    class NoConfig(fastnn.Module):
        def __init__(self, n):
            self.w = fastnn.Parameter(np.zeros(n, np.float32))

    class WrongConfig(NoConfig):
        def config(self):
            return {"n": 2}

    class NotJson(NoConfig):
        def config(self):
            return {"n": np.int64(3)}

    for cls in (NoConfig, WrongConfig, NotJson):
        fastnn.register_module(cls)
    cases = [(fastnn.Sequential(fastnn.ReLU(), fastnn.Sequential(Unregistered(2))),
              r"layer 1\.0 is a Unregistered, which fastnn.load cannot rebuild"),
             (Tweaked(2, 2), "the model is a Tweaked"),
             (NoConfig(3), r"does not rebuild it: NoConfig\(\{\}\) raised TypeError"),
             (WrongConfig(3), r"does not rebuild its parameters and buffers: w is "
                              r"\(\(3,\), dtype\('float32'\)\) in the model"),
             (NotJson(3), "its config\\(\\) is not JSON")]
    for model, match in cases:
        with pytest.raises(ValueError, match=match):
            fastnn.save(model, tmp_path / "m.npz")
    assert not os.listdir(tmp_path)  # nothing written, not even a temporary


def test_register_module_refuses_clashes():
    with pytest.raises(ValueError, match="Linear is the name of a built-in layer"):
        fastnn.register_module(type("Linear", (fastnn.Module,), {}))
    with pytest.raises(TypeError, match="expected a fastnn Module subclass"):
        fastnn.register_module(int)
    with pytest.raises(ValueError, match="another class named Residual is registered"):
        fastnn.register_module(type("Residual", (fastnn.Module,), {"__module__": "elsewhere"}))
    again = type("Residual", (fastnn.Module,), {"__module__": Residual.__module__,
                                                 "__qualname__": Residual.__qualname__})
    try:  # the same class defined again (a re-run cell) replaces it
        assert fastnn.register_module(again) is again
    finally:
        checkpoint._REGISTERED["Residual"] = Residual


def test_load_non_model_file_raises(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastnn model"):
        fastnn.load(path)


def test_saved_file_loads_without_pickle(tmp_path):
    net, _ = trained_model_and_input()
    path = tmp_path / "model.npz"
    fastnn.save(net, path)
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    sd = net.state_dict()
    for k, v in sd.items():
        np.testing.assert_array_equal(files[k], v)
    assert all(v.dtype != object for v in files.values())
    assert len(files) == len(sd) + 1  # plus the architecture record
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def _dir_listing(folder):
    return sorted(os.listdir(folder))


def test_save_is_atomic_when_savez_fails(tmp_path, monkeypatch):
    net, x = trained_model_and_input()
    path = tmp_path / "model.npz"
    fastnn.save(net, path)
    original = path.read_bytes()
    train_steps(net, *char_batch(48, seed=3))

    real_savez = np.savez

    def broken_savez(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:2]))  # write part of the file...
        raise OSError("disk full")  # ...then fail

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fastnn.save(net, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert _dir_listing(tmp_path) == ["model.npz"]  # no temporary file left behind
    fastnn.load(path)  # still a valid model file


def test_save_is_atomic_when_rename_fails(tmp_path, monkeypatch):
    net, _ = trained_model_and_input()
    path = tmp_path / "model.npz"
    fastnn.save(net, path)
    original = path.read_bytes()
    train_steps(net, *char_batch(48, seed=3))

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        net.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert _dir_listing(tmp_path) == ["model.npz"]


def test_save_interrupted_leaves_no_file(tmp_path, monkeypatch):
    def boom(f, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        fastnn.save(char_model(), tmp_path / "new.npz")
    monkeypatch.undo()
    assert _dir_listing(tmp_path) == []


def test_atomic_write_replaces_existing(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    checkpoint.atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert _dir_listing(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------------- init


def _empty(shape, dtype=np.float64):
    return np.empty(shape, dtype)


@pytest.mark.parametrize("fan_out,fan_in", [(400, 1000), (1000, 300)])
def test_xavier_statistics(fan_out, fan_in):
    fastnn.manual_seed(0)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    a = init.xavier_normal(_empty((fan_out, fan_in)), gain=2.0)
    assert abs(a.mean()) < 0.02 * 2 * std
    assert a.std() == pytest.approx(2 * std, rel=0.02)
    u = init.xavier_uniform(_empty((fan_out, fan_in)))
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert -bound <= u.min() < -0.99 * bound and 0.99 * bound < u.max() <= bound
    assert u.std() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("nonlinearity,gain", [("relu", math.sqrt(2)), ("tanh", 5 / 3),
                                               ("linear", 1.0)])
def test_he_statistics(nonlinearity, gain):
    fastnn.manual_seed(1)
    fan_in = 500
    std = gain / math.sqrt(fan_in)
    a = init.he_normal(_empty((800, fan_in)), nonlinearity)
    assert a.std() == pytest.approx(std, rel=0.02)
    u = init.he_uniform(_empty((800, fan_in), np.float32), nonlinearity)
    assert u.dtype == np.float32
    bound = math.sqrt(3) * std
    assert -bound * (1 + 1e-6) <= u.min() < -0.99 * bound
    assert 0.99 * bound < u.max() <= bound * (1 + 1e-6)
    assert u.std() == pytest.approx(std, rel=0.02)


def test_he_default_is_relu_and_leaky_param():
    fastnn.manual_seed(2)
    a = init.he_normal(_empty((600, 400)))
    assert a.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    b = init.he_normal(_empty((600, 400)), "leaky_relu", 0.2)
    assert b.std() == pytest.approx(math.sqrt(2 / (1 + 0.04)) / 20, rel=0.02)


def test_init_is_in_place_and_keeps_views():
    net = fastnn.Sequential(fastnn.Linear(50, 40), fastnn.Linear(40, 3))
    w = net[0].weight.data
    out = init.xavier_uniform(w)
    assert out is w and w.base is net[1].weight.data.base
    assert np.abs(w).max() <= math.sqrt(6 / 90) + 1e-7


def test_calculate_gain_matches_torch_documentation():
    # torch.nn.init.calculate_gain's documented table
    assert init.calculate_gain("linear") == 1
    assert init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2.0))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == pytest.approx(0.75)


def test_bad_nonlinearity_raises():
    with pytest.raises(ValueError, match="nonlinearity.*'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.he_normal(_empty((3, 4)), "swish")
    with pytest.raises(ValueError, match="init"):
        fastnn.Linear(3, 4, init="orthogonal")
    with pytest.raises(ValueError, match="2 dimensions"):
        init.xavier_normal(_empty(5))


@pytest.mark.parametrize("scheme", ["xavier_normal", "xavier_uniform", "he_normal",
                                    "he_uniform"])
def test_linear_init_zero_bias_and_gain(scheme):
    fastnn.manual_seed(4)
    layer = fastnn.Linear(600, 500, activation="relu", init=scheme, dtype=np.float64)
    assert not layer.bias.data.any()
    std = math.sqrt(2) * (math.sqrt(2 / 1100) if scheme.startswith("xavier")
                          else 1 / math.sqrt(600))
    assert layer.weight.data.std() == pytest.approx(std, rel=0.02)
    assert layer.config()["init"] == scheme
    fastnn.manual_seed(4)
    default = fastnn.Linear(600, 500)
    assert default.bias.data.any()
    assert np.abs(default.weight.data).max() <= 1 / math.sqrt(600)


def test_manual_seed_reproducible_construction():
    def build(seed):
        fastnn.manual_seed(seed)
        net = fastnn.Sequential(fastnn.Embedding(27, 10), fastnn.Flatten(),
                                fastnn.Linear(30, 20, init="xavier_uniform"),
                                fastnn.Dropout(0.5), fastnn.Linear(20, 27))
        return net

    a, b, c = build(7), build(7), build(8)
    assert_state_equal(a.state_dict(), b.state_dict())
    assert a[3].seed == b[3].seed != c[3].seed
    assert not np.array_equal(a[0].weight.data, c[0].weight.data)
    x, _ = char_batch()
    np.testing.assert_array_equal(a(x), b(x))  # same dropout masks too
    with pytest.raises(ValueError):
        fastnn.manual_seed(-1)


# --------------------------------------------------------------- steady state allocates nothing


def _numpy_peak_growth(step, n=5):
    """Peak traced memory growth over n calls of step(), after the warm-up."""
    step(), step()  # warm-up: buffers and optimizer state are created here
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(n):
            step()
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
    finally:
        tracemalloc.stop()
    numpy_new = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    return peak - current, numpy_new


def test_steady_state_mlp_step_allocates_no_arrays():
    B = 1024
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(32, 128, bias=False), fastnn.BatchNorm1d(128),
                              fastnn.ReLU(), fastnn.Dropout(0.2), fastnn.Linear(128, 10))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = fastnn.CrossEntropyLoss()
    X, y = float_batch(B, n_in=32, n_out=10)
    params = model.parameters()

    def step():
        opt.zero_grad()
        loss_fn(model(X), y)
        model.backward(loss_fn.backward())
        fastnn.clip_grad_norm_(params, 0.5)
        opt.step()

    growth, numpy_new = _numpy_peak_growth(step)
    assert growth < 4096, f"peak grew by {growth} bytes during 5 steps: an array was created"
    assert numpy_new == 0


def test_steady_state_char_model_step_allocates_no_arrays():
    B = 1024
    model = char_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = fastnn.CrossEntropyLoss()
    x, y = char_batch(B)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    growth, numpy_new = _numpy_peak_growth(step)
    assert growth < 4096, f"peak grew by {growth} bytes during 5 steps: an array was created"
    assert numpy_new == 0


def test_allocation_probe_detects_an_array():
    """The measurement itself works: a step that makes one 8 KB array is caught."""
    a = np.ones(1024)
    growth, _ = _numpy_peak_growth(lambda: a * 2)
    assert growth >= 8192


@pytest.mark.parametrize("bad, what", [
    (lambda w: w.astype(np.float64), "float64"),
    (lambda w: w.astype(">f4"), ">f4"),
    (lambda w: np.asfortranarray(np.ones((w.shape[1], w.shape[0]), np.float32).T), "F-order"),
    (lambda w: w[:, :-1], "a smaller array"),
])
def test_replaced_parameter_array_is_checked(bad, what):
    """A user may rebind Parameter.data; the layer's once-per-call check names it instead of
    handing the kernel another dtype, byte order, layout or shape."""
    layer = fastnn.Linear(6, 4)
    x = np.ones((3, 6), np.float32)
    layer.weight.data = bad(layer.weight.data)
    with pytest.raises(ValueError, match=r"weight\.data: expected a C-contiguous float32 array "
                                         r"of shape \(4, 6\)"):
        layer(x)


def test_big_endian_input_is_rejected_by_name():
    layer = fastnn.Linear(6, 4)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        layer(np.ones((3, 6), ">f4"))


def test_num_parameters_summary_and_predict():
    model = char_model()
    assert model.num_parameters() == 27 * 10 + 30 * 200 + 2 * 200 + 200 * 27 + 27
    shared = fastnn.Sequential(fastnn.Linear(4, 4), fastnn.Linear(4, 4))
    shared[1].weight = shared[0].weight  # one Parameter, counted once (as torch)
    assert shared.num_parameters() == 16 + 4 + 4
    x, _ = char_batch(8)
    text = model.summary(x)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "parameters"]
    assert "Embedding    (8, 3, 10)" in text and "Linear       (8, 27)" in text
    assert lines[-1].startswith(f"total: {model.num_parameters():,} parameters in 6 arrays")
    assert "?" in fastnn.Linear(3, 2).summary()
    model.train()
    out = model.predict(x)
    assert model.training and model[3].training  # the mode is restored
    np.testing.assert_array_equal(out, model.eval()(x))  # evaluation mode: running statistics
    assert out is not model.outputs[-1] and not np.shares_memory(out, model.outputs[-1])
    model.train()
    np.testing.assert_allclose(model.predict(x, batch_size=3), out, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)
    assert fastnn.Trainer is fastnn.train.Trainer
