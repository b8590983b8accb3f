"""fastnn: a small, fast CPU deep-learning runtime.

Kernels are C with OpenMP (csrc/), bound through Cython (fastnn._native), with a NumPy twin
(fastnn.reference) as the numerical oracle; fastnn.functional dispatches between the two.
"""
__version__ = "0.1.0"

from . import _wait_policy  # noqa: F401  (first: before anything loads libgomp)
from . import data, datasets, functional, init, interop, optim, reference, train
from .checkpoint import ModelFileError, load, register_module, save
from .layers import (
    GELU,
    BatchNorm1d,
    Dropout,
    Embedding,
    Flatten,
    LeakyReLU,
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import CrossEntropyLoss, MSELoss
from .optim import clip_grad_norm_, clip_grad_value_
from .random import manual_seed
from .train import Trainer
from .runtime import (
    build_info,
    get_backend,
    get_isa,
    get_num_threads,
    set_backend,
    set_isa,
    set_num_threads,
    use_backend,
)

__all__ = [
    "BatchNorm1d",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Flatten",
    "GELU",
    "LeakyReLU",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "build_info",
    "data",
    "datasets",
    "clip_grad_norm_",
    "clip_grad_value_",
    "functional",
    "get_backend",
    "get_isa",
    "get_num_threads",
    "init",
    "interop",
    "ModelFileError",
    "Trainer",
    "load",
    "manual_seed",
    "optim",
    "reference",
    "register_module",
    "save",
    "set_backend",
    "set_isa",
    "set_num_threads",
    "train",
    "use_backend",
]
