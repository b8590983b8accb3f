"""Experiment `overfit`: a network big enough to memorise 300 training samples, and two
regularisers.

A 7-layer network (6 hidden layers of 100, ReLU, He initialisation) trained on 300 samples
with SGD lr 0.01, batch 100, for 300 epochs, three ways: without regularisation; with weight
decay lambda = 0.1 (the L2 penalty lambda/2 * sum(W^2) on the weights, not the biases, as in
the course: SGD's weight_decay in a parameter group of the weights); with dropout (ratio
0.2 after every hidden layer; fastnn's dropout is inverted, which the course's is not, but
the expected activations are the same). Training and test accuracy are measured after every
epoch in evaluation mode; the test set is the held-out test split.
"""
import numpy as np

import fastnn
from . import common

VARIANTS = ("none", "weight decay 0.1", "dropout 0.2")


def train_variant(variant, data, epochs, seed, weight_decay=0.1, dropout=0.2):
    """Train the 7-layer network one way; returns {"train": [accuracy per epoch], "test":
    [...]}."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    fastnn.manual_seed(seed)
    model = common.build_mlp(data["n_features"], [100] * 6, data["n_classes"], "relu", "he",
                             dropout=dropout if variant == "dropout 0.2" else 0.0)
    decay = weight_decay if variant == "weight decay 0.1" else 0.0
    optimizer = common.sgd_weight_decay(model, 0.01, decay)
    acc = common.EvalEachEpoch(train=data["train"], test=data["test"])
    trainer = fastnn.train.Trainer(model, optimizer, progress=False, restore_best=False,
                                   callbacks=[acc])
    trainer.fit(data["train"], None, epochs=epochs, batch_size=100, seed=seed)
    return acc.history


def _plot(curves, output):
    fig, axes = common.figure(1, len(VARIANTS), (15, 4.5))
    for ax, variant in zip(axes, VARIANTS):
        h = curves[variant]
        epochs = np.arange(1, len(h["train"]) + 1)
        ax.plot(epochs, h["train"], label="train")
        ax.plot(epochs, h["test"], label="test")
        ax.set_title(f"{variant}: train {h['train'][-1]:.3f}, test {h['test'][-1]:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    return common.save_figure(fig, output, "overfit.png")


def run(output, data_path=None, seed=0, quick=False, epochs=None, n_train=300):
    """Train the three variants; writes overfit.png and summary.md into `output`.
    epochs: per variant (default 300, quick 20); n_train: training samples.

    Returns {variant: {"train_acc", "test_acc": final accuracies, "gap": train - test,
    "best_test_acc": the highest test accuracy of any epoch}}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("overfit", __doc__.split("\n\n", 1)[1])
    data = common.load_data(data_path, seed, max_train=n_train)
    epochs = common.budget(epochs, quick, 20, 300, "epochs")
    curves = {v: train_variant(v, data, epochs, seed) for v in VARIANTS}
    results = {v: {"train_acc": h["train"][-1], "test_acc": h["test"][-1],
                   "gap": h["train"][-1] - h["test"][-1], "best_test_acc": max(h["test"])}
               for v, h in curves.items()}
    summary.heading(f"Accuracy after {epochs} epochs: {len(data['train'][0])} training, "
                    f"{len(data['test'][0])} test samples of {data['name']}")
    summary.table(["regularisation", "train accuracy", "test accuracy", "gap (train - test)",
                   "best test accuracy (any epoch)"],
                  [[v, r["train_acc"], r["test_acc"], r["gap"], r["best_test_acc"]]
                   for v, r in results.items()])
    summary.figure(_plot(curves, output), "train and test accuracy per epoch")
    summary.write(output)
    return results
