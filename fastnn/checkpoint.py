"""Saving and loading models: one .npz file (allow_pickle=False) holding the state_dict and
the architecture (the model's config() as JSON), written atomically: a temporary file in the
same folder, flushed and fsynced, then renamed over the target, so a crash while saving
leaves the previous file intact."""
import json
import os
import tempfile

import numpy as np

from . import layers

__all__ = ["atomic_write", "load", "load_into", "save"]

_ARCH = "__fastnn_architecture__"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call write(file) on a temporary file next to `path`, fsync it, rename it to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _architecture(model):
    return {"type": type(model).__name__, **model.config()}


def save(model, path):
    """Write the model's parameters, buffers and architecture to `path` (.npz)."""
    arrays = model.state_dict()
    arrays[_ARCH] = np.array(json.dumps(_architecture(model)))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read(path):
    with np.load(path, allow_pickle=False) as z:
        if _ARCH not in z:
            raise ValueError(f"{path}: not a fastnn model file (no architecture record)")
        arch = json.loads(str(z[_ARCH]))
        state = {k: z[k] for k in z.files if k != _ARCH}
    return arch, state


def _build(spec):
    kind = spec.get("type")
    cls = getattr(layers, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, layers.Module)):
        raise ValueError(f"model file: unknown layer type {kind!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    if cls is layers.Sequential:
        return layers.Sequential(*[_build(s) for s in args["layers"]])
    return cls(**args)


def load(path):
    """Rebuild the model saved at `path` and load its parameters and buffers."""
    arch, state = _read(path)
    model = _build(arch)
    model.load_state_dict(state)
    return model


def load_into(model, path):
    """Load the file at `path` into an existing model of the same architecture; a file for a
    different architecture raises ValueError saying how they differ."""
    arch, state = _read(path)
    mine = _architecture(model)
    if arch != mine:
        raise ValueError(f"{path}: saved for a different architecture:\n  file:  {arch}\n"
                         f"  model: {mine}")
    model.load_state_dict(state)
    return model
