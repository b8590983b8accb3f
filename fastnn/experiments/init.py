"""Experiment `init`: how the initial weight scale shapes the activations, and training.

(a) A 5-layer network of 100 units (fastnn.Linear without bias, the activation fused in)
fed 1000 inputs drawn from N(0, 1), for weights drawn with std 1, std 0.01, Xavier
(Glorot normal, std sqrt(2 / (100 + 100)) = 1/sqrt(100)) and He (std sqrt(2 / 100)), with
sigmoid, tanh and ReLU: a histogram of each layer's activations, as in the course (ranges
sigmoid (0, 1), tanh (-1, 1), ReLU (0, 1) or up to the panel's largest value, so that
none is left out; 30 bins). (b) The 5-layer ReLU MLP (4 hidden
layers of 100) trained on digits (or MNIST) with SGD lr 0.01, batch 128, for the same
number of steps from std 0.01, Xavier and He weights.
"""
import numpy as np

import fastnn
from fastnn import optim
from fastnn.diagnostics import saturated_fraction

from . import common

SCHEMES = {"std 1": 1.0, "std 0.01": 0.01, "Xavier": "xavier", "He": "he"}
ACTIVATIONS = ("sigmoid", "tanh", "relu")
RANGES = {"sigmoid": (0, 1), "tanh": (-1, 1), "relu": (0, 1)}
TRAINED = ("std 0.01", "Xavier", "He")


def activations(activation, scheme, n_samples=1000, width=100, depth=5, seed=0):
    """The outputs of the `depth` layers of the network for N(0, 1) inputs: a list of depth
    arrays (n_samples, width) float32, copies."""
    fastnn.manual_seed(seed)
    x = fastnn.random.get_rng().standard_normal((n_samples, width)).astype(np.float32)
    layers = []
    for _ in range(depth):
        linear = fastnn.Linear(width, width, bias=False, activation=activation)
        common.init_weight(linear.weight.data, scheme)
        layers.append(linear)
    net = fastnn.Sequential(*layers)
    net.eval()
    net(x)
    return [np.array(y) for y in net.outputs]


def _stats(outs, activation):
    return [{"mean": float(a.mean()), "std": float(a.std()),
             "saturated": saturated_fraction(a, activation),
             "zero": float(np.mean(np.abs(a) < 1e-3)) if activation != "sigmoid"
             else float("nan")} for a in outs]


def _plot_histograms(activation, outs_by_scheme, output):
    depth = len(next(iter(outs_by_scheme.values())))
    fig, axes = common.figure(len(SCHEMES), depth, (3 * depth, 2.4 * len(SCHEMES)), grid=True)
    axes = axes.reshape(len(SCHEMES), depth)
    lo, hi = RANGES[activation]
    for r, (label, outs) in enumerate(outs_by_scheme.items()):
        for c, a in enumerate(outs):
            ax = axes[r, c]
            top = hi if activation != "relu" else max(hi, float(a.max()))  # every value in
            counts, edges = np.histogram(a.ravel(), 30, range=(lo, top))
            ax.stairs(counts, edges, fill=True, color="C0")  # one artist, not 30 bars
            ax.set_title(f"{label}: layer {c + 1}, std {a.std():.2g}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
            if c:
                ax.set_yticks([])
    fig.suptitle(f"{activation}: activation histograms of a 5-layer, 100-unit network "
                 f"(1000 N(0, 1) inputs)")
    return common.save_figure(fig, output, f"init_hist_{activation}.png")


def _train(scheme, data, epochs, seed):
    fastnn.manual_seed(seed)
    model = common.build_mlp(data["n_features"], [100] * 4, data["n_classes"], "relu", scheme)
    trainer = fastnn.train.Trainer(model, optim.SGD(model.parameters(), lr=0.01),
                                   progress=False, restore_best=False)
    return trainer.fit(data["train"], None, epochs=epochs, batch_size=128, seed=seed)


def _plot_training(histories, output, window):
    fig, (ax,) = common.figure(1, 1, (9, 5))
    for label, h in histories.items():
        ax.plot(common.smooth(h["step_loss"], window), label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (running mean of {window} steps)")
    ax.set_title("5-layer ReLU MLP, SGD lr 0.01: weight initialisation")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return common.save_figure(fig, output, "init_training.png")


def run(output, data_path=None, seed=0, quick=False, steps=None):
    """Run both parts; writes init_hist_{sigmoid,tanh,relu}.png, init_training.png and
    summary.md into `output`. steps: training steps of part (b) (whole epochs; default
    2000, quick 150).

    Returns {"activations": {activation: {scheme: [per layer {"mean", "std", "saturated",
    "zero"}]}}, "loss_final": {scheme: mean training loss of the last 10% of steps},
    "steps": steps run}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("init", __doc__.split("\n\n", 1)[1])
    data = common.load_data(data_path, seed)  # first: a bad data_path fails at once
    summary.heading("(a) Activations of a 5-layer, 100-unit network")
    summary.text("Standard deviation of each layer's activations (saturated: the fraction of "
                 "tanh/sigmoid outputs with |tanh| > 0.97 or |2 sigmoid - 1| > 0.97, in the "
                 "last layer; zero: the fraction of last-layer outputs with |a| < 1e-3).")
    results, rows, figures = {}, [], []
    for activation in ACTIVATIONS:
        outs = {label: activations(activation, scheme, seed=seed)
                for label, scheme in SCHEMES.items()}
        results[activation] = {label: _stats(o, activation) for label, o in outs.items()}
        for label, stats in results[activation].items():
            rows.append([activation, label] + [s["std"] for s in stats]
                        + [stats[-1]["saturated"], stats[-1]["zero"]])
        figures.append(_plot_histograms(activation, outs, output))
    summary.table(["activation", "weights"] + [f"std layer {i}" for i in range(1, 6)]
                  + ["saturated", "zero"], rows)
    for activation, path in zip(ACTIVATIONS, figures):
        summary.figure(path, f"{activation} activation histograms")

    steps = common.budget(steps, quick, 150, 2000, "steps")
    per_epoch = max(1, len(data["train"][0]) // 128)
    epochs = max(1, round(steps / per_epoch))
    histories = {label: _train(SCHEMES[label], data, epochs, seed)
                 for label in common.trials(TRAINED, "trainings")}
    n = len(histories["He"]["step_loss"])
    tail = max(1, n // 10)
    loss_final = {k: float(np.mean(h["step_loss"][-tail:])) for k, h in histories.items()}
    summary.heading(f"(b) 5-layer ReLU MLP on {data['name']}, SGD lr 0.01, {n} steps")
    summary.table(["weights", "first-step loss", f"mean training loss, last {tail} steps",
                   "final epoch training accuracy"],
                  [[k, float(h["step_loss"][0]), loss_final[k], float(h["train_acc"][-1])]
                   for k, h in histories.items()])
    summary.figure(_plot_training(histories, output, max(1, n // 50)), "training curves")
    summary.write(output)
    return {"activations": results, "loss_final": loss_final, "steps": n}
