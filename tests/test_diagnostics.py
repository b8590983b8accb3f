"""fastnn.diagnostics (training callbacks) and fastnn.plot, driven by a hand-written loop and a
fake trainer (the callback protocol of fastnn.train)."""
import math
import os
import types

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.diagnostics import ActivationStats, GradientStats, UpdateRatio, activation_layers
from fastnn.plot import (
    plot_activation_histograms,
    plot_gradient_histograms,
    plot_history,
    plot_update_ratios,
)

PNG = b"\x89PNG\r\n\x1a\n"
LR_W, LR_OTHER = 0.1, 0.02


def make_model():
    fastnn.manual_seed(0)
    return fastnn.Sequential(
        fastnn.Linear(10, 32, bias=False),
        fastnn.BatchNorm1d(32, activation="tanh"),
        fastnn.Linear(32, 32, activation="relu"),
        fastnn.Linear(32, 3),
    )


def make_trainer(model, opt):
    return types.SimpleNamespace(model=model, optimizer=opt, step=0,
                                 history={"train_loss": [], "train_acc": [], "val_loss": [],
                                          "val_acc": [], "step_loss": []})


def data(seed=1, n=64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 10)).astype(np.float32),
            rng.integers(0, 3, n))


def train(trainer, callbacks, steps, x, y, on_step=None):
    """A minimal Trainer loop: zero_grad, forward, loss, backward, step, on_step_end."""
    loss_fn = fastnn.CrossEntropyLoss()
    for cb in callbacks:
        cb.on_train_begin(trainer)
        cb.on_epoch_begin(trainer, 0)
    for _ in range(steps):
        trainer.optimizer.zero_grad()
        loss = loss_fn(trainer.model(x), y)
        trainer.model.backward(loss_fn.backward())
        trainer.optimizer.step()
        trainer.history["step_loss"].append(loss)
        for cb in callbacks:
            cb.on_step_end(trainer, trainer.step, loss)
        if on_step is not None:
            on_step(trainer.step)
        trainer.step += 1
    for cb in callbacks:
        cb.on_epoch_end(trainer, 0, {"train_loss": loss, "train_acc": None,
                                     "val_loss": None, "val_acc": None})
        cb.on_train_end(trainer)


def sgd_two_groups(model, lr_other=LR_OTHER):
    weights = [p for _, p in model.named_parameters() if p.data.ndim == 2]
    others = [p for _, p in model.named_parameters() if p.data.ndim < 2]
    return optim.SGD([{"params": weights, "lr": LR_W}, {"params": others, "lr": lr_other}],
                     lr=0.5, momentum=0.9)


def np_std(a):
    return float(np.std(np.asarray(a, np.float64)))


def test_activation_layers_labels():
    model = fastnn.Sequential(fastnn.Linear(4, 8), fastnn.Tanh(), fastnn.Linear(8, 8),
                              fastnn.BatchNorm1d(8, activation="relu"), fastnn.Sigmoid(),
                              fastnn.GELU("tanh"), fastnn.LeakyReLU(0.1), fastnn.Linear(8, 2))
    assert activation_layers(model) == [
        (1, "1 Tanh", "tanh"), (3, "3 BatchNorm1d+relu", "relu"), (4, "4 Sigmoid", "sigmoid"),
        (5, "5 GELU", "gelu_tanh"), (6, "6 LeakyReLU", "leaky_relu")]
    assert activation_layers(make_model()) == [(1, "1 BatchNorm1d+tanh", "tanh"),
                                               (2, "2 Linear+relu", "relu")]
    with pytest.raises(TypeError):
        activation_layers(fastnn.Linear(2, 2))


def test_update_ratio_matches_numpy_and_uses_group_lr():
    model = make_model()
    trainer = make_trainer(model, sgd_two_groups(model))
    ur = UpdateRatio()
    expected = {}

    def check(step):
        for name, p in model.named_parameters():
            lr = LR_W if p.data.ndim == 2 else LR_OTHER
            expected.setdefault(name, []).append(
                math.log10(np_std(lr * p.grad.astype(np.float64)) / np_std(p.data)))

    x, y = data()
    train(trainer, [ur], 4, x, y, on_step=check)
    assert ur.steps == [0, 1, 2, 3]
    assert list(ur.history) == ["0.weight", "2.weight", "3.weight"]  # 1-d skipped
    for name, values in ur.history.items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-9, atol=1e-9)
    assert all(-6 < v < 0 for vals in ur.history.values() for v in vals)
    text = ur.summary()
    assert "2.weight" in text and f"{ur.history['2.weight'][-1]:+.2f}" in text


def test_update_ratio_every_include_1d_and_zero_std_guard():
    model = make_model()
    # group lr 0 for the 1-d parameters: BatchNorm's bias stays exactly zero (std 0)
    trainer = make_trainer(model, sgd_two_groups(model, lr_other=0.0))
    ur = UpdateRatio(every=2, include_1d=True)
    x, y = data()
    train(trainer, [ur], 5, x, y)
    assert ur.steps == [0, 2, 4]
    assert set(ur.history) == {n for n, _ in model.named_parameters()}
    assert np.all(model[1].bias.data == 0)
    assert all(math.isnan(v) for v in ur.history["1.bias"])  # std(param) == 0
    assert all(math.isnan(v) for v in ur.history["1.weight"])  # lr 0: no update
    assert all(np.isfinite(ur.history["0.weight"]))
    assert "1.bias" in ur.summary() and " -" in ur.summary()
    with pytest.raises(ValueError):
        UpdateRatio(every=0)


def test_update_ratio_measure_update_is_the_actual_change():
    model = make_model()
    trainer = make_trainer(model, optim.Adam(model.parameters(), lr=1e-2))
    ur = UpdateRatio(measure="update")
    snapshots, expected = [], []

    def check(step):
        p = model[2].weight
        if snapshots:
            expected.append(math.log10(np_std(p.data.astype(np.float64) - snapshots[-1])
                                       / np_std(p.data)))
        else:
            expected.append(float("nan"))
        snapshots.append(p.data.copy())

    x, y = data()
    train(trainer, [ur], 3, x, y, on_step=check)
    np.testing.assert_allclose(ur.history["2.weight"], expected, rtol=1e-9)
    assert math.isnan(ur.history["2.weight"][0])


def test_activation_stats_match_numpy_with_dead_and_saturated_units():
    model = make_model()
    # Crafted: 5 ReLU units always off, 4 tanh channels with a huge gain (saturated).
    model[2].bias.data[:5] = -1e4
    model[1].weight.data[:4] = 50.0
    trainer = make_trainer(model, optim.SGD(model.parameters(), lr=1e-3))
    acts = ActivationStats(every=1)
    expected = []

    def check(step):
        t, r = (np.array(model.outputs[i], np.float64) for i in (1, 2))
        expected.append(dict(
            tanh=(t.mean(), t.std(), np.mean(np.abs(t) > 0.97)),
            relu=(r.mean(), r.std(), np.mean(np.all(r == 0, axis=0)))))

    x, y = data()
    train(trainer, [acts], 3, x, y, on_step=check)
    assert acts.steps == [0, 1, 2]
    assert list(acts.history) == ["1 BatchNorm1d+tanh", "2 Linear+relu"]
    tanh, relu = acts.history["1 BatchNorm1d+tanh"], acts.history["2 Linear+relu"]
    for k, e in enumerate(expected):
        np.testing.assert_allclose([tanh["mean"][k], tanh["std"][k], tanh["saturated"][k]],
                                   e["tanh"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose([relu["mean"][k], relu["std"][k], relu["dead"][k]],
                                   e["relu"], rtol=1e-12, atol=1e-12)
        assert math.isnan(tanh["dead"][k]) and math.isnan(relu["saturated"][k])
    assert relu["dead"][-1] >= 5 / 32
    assert tanh["saturated"][-1] > 0.1  # the big-gain channels
    # latest: copies of the last outputs, not the layers' (reused) buffers
    np.testing.assert_array_equal(acts.latest[1], model.outputs[1])
    assert acts.latest[1] is not model.outputs[1]
    assert acts.labels == {1: "1 BatchNorm1d+tanh", 2: "2 Linear+relu"}
    text = acts.summary()
    assert "1 BatchNorm1d+tanh" in text and "saturated" in text and "dead" in text
    assert f"{relu['dead'][-1]:.2%}" in text and f"{tanh['saturated'][-1]:.2%}" in text


def test_activation_stats_sigmoid_saturation_and_every():
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(10, 16), fastnn.Sigmoid(), fastnn.Linear(16, 3))
    model[0].weight.data[:3] *= 100
    trainer = make_trainer(model, optim.SGD(model.parameters(), lr=1e-3))
    acts = ActivationStats(every=3)
    x, y = data()
    train(trainer, [acts], 4, x, y)
    assert acts.steps == [0, 3]
    s = np.array(model.outputs[1], np.float64)
    expected = np.mean((s < 0.015) | (s > 0.985))
    assert expected > 0
    assert acts.history["1 Sigmoid"]["saturated"][-1] == pytest.approx(expected, abs=1e-12)


def test_gradient_stats_match_numpy():
    model = make_model()
    trainer = make_trainer(model, optim.SGD(model.parameters(), lr=0.1))
    grads = GradientStats(every=2)
    grads_1d = GradientStats(every=2, include_1d=True)
    expected = []

    def check(step):
        if step % 2:
            return
        layers = {i: (np.mean(g), np.std(g)) for i in (1, 2)
                  for g in [np.array(model.grads[i], np.float64)]}
        params = {n: (np.mean(g), np.std(g), np.std(g) / np_std(p.data))
                  for n, p in model.named_parameters()
                  for g in [np.array(p.grad, np.float64)]}
        expected.append((layers, params))

    x, y = data()
    train(trainer, [grads, grads_1d], 3, x, y, on_step=check)
    assert grads.steps == [0, 2]
    assert list(grads.param_history) == ["0.weight", "2.weight", "3.weight"]
    assert set(grads_1d.param_history) == {n for n, _ in model.named_parameters()}
    for k, (layers, params) in enumerate(expected):
        for i, label in ((1, "1 BatchNorm1d+tanh"), (2, "2 Linear+relu")):
            h = grads.history[label]
            np.testing.assert_allclose([h["mean"][k], h["std"][k]], layers[i], rtol=1e-12,
                                       atol=1e-15)
        for name, h in grads_1d.param_history.items():
            got = [h["mean"][k], h["std"][k], h["ratio"][k]]
            np.testing.assert_allclose(got, params[name], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(grads.latest[2], model.grads[2])
    text = grads.summary()
    assert "2 Linear+relu" in text and "3.weight" in text and "grad:data" in text


def test_gradient_ratio_guard_zero_data():
    model = make_model()
    trainer = make_trainer(model, sgd_two_groups(model, lr_other=0.0))
    grads = GradientStats(every=1, include_1d=True)
    x, y = data()
    train(trainer, [grads], 1, x, y)
    assert math.isnan(grads.param_history["1.bias"]["ratio"][0])  # BatchNorm beta == 0
    assert np.isfinite(grads.param_history["1.bias"]["std"][0])


def test_callbacks_follow_the_trainer_protocol():
    train_mod = pytest.importorskip("fastnn.train")
    if not hasattr(train_mod, "Callback"):
        pytest.skip("fastnn.train has no Callback yet")
    for cb in (UpdateRatio(), ActivationStats(), GradientStats()):
        assert isinstance(cb, train_mod.Callback)


def assert_png(path, folder):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG and os.path.getsize(path) > 1000
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".")]


def test_plots_write_png_atomically(tmp_path):
    model = make_model()
    model[2].bias.data[:5] = -1e4
    trainer = make_trainer(model, optim.Adam(model.parameters(), lr=1e-2))
    ur, acts, grads = UpdateRatio(), ActivationStats(every=2), GradientStats(every=2)
    x, y = data()
    train(trainer, [ur, acts, grads], 4, x, y)
    h = trainer.history
    h.update(train_loss=[1.1, 0.9], val_loss=[1.2, 1.0], train_acc=[0.4, 0.6],
             val_acc=[0.35, 0.5])
    outputs = [
        plot_history(h, tmp_path / "history.png"),
        plot_update_ratios(ur, tmp_path / "update.png"),
        plot_activation_histograms(acts, tmp_path / "acts.png"),
        plot_gradient_histograms(grads, tmp_path / "grads.png"),
    ]
    for out, name in zip(outputs, ("history", "update", "acts", "grads")):
        assert os.fspath(out) == os.fspath(tmp_path / f"{name}.png")
        assert_png(out, tmp_path)
    # no validation, no accuracy, step losses only; and a path given as str; overwrite
    path = plot_history({"train_loss": [1.0, 0.8, 0.7], "val_loss": [], "train_acc": [],
                         "val_acc": [], "step_loss": h["step_loss"]}, str(tmp_path / "a.png"))
    assert_png(path, tmp_path)
    assert_png(plot_history({"step_loss": [3.0, 2.0, 1.5]}, path), tmp_path)
    # nothing recorded yet: still a chart
    assert_png(plot_activation_histograms(ActivationStats(), tmp_path / "e.png"), tmp_path)
    assert_png(plot_update_ratios(UpdateRatio(), tmp_path / "u.png"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["history.png", "update.png", "acts.png", "grads.png", "a.png", "e.png", "u.png"])


def test_plot_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    import fastnn.plot

    def broken_fsync(fd):
        raise OSError("disk full")

    ur = UpdateRatio()
    ur.steps, ur.history = [1, 2], {"w": [-3.0, -2.5]}
    (tmp_path / "u.png").write_bytes(b"old")
    monkeypatch.setattr(fastnn.plot.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        plot_update_ratios(ur, tmp_path / "u.png")
    assert os.listdir(tmp_path) == ["u.png"]  # no temp file left behind
    assert (tmp_path / "u.png").read_bytes() == b"old"  # the old chart untouched


def test_first_step_of_a_run_is_always_recorded():
    """The Trainer counts steps from 1: with every=100, a short run still records its first
    step (the picture at initialisation), then the multiples of every."""
    model = make_model()
    trainer = make_trainer(model, optim.SGD(model.parameters(), lr=0.1))
    trainer.step = 1
    cbs = [UpdateRatio(every=100), ActivationStats(every=2), GradientStats(every=100)]
    x, y = data()
    train(trainer, cbs, 4, x, y)
    assert [cb.steps for cb in cbs] == [[1], [1, 2, 4], [1]]


def test_memory_footprint_counts_each_block_once():
    """Linear(4, 3) float64, Adam, batch 5: every byte accounted for by hand."""
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(4, 3, dtype=np.float64))
    opt = fastnn.optim.Adam(model.parameters())
    loss = fastnn.CrossEntropyLoss()
    x, y = np.ones((5, 4)), np.zeros(5, dtype=np.int64)
    loss(model(x), y)
    model.backward(loss.backward(), input_grad=False)
    opt.step()
    mem = fastnn.diagnostics.memory_footprint(model, opt, loss, inputs=(x, y))
    n = 15 * 8  # 12 weights + 3 biases, float64, in one arena
    assert mem["parameters"] == mem["gradients"] == n
    assert mem["optimizer_state"] == 2 * n  # exp_avg, exp_avg_sq
    assert mem["activations"] == 2 * 5 * 3 * 8  # the layer's output, the loss's probabilities
    assert mem["minimum"] == 6 * n
    # beyond the minimum: the loss's dlogits (5, 3) and per-row losses (5,) float64
    assert mem["held"] == mem["minimum"] + 5 * 3 * 8 + 5 * 8
    assert mem["ratio"] == mem["held"] / mem["minimum"]
    # the batch and targets, which the caller owns, count when not excluded
    assert fastnn.diagnostics.memory_footprint(model, opt, loss)["held"] == mem["held"] + x.nbytes + y.nbytes
