"""What the experiments share: the output folder, the data (the embedded digits, or MNIST
from a folder of IDX files), small MLP builders with a chosen weight initialisation,
per-epoch evaluation, figures and the markdown summary.

Every experiment writes PNG figures and a summary.md with the numbers it measured into its
output folder; figures and summary are written atomically (fastnn.checkpoint.atomic_write),
so a reader never sees half a file.
"""
import math
import os
import platform
import time

import numpy as np

import fastnn
from fastnn.checkpoint import atomic_write
from fastnn.train import Callback

__all__ = ["EvalEachEpoch", "Summary", "budget", "build_mlp", "figure", "init_weight", "load_data",
           "prepare_output", "save_figure", "sgd_weight_decay", "smooth", "trials"]


def prepare_output(output):
    """Create the folder `output` (and parents) if needed; returns its path as a str."""
    if output is None or (isinstance(output, str) and not output.strip()):
        raise ValueError(f"output: expected a folder path, got {output!r}")
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    return output


def load_data(data_path=None, seed=0, max_train=None):
    """The classification data of the experiments, pixels scaled to [0, 1] as in the course.

    data_path None: the embedded 8x8 digits (1797 images), split 80/10/10 into train,
    validation and test with `seed`. data_path a folder: MNIST from its IDX files; the 60000
    training images are split 90/10 into train and validation, the 10000 test images are the
    test set. max_train: keep only the first max_train training samples (after shuffling),
    for the experiments that work on a small training set.

    Returns a dict: "name" ("digits" or "mnist"), "train", "val", "test": (X (n, features)
    float32 in [0, 1], y (n,) int64), "n_features", "n_classes".
    """
    if data_path is None:
        X, y = fastnn.datasets.load_digits()
        X /= 16  # 0..16 counts -> [0, 1], like the course's normalised MNIST pixels
        train, val, test = fastnn.data.split(X, y, (0.8, 0.1, 0.1), seed=seed)
        name = "digits"
    else:
        if not os.path.isdir(data_path):
            raise FileNotFoundError(f"data_path: expected a folder holding the MNIST IDX "
                                    f"files, got {os.fspath(data_path)!r}")
        X, y = fastnn.datasets.load_mnist(data_path, "train")  # already in [0, 1]
        test = fastnn.datasets.load_mnist(data_path, "test")
        train, val = fastnn.data.split(X, y, (0.9, 0.1), seed=seed)
        name = "mnist"
    if max_train is not None:
        if isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 2:
            raise ValueError(f"max_train: expected an int >= 2 or None, got {max_train!r}")
        train = (train[0][:max_train], train[1][:max_train])
    n_classes = int(max(part[1].max() for part in (train, val, test))) + 1
    return {"name": name, "train": train, "val": val, "test": test,
            "n_features": train[0].shape[1], "n_classes": n_classes}


def budget(value, quick, quick_default, default, name):
    """A run's size (steps, epochs, trials): `value` when given, else the quick or the full
    default."""
    if value is None:
        return quick_default if quick else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
    return value


def init_weight(weight, scheme):
    """Initialise a Linear weight (out, in) in place with one of the course's schemes.

    scheme: a positive number (std of N(0, std^2), e.g. 1 or 0.01), "xavier" (Glorot normal,
    gain 1: std sqrt(2 / (fan_in + fan_out)), which is the course's 1/sqrt(n) for square
    layers) or "he" (std sqrt(2 / fan_in), He/Kaiming for ReLU), or "he_tanh" (gain 5/3 over
    sqrt(fan_in), the makemore choice for tanh).
    """
    if isinstance(scheme, (int, float)) and not isinstance(scheme, bool):
        if not scheme > 0:
            raise ValueError(f"scheme: expected a positive std, got {scheme!r}")
        return fastnn.init.normal(weight, 0.0, float(scheme))
    if scheme == "xavier":
        return fastnn.init.xavier_normal(weight, 1.0)
    if scheme == "he":
        return fastnn.init.he_normal(weight, "relu")
    if scheme == "he_tanh":
        return fastnn.init.he_normal(weight, "tanh")
    raise ValueError(f"scheme: expected a positive std, 'xavier', 'he' or 'he_tanh', "
                     f"got {scheme!r}")


def build_mlp(n_in, hidden, n_out, activation="relu", init="he", batchnorm=False,
              dropout=0.0, batchnorm_options=None):
    """An MLP n_in -> hidden[0] -> ... -> n_out as a fastnn.Sequential.

    Per hidden size: Linear (weight from init_weight(init), bias 0), or without bias followed
    by BatchNorm1d(**batchnorm_options) when batchnorm; the activation fused into the last of
    the two; then
    Dropout(dropout) if dropout > 0. The output Linear gets the same weight scheme and no
    activation (logits). Input (B, n_in) -> output (B, n_out).
    """
    if activation not in ("relu", "tanh", "sigmoid"):
        raise ValueError(f"activation: expected 'relu', 'tanh' or 'sigmoid', got {activation!r}")
    layers, width = [], n_in
    for size in hidden:
        linear = fastnn.Linear(width, size, bias=not batchnorm,
                               activation=None if batchnorm else activation)
        layers.append(_initialised(linear, init))
        if batchnorm:
            layers.append(fastnn.BatchNorm1d(size, activation=activation,
                                             **(batchnorm_options or {})))
        if dropout > 0:
            layers.append(fastnn.Dropout(dropout))
        width = size
    layers.append(_initialised(fastnn.Linear(width, n_out), init))
    return fastnn.Sequential(*layers)


def _initialised(linear, init):
    init_weight(linear.weight.data, init)
    if linear.bias is not None:
        linear.bias.data[...] = 0
    return linear


def sgd_weight_decay(model, lr, weight_decay):
    """SGD over model's parameters with the L2 penalty weight_decay/2 * sum(W^2) on the
    Linear layers' weights only, not on biases nor on BatchNorm's gamma and beta, as the
    course's weight decay: two parameter groups."""
    decayed = {id(layer.weight) for layer in model.layers if isinstance(layer, fastnn.Linear)}
    weights = [p for p in model.parameters() if id(p) in decayed]
    others = [p for p in model.parameters() if id(p) not in decayed]
    groups = [{"params": weights, "weight_decay": weight_decay}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    return fastnn.optim.SGD(groups, lr=lr)


class EvalEachEpoch(Callback):
    """Trainer callback: after every epoch, the accuracy (in evaluation mode, as the course
    measures it) on each named data set. .history: {name: [accuracy per epoch]}."""

    def __init__(self, **datasets):
        self.datasets = datasets
        self.history = {name: [] for name in datasets}

    def on_epoch_end(self, trainer, epoch, logs):
        for name, (X, y) in self.datasets.items():
            self.history[name].append(trainer.evaluate(X, y)[1])


def smooth(values, window):
    """Running mean of a 1-d sequence over `window` points (shorter at the start): (n,)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    window = max(1, min(int(window), v.size))
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    out[window - 1:] = (c[window:] - c[:-window]) / window
    out[:window - 1] = c[1:window] / np.arange(1, window)
    return out


def figure(nrows=1, ncols=1, size=(8, 4.5), grid=False):
    """A matplotlib Figure on the Agg canvas (no window, no display, pyplot's state left
    alone, as fastnn.plot draws) and its axes as a flat array of nrows * ncols. grid=True:
    fixed margins instead of the constrained layout, which costs about a second more per
    save for a grid of 20 small plots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout=None if grid else "constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if grid:  # margins in inches, so that a one-row grid keeps room for titles and ticks
        width, height = size
        fig.subplots_adjust(left=0.6 / width, right=1 - 0.1 / width, bottom=0.55 / height,
                            top=1 - 0.6 / height, wspace=0.25, hspace=0.55)
    return fig, axes


def trials(items, desc):
    """items, with a progress bar of them on a terminal (tqdm; none in logs or tests)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, disable=None)


def save_figure(fig, output, name):
    """Write fig as PNG `name` in the folder `output`, atomically; returns the path."""
    path = os.path.join(output, name)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def _cell(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


class Summary:
    """A markdown summary built piece by piece, written atomically as summary.md.

        s = Summary("optimizers", "What the experiment does.")
        s.table(["optimizer", "final f"], [["SGD", 0.013], ...])
        s.write(output)
    """

    def __init__(self, name, intro):
        self.name = name
        self.parts = [f"# fastnn experiment: {name}\n", intro.strip() + "\n"]
        self.figures = []
        self._start = time.perf_counter()

    def heading(self, text):
        self.parts.append(f"## {text}\n")

    def text(self, text):
        self.parts.append(text.strip() + "\n")

    def table(self, headers, rows):
        """A markdown table; floats get 4 significant digits."""
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.parts.append("\n".join(lines) + "\n")

    def figure(self, path, caption):
        name = os.path.basename(path)
        self.figures.append(name)
        self.parts.append(f"![{caption}]({name})\n")

    def write(self, output):
        """Write summary.md (with the run's wall time and environment) into `output`."""
        seconds = time.perf_counter() - self._start
        footer = (f"Measured by this run: {seconds:.1f} s wall time, fastnn "
                  f"{fastnn.__version__}, {fastnn.get_num_threads()} thread(s), Python "
                  f"{platform.python_version()}.\n")
        text = "\n".join(self.parts + [footer])
        path = os.path.join(output, "summary.md")
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path
