"""fastnn.train.Trainer: learning, history, early stopping, clipping, schedules, callbacks,
checkpoints and resume, progress output, predict/evaluate."""
import math

import numpy as np
import pytest

import fastnn
from fastnn import data, datasets, optim
from fastnn.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from fastnn.train import Callback, Trainer

HISTORY_KEYS = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "step_loss"}


def blobs(n=300, seed=0, dtype=np.float32, flip=False):
    """Three well separated Gaussian blobs in 2-d; flip=True permutes the labels (a
    validation set whose loss rises as the model learns the training set)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])
    y = rng.integers(0, 3, n)
    X = (centers[y] + rng.standard_normal((n, 2))).astype(dtype)
    return X, ((y + 1) % 3 if flip else y)


def small_mlp(seed=0, dtype=np.float32, dropout=0.0, n_in=2, n_out=3, hidden=16):
    fastnn.manual_seed(seed)
    layers = [fastnn.Linear(n_in, hidden, bias=False, dtype=dtype),
              fastnn.BatchNorm1d(hidden, activation="relu", dtype=dtype)]
    if dropout:
        layers.append(fastnn.Dropout(dropout))
    layers.append(fastnn.Linear(hidden, n_out, dtype=dtype))
    return fastnn.Sequential(*layers)


def assert_params_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# ------------------------------------------------------------------------------ learning


def test_learns_separable_problem():
    X, y = blobs(400)
    Xv, yv = blobs(200, seed=1)
    model = small_mlp()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.02), progress=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=10, batch_size=32)
    assert history["val_acc"][-1] >= 0.97
    assert history["train_loss"][-1] < history["train_loss"][0]
    loss, acc = trainer.evaluate(Xv, yv)
    assert acc >= 0.97 and loss < 0.2


def test_learns_digits():
    X, y = datasets.load_digits()
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data.split(X, y, seed=0)
    scaler = data.Standardizer().fit(Xtr)
    Xtr, Xva, Xte = (scaler.transform(a) for a in (Xtr, Xva, Xte))
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(64, 64, bias=False, init="he_normal"),
                              fastnn.BatchNorm1d(64, activation="relu"),
                              fastnn.Dropout(0.1), fastnn.Linear(64, 10))
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=3e-3), progress=False)
    history = trainer.fit((Xtr, ytr), (Xva, yva), epochs=5, batch_size=64)
    assert history["val_acc"][-1] >= 0.9
    _, test_acc = trainer.evaluate(Xte, yte)
    assert test_acc >= 0.9


# ------------------------------------------------------------------------------- history


def test_history_keys_and_lengths():
    X, y = blobs(200)
    Xv, yv = blobs(50, seed=1)
    model = small_mlp()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=4, batch_size=32)
    assert history is trainer.history
    assert set(history) == HISTORY_KEYS
    steps_per_epoch = 200 // 32  # drop_last: a constant batch shape
    for key in HISTORY_KEYS - {"step_loss"}:
        assert len(history[key]) == 4, key
    assert len(history["step_loss"]) == 4 * steps_per_epoch == trainer.step
    assert trainer.epoch == 4
    assert all(isinstance(v, float) and math.isfinite(v) for v in history["step_loss"])
    assert all(0 <= a <= 1 for a in history["train_acc"] + history["val_acc"])
    assert history["lr"] == [0.1] * 4
    # the epoch's train loss is the mean of its steps' losses (equal batch sizes)
    first = history["step_loss"][:steps_per_epoch]
    assert history["train_loss"][0] == pytest.approx(np.mean(first), rel=1e-12)
    # the validation numbers are evaluate() on the validation set at the end of the epoch
    assert history["val_loss"][-1] == trainer.evaluate(Xv, yv)[0]


def test_history_without_validation_and_with_mse():
    X, y = blobs(100)
    model = small_mlp()
    history = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        (X, y), epochs=2, batch_size=25)
    assert history["val_loss"] == [None, None] and history["val_acc"] == [None, None]
    # a regression loss: no accuracy
    target = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    model = small_mlp()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05), loss_fn=fastnn.MSELoss(),
                      progress=False)
    history = trainer.fit((X, target), (X, target), epochs=2, batch_size=25)
    assert history["train_acc"] == [None, None] and history["val_acc"] == [None, None]
    loss, acc = trainer.evaluate(X, target)
    assert acc is None and loss == history["val_loss"][-1]


def test_bad_trainer_arguments():
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="patience"):
        Trainer(model, opt, patience=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Trainer(model, opt, checkpoint_every=2)


# ------------------------------------------------------------------------ early stopping


class ValLossLog(Callback):
    def __init__(self):
        self.val_losses, self.states = [], []

    def on_epoch_end(self, trainer, epoch, logs):
        self.val_losses.append(logs["val_loss"])
        self.states.append(trainer.model.state_dict())


def test_early_stopping_restores_best_weights():
    X, y = blobs(300)
    Xv, yv = blobs(100, seed=1, flip=True)  # validation loss gets worse as it learns
    model = small_mlp(hidden=32)
    log = ValLossLog()
    patience = 3
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.01), patience=patience,
                      callbacks=[log], progress=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=50, batch_size=32)
    n = len(history["val_loss"])
    best = int(np.argmin(history["val_loss"]))
    assert n < 50 and n == best + 1 + patience
    assert trainer.stop_training
    # the model now holds the best epoch's weights and running statistics
    assert trainer.evaluate(Xv, yv)[0] == history["val_loss"][best]
    assert_state = log.states[best]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, assert_state[k], err_msg=k)


def test_early_stopping_without_restore_keeps_last_weights():
    X, y = blobs(300)
    Xv, yv = blobs(100, seed=1, flip=True)
    model = small_mlp(hidden=32)
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.01), patience=2,
                      restore_best=False, progress=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=50, batch_size=32)
    assert len(history["val_loss"]) < 50
    assert trainer.evaluate(Xv, yv)[0] == history["val_loss"][-1]
    assert history["val_loss"][-1] > min(history["val_loss"])


def test_callback_can_stop_training():
    class StopAt2(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                trainer.stop_training = True

    X, y = blobs(100)
    model = small_mlp()
    history = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[StopAt2()],
                      progress=False).fit((X, y), epochs=10, batch_size=20)
    assert len(history["train_loss"]) == 2


# ------------------------------------------------------------------------------ clipping


def global_grad_norm(model):
    return math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2))
                         for p in model.parameters()))


class GradNorms(Callback):
    def __init__(self):
        self.norms = []

    def on_step_end(self, trainer, step, loss):
        self.norms.append(global_grad_norm(trainer.model))


def test_gradient_clipping_is_applied():
    X, y = blobs(200)
    max_norm = 0.05
    unclipped, clipped = GradNorms(), GradNorms()
    model = small_mlp()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[unclipped],
            progress=False).fit((X, y), epochs=1, batch_size=20)
    assert max(unclipped.norms) > 10 * max_norm  # so that clipping has work to do
    model = small_mlp()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), clip_grad_norm=max_norm,
            callbacks=[clipped], progress=False).fit((X, y), epochs=1, batch_size=20)
    assert len(clipped.norms) == 10
    assert max(clipped.norms) <= max_norm * (1 + 1e-5)
    # those that needed clipping end at max_norm
    assert clipped.norms[0] == pytest.approx(max_norm, rel=1e-4)


# ---------------------------------------------------------------------------- schedules


def test_step_lr_steps_per_epoch():
    X, y = blobs(100)
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = StepLR(opt, step_size=2, gamma=0.5)
    seen = []

    class LR(Callback):
        def on_step_end(self, trainer, step, loss):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    history = Trainer(model, opt, scheduler=sched, callbacks=[LR()], progress=False).fit(
        (X, y), epochs=5, batch_size=25)
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert seen == pytest.approx(np.repeat([0.1, 0.1, 0.05, 0.05, 0.025], 4).tolist())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)  # after 5 steps


@pytest.mark.parametrize("with_val", [True, False])
def test_reduce_lr_on_plateau_uses_val_loss(with_val):
    X, y = blobs(200)
    Xv, yv = blobs(100, seed=1, flip=True)
    model = small_mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=0)
    history = Trainer(model, opt, scheduler=sched, progress=False).fit(
        (X, y), (Xv, yv) if with_val else None, epochs=6, batch_size=20)
    # replay the metric the trainer should have passed on a twin scheduler
    metric = history["val_loss"] if with_val else history["train_loss"]
    twin_opt = optim.SGD(small_mlp().parameters(), lr=0.01)
    twin = ReduceLROnPlateau(twin_opt, factor=0.5, patience=0)
    expected = []
    for m in metric:
        expected.append(twin_opt.param_groups[0]["lr"])
        twin.step(m)
    assert history["lr"] == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(twin_opt.param_groups[0]["lr"])
    if with_val:  # the flipped validation set makes it worse: the lr was reduced
        assert history["lr"][-1] < 0.01


# ----------------------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("train_begin", trainer))

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(("epoch_begin", epoch, trainer.epoch, trainer.model.training))

    def on_step_end(self, trainer, step, loss):
        grads_present = any(np.any(p.grad != 0) for p in trainer.model.parameters())
        self.events.append(("step_end", step, loss, grads_present, trainer.step))

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(("epoch_end", epoch, dict(logs), trainer.epoch))

    def on_train_end(self, trainer):
        self.events.append(("train_end", trainer))


def test_callbacks_order_and_arguments():
    X, y = blobs(60)
    Xv, yv = blobs(30, seed=1)
    model = small_mlp()
    a, b = Recorder(), Recorder()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[a, b],
                      progress=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=2, batch_size=20)
    assert a.events == b.events  # every callback, in list order, the same calls
    kinds = [e[0] for e in a.events]
    assert kinds == (["train_begin"] + (["epoch_begin"] + ["step_end"] * 3 + ["epoch_end"]) * 2
                     + ["train_end"])
    assert a.events[0][1] is trainer and a.events[-1][1] is trainer
    begins = [e for e in a.events if e[0] == "epoch_begin"]
    assert [(e[1], e[2], e[3]) for e in begins] == [(1, 0, True), (2, 1, True)]
    steps = [e for e in a.events if e[0] == "step_end"]
    assert [e[1] for e in steps] == list(range(1, 7)) == [e[4] for e in steps]
    assert [e[2] for e in steps] == history["step_loss"]
    assert all(e[3] for e in steps)  # gradients still in .grad after the step
    ends = [e for e in a.events if e[0] == "epoch_end"]
    assert [e[1] for e in ends] == [1, 2] and [e[3] for e in ends] == [1, 2]
    for i, e in enumerate(ends):
        logs = e[2]
        assert set(logs) == {"train_loss", "train_acc", "val_loss", "val_acc", "lr"}
        for key, value in logs.items():
            assert history[key][i] == value, key


def test_default_callback_methods_are_no_ops():
    X, y = blobs(40)
    model = small_mlp()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[Callback()],
            progress=False).fit((X, y), epochs=1, batch_size=20)


# ------------------------------------------------------------------- checkpoints & resume


def _dropout_run(tmp, epochs, resume=None, seed=0, scheduler="step", checkpoint_every=3,
                 flip=False):
    X, y = blobs(160, dtype=np.float64)
    Xv, yv = blobs(60, seed=1, dtype=np.float64, flip=flip)
    model = small_mlp(seed=seed, dtype=np.float64, dropout=0.3)
    opt = optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    sched = (StepLR(opt, step_size=2, gamma=0.7) if scheduler == "step"
             else ReduceLROnPlateau(opt, factor=0.5, patience=0))
    trainer = Trainer(model, opt, scheduler=sched, clip_grad_norm=1.0, patience=None,
                      restore_best=False, checkpoint_dir=tmp, checkpoint_every=checkpoint_every,
                      progress=False)
    trainer.fit((X, y), (Xv, yv), epochs=epochs, batch_size=16, seed=5, resume=resume)
    return trainer


def test_checkpoints_written_every_n_epochs(tmp_path, monkeypatch):
    from fastnn import train as train_module

    written = []
    real = Trainer.save_checkpoint

    def spy(self, path, data=None):
        written.append((self.epoch, str(path)))
        return real(self, path, data)

    monkeypatch.setattr(train_module.Trainer, "save_checkpoint", spy)
    _dropout_run(tmp_path, 7, checkpoint_every=2)
    assert [e for e, _ in written] == [2, 4, 6]
    assert written[0][1] == str(tmp_path / "checkpoint.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as z:
        assert "trainer" in z.files and any(k.startswith("model/") for k in z.files)


def test_resume_is_bitwise_identical(tmp_path):
    straight = _dropout_run(tmp_path / "a", 6)
    half = _dropout_run(tmp_path / "b", 3)
    path = tmp_path / "b" / "checkpoint.npz"
    assert path.exists() and half.epoch == 3
    # a fresh model, optimizer and trainer (same construction), resumed to 6 epochs
    resumed = _dropout_run(tmp_path / "c", 6, resume=path)
    assert resumed.epoch == 6 and resumed.step == straight.step
    assert resumed.history == straight.history
    assert_params_equal(resumed.model, straight.model)
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for sa, sb in zip(opt_a["state"][0], opt_b["state"][0]):
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_resume_into_differently_seeded_model(tmp_path):
    straight = _dropout_run(tmp_path / "a", 6)
    _dropout_run(tmp_path / "b", 3)
    resumed = _dropout_run(tmp_path / "c", 6, resume=tmp_path / "b" / "checkpoint.npz",
                           seed=123)
    assert_params_equal(resumed.model, straight.model)


def test_resume_with_reduce_lr_on_plateau(tmp_path):
    # a validation loss that keeps rising: the straight run cuts the lr every epoch
    straight = _dropout_run(tmp_path / "a", 6, scheduler="plateau", flip=True)
    _dropout_run(tmp_path / "b", 3, scheduler="plateau", flip=True)
    resumed = _dropout_run(tmp_path / "c", 6, resume=tmp_path / "b" / "checkpoint.npz",
                           scheduler="plateau", flip=True)
    assert resumed.history["lr"] == straight.history["lr"]
    assert_params_equal(resumed.model, straight.model)


# ------------------------------------------------------------------------------ progress


def test_progress_false_prints_nothing(capfd, monkeypatch):
    tqdm = pytest.importorskip("tqdm")

    def no_bar(*args, **kwargs):
        raise AssertionError("tqdm called with progress=False")

    monkeypatch.setattr(tqdm, "tqdm", no_bar)
    X, y = blobs(100)
    Xv, yv = blobs(40, seed=1)
    model = small_mlp()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        (X, y), (Xv, yv), epochs=2, batch_size=20)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_true_uses_one_bar_for_the_whole_run(capfd, monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    real, bars = tqdm.tqdm, []

    def spy(*args, **kwargs):
        bars.append(real(*args, **{**kwargs, "disable": False}))  # as on a terminal
        return bars[-1]

    monkeypatch.setattr(tqdm, "tqdm", spy)
    X, y = blobs(100)
    model = small_mlp()
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=True).fit(
        (X, y), epochs=2, batch_size=20)
    assert len(bars) == 1
    assert bars[0].total == bars[0].n == 2 * 5  # 5 batches of 20 per epoch
    assert "epoch=2/2" in bars[0].postfix
    assert capfd.readouterr().out == ""


# ----------------------------------------------------------------------- predict/evaluate


def test_predict_and_evaluate_shapes():
    X, y = blobs(2500)
    model = small_mlp()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit((X, y), epochs=1, batch_size=100)
    model.train()
    out = trainer.predict(X)  # crosses batch boundaries (1024)
    assert out.shape == (2500, 3) and out.dtype == np.float32
    assert model.training  # mode restored
    model.eval()
    np.testing.assert_array_equal(out[:10], model(X[:10]))  # eval-mode outputs
    out_copy = out.copy()
    model(X[:7])
    np.testing.assert_array_equal(out, out_copy)  # a new array, not the layer's buffer
    model.train()
    loss, acc = trainer.evaluate(X, y)
    assert isinstance(loss, float) and isinstance(acc, float)
    assert acc == np.mean(out.argmax(axis=1) == y)
    shifted = out - out.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(len(y)), y].mean(), rel=1e-5)
    assert model.training
    small = trainer.predict(X[:5], batch_size=2)
    assert small.shape == (5, 3)
    np.testing.assert_allclose(small, out[:5], rtol=1e-6, atol=1e-6)


def test_stop_on_nonfinite_raises_with_where_and_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    fastnn.manual_seed(0)
    model = fastnn.Sequential(fastnn.Linear(4, 8), fastnn.ReLU(), fastnn.Linear(8, 3))

    class Explode(fastnn.train.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:  # two good epochs, then a learning rate that diverges
                trainer.optimizer.param_groups[0]["lr"] = 1e30

    trainer = fastnn.train.Trainer(model, fastnn.optim.SGD(model.parameters(), lr=0.01),
                                   stop_on_nonfinite=True, callbacks=[Explode()],
                                   progress=False)
    with pytest.raises(fastnn.train.NonFiniteLossError, match="try a lower learning rate") as e:
        trainer.fit((X, y), (X, y), epochs=50, batch_size=16)
    assert e.value.epoch >= 3 and e.value.last_finite is not None
    assert all(np.isfinite(p.data).all() for p in model.parameters())  # the best epoch's
    assert len(trainer.history["val_loss"]) == e.value.epoch - 1


def test_without_stop_on_nonfinite_a_diverging_run_goes_on():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    model = fastnn.Sequential(fastnn.Linear(4, 3))
    trainer = fastnn.train.Trainer(model, fastnn.optim.SGD(model.parameters(), lr=1e30),
                                   progress=False)
    history = trainer.fit((X, y), None, epochs=3, batch_size=16)
    assert len(history["train_loss"]) == 3


# ------------------------------------------------ built-in callbacks, per-step schedules


def blob_trainer(callbacks=(), lr=0.02, **kw):
    model = small_mlp()
    return Trainer(model, optim.Adam(model.parameters(), lr=lr), callbacks=callbacks,
                   progress=False, **kw)


def test_model_checkpoint_keeps_the_best_epochs_model(tmp_path):
    from fastnn.train import ModelCheckpoint

    X, y = blobs(200)
    Xv, yv = blobs(100, seed=1, flip=True)  # the validation loss rises after a while
    best = ModelCheckpoint(tmp_path / "best.npz")
    every = ModelCheckpoint(tmp_path / "e{epoch:02d}-{val_acc:.2f}.npz", monitor="val_acc",
                            save_best_only=False)
    trainer = blob_trainer([best, every], restore_best=False)
    history = trainer.fit((X, y), (Xv, yv), epochs=6, batch_size=32)
    losses = history["val_loss"]
    assert best.best == min(losses) and losses.index(min(losses)) < 5  # not the last epoch
    saved = fastnn.load(tmp_path / "best.npz")
    assert Trainer(saved, optim.SGD(saved.parameters()), progress=False).evaluate(
        Xv, yv)[0] == pytest.approx(min(losses), rel=1e-6)
    assert every.mode == "max" and len(list(tmp_path.glob("e*.npz"))) == 6
    assert every.saved == str(tmp_path / f"e06-{history['val_acc'][-1]:.2f}.npz")
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="monitor 'val_loss' has no value"):
        blob_trainer([ModelCheckpoint(tmp_path / "m.npz")]).fit((X, y), None, epochs=1)
    with pytest.raises(ValueError, match="monitor: expected one of"):
        ModelCheckpoint(tmp_path / "m.npz", monitor="loss")


def test_csv_logger_writes_the_history_and_appends_on_resume(tmp_path):
    import csv

    from fastnn.train import CSVLogger

    X, y = blobs(200)
    Xv, yv = blobs(100, seed=1)
    path = tmp_path / "log.csv"
    trainer = blob_trainer([CSVLogger(path)], checkpoint_dir=tmp_path, checkpoint_every=2)
    history = trainer.fit((X, y), (Xv, yv), epochs=3, batch_size=32)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [float(r[key]) for r in rows] == history[key]  # full precision
    # resumed from epoch 2: the third row is written again, not twice
    resumed = blob_trainer([CSVLogger(path, append=True)])
    resumed.fit((X, y), (Xv, yv), epochs=4, batch_size=32,
                resume=tmp_path / "checkpoint.npz")
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_loss"]) for r in rows] == resumed.history["val_loss"]
    blob_trainer([CSVLogger(tmp_path / "noval.csv")]).fit((X, y), None, epochs=1)
    assert list(csv.DictReader(open(tmp_path / "noval.csv")))[0]["val_loss"] == ""
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is not a CSVLogger file"):
        blob_trainer([CSVLogger(tmp_path / "other.csv", append=True)]).fit((X, y), None)


def test_terminate_on_nan_stops_after_that_step():
    from fastnn.train import TerminateOnNaN

    X, y = blobs(160)
    stop = TerminateOnNaN()

    class Explode(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 7:  # the next step's loss is not finite
                trainer.optimizer.param_groups[0]["lr"] = 1e38

    trainer = blob_trainer([Explode(), stop], lr=0.01)
    history = trainer.fit((X, y), None, epochs=5, batch_size=32)  # 5 steps an epoch
    assert stop.stopped_step == trainer.step and trainer.step < 25
    assert not math.isfinite(history["step_loss"][-1])
    assert all(math.isfinite(v) for v in history["step_loss"][:-1])
    assert len(history["train_loss"]) == trainer.epoch == (trainer.step + 4) // 5


def test_one_cycle_steps_with_every_optimizer_step():
    from fastnn.optim.lr_scheduler import OneCycleLR

    X, y = blobs(160)
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = []

    class Watch(Callback):
        def on_step_end(self, trainer, step, loss):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    sched = OneCycleLR(opt, max_lr=0.5, epochs=4, steps_per_epoch=5)
    trainer = Trainer(model, opt, scheduler=sched, scheduler_interval="step",
                      callbacks=[Watch()], progress=False)
    trainer.fit((X, y), None, epochs=4, batch_size=32)
    assert sched.last_epoch == 20 and len(seen) == 20
    peak = seen.index(max(seen))
    assert max(seen) == pytest.approx(0.5) and 4 <= peak <= 6  # 30% of 20 steps
    assert seen[-1] < 0.5 / 25  # annealed past the start
    with pytest.raises(ValueError, match="scheduler_interval: ReduceLROnPlateau steps once"):
        Trainer(model, opt, scheduler=ReduceLROnPlateau(opt), scheduler_interval="step")
    with pytest.raises(ValueError, match="scheduler_interval: expected one of"):
        Trainer(model, opt, scheduler_interval="batch")


def test_a_damaged_or_foreign_checkpoint_raises_and_changes_nothing(tmp_path):
    import json
    import zipfile

    run = _dropout_run(tmp_path, 3)
    good = tmp_path / "checkpoint.npz"
    raw = good.read_bytes()
    with np.load(good) as z:
        members = {k: z[k] for k in z.files}
    record = json.loads(str(members["trainer"]))

    def variant(name, **changes):
        path = tmp_path / name
        arrays = {**members, **changes}
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return path

    huge = tmp_path / "huge.npz"  # a header claiming 10^12 floats, 100 bytes of data
    with zipfile.ZipFile(huge, "w") as z:
        for k, v in members.items():
            if k != "model/0.weight":
                with z.open(k + ".npy", "w") as f:
                    np.lib.format.write_array(f, v)
        with z.open("model/0.weight.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
            f.write(b"\0" * 100)
    (tmp_path / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "text.npz").write_text("not a checkpoint")
    fastnn.save(run.model, tmp_path / "model.npz")
    cases = [("truncated.npz", "not a readable checkpoint file"),
             ("text.npz", "not a readable checkpoint file"),
             ("model.npz", "no trainer record"),
             (huge.name, r"model/0.weight: expected a float64 array of shape \(16, 2\)"),
             (variant("extra.npz", **{"opt/9/0/exp_avg": np.zeros(3)}).name,
              "opt/9/0/exp_avg: not an array of this model and optimizer"),
             (variant("nomodel.npz", **{"model/0.weight": None}).name, "no model/0.weight"),
             (variant("epoch.npz", trainer=np.array(json.dumps({**record, "epoch": "x"}))).name,
              "not a checkpoint of this trainer .*epoch"),
             (variant("nokey.npz", trainer=np.array(json.dumps(
                 {k: v for k, v in record.items() if k != "step"}))).name,
              "not a checkpoint of this trainer \\(KeyError")]
    for name, match in cases:
        fresh = _dropout_run(tmp_path / "fresh", 0)
        before = fresh.model.state_dict()
        with pytest.raises(fastnn.ModelFileError, match=match):
            _dropout_run(tmp_path / "other", 5, resume=tmp_path / name)
        with pytest.raises(fastnn.ModelFileError):
            fresh._load_checkpoint(tmp_path / name, fresh._batches(*blobs(160), 16, 5))
        assert fresh.epoch == 0 and fresh.step == 0
        for k, v in fresh.model.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"{name}: {k}")
    wider = tmp_path / "wider"  # another model's checkpoint: its shapes are refused
    X, y = blobs(160, dtype=np.float64)
    model = small_mlp(dtype=np.float64, dropout=0.3, hidden=8)
    Trainer(model, optim.Adam(model.parameters()), progress=False, checkpoint_dir=wider,
            checkpoint_every=1).fit((X, y), None, epochs=1, batch_size=16)
    with pytest.raises(fastnn.ModelFileError, match=r"expected a float64 array of shape"):
        _dropout_run(tmp_path / "other", 5, resume=wider / "checkpoint.npz")


def test_a_summed_loss_reports_the_same_epoch_losses_and_none_is_refused():
    X, y = blobs(160)
    Xv, yv = blobs(60, seed=1)
    runs = {}
    for reduction, lr in (("mean", 0.01), ("sum", 0.01 / 32)):  # the same steps for SGD
        model = small_mlp()
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=lr), progress=False,
                          loss_fn=fastnn.CrossEntropyLoss(reduction=reduction))
        runs[reduction] = trainer.fit((X, y), (Xv, yv), epochs=2, batch_size=32)
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(runs["sum"][key], runs["mean"][key], rtol=1e-5)
    model = small_mlp()
    trainer = Trainer(model, optim.SGD(model.parameters()), progress=False,
                      loss_fn=fastnn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="loss_fn: reduction='none' gives a loss per sample"):
        trainer.fit((X, y), None, epochs=1)


def test_model_checkpoint_refuses_an_unsaveable_model_before_training(tmp_path):
    from fastnn.train import ModelCheckpoint

    class Mine(fastnn.Linear):  # not registered: load could not rebuild it
        pass

    model = fastnn.Sequential(Mine(2, 3))
    trainer = Trainer(model, optim.SGD(model.parameters()), progress=False,
                      callbacks=[ModelCheckpoint(tmp_path / "m.npz")])
    X, y = blobs(64)
    with pytest.raises(ValueError, match="layer 0 is a Mine"):
        trainer.fit((X, y), (X, y), epochs=1)
    assert trainer.step == 0
