"""FusedStep replays a recorded step in one C call: bit for bit the layer path's results."""
import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.fused import FusedStep

from helpers import on_one_and_two_threads


def char_mlp(dtype):
    """S1's shape: Embedding -> Flatten -> Linear -> BatchNorm1d + tanh -> Linear."""
    fastnn.manual_seed(11)
    return fastnn.Sequential(
        fastnn.Embedding(27, 10, dtype=dtype), fastnn.Flatten(),
        fastnn.Linear(30, 64, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(64, activation="tanh", dtype=dtype),
        fastnn.Linear(64, 27, dtype=dtype))


def deep_mlp(dtype):
    """Every replayed layer kind: Linear with and without a fused activation, BatchNorm1d
    with and without affine, elementwise layers."""
    fastnn.manual_seed(12)
    return fastnn.Sequential(
        fastnn.Linear(20, 32, dtype=dtype, activation="relu"),
        fastnn.BatchNorm1d(32, dtype=dtype, activation="sigmoid"),
        fastnn.Linear(32, 32, bias=False, dtype=dtype), fastnn.BatchNorm1d(32, affine=False,
                                                                         dtype=dtype),
        fastnn.Tanh(), fastnn.Linear(32, 16, dtype=dtype), fastnn.LeakyReLU(0.1),
        fastnn.Linear(16, 16, dtype=dtype), fastnn.GELU(), fastnn.ReLU(),
        fastnn.Linear(16, 5, dtype=dtype))


def batches(model_name, n, B=24, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        if model_name == "char":
            x = rng.integers(0, 27, (B, 3))
            y = rng.integers(0, 27, B)
        else:
            x = rng.standard_normal((B, 20))
            y = rng.integers(0, 5, B)
        yield x, y


def train(model, steps, fused, dtype, model_name, B=24, loss_options=None):
    """Adam steps; with loss_options, CrossEntropyLoss takes them, every fifth target is
    ignore_index and, after three steps, label_smoothing changes."""
    loss_fn = fastnn.CrossEntropyLoss(**(loss_options or {}))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    step = FusedStep(model, loss_fn)
    losses = []
    for i, (x, y) in enumerate(batches(model_name, steps, B)):
        if loss_options:
            y[::5] = loss_fn.ignore_index
            loss_fn.label_smoothing = 0.1 if i < 3 else 0.2
        if x.dtype.kind == "f":
            x = x.astype(dtype)
        opt.zero_grad()
        if fused:
            losses.append(step(x, y))
        else:
            losses.append(loss_fn(model(x), y))
            model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return losses, step


def assert_same_state(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    for (name, u), v in zip(a.named_buffers(), [v for _, v in b.named_buffers()]):
        np.testing.assert_array_equal(u, v, err_msg=name)
    for i, (u, v) in enumerate(zip(a.outputs, b.outputs)):
        np.testing.assert_array_equal(u, v, err_msg=f"outputs[{i}]")
    for i, (u, v) in enumerate(zip(a.grads, b.grads)):
        np.testing.assert_array_equal(u, v, err_msg=f"grads[{i}]")


@pytest.mark.parametrize("model_name", ["char", "deep"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_equals_layer_path_bitwise(model_name, dtype):
    make = char_mlp if model_name == "char" else deep_mlp
    fused_model, plain_model = make(dtype), make(dtype)
    fused_losses, step = train(fused_model, 6, True, dtype, model_name)
    plain_losses, _ = train(plain_model, 6, False, dtype, model_name)
    assert step._plan is not None  # the later steps were replayed
    assert fused_losses == plain_losses
    assert_same_state(fused_model, plain_model)
    bns = [m for m in fused_model if isinstance(m, fastnn.BatchNorm1d)]
    assert all(m.num_batches_tracked == 6 for m in bns)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_replay_with_loss_options_equals_layer_path_bitwise(reduction):
    options = dict(weight=np.linspace(0.5, 2, 27), ignore_index=-100, reduction=reduction)
    fused_model, plain_model = char_mlp(np.float32), char_mlp(np.float32)
    fused_losses, step = train(fused_model, 6, True, np.float32, "char", loss_options=options)
    plain_losses, _ = train(plain_model, 6, False, np.float32, "char", loss_options=options)
    assert (step._plan is not None) == (reduction != "none")  # per-row losses: not replayed
    np.testing.assert_array_equal(fused_losses, plain_losses)
    assert_same_state(fused_model, plain_model)


def test_replay_is_used_and_counts_as_a_step():
    model = char_mlp(np.float32)
    loss_fn = fastnn.CrossEntropyLoss()
    step = FusedStep(model, loss_fn)
    (x, y), (x2, y2) = batches("char", 2)
    step(x, y)
    plan = step._plan
    step(x2, y2)
    assert step._plan is plan  # replayed, not recorded again
    assert model[0]._idx is x2 and loss_fn._target is y2
    # a later layer-path backward sees the replayed step's state
    np.testing.assert_array_equal(loss_fn.backward(), model.grads[-1])


def test_changes_take_the_layer_path_again():
    """A new batch size, a mode change, a replaced parameter array or a changed setting is
    seen before the replay: the step is recorded anew and still equals the layer path."""
    dtype = np.float64
    fused_model, plain_model = deep_mlp(dtype), deep_mlp(dtype)
    fused_loss, plain_loss = fastnn.CrossEntropyLoss(), fastnn.CrossEntropyLoss()
    step = FusedStep(fused_model, fused_loss)

    def both(x, y):
        for m in (fused_model, plain_model):
            m.zero_grad()
        a = step(x, y)
        b = plain_loss(plain_model(x), y)
        plain_model.backward(plain_loss.backward(), input_grad=False)
        assert a == b
        assert_same_state(fused_model, plain_model)

    data = list(batches("deep", 8))
    both(*data[0])
    both(*data[1])
    plan = step._plan
    x, y = data[2]
    both(x[:10].astype(dtype), y[:10])  # batch size
    assert step._plan is not plan
    for m in (fused_model, plain_model):
        m.eval()
    both(*data[3])  # BatchNorm in evaluation mode
    for m in (fused_model, plain_model):
        m.train()
        m[1].momentum = 0.3  # a setting
        m[0].weight.data = m[0].weight.data * 0.5  # a replaced array
    both(*data[4])
    both(*data[5])
    # evaluation through the layers with another batch size, then training again
    for m in (fused_model, plain_model):
        m.eval()
        m(np.ones((3, 20)))
        m.train()
    both(*data[6])
    both(*data[7])


def test_bad_input_raises_like_the_layer_path():
    model = char_mlp(np.float32)
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    x, y = next(batches("char", 1))
    step(x, y)
    bad = x.copy()
    bad[3, 1] = 27
    with pytest.raises(IndexError, match="idx: index 27 is out of range"):
        step(bad, y)
    bad_y = y.copy()
    bad_y[0] = -1
    with pytest.raises(IndexError, match="target: class -1 is out of range"):
        step(x, bad_y)
    with pytest.raises(ValueError, match="target"):
        step(x, y[:5])


def test_not_replayed_falls_back_to_the_layer_path():
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(4, 8), fastnn.Dropout(0.5), fastnn.Linear(8, 3))
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    assert not step.replayable
    x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    assert np.isfinite(step(x, y)) and step._plan is None
    with pytest.raises(TypeError, match="model: expected a fastnn.Sequential"):
        FusedStep(fastnn.Linear(4, 3), fastnn.CrossEntropyLoss())


def test_reference_backend_is_not_replayed():
    model = char_mlp(np.float64)
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    with fastnn.use_backend("reference"):
        for x, y in batches("char", 2):
            step(x, y)
    assert step._plan is None


def test_replay_same_for_one_and_two_threads(threads):
    def run():
        model = char_mlp(np.float32)
        losses, _ = train(model, 4, True, np.float32, "char", B=256)
        return [losses, *(p.data.copy() for p in model.parameters())]

    one, two = on_one_and_two_threads(run)
    assert one[0] == two[0]
    for a, b in zip(one[1:], two[1:]):
        np.testing.assert_array_equal(a, b)


def test_layers_with_their_own_forward_are_not_replayed():
    """A subclass, or a forward/backward replaced on the instance (as fastnn.distributed's
    synchronised BatchNorm does), is not bypassed: such a step takes the layer path."""
    class Traced(fastnn.Linear):
        calls = 0

        def forward(self, x):
            Traced.calls += 1
            return super().forward(x)

    fastnn.manual_seed(0)
    model = fastnn.Sequential(Traced(20, 8), fastnn.Linear(8, 5))
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    data = list(batches("deep", 3))
    for x, y in data:
        step(x.astype(np.float32), y)
    assert Traced.calls == 3 and not step.replayable

    model = deep_mlp(np.float64)
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    step(*data[0])
    step(*data[1])
    assert step._plan is not None
    seen = []
    bn = model[1]
    original = bn.forward
    bn.forward = lambda x: seen.append(1) or original(x)  # replaced after the record
    step(*data[2])
    assert seen == [1] and step._plan is None


@pytest.mark.parametrize("index_dtype", [np.int32, np.uint8, np.dtype(">i8")])
def test_converted_indices_are_not_replayed(index_dtype):
    """Indices the Embedding converts (another width or byte order) take the layer path
    every step: a replay would read them as int64. Results equal int64 indices'."""
    a, b = char_mlp(np.float64), char_mlp(np.float64)
    step_a, step_b = FusedStep(a, fastnn.CrossEntropyLoss()), FusedStep(b, fastnn.CrossEntropyLoss())
    for x, y in batches("char", 3):
        assert step_a(x.astype(index_dtype), y) == step_b(x, y)
        assert step_a._plan is None
    assert step_b._plan is not None
    assert_same_state(a, b)


def test_structural_changes_are_seen():
    """Binding a new Parameter to a layer, or removing a layer, takes the layer path: the
    results stay those of the layer path on the changed model."""
    dtype = np.float64
    fused_model, plain_model = deep_mlp(dtype), deep_mlp(dtype)
    fused_loss, plain_loss = fastnn.CrossEntropyLoss(), fastnn.CrossEntropyLoss()
    step = FusedStep(fused_model, fused_loss)

    def both(x, y):
        a = step(x, y)
        b = plain_loss(plain_model(x), y)
        plain_model.backward(plain_loss.backward(), input_grad=False)
        assert a == b
        for p, q in zip(fused_model.parameters(), plain_model.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad)

    data = list(batches("deep", 6))
    both(*data[0])
    both(*data[1])
    plan = step._plan
    for m in (fused_model, plain_model):
        m[0].weight = fastnn.Parameter(m[0].weight.data * 0.5)
    both(*data[2])
    assert step._plan is not plan
    both(*data[3])
    plan = step._plan
    for m in (fused_model, plain_model):
        del m.layers[-2]  # the ReLU before the last Linear
    both(*data[4])
    assert step._plan is not plan
    both(*data[5])


def test_input_overlapping_a_model_buffer_is_rejected():
    model = deep_mlp(np.float64)
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    data = list(batches("deep", 2))
    step(*data[0])
    step(*data[1])
    inner = model.outputs[0]  # (24, 32): feed a model buffer back as input
    x = inner[:, :20].copy()
    step(x, data[0][1])  # a fresh array: fine
    with pytest.raises(ValueError, match="must not share memory"):
        step(np.ascontiguousarray(inner.reshape(-1)[:24 * 20].reshape(24, 20)), data[0][1])


def test_big_endian_float_input_is_rejected():
    model = deep_mlp(np.float64)
    step = FusedStep(model, fastnn.CrossEntropyLoss())
    x, y = next(batches("deep", 1))
    step(x, y)
    step(x, y)
    with pytest.raises(TypeError, match="dtype"):
        step(x.astype(">f8"), y)


def test_any_loss_object_takes_the_layer_path():
    """A loss of the user's own (forward/backward, no fastnn internals) works through
    FusedStep, as through Trainer: it is simply not replayed."""
    class HalfCrossEntropy:
        def __init__(self):
            self.inner = fastnn.CrossEntropyLoss()

        def forward(self, logits, target):
            return 0.5 * self.inner(logits, target)

        __call__ = forward

        def backward(self):
            return self.inner.backward(0.5)

    model = deep_mlp(np.float64)
    step = FusedStep(model, HalfCrossEntropy())
    for x, y in batches("deep", 2):
        assert np.isfinite(step(x, y))
    assert not step.replayable and step._plan is None
