"""Training loop: epochs of mini-batches with validation, history, early stopping, gradient
clipping, a learning-rate schedule, checkpoints and resume, a progress bar and callbacks.

    trainer = Trainer(model, optim.Adam(model.parameters(), lr=1e-3), patience=5)
    history = trainer.fit((X_train, y_train), (X_val, y_val), epochs=30, batch_size=64)
    test_loss, test_acc = trainer.evaluate(X_test, y_test)
"""
import csv
import io
import json
import math
import os

import numpy as np

from . import _validate, checkpoint
from .data import batches
from .fused import FusedStep
from .layers import Sequential
from .losses import CrossEntropyLoss
from .optim import clip_grad_norm_
from .optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["CSVLogger", "Callback", "ModelCheckpoint", "NonFiniteLossError", "TerminateOnNaN",
           "Trainer"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (Trainer(stop_on_nonfinite=True)): epoch,
    step, loss, and the last finite loss with its step (None before any)."""

    def __init__(self, epoch, step, loss, last_finite):
        self.epoch, self.step, self.loss, self.last_finite = epoch, step, loss, last_finite
        last = ("no step had a finite loss" if last_finite is None else
                f"the last finite loss was {last_finite[1]:.4g} at step {last_finite[0]}")
        super().__init__(f"the training loss is {loss} at epoch {epoch}, step {step} ({last}): "
                         "the run diverged; try a lower learning rate")


class Callback:
    """Hooks a Trainer calls; override the ones you need. on_step_end runs after the
    optimizer step and before the next zero_grad, so gradients are still in .grad."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_step_end(self, trainer, step, loss):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


LOG_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")  # an epoch's logs


class ModelCheckpoint(Callback):
    """Save the model (fastnn.save, atomically) after each epoch whose `monitor` value (a
    key of the epoch's logs: "val_loss", "val_acc", "train_loss", "train_acc") is the best
    so far, or after every epoch with save_best_only=False, as Keras's ModelCheckpoint.
    mode: "min", "max", or "auto" (max for accuracies). path may name the epoch and the
    logs, e.g. "model-{epoch:03d}.npz". best: the best value so far; saved: the last path
    written. Under fastnn.distributed, rank 0 writes."""

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=True):
        self.path = os.fspath(path)
        self.monitor = _validate.choice("monitor", monitor, LOG_KEYS[:4])
        mode = _validate.choice("mode", mode, ("auto", "min", "max"))
        self.mode = ("max" if monitor.endswith("acc") else "min") if mode == "auto" else mode
        self.save_best_only = bool(save_best_only)
        self.best = self.saved = None

    def on_train_begin(self, trainer):
        self.best = -math.inf if self.mode == "max" else math.inf
        # a model save would refuse, refused now rather than after the first epoch
        checkpoint.rebuildable_architecture(getattr(trainer.model, "module", trainer.model))

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs[self.monitor]
        if value is None:
            raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} has no value (a fit "
                             "without validation data has no val_loss): monitor 'train_loss'")
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best = value
        if (better or not self.save_best_only) and getattr(trainer, "rank", 0) == 0:
            self.saved = self.path.format(epoch=epoch, **logs)
            # a DataParallel model (fastnn.distributed) is saved as the model it wraps
            checkpoint.save(getattr(trainer.model, "module", trainer.model), self.saved)


class CSVLogger(Callback):
    """One row per epoch (epoch, train_loss, train_acc, val_loss, val_acc, lr) in a CSV
    file, rewritten atomically after each epoch, so an interrupted run leaves the rows of
    its finished epochs. append=True keeps an existing file's rows (a resumed run's), up to
    the epoch the Trainer resumes from. Values are written in full precision; a missing
    one (no validation data) is empty."""

    FIELDS = ("epoch",) + LOG_KEYS

    def __init__(self, path, append=False, separator=","):
        self.path, self.append, self.separator = os.fspath(path), bool(append), separator
        self.rows = []

    def on_train_begin(self, trainer):
        self.rows = []
        if self.append and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f, delimiter=self.separator))
            if not rows or tuple(rows[0]) != self.FIELDS:
                raise ValueError(f"CSVLogger: {self.path} is not a CSVLogger file (its first "
                                 f"line is {rows[0] if rows else 'missing'}); expected "
                                 f"{list(self.FIELDS)}")
            self.rows = [r for r in rows[1:] if r and r[0].isdigit()
                         and int(r[0]) <= trainer.epoch]

    def on_epoch_end(self, trainer, epoch, logs):
        self.rows.append([str(epoch)] + ["" if logs[k] is None else repr(float(logs[k]))
                                         for k in LOG_KEYS])
        if getattr(trainer, "rank", 0) != 0:  # fastnn.distributed: rank 0 writes
            return
        text = io.StringIO()
        writer = csv.writer(text, delimiter=self.separator, lineterminator="\n")
        writer.writerows([self.FIELDS, *self.rows])
        checkpoint.atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))


class TerminateOnNaN(Callback):
    """Stop training after the step whose loss is NaN or infinite, as Keras's
    TerminateOnNaN: that epoch ends there (its logs count the steps taken, its validation
    runs) and no other starts; with validation data, restore_best then restores the best
    epoch's weights. That step's update has been applied. Trainer(stop_on_nonfinite=True)
    raises NonFiniteLossError instead, before the update. stopped_step: the step, or None."""

    def __init__(self):
        self.stopped_step = None

    def on_step_end(self, trainer, step, loss):
        if not math.isfinite(loss):
            self.stopped_step = step
            trainer.stop_training = True


class Trainer:
    """Trains `model` (a Module mapping (B, ...) inputs to (B, K) outputs) with `optimizer`.

    loss_fn: a loss with forward(output, target) -> float and backward() (default
    CrossEntropyLoss; accuracy is reported for it). scheduler: stepped once per epoch
    (ReduceLROnPlateau with the validation loss), or after every optimizer step with
    scheduler_interval="step" (OneCycleLR, a warm-up counted in steps). clip_grad_norm: max
    global gradient norm per step, or None. patience: stop after this many epochs without a lower validation loss
    and restore the best weights (restore_best), or None. checkpoint_dir/checkpoint_every:
    write a resumable checkpoint every N epochs. progress: one tqdm bar for the whole run (on
    a terminal only), its postfix the epoch and the loss. callbacks: Callback objects
    (ModelCheckpoint, CSVLogger, TerminateOnNaN or your own); one that sets
    trainer.stop_training ends the epoch after that step.
    stop_on_nonfinite: raise NonFiniteLossError at the first NaN or infinite training loss
    (after restoring the best weights, as at the end of training), like Keras's
    TerminateOnNaN. A KeyboardInterrupt during fit also restores the best weights before it
    propagates (`interrupted` is then True); save_checkpoint still records where it was.

    history: "train_loss", "train_acc", "val_loss", "val_acc", "lr" per epoch, "step_loss"
    per step.
    """

    def __init__(self, model, optimizer, loss_fn=None, scheduler=None, clip_grad_norm=None,
                 patience=None, restore_best=True, checkpoint_dir=None, checkpoint_every=None,
                 callbacks=(), progress=True, stop_on_nonfinite=False,
                 scheduler_interval="epoch"):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int)
                                     or patience < 1):
            raise ValueError(f"patience: expected a positive int or None, got {patience!r}")
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("checkpoint_dir: needed with checkpoint_every")
        self.model, self.optimizer = model, optimizer
        self.loss_fn = loss_fn if loss_fn is not None else CrossEntropyLoss()
        self.scheduler, self.clip_grad_norm = scheduler, clip_grad_norm
        self.scheduler_interval = _validate.choice("scheduler_interval", scheduler_interval,
                                                   ("epoch", "step"))
        if scheduler_interval == "step" and isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError("scheduler_interval: ReduceLROnPlateau steps once per epoch, "
                             "on the validation loss; expected 'epoch'")
        self._step_scheduler = scheduler is not None and scheduler_interval == "step"
        self.patience, self.restore_best = patience, restore_best
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, checkpoint_every
        self.callbacks, self.progress = list(callbacks), progress
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.interrupted = False
        self._last_finite = None  # (step, loss) of the last finite training loss
        self.history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                        "step_loss")}
        self.step = 0
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self._best = (np.inf, None)  # (val loss, state_dict) of the best epoch so far
        self._bad_epochs = 0
        self._classifier = isinstance(self.loss_fn, CrossEntropyLoss)
        self._pred = self._hits = None  # buffers of _count_correct

    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def fit(self, train, val=None, epochs=10, batch_size=64, seed=0, resume=None):
        """Train for `epochs` epochs (counting those of a resumed checkpoint) on
        train = (X, y); val = (X_val, y_val) or None. resume: a checkpoint path. Returns
        the history."""
        self._loss_reduction()
        X, y = train
        data = self._batches(X, y, batch_size, seed)
        params = self.model.parameters()
        if resume is not None:
            self._load_checkpoint(resume, data)
        # a Sequential's forward, loss and backward as one C call from the second step on
        fused = (FusedStep(self.model, self.loss_fn)
                 if isinstance(self.model, Sequential) and len(self.model) else None)
        self._call("on_train_begin")
        bar = self._bar(len(data) * epochs, len(data) * self.epoch)
        try:
            self._fit_epochs(data, val, epochs, params, fused, bar)
        except (KeyboardInterrupt, NonFiniteLossError) as e:
            self.interrupted = isinstance(e, KeyboardInterrupt)
            self._restore_best()
            raise
        finally:
            if bar is not None:
                bar.close()
        self._restore_best()
        self._call("on_train_end")
        return self.history

    def _restore_best(self):
        if self.restore_best and self._best[1] is not None:
            self.model.load_state_dict(self._best[1])

    def _fit_epochs(self, data, val, epochs, params, fused, bar):
        while self.epoch < epochs and not self.stop_training:
            epoch = self.epoch + 1
            self._call("on_epoch_begin", epoch)
            self.model.train()
            total_loss = total_correct = seen = 0
            for xb, yb in data:
                self.optimizer.zero_grad()
                if fused is not None:
                    loss = fused(xb, yb)
                    out = self.model.outputs[-1]
                else:
                    out = self.model(xb)
                    loss = self.loss_fn(out, yb)
                    dy = self.loss_fn.backward()
                    # the input is data: no gradient (a Sequential, or one wrapped in
                    # fastnn.distributed.DataParallel)
                    if isinstance(getattr(self.model, "module", self.model), Sequential):
                        self.model.backward(dy, input_grad=False)
                    else:
                        self.model.backward(dy)
                if self.clip_grad_norm is not None:
                    clip_grad_norm_(params, self.clip_grad_norm)
                self.step += 1
                if not math.isfinite(loss):
                    if self.stop_on_nonfinite:
                        raise NonFiniteLossError(epoch, self.step, loss, self._last_finite)
                else:
                    self._last_finite = (self.step, loss)
                self.optimizer.step()
                if self._step_scheduler:
                    self.scheduler.step()
                n = len(xb)
                total_loss += self._batch_total(loss, n)
                seen += n
                if self._classifier:
                    total_correct += self._count_correct(out, yb)
                self.history["step_loss"].append(loss)
                self._call("on_step_end", self.step, loss)
                if bar is not None:
                    bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{loss:.4f}",
                                    refresh=False)
                    bar.update()
                if self._stop_after_step():  # a callback asked
                    break
            total_loss, total_correct, seen = self._reduce_totals(total_loss, total_correct, seen)
            logs = {"train_loss": total_loss / max(seen, 1),
                    "train_acc": total_correct / max(seen, 1) if self._classifier else None,
                    "val_loss": None, "val_acc": None,
                    "lr": self.optimizer.param_groups[0]["lr"]}
            if val is not None:
                logs["val_loss"], logs["val_acc"] = self.evaluate(*val)
            for key, value in logs.items():
                self.history[key].append(value)
            self.epoch = epoch
            self._schedule(logs)
            self._early_stopping(logs)
            self._call("on_epoch_end", epoch, logs)
            if self.checkpoint_every and epoch % self.checkpoint_every == 0:
                self.save_checkpoint(os.path.join(self.checkpoint_dir, "checkpoint.npz"), data)

    def _batches(self, X, y, batch_size, seed):
        """The epoch iterator of fit (fastnn.distributed shards it across ranks)."""
        drop_last = len(X) > batch_size  # constant batch shape: no re-allocation, no BN of 1
        return batches(X, y, batch_size, shuffle=True, seed=seed, drop_last=drop_last)

    def _loss_reduction(self):
        """loss_fn's reduction, "mean" or "sum" (a loss without one: "mean")."""
        reduction = getattr(self.loss_fn, "reduction", "mean")
        if reduction == "none":
            raise ValueError("loss_fn: reduction='none' gives a loss per sample; the Trainer "
                             "needs one number a step: use 'mean' or 'sum'")
        return reduction

    def _batch_total(self, loss, n):
        """A batch's loss summed over its n samples, from the loss loss_fn returned."""
        return loss if self._loss_reduction() == "sum" else loss * n

    def _stop_after_step(self):
        """Whether to end the epoch after this step (fastnn.distributed: agreed by the
        ranks)."""
        return self.stop_training

    def _reduce_totals(self, loss, correct, seen):
        """An epoch's summed loss, correct count and sample count (summed over the ranks
        by fastnn.distributed)."""
        return loss, correct, seen

    def _count_correct(self, out, y):
        """Correct predictions of a batch, through reused buffers: no array per step."""
        n = len(out)
        if self._pred is None or len(self._pred) < n:
            self._pred, self._hits = np.empty(n, np.intp), np.empty(n, bool)
        pred, hits = self._pred[:n], self._hits[:n]
        np.argmax(out, axis=1, out=pred)
        np.equal(pred, y, out=hits)
        return int(np.count_nonzero(hits))

    def _bar(self, total, done):
        """The run's progress bar over `total` steps, `done` of them taken (resumed), or
        None."""
        if not self.progress:
            return None
        from tqdm import tqdm  # imported only when a bar is shown

        # disable=None: no bar when the output is not a terminal (logs, CI)
        return tqdm(total=total, initial=done, desc="training", unit="batch", leave=False,
                    disable=None)

    def _schedule(self, logs):
        if self.scheduler is None or self._step_scheduler:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            metric = logs["val_loss"] if logs["val_loss"] is not None else logs["train_loss"]
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def _early_stopping(self, logs):
        if logs["val_loss"] is None:
            return
        if logs["val_loss"] < self._best[0]:
            state = self.model.state_dict() if (self.patience or self.restore_best) else None
            self._best, self._bad_epochs = (logs["val_loss"], state), 0
        else:
            self._bad_epochs += 1
            if self.patience is not None and self._bad_epochs >= self.patience:
                self.stop_training = True

    def evaluate(self, X, y, batch_size=1024):
        """(mean loss, accuracy or None) of the model on (X, y), in evaluation mode."""
        self._loss_reduction()
        training = self.model.training
        self.model.eval()
        total_loss = total_correct = 0.0
        try:
            for start in range(0, len(X), batch_size):
                xb, yb = X[start:start + batch_size], y[start:start + batch_size]
                out = self.model(xb)
                total_loss += self._batch_total(self.loss_fn(out, yb), len(xb))
                if self._classifier:
                    total_correct += self._count_correct(out, yb)
        finally:
            self.model.train(training)
        n = max(len(X), 1)
        return total_loss / n, (total_correct / n if self._classifier else None)

    def predict(self, X, batch_size=1024):
        """The model's outputs for X in evaluation mode, (n, K), a new array
        (Module.predict)."""
        return self.model.predict(X, batch_size)

    # ---- checkpoints: model, optimizer state, trainer progress, data order ----

    def _read_checkpoint(self, z, file_size):
        """(the trainer's record, {name: array}) of a checkpoint zip, read defensively: the
        record first, then every array's header and sizes checked against this model and
        optimizer before any is read (fastnn.checkpoint's model files are read the same
        way)."""
        scalars = checkpoint.read_json_member(z, file_size, "trainer",
                                              _CHECKPOINT_TEXT_MAX_BYTES, "the trainer record")
        if not isinstance(scalars, dict):
            raise checkpoint.ModelFileError("not a Trainer checkpoint (no trainer record)")
        if any(not n.endswith(".npy") for n in z.namelist()):
            raise checkpoint.ModelFileError("a member that is not a .npy array")
        names = [n[:-len(".npy")] for n in z.namelist() if n != "trainer.npy"]
        return scalars, checkpoint.read_members(z, file_size, _checkpoint_arrays(self, names))

    def save_checkpoint(self, path, data=None):
        """Write a resumable checkpoint (atomically) to `path`."""
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        scalars = {"optimizer": opt["optimizer"], "param_groups": _jsonable(opt["param_groups"]),
                   "opt_scalars": [],
                   "epoch": self.epoch, "step": self.step, "history": _jsonable(self.history),
                   "best_loss": float(self._best[0]), "bad_epochs": self._bad_epochs,
                   "data_rng": data._rng.bit_generator.state if data is not None else None,
                   "scheduler": getattr(self.scheduler, "state_dict", lambda: None)()}
        for g, states in enumerate(opt["state"]):
            group_scalars = []
            for a, state in enumerate(states):
                kept = {}
                for key, value in state.items():
                    if isinstance(value, np.ndarray):
                        arrays[f"opt/{g}/{a}/{key}"] = value
                    else:
                        kept[key] = value
                group_scalars.append(kept)
            scalars["opt_scalars"].append(group_scalars)
        if self._best[1] is not None:
            arrays.update({f"best/{k}": v for k, v in self._best[1].items()})
        arrays["trainer"] = np.array(json.dumps(scalars))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        checkpoint.atomic_write(path, lambda f: np.savez(f, **arrays))

    def _load_checkpoint(self, path, data):
        """Restore a save_checkpoint file, all or nothing: a file that is damaged or not
        this trainer's raises ModelFileError naming it, and nothing changes."""
        scalars, files = checkpoint.read_zip_file(path, self._read_checkpoint, "checkpoint")
        try:
            opt_state = self._optimizer_state(scalars, files)
            epoch, step, history = scalars["epoch"], scalars["step"], scalars["history"]
            if not (_count(epoch) and _count(step) and isinstance(history, dict)
                    and set(history) == set(self.history)
                    and all(isinstance(v, list) for v in history.values())):
                raise ValueError("its epoch, step or history is malformed")
            best_loss, bad_epochs = float(scalars["best_loss"]), scalars["bad_epochs"]
            if not _count(bad_epochs):
                raise ValueError(f"bad_epochs is {bad_epochs!r}")
            rng_state, scheduler = scalars["data_rng"], scalars["scheduler"]
            if rng_state is not None:  # checked on a generator of the same kind
                type(data._rng.bit_generator)().state = rng_state
            if scheduler is not None and hasattr(self.scheduler, "state_dict") \
                    and set(scheduler) != set(self.scheduler.state_dict()):
                raise ValueError("its scheduler state is another scheduler's")
            self.model.load_state_dict({k[6:]: v for k, v in files.items()
                                        if k.startswith("model/")})
            self.optimizer.load_state_dict(opt_state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise checkpoint.ModelFileError(f"{os.fspath(path)}: not a checkpoint of this "
                                            f"trainer ({type(e).__name__}: {e})") from None
        self.epoch, self.step, self.history = epoch, step, history
        best = {k[5:]: v for k, v in files.items() if k.startswith("best/")}
        self._best, self._bad_epochs = (best_loss, best or None), bad_epochs
        if rng_state is not None:
            data._rng.bit_generator.state = rng_state
        if scheduler is not None and hasattr(self.scheduler, "load_state_dict"):
            self.scheduler.load_state_dict(scheduler)

    def _optimizer_state(self, scalars, files):
        """The optimizer's state_dict from a checkpoint's record and arrays."""
        state = []
        for g, group_scalars in enumerate(scalars["opt_scalars"]):
            state.append([])
            for a, kept in enumerate(group_scalars):
                s = dict(kept)
                for k, v in files.items():
                    if k.startswith(f"opt/{g}/{a}/"):
                        s[k.split("/", 3)[3]] = v
                state[-1].append(s)
        groups = scalars["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        return {"optimizer": scalars["optimizer"], "state": state, "param_groups": groups}


def _count(value):
    return type(value) is int and value >= 0


_CHECKPOINT_TEXT_MAX_BYTES = 1 << 28  # the history: about 80 bytes a step


def _checkpoint_arrays(trainer, names):
    """{name: (shape, dtype)} a checkpoint's arrays must have for this trainer's model and
    optimizer, for the member names of a file; an unknown name raises ModelFileError."""
    model = checkpoint.state_shapes(trainer.model)
    arenas = trainer.optimizer._arenas
    expected = {}
    for name in names:
        kind, _, rest = name.partition("/")
        if kind in ("model", "best") and rest in model:
            expected[name] = model[rest]
            continue
        if kind == "opt":
            g, a, key = (rest.split("/", 2) + ["", ""])[:3]
            if g.isdigit() and a.isdigit() and key and int(g) < len(arenas) \
                    and int(a) < len(arenas[int(g)]):
                arena = arenas[int(g)][int(a)]
                expected[name] = ((arena.size,), arena.dtype)
                continue
        raise checkpoint.ModelFileError(f"{name}: not an array of this model and optimizer")
    missing = sorted(f"model/{k}" for k in model if f"model/{k}" not in expected)
    if missing:
        raise checkpoint.ModelFileError(f"no {missing[0]}: not a checkpoint of this model")
    return expected


def _jsonable(value):
    """Lists, dicts, tuples and numbers as plain JSON values (NumPy scalars converted)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
