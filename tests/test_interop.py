"""fastnn.interop: weights to and from torch.nn under torch's state_dict keys."""
import numpy as np
import pytest

import fastnn
from fastnn import interop


def model(dtype=np.float32):
    """Every layer kind with weights or state, with fused activations shifting torch's
    numbering."""
    fastnn.manual_seed(21)
    return fastnn.Sequential(
        fastnn.Embedding(27, 4, dtype=dtype), fastnn.Flatten(),
        fastnn.Linear(12, 16, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(16, activation="tanh", dtype=dtype), fastnn.Dropout(0.2),
        fastnn.Linear(16, 8, activation="relu", dtype=dtype),
        fastnn.BatchNorm1d(8, affine=False, dtype=dtype), fastnn.Linear(8, 27, dtype=dtype))


def torch_model(torch):
    nn = torch.nn
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Embedding(27, 4), nn.Flatten(), nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16),
        nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 8), nn.ReLU(),
        nn.BatchNorm1d(8, affine=False), nn.Linear(8, 27))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 27, (32, 3))


def test_keys_are_torchs():
    torch = pytest.importorskip("torch")
    assert [key for key, _, _ in interop.torch_keys(model())] == list(
        torch_model(torch).state_dict())


def test_a_torch_state_dict_loads_and_computes_what_torch_computes():
    torch = pytest.importorskip("torch")
    net = torch_model(torch)
    with torch.no_grad():  # move the running statistics and the count away from the start
        for seed in range(3):
            net(torch.from_numpy(batch(seed)))
    net.eval()
    fast = model()
    interop.load_torch_state_dict(fast, net.state_dict())
    for key, module, name in interop.torch_keys(fast):
        value = getattr(module, name)
        value = value.data if isinstance(value, fastnn.Parameter) else value
        np.testing.assert_array_equal(value, net.state_dict()[key].numpy(), err_msg=key)
    assert fast[3].num_batches_tracked == 3
    x = batch(9)
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(fast.predict(x), want, rtol=1e-5, atol=1e-6)


def test_a_fastnn_model_loads_into_torch_strictly():
    torch = pytest.importorskip("torch")
    fast = model()
    fast(batch())  # training-mode forward: running statistics and count move
    net = torch_model(torch)
    result = net.load_state_dict(interop.to_torch_state_dict(fast, tensors=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert net[3].num_batches_tracked.item() == 1
    x = batch(5)
    want = net.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(fast.predict(x), want, rtol=1e-5, atol=1e-6)


def test_numpy_arrays_round_trip_without_torch():
    fast = model(np.float64)
    fast(batch())
    state = interop.to_torch_state_dict(fast)
    assert all(type(v) is np.ndarray for v in state.values())
    assert state["3.num_batches_tracked"].dtype == np.int64
    state["3.weight"][0] = 99.0  # a copy: the model is untouched
    assert fast[3].weight.data[0] == 1.0
    other = model(np.float64)
    interop.load_torch_state_dict(other, interop.to_torch_state_dict(fast))
    got = other.state_dict()
    for name, value in fast.state_dict().items():
        if not name.startswith("4."):  # Dropout's generator state is not torch's
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert other[3].num_batches_tracked == 1


def test_values_are_cast_to_the_models_dtype_as_torch_casts():
    state = interop.to_torch_state_dict(model(np.float64))
    fast = model(np.float32)
    interop.load_torch_state_dict(fast, state)
    assert fast[2].weight.data.dtype == np.float32
    np.testing.assert_array_equal(fast[2].weight.data, state["2.weight"].astype(np.float32))


def test_a_mismatch_names_the_first_key_and_changes_nothing():
    good = interop.to_torch_state_dict(model())
    fast = model()
    fast[2].weight.data[...] = 7.0
    before = {k: v.copy() for k, v in fast.state_dict().items()}
    missing = dict(good)
    del missing["6.bias"]
    with pytest.raises(ValueError, match=r"missing key '6.bias' \(1 missing, 0 unexpected\)"):
        interop.load_torch_state_dict(fast, missing)
    unexpected = {**good, "10.weight": np.ones(3)}
    with pytest.raises(ValueError, match=r"unexpected key '10.weight'"):
        interop.load_torch_state_dict(fast, unexpected)
    transposed = {**good, "2.weight": good["2.weight"].T.copy()}
    with pytest.raises(ValueError, match=r"'2.weight': expected shape \(16, 12\), got shape "
                                         r"\(12, 16\)"):
        interop.load_torch_state_dict(fast, transposed)
    with pytest.raises(ValueError, match=r"'3.num_batches_tracked': expected a count"):
        interop.load_torch_state_dict(fast, {**good, "3.num_batches_tracked": np.ones(2)})
    with pytest.raises(ValueError, match=r"'0.weight': expected shape \(27, 4\), got shape "
                                         r"\(27, 4\), dtype <U1"):
        interop.load_torch_state_dict(fast, {**good, "0.weight": np.full((27, 4), "a")})
    for k, v in fast.state_dict().items():  # every refusal before any copy
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(TypeError, match="model: expected a fastnn Module"):
        interop.to_torch_state_dict(object())


class Block(fastnn.Module):
    """A user's module: parts named by attribute, as torch names them."""

    def __init__(self):
        self.fc = fastnn.Linear(3, 4)
        self.norm = fastnn.BatchNorm1d(4)
        self.head = fastnn.Sequential(fastnn.Linear(4, 4, activation="relu"), fastnn.Linear(4, 2))


def test_a_users_module_and_a_nested_sequential_use_torchs_names():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.norm = nn.BatchNorm1d(4)
            self.head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    net = TorchBlock()
    fast = Block()
    assert [k for k, _, _ in interop.torch_keys(fast)] == list(net.state_dict())
    interop.load_torch_state_dict(fast, net.state_dict())
    np.testing.assert_array_equal(fast.head[1].weight.data, net.head[2].weight.detach().numpy())
