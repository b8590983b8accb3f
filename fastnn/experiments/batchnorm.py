"""Experiment `batchnorm`: what BatchNorm does to training, in two parts.

(a) The course's grid: a 6-layer network (5 hidden layers of 100, ReLU) on 1000 training
samples, SGD lr 0.01, batch 100, 20 epochs, with weights drawn from N(0, w^2) for 16 initial
scales w from 1 down to 1e-4 (log-spaced), trained with BatchNorm (Linear -> BatchNorm1d ->
ReLU) and without; one small plot per scale of the training accuracy per epoch (measured in
evaluation mode on the whole training set). The BatchNorm layers are the book's, to reproduce
its figure: eps 1e-6 (PyTorch's 1e-5 is what makes the smallest scales fail: a variance of
w^2-sized activations drowns in it), the biased batch variance into running_var, which
starts at 0 (BatchNorm1d(eps=1e-6, running_var_unbiased=False)).
(b) makemore-style diagnostics of a deep tanh MLP (5 hidden layers of 100, weights from
Kaiming normal with the tanh gain 5/3, the last layer scaled by 0.1 so the first
predictions are not confidently wrong), SGD lr 0.1, batch 32, about 1000 steps, with and
without BatchNorm: the distribution of each layer's activations and saturation (|tanh| >
0.97), the gradients at each layer's output, and per weight the update-to-data ratio
log10(std(lr * grad) / std(weight)) per step with the 1e-3 (-3) guide line.
"""
import numpy as np

import fastnn
from fastnn import optim, plot
from fastnn.diagnostics import ActivationStats, GradientStats, UpdateRatio

from . import common

GRID_SCALES = np.logspace(0, -4, 16)
# "Deep Learning from Scratch"'s BatchNormalization, for the grid (the module docstring)
BOOK_BN = {"eps": 1e-6, "running_var_unbiased": False}


def train_grid_cell(data, scale, batchnorm, epochs, seed):
    """Training accuracy per epoch (list of floats) of the grid network at init std
    `scale`, with or without BatchNorm."""
    fastnn.manual_seed(seed)
    model = common.build_mlp(data["n_features"], [100] * 5, data["n_classes"], "relu",
                             float(scale), batchnorm=batchnorm, batchnorm_options=BOOK_BN)
    for layer in model.layers:
        if isinstance(layer, fastnn.BatchNorm1d):
            layer.running_var[...] = 0  # the book starts it at 0
    acc = common.EvalEachEpoch(train=data["train"])
    trainer = fastnn.train.Trainer(model, optim.SGD(model.parameters(), lr=0.01),
                                   progress=False, restore_best=False, callbacks=[acc])
    trainer.fit(data["train"], None, epochs=epochs, batch_size=100, seed=seed)
    return acc.history["train"]


def _plot_grid(scales, curves, output):
    from matplotlib.ticker import MaxNLocator

    cols = 4
    rows = -(-len(scales) // cols)
    fig, axes = common.figure(rows, cols, (12, 2.6 * rows), grid=True)
    for ax, scale in zip(axes, scales):
        with_bn, without = curves[(scale, True)], curves[(scale, False)]
        epochs = np.arange(1, len(with_bn) + 1)
        ax.plot(epochs, with_bn, color="C0", label="BatchNorm")
        ax.plot(epochs, without, "--", color="C1", label="no BatchNorm")
        ax.set_title(f"w = {scale:.3g}", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for i, ax in enumerate(axes[:len(scales)]):
        if i + cols >= len(scales):  # the lowest plot of its column
            ax.set_xlabel("epoch", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("training accuracy", fontsize=8)
    for ax in axes[len(scales):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("training accuracy per epoch, by initial weight std w")
    return common.save_figure(fig, output, "batchnorm_grid.png")


def deep_tanh_mlp(n_in, n_out, batchnorm, width=100, depth=5):
    """makemore's deep tanh MLP: depth hidden Linear(width) (+ BatchNorm1d) with tanh, then
    Linear(n_out); Kaiming-normal weights with the tanh gain, the last layer scaled by 0.1."""
    model = common.build_mlp(n_in, [width] * depth, n_out, "tanh", "he_tanh",
                             batchnorm=batchnorm)
    model[-1].weight.data *= 0.1  # a less confident first prediction
    return model


def diagnose(data, batchnorm, steps, seed, batch_size=32, lr=0.1):
    """Train the deep tanh MLP and record its diagnostics. Returns (ActivationStats,
    GradientStats, UpdateRatio, history); the activation and gradient statistics hold the
    first and the last step."""
    fastnn.manual_seed(seed)
    model = deep_tanh_mlp(data["n_features"], data["n_classes"], batchnorm)
    per_epoch = max(1, len(data["train"][0]) // batch_size)
    epochs = max(1, round(steps / per_epoch))
    last = epochs * per_epoch
    acts, grads, ratios = ActivationStats(every=last), GradientStats(every=last), UpdateRatio()
    trainer = fastnn.train.Trainer(model, optim.SGD(model.parameters(), lr=lr), progress=False,
                                   restore_best=False, callbacks=[acts, grads, ratios])
    history = trainer.fit(data["train"], data["val"], epochs=epochs, batch_size=batch_size,
                          seed=seed)
    return acts, grads, ratios, history


def _diagnostic_rows(acts, grads, ratios):
    """One row per activation layer: saturation at the first and last step, activation std,
    gradient std, and the mean update ratio of the layer's weight over the last 10% of
    steps."""
    rows = []
    weight_names = list(ratios.history)
    tail = max(1, len(ratios.steps) // 10)
    for k, (label, h) in enumerate(acts.history.items()):
        g = grads.history[label]
        # the weight feeding this layer: Linear k in order of the model's weights
        ratio = float(np.nanmean(ratios.history[weight_names[k]][-tail:]))
        rows.append([label, h["saturated"][0], h["saturated"][-1], h["std"][-1], g["std"][-1],
                     weight_names[k], ratio])
    return rows


def run(output, data_path=None, seed=0, quick=False, epochs=None, steps=None):
    """Run both parts; writes batchnorm_grid.png, diag_{with,without}_bn_{activations,
    gradients,update_ratios}.png and summary.md into `output`. epochs: of each grid run
    (default 20, quick 4, and quick runs 4 scales instead of 16); steps: of the diagnostic
    runs (default 1000, quick 100).

    Returns {"grid": {scale: {"with_bn": final training accuracy, "without_bn": ...}},
    "diagnostics": {"with_bn" / "without_bn": {"saturated_first", "saturated_last": mean
    saturated fraction over the layers, "update_ratio": {weight: mean log10 ratio over the
    last 10% of steps}, "val_acc": final validation accuracy}}}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("batchnorm", __doc__.split("\n\n", 1)[1])
    data = common.load_data(data_path, seed, max_train=1000)
    scales = GRID_SCALES[::5] if quick else GRID_SCALES
    epochs = common.budget(epochs, quick, 4, 20, "epochs")
    cells = [(s, bn) for s in scales for bn in (True, False)]
    curves = {(s, bn): train_grid_cell(data, s, bn, epochs, seed)
              for s, bn in common.trials(cells, "grid cells")}
    grid = {float(s): {"with_bn": curves[(s, True)][-1], "without_bn": curves[(s, False)][-1]}
            for s in scales}
    summary.heading(f"(a) Training accuracy after {epochs} epochs on {len(data['train'][0])} "
                    f"{data['name']} samples")
    summary.table(["init std w", "with BatchNorm", "without BatchNorm"],
                  [[s, g["with_bn"], g["without_bn"]] for s, g in grid.items()])
    learned = {key: sum(g[key] > 0.5 for g in grid.values()) for key in ("with_bn", "without_bn")}
    summary.text(f"Scales reaching a training accuracy above 0.5: {learned['with_bn']} of "
                 f"{len(grid)} with BatchNorm, {learned['without_bn']} of {len(grid)} without.")
    summary.figure(_plot_grid(list(scales), curves, output), "accuracy grid")

    data = common.load_data(data_path, seed)
    steps = common.budget(steps, quick, 100, 1000, "steps")
    diagnostics = {}
    for key, batchnorm in (("with_bn", True), ("without_bn", False)):
        acts, grads, ratios, history = diagnose(data, batchnorm, steps, seed)
        title = "with BatchNorm" if batchnorm else "without BatchNorm"
        rows = _diagnostic_rows(acts, grads, ratios)
        diagnostics[key] = {
            "saturated_first": float(np.mean([r[1] for r in rows])),
            "saturated_last": float(np.mean([r[2] for r in rows])),
            "update_ratio": {r[5]: r[6] for r in rows},
            "val_acc": float(history["val_acc"][-1])}
        summary.heading(f"(b) Deep tanh MLP {title}: {ratios.steps[-1]} steps on "
                        f"{data['name']}")
        summary.text(f"Final training loss {history['train_loss'][-1]:.4f}, validation "
                     f"accuracy {history['val_acc'][-1]:.4f}.")
        summary.table(["layer", f"saturated, step {acts.steps[0]}",
                       f"saturated, step {acts.steps[-1]}", "activation std", "gradient std",
                       "weight", "log10 update ratio (last 10% of steps)"], rows)
        for kind, draw in (("activations", plot.plot_activation_histograms),
                           ("gradients", plot.plot_gradient_histograms)):
            stats = acts if kind == "activations" else grads
            summary.figure(draw(stats, f"{output}/diag_{key}_{kind}.png"),
                           f"{kind} {title}")
        summary.figure(plot.plot_update_ratios(ratios, f"{output}/diag_{key}_update_ratios.png"),
                       f"update ratios {title}")
    summary.write(output)
    return {"grid": grid, "diagnostics": diagnostics}
