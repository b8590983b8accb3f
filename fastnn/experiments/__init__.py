"""The course experiments, reproduced with fastnn: `fastnn experiment NAME [--output DIR]`.

Each experiment is a module with run(output, data_path=None, seed=0, quick=False, ...)
-> dict of the numbers it measured; it trains with fastnn and writes PNG figures and a
markdown summary (summary.md) into the folder `output`. By default it runs on the 8x8 digits
that ship with fastnn; data_path, a folder of MNIST IDX files, switches to MNIST. quick=True
makes a run of a few seconds (for tests); the default runs take under two minutes on two
cores.

    optimizers  SGD, Momentum, AdaGrad, RMSprop, Adam on x^2/20 + y^2 and on an MLP
    init        activation histograms for weight std 1, 0.01, Xavier, He; training curves
    batchnorm   with and without BatchNorm over initial weight scales; makemore diagnostics
    overfit     a 7-layer network on 300 samples: none, weight decay 0.1, dropout 0.2
    search      random search of lr and weight decay on the validation split, in parallel
    charlm      a character-level MLP language model on a word list, and samples from it
"""
import importlib

NAMES = ("optimizers", "init", "batchnorm", "overfit", "search", "charlm")

__all__ = ["NAMES", "get"]


def get(name):
    """The module of experiment `name` (one of NAMES); its run() runs it."""
    if name not in NAMES:
        raise ValueError(f"name: expected one of {', '.join(NAMES)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
