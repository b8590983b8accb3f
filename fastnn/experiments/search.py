"""Experiment `search`: random search of the learning rate and weight decay on a log scale.

As in the course: lr = 10^U(-6, -2), weight decay = 10^U(-8, -4); a 7-layer network (6
hidden layers of 100, ReLU, He initialisation) trained with SGD, batch 100, on 400 training
samples for a few epochs per trial; each trial is judged by its accuracy on the validation
split. The test split is never passed to a trial: choosing hyperparameters on it would
make the test accuracy an optimistic estimate.

The reusable core is random_search(train, val, n_trials, epochs, seed, executor=None):
trials are submitted to any concurrent.futures.Executor (only submit() and result() are
used; the default is a local process pool with one worker per core), so the same search runs
on a cluster through an executor that spreads work over machines. A trial is a picklable
Trial and the module-level function run_trial; everything random in it (hyperparameters,
initial weights, batch order) comes from (seed, trial index), and fastnn's kernels give the
same results for any thread count, so any executor finds the same best trial.
"""
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os

import numpy as np

import fastnn
from . import common

LR_RANGE = (-6.0, -2.0)
WD_RANGE = (-8.0, -4.0)


def _log_range(name, value):
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name}: expected (low, high) exponents with low < high, got {value!r}")
    return lo, hi


def sample_hyperparameters(seed, index, lr_range=LR_RANGE, wd_range=WD_RANGE):
    """(lr, weight_decay) of trial `index` of the search `seed`: 10^U(lr_range) and
    10^U(wd_range), drawn from a generator keyed by (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    lr = 10.0 ** rng.uniform(*_log_range("lr_range", lr_range))
    weight_decay = 10.0 ** rng.uniform(*_log_range("wd_range", wd_range))
    return float(lr), float(weight_decay)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial of a search: what run_trial needs besides the data (picklable)."""

    index: int
    seed: int  # the trial's own seed, from (search seed, index)
    lr: float
    weight_decay: float
    epochs: int
    hidden: tuple = (100,) * 6
    batch_size: int = 100
    threads: int = 1  # fastnn threads inside the trial (None: leave the setting alone)


def make_trials(n_trials, epochs, seed=0, lr_range=LR_RANGE, wd_range=WD_RANGE,
                hidden=(100,) * 6, batch_size=100, threads=1):
    """The n_trials Trials of the search `seed`, in index order."""
    for name, value in (("n_trials", n_trials), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    trials = []
    for i in range(n_trials):
        lr, wd = sample_hyperparameters(seed, i, lr_range, wd_range)
        trial_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        trials.append(Trial(i, trial_seed, lr, wd, epochs, tuple(hidden), batch_size, threads))
    return trials


def _he_init(model, rng):
    """He-normal weights and zero biases for every Linear, from the trial's own generator
    (not fastnn's global one, which trials running in threads would share)."""
    for layer in model:
        if isinstance(layer, fastnn.Linear):
            w = layer.weight.data
            w[...] = rng.standard_normal(w.shape) * math.sqrt(2.0 / w.shape[1])
            if layer.bias is not None:
                layer.bias.data[...] = 0


def run_trial(trial, train, val):
    """Train the network of `trial` on train = (X (n, features), y (n,)) and measure it on
    val after every epoch. Returns a dict: "index", "lr", "weight_decay", "val_acc" (after
    the last epoch), "val_acc_curve", "train_acc_curve" (per epoch, evaluation mode)."""
    if trial.threads is not None and fastnn.get_num_threads() != trial.threads:
        fastnn.set_num_threads(trial.threads)
    n_classes = int(max(train[1].max(), val[1].max())) + 1
    model = common.build_mlp(train[0].shape[1], list(trial.hidden), n_classes, "relu", "he")
    _he_init(model, np.random.default_rng(trial.seed))
    optimizer = common.sgd_weight_decay(model, trial.lr, trial.weight_decay)
    acc = common.EvalEachEpoch(train=train, val=val)
    trainer = fastnn.train.Trainer(model, optimizer, progress=False, restore_best=False,
                                   callbacks=[acc])
    trainer.fit(train, None, epochs=trial.epochs, batch_size=trial.batch_size,
                seed=trial.seed)
    return {"index": trial.index, "lr": trial.lr, "weight_decay": trial.weight_decay,
            "val_acc": acc.history["val"][-1], "val_acc_curve": acc.history["val"],
            "train_acc_curve": acc.history["train"]}


def _single_thread():
    fastnn.set_num_threads(1)


def default_executor(max_workers=None):
    """A local process pool, one worker per usable core, each worker on one fastnn thread.
    Workers are spawned, not forked: a forked child of a process that has run OpenMP
    threads may hang in its first parallel region."""
    if max_workers is None:
        max_workers = default_workers()
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_single_thread)


def random_search(train, val, n_trials=100, epochs=50, seed=0, executor=None,
                  lr_range=LR_RANGE, wd_range=WD_RANGE, hidden=(100,) * 6, batch_size=100,
                  threads=1, progress=False):
    """Random search of lr and weight decay, judged on the validation split.

    train, val: (X (n, features) float32, y (n,) int64); there is deliberately no test
    argument. n_trials trials of `epochs` epochs each; trial i samples lr = 10^U(lr_range)
    and weight decay = 10^U(wd_range) from (seed, i). executor: any
    concurrent.futures.Executor (only submit() and result() are used); None: a local
    process pool of one worker per core (default_executor), shut down at the end. threads:
    fastnn threads inside each trial (1 avoids oversubscribing the cores; None leaves the
    worker's setting; with an in-process executor the caller's setting is restored after).
    progress: a tqdm bar of the finished trials (on a terminal only).

    Returns the trial results (see run_trial), best first: highest validation accuracy,
    ties broken by the lower trial index.
    """
    trials = make_trials(n_trials, epochs, seed, lr_range, wd_range, hidden, batch_size,
                         threads)
    own = executor is None
    if own:
        executor = default_executor(min(n_trials, default_workers()))
    saved_threads = fastnn.get_num_threads()
    futures = []
    try:
        futures = [executor.submit(run_trial, t, train, val) for t in trials]
        if progress:
            from tqdm import tqdm

            futures_done = tqdm(futures, desc="trials", unit="trial", leave=False, disable=None)
        else:
            futures_done = futures
        results = [f.result() for f in futures_done]
    finally:
        for f in futures:  # after a failed trial, the queued ones are not worth waiting for
            f.cancel()
        if own:
            executor.shutdown()
        if fastnn.get_num_threads() != saved_threads:  # a thread pool ran trials in-process
            fastnn.set_num_threads(saved_threads)
    return sorted(results, key=lambda r: (-r["val_acc"], r["index"]))


def default_workers():
    """The number of usable cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _plot_best(results, output, n_best=20):
    best = results[:n_best]
    cols = 5
    rows = max(1, -(-len(best) // cols))
    fig, axes = common.figure(rows, cols, (15, 2.8 * rows), grid=True)
    for k, (ax, r) in enumerate(zip(axes, best)):
        epochs = np.arange(1, len(r["val_acc_curve"]) + 1)
        ax.plot(epochs, r["val_acc_curve"], color="C0", label="validation")
        ax.plot(epochs, r["train_acc_curve"], "--", color="C1", label="train")
        ax.set_title(f"best {k + 1}: val {r['val_acc']:.3f}\nlr {r['lr']:.2e}, "
                     f"wd {r['weight_decay']:.2e}", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(best):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"the best {len(best)} trials: accuracy per epoch")
    return common.save_figure(fig, output, "search_best.png")


def _plot_scatter(results, output):
    fig, (ax_lr, ax_wd) = common.figure(1, 2, (11, 4.5))
    acc = np.array([r["val_acc"] for r in results])
    for ax, key, label in ((ax_lr, "lr", "learning rate"),
                           (ax_wd, "weight_decay", "weight decay")):
        ax.scatter([r[key] for r in results], acc, c=acc, cmap="viridis", s=18)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{len(results)} trials")
    return common.save_figure(fig, output, "search_scatter.png")


def run(output, data_path=None, seed=0, quick=False, trials=None, epochs=None, n_train=400,
        max_val=1000, executor=None, verbose=True):
    """Run a random search; writes search_best.png, search_scatter.png and summary.md into
    `output` and (verbose) prints the best trials. trials, epochs: per search (default 100 trials
    of 50 epochs, quick 6 of 3); n_train: training samples; max_val: validation samples at most; executor:
    see random_search.

    Returns {"best": [the best 5 results, without curves], "n_trials", "epochs",
    "results": all results (see run_trial), best first}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("search", __doc__.split("\n\n", 1)[1].split("\n\n")[0])
    data = common.load_data(data_path, seed, max_train=n_train)
    train, val = data["train"], (data["val"][0][:max_val], data["val"][1][:max_val])
    trials = common.budget(trials, quick, 6, 100, "trials")
    epochs = common.budget(epochs, quick, 3, 50, "epochs")
    results = random_search(train, val, trials, epochs, seed, executor, progress=verbose)
    fields = ("index", "lr", "weight_decay", "val_acc")
    best = [{k: r[k] for k in fields} for r in results[:5]]
    summary.heading(f"{trials} trials of {epochs} epochs: {len(train[0])} training and "
                    f"{len(val[0])} validation samples of {data['name']} (test split unused)")
    summary.table(["rank", "trial", "lr", "weight decay", "validation accuracy",
                   "final training accuracy"],
                  [[k + 1, r["index"], r["lr"], r["weight_decay"], r["val_acc"],
                    r["train_acc_curve"][-1]] for k, r in enumerate(results[:20])])
    top = results[:max(1, len(results) // 10)]
    lrs = [r["lr"] for r in top]
    wds = [r["weight_decay"] for r in top]
    summary.text(f"The best {len(top)} trial(s) have lr in [{min(lrs):.2e}, {max(lrs):.2e}] "
                 f"and weight decay in [{min(wds):.2e}, {max(wds):.2e}].")
    summary.figure(_plot_best(results, output), "the best 20 trials")
    summary.figure(_plot_scatter(results, output), "validation accuracy against lr and "
                   "weight decay")
    summary.write(output)
    if verbose:
        for k, r in enumerate(best):
            print(f"best {k + 1}: trial {r['index']:3d}  val acc {r['val_acc']:.4f}  "
                  f"lr {r['lr']:.3e}  weight decay {r['weight_decay']:.3e}")
    return {"best": best, "n_trials": trials, "epochs": epochs, "results": results}
