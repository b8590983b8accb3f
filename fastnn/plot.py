"""Charts of a training run and of fastnn.diagnostics, written as PNG files.

Every function takes the output path, writes the PNG atomically (a temporary file in the
same folder, flushed and fsynced, then os.replace: a reader never sees a half-written
chart) and returns the path. The figures are built with matplotlib's object API on the Agg
canvas, not pyplot: nothing opens a window, nothing needs a display, and the backend of a
session that already uses pyplot (a notebook) is left alone.
"""
import math
import os

import numpy as np

from .checkpoint import atomic_write

__all__ = [
    "plot_activation_histograms",
    "plot_gradient_histograms",
    "plot_history",
    "plot_update_ratios",
]

_NAN = float("nan")


def _figure(nrows=1, ncols=1, size=(8, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _save(fig, path):
    """Write fig as a PNG to path atomically; returns path."""
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return os.fspath(path)


def _floats(values):
    return np.array([_NAN if v is None else float(v) for v in (values or [])], np.float64)



def _has(values):
    return values is not None and len(values) > 0 and np.isfinite(_floats(values)).any()


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_history(history, path):
    """Loss (train/val) and accuracy (train/val) per epoch, with the per-step training loss
    drawn faintly behind (steps spread evenly over the epochs). history: the Trainer's
    .history dict (or a Trainer); missing or None entries (no validation set, no accuracy)
    are left out."""
    history = getattr(history, "history", history)
    fig, (ax_loss, ax_acc) = _figure(1, 2, (11, 4.5))
    n_epochs = max((len(history.get(k) or []) for k in
                    ("train_loss", "val_loss", "train_acc", "val_acc")), default=0)
    epochs = np.arange(1, n_epochs + 1)
    step_loss = _floats(history.get("step_loss"))
    if step_loss.size:
        if n_epochs:  # step j of the run ends at epoch (j + 1) / steps_per_epoch
            x = np.arange(1, step_loss.size + 1) * (n_epochs / step_loss.size)
        else:
            x = np.arange(1, step_loss.size + 1)
        ax_loss.plot(x, step_loss, color="C0", alpha=0.25, linewidth=0.8, label="step loss")
    for key, style, color in (("train_loss", "-o", "C0"), ("val_loss", "-s", "C1")):
        if _has(history.get(key)):
            v = _floats(history[key])
            ax_loss.plot(epochs[:v.size], v, style, color=color, markersize=3,
                         label=key.replace("_", " "))
    val = _floats(history.get("val_loss")) if _has(history.get("val_loss")) else np.array([])
    if val.size and np.isfinite(val).any():  # the epoch whose weights a Trainer restores
        best = int(np.nanargmin(np.where(np.isfinite(val), val, np.nan))) + 1
        for ax in (ax_loss, ax_acc):
            ax.axvline(best, color="0.5", linestyle=":", linewidth=1,
                       label=f"best epoch ({best})" if ax is ax_loss else None)
    ax_loss.set_xlabel("epoch" if n_epochs else "step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    if ax_loss.lines:
        ax_loss.legend()
    else:
        _empty(ax_loss, "no loss recorded")
    for key, style, color in (("train_acc", "-o", "C0"), ("val_acc", "-s", "C1")):
        if _has(history.get(key)):
            v = _floats(history[key])
            ax_acc.plot(epochs[:v.size], v, style, color=color, markersize=3,
                        label=key.replace("_", " "))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy")
    if ax_acc.lines:
        ax_acc.legend()
    else:
        _empty(ax_acc, "no accuracy recorded")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_update_ratios(update_ratio, path):
    """One line per parameter of a fastnn.diagnostics.UpdateRatio: log10(update std / data
    std) over the recorded steps, with a guide at -3 (updates about 1e-3 of the values)."""
    fig, (ax,) = _figure(1, 1, (9, 4.5))
    steps = np.asarray(update_ratio.steps)
    for name, values in update_ratio.history.items():
        ax.plot(steps[:len(values)], _floats(values), linewidth=1, label=name)
    ax.axhline(-3, color="k", linestyle="--", linewidth=1, label="-3 (1e-3 rule of thumb)")
    ax.set_xlabel("step")
    measure = "actual update" if getattr(update_ratio, "measure", "grad") == "update" \
        else "lr * grad"
    ax.set_ylabel(f"log10(std({measure}) / std(param))")
    ax.set_title("update : data ratio")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if not update_ratio.history:
        _empty(ax, "no update ratios recorded")
    return _save(fig, path)


def _histograms(stats, path, title, xlabel, describe):
    fig, (ax,) = _figure(1, 1, (9, 4.5))
    for i in sorted(stats.latest):
        t = np.asarray(stats.latest[i], dtype=np.float64).ravel()
        t = t[np.isfinite(t)]
        if t.size == 0:
            continue
        hy, hx = np.histogram(t, bins=100, density=True)
        label = stats.labels.get(i, f"layer {i}")
        ax.plot(0.5 * (hx[:-1] + hx[1:]), hy, label=f"{label}: {describe(stats, i, label, t)}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="best")
    else:
        _empty(ax, "nothing recorded")
    return _save(fig, path)


def _pct(v):
    return "-" if v is None or math.isnan(v) else f"{v:.2%}"


def plot_activation_histograms(activation_stats, path):
    """The distribution of every activation layer's latest recorded output (a
    fastnn.diagnostics.ActivationStats), one curve per layer, with mean, std and saturated
    (tanh/sigmoid) or dead (ReLU) fraction in the legend."""
    def describe(stats, i, label, t):
        h = stats.history.get(label, {})
        text = f"mean {t.mean():+.2f}, std {t.std():.2f}"
        sat, dead = (h.get(k, [_NAN])[-1] for k in ("saturated", "dead"))
        if not math.isnan(sat):
            text += f", saturated {_pct(sat)}"
        if not math.isnan(dead):
            text += f", dead {_pct(dead)}"
        return text

    step = activation_stats.steps[-1] if activation_stats.steps else "-"
    return _histograms(activation_stats, path, f"activation distribution (step {step})",
                       "layer output", describe)


def plot_gradient_histograms(gradient_stats, path):
    """The distribution of the gradient at every activation layer's output (a
    fastnn.diagnostics.GradientStats), one curve per layer, mean and std in the legend."""
    def describe(stats, i, label, t):
        return f"mean {t.mean():+.2e}, std {t.std():.2e}"

    step = gradient_stats.steps[-1] if gradient_stats.steps else "-"
    return _histograms(gradient_stats, path, f"gradient distribution (step {step})",
                       "gradient w.r.t. the layer output", describe)
