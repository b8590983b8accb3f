"""Experiment `optimizers`: SGD, Momentum, AdaGrad, RMSprop and Adam compared.

(a) On f(x, y) = x^2/20 + y^2 from (-7, 2): each optimizer's path for 30 steps on the
contour plot, with the learning rates of the course's figure (SGD 0.95, Momentum 0.1,
AdaGrad 1.5, Adam 0.3; RMSprop, absent from that figure, 0.1). The optimizers are fastnn's
own (fastnn.optim) stepping one float64 Parameter of shape (2,) whose gradient is set by
hand. (b) The same 5-layer ReLU MLP (4 hidden layers of 100, He initialisation) trained on
digits (or MNIST) with each optimizer for the same number of steps, with the course's
learning rates (SGD, Momentum, AdaGrad, RMSprop 0.01; Adam 0.001), batch 128.

The textbook forms are fastnn's optimizers with these settings (see fastnn.optim):
Momentum = SGD(momentum=0.9); AdaGrad = Adagrad(eps=1e-7); RMSprop = RMSprop(alpha=0.99,
eps=1e-7); Adam = Adam(eps=1e-7, eps_hat=True), the book's update (its eps outside the
bias correction).
"""
import numpy as np

import fastnn
from fastnn import optim
from fastnn.layers import Parameter

from . import common

NAMES = ("SGD", "Momentum", "AdaGrad", "RMSprop", "Adam")
# learning rates on the 2-D function: the course's figure (RMSprop: ours, it has none)
LR_2D = {"SGD": 0.95, "Momentum": 0.1, "AdaGrad": 1.5, "RMSprop": 0.1, "Adam": 0.3}
# learning rates on the MLP: the course's MNIST comparison (its classes' defaults)
LR_MLP = {"SGD": 0.01, "Momentum": 0.01, "AdaGrad": 0.01, "RMSprop": 0.01, "Adam": 0.001}
START = (-7.0, 2.0)


def make_optimizer(name, params, lr):
    """The fastnn optimizer that implements the course's `name` at learning rate lr."""
    if name == "SGD":
        return optim.SGD(params, lr=lr)
    if name == "Momentum":
        return optim.SGD(params, lr=lr, momentum=0.9)
    if name == "AdaGrad":
        return optim.Adagrad(params, lr=lr, eps=1e-7)
    if name == "RMSprop":
        return optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-7)
    if name == "Adam":
        return optim.Adam(params, lr=lr, eps=1e-7, eps_hat=True)
    raise ValueError(f"name: expected one of {NAMES}, got {name!r}")


def f2d(x, y):
    """The course's anisotropic bowl f(x, y) = x^2 / 20 + y^2 (minimum 0 at the origin)."""
    return x * x / 20.0 + y * y


def path_2d(name, lr, steps=30, start=START):
    """The points (steps + 1, 2) that optimizer `name` visits on f2d from `start`."""
    p = Parameter(np.array(start, dtype=np.float64))
    opt = make_optimizer(name, [p], lr)
    points = [p.data.copy()]
    for _ in range(steps):
        opt.zero_grad()
        x, y = p.data
        p.grad[...] = (x / 10.0, 2.0 * y)  # the gradient of f2d
        opt.step()
        points.append(p.data.copy())
    return np.array(points)


COLORS = {name: f"C{i}" for i, name in enumerate(NAMES)}  # one per optimizer, every figure


def _plot_paths(paths, lrs, output):
    fig, axes = common.figure(2, 3, (14, 8))
    xs, ys = np.meshgrid(np.linspace(-10, 10, 201), np.linspace(-5, 5, 101))
    zs = f2d(xs, ys)
    for ax, name in zip(axes, NAMES):
        pts = paths[name]
        ax.contour(xs, ys, zs, levels=np.geomspace(0.05, 30, 12), colors="0.6",
                   linewidths=0.7)
        ax.plot(pts[:, 0], pts[:, 1], "o-", color=COLORS[name], markersize=3, linewidth=1)
        ax.plot(0, 0, "+", color="k", markersize=10)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
        ax.set_title(f"{name} (lr {lrs[name]}): f = {f2d(*pts[-1]):.3g}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax = axes[-1]
    for name in NAMES:
        ax.semilogy([f2d(*pt) for pt in paths[name]], color=COLORS[name],
                    label=f"{name} (lr {lrs[name]})")
    ax.set_title("f along the path")
    ax.set_xlabel("step")
    ax.set_ylabel("f(x, y)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return common.save_figure(fig, output, "optimizers_2d.png")


def train_mlp(name, lr, data, epochs, seed, batch_size=128):
    """Train the course's 5-layer ReLU MLP with optimizer `name`; returns the Trainer's
    history (per-step losses in "step_loss")."""
    fastnn.manual_seed(seed)  # the same initial weights for every optimizer
    model = common.build_mlp(data["n_features"], [100] * 4, data["n_classes"], "relu", "he")
    trainer = fastnn.train.Trainer(model, make_optimizer(name, model.parameters(), lr),
                                   progress=False, restore_best=False)
    return trainer.fit(data["train"], None, epochs=epochs, batch_size=batch_size, seed=seed)


def blow_ups(step_loss, window):
    """How many times the training loss blew up, as the figure shows it: runs of steps whose
    running-mean loss (over `window` steps) is more than 10 times the lowest before them."""
    loss = common.smooth(np.asarray(step_loss, dtype=np.float64), window)
    if loss.size < 2:
        return 0
    above = loss[1:] > 10 * np.minimum.accumulate(loss)[:-1]
    return int(np.sum(above & ~np.concatenate([[False], above[:-1]])))


def steps_until(step_loss, threshold, window):
    """The first step (1-based) at which the running mean of `window` step losses is below
    threshold, or None if it never is."""
    below = np.flatnonzero(common.smooth(step_loss, window) < threshold)
    return int(below[0]) + 1 if below.size else None


def _plot_losses(histories, output, window):
    fig, (ax,) = common.figure(1, 1, (9, 5))
    for name in NAMES:
        loss = common.smooth(histories[name]["step_loss"], window)
        ax.plot(loss, color=COLORS[name], label=f"{name} (lr {LR_MLP[name]})", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" if window == 1 else
                  f"training loss (running mean of {window} steps)")
    ax.set_title("5-layer ReLU MLP, same initial weights and batches")
    ax.set_yscale("log")  # a blow-up (RMSprop's) shown whole, and the small losses apart
    ax.grid(True, alpha=0.3)
    ax.legend()
    return common.save_figure(fig, output, "optimizers_mlp.png")


def run(output, data_path=None, seed=0, quick=False, steps=None):
    """Run both parts; writes optimizers_2d.png, optimizers_mlp.png and summary.md into
    `output`. steps: training steps of the MLP part (rounded to whole epochs;
    default 2000, quick 100).

    Returns {"f_final": {optimizer: f after 30 steps}, "f_same_lr": {"SGD", "Momentum": f
    after 30 steps at lr 0.1}, "loss_final": {optimizer: mean training loss of the last 10%
    of steps}, "steps_to_0.5": {optimizer: first step whose running-mean loss is < 0.5, or
    None}, "blow_ups": {optimizer: blow-ups of the running-mean loss (blow_ups)},
    "steps": MLP steps run}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("optimizers", __doc__.split("\n\n", 1)[1])
    data = common.load_data(data_path, seed)  # first: a bad data_path fails at once
    paths = {name: path_2d(name, LR_2D[name]) for name in NAMES}
    f_final = {name: float(f2d(*paths[name][-1])) for name in NAMES}
    # the same learning rate for SGD and Momentum isolates what the momentum term does
    f_same = {name: float(f2d(*path_2d(name, 0.1)[-1])) for name in ("SGD", "Momentum")}
    summary.heading("(a) f(x, y) = x^2/20 + y^2 from (-7, 2), 30 steps")
    summary.table(["optimizer", "lr", "f after 30 steps", "x", "y"],
                  [[n, LR_2D[n], f_final[n], float(paths[n][-1][0]), float(paths[n][-1][1])]
                   for n in NAMES])
    order = sorted(NAMES, key=f_final.get)
    summary.text(f"Ranking by final f (lowest first): {', '.join(order)}. At the same "
                 f"learning rate 0.1, SGD ends at f = {f_same['SGD']:.4g} and Momentum at "
                 f"f = {f_same['Momentum']:.4g}.")
    summary.figure(_plot_paths(paths, LR_2D, output), "optimizer paths on the contour plot")

    steps = common.budget(steps, quick, 100, 2000, "steps")
    per_epoch = len(data["train"][0]) // 128  # the Trainer drops the last, short batch
    epochs = max(1, round(steps / max(per_epoch, 1)))
    histories = {name: train_mlp(name, LR_MLP[name], data, epochs, seed)
                 for name in common.trials(NAMES, "optimizers")}
    n = len(histories["SGD"]["step_loss"])
    tail = max(1, n // 10)
    loss_final = {name: float(np.mean(histories[name]["step_loss"][-tail:])) for name in NAMES}
    summary.heading(f"(b) 5-layer ReLU MLP on {data['name']}: {n} steps of batch 128")
    summary.text(f"{len(data['train'][0])} training samples, He initialisation, the same "
                 f"initial weights and batch order for every optimizer.")
    window = max(1, n // 50)
    reach = {name: steps_until(histories[name]["step_loss"], 0.5, window) for name in NAMES}
    ups = {name: blow_ups(histories[name]["step_loss"], window) for name in NAMES}
    summary.table(["optimizer", "lr", "steps until the running-mean loss < 0.5",
                   f"mean training loss, last {tail} steps", "final epoch training accuracy",
                   "loss blow-ups"],
                  [[name, LR_MLP[name], reach[name] if reach[name] is not None else "never",
                    loss_final[name], float(histories[name]["train_acc"][-1]), ups[name]]
                   for name in NAMES])
    order = sorted(NAMES, key=loss_final.get)
    unstable = [f"{name} {ups[name]}" for name in NAMES if ups[name]]
    summary.text(f"Ranking by final training loss (lowest first): {', '.join(order)}. "
                 f"Blow-ups (runs of steps whose running-mean loss is more than 10 times the "
                 f"lowest before them, as in the figure): "
                 f"{', '.join(unstable) if unstable else 'none'}.")
    summary.figure(_plot_losses(histories, output, window), "training loss curves")
    summary.write(output)
    return {"f_final": f_final, "f_same_lr": f_same, "loss_final": loss_final,
            "steps_to_0.5": reach, "blow_ups": ups, "steps": n}
