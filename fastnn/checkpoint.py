"""Saving and loading models: one .npz file (allow_pickle=False) holding the state_dict and
the architecture (the model's config() as JSON), written atomically: a temporary file in the
same folder, flushed and fsynced, then renamed over the target, so a crash while saving
leaves the previous file intact (and the next save removes what such a crash left).

Loading reads a file defensively: the architecture record first (at most 1 MB), then the
parameter and buffer names, shapes and dtypes it implies are checked against the members'
.npy headers, and every member's size against what the file can hold, before anything is
allocated; only the expected members are read. Whatever is wrong with a file raises
ModelFileError (a ValueError) naming the file and the problem.

A model with layers of your own saves and loads once their classes are registered
(register_module): each such layer is stored as its config() (its constructor's arguments,
as JSON values) and rebuilt by calling the class with them, in both the saving and the
loading process. save refuses, before writing anything, a model that load could not rebuild
(a layer class not registered, or whose config() does not rebuild its parameters and
buffers). Loading a registered layer runs its constructor on the file's config (twice: once
to learn its parameters' shapes before reading them): load only files you trust there.
"""
import json
import math
import os
import tempfile
import zipfile

import numpy as np

from . import layers

__all__ = ["ModelFileError", "atomic_write", "load", "load_into", "register_module", "save"]

# the layer types fastnn.load rebuilds without registration
_BUILT_IN = {cls.__name__: cls for cls in (
    layers.Sequential, layers.Linear, layers.BatchNorm1d, layers.Embedding, layers.Dropout,
    layers.Flatten, layers.ReLU, layers.Tanh, layers.Sigmoid, layers.LeakyReLU, layers.GELU,
    layers.Softmax)}
_REGISTERED = {}  # name: a user's Module class (register_module)

_ARCH = "__fastnn_architecture__"
_ARCH_MAX_BYTES = 1 << 20
# DEFLATE expands at most about 1032:1: a member claiming more than that over its compressed
# size cannot be real, whatever its header says
_DEFLATE_MAX_RATIO = 1032


class ModelFileError(ValueError):
    """A model file that is not one fastnn wrote, or is damaged: truncated, corrupt, for
    another architecture, or claiming more data than it holds."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path):
    return f".{os.path.basename(path)}."


def remove_stale_temporaries(path):
    """Remove the temporaries an earlier atomic_write of `path` left behind when its process
    died (killed while saving): ".NAME.PID.*.tmp" whose process no longer runs."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_write(path, write):
    """Call write(file) on a temporary file next to `path`, fsync it, rename it to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_temp_prefix(path)}{os.getpid()}.",
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


def register_module(cls):
    """Let save and load handle layers of class `cls`, a fastnn Module subclass whose
    config() returns its constructor's keyword arguments as JSON values (its sub-modules
    built by the constructor itself). Use it as a class decorator; returns cls. The class
    is known by its __name__, which must not be a built-in layer's or another registered
    class's (a class defined again, as in a re-run notebook cell, replaces itself)."""
    if not (isinstance(cls, type) and issubclass(cls, layers.Module)):
        raise TypeError(f"cls: expected a fastnn Module subclass, got {cls!r}")
    name = cls.__name__
    if name in _BUILT_IN:
        raise ValueError(f"cls: {name} is the name of a built-in layer; name the class "
                         "otherwise")
    old = _REGISTERED.get(name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise ValueError(f"cls: another class named {name} is registered "
                         f"({old.__module__}.{old.__qualname__})")
    _REGISTERED[name] = cls
    return cls


def _layer_class(kind):
    return _BUILT_IN.get(kind) or _REGISTERED.get(kind)


def save(model, path):
    """Write the model's parameters, buffers and architecture to `path` (.npz). A model
    that load could not rebuild raises ValueError, and nothing is written."""
    text = rebuildable_architecture(model)
    arrays = model.state_dict()
    arrays[_ARCH] = np.array(text)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def rebuildable_architecture(model):
    """The model's architecture as JSON text, after checking that load rebuilds it: every
    layer's class is built in or registered, the record is JSON, and the parameters and
    buffers it implies are the model's."""
    def check(module, path):
        cls = type(module)
        if _layer_class(cls.__name__) is not cls:
            where = f"layer {path}" if path else "the model"
            raise ValueError(f"model: {where} is a {cls.__name__}, which fastnn.load cannot "
                             "rebuild: register its class (@fastnn.register_module), with a "
                             "config() returning its constructor's arguments")
        if isinstance(module, layers.Sequential):
            for i, layer in enumerate(module):
                check(layer, f"{path}.{i}" if path else str(i))
    check(model, "")
    arch = _architecture(model)
    try:
        text = json.dumps(arch)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: its config() is not JSON ({e})") from None
    try:
        expected = _expected_state(json.loads(text))
    except ModelFileError as e:
        raise ValueError(f"model: its config() does not rebuild it: {e}") from None
    actual = state_shapes(model)
    if expected != actual:
        differ = sorted(k for k in set(expected) | set(actual)
                        if expected.get(k) != actual.get(k))
        raise ValueError(f"model: its config() does not rebuild its parameters and buffers: "
                         f"{differ[0]} is {actual.get(differ[0])} in the model, "
                         f"{expected.get(differ[0])} rebuilt (shape, dtype)")
    return text


def state_shapes(module, prefix=""):
    """{name: (shape, dtype)} of module's parameters and buffers (nothing copied)."""
    return {name: (np.shape(a), np.asarray(a).dtype)
            for name, a in module.state_arrays(prefix).items()}


def _read(path):
    """(architecture, state) of the model file at `path`, read defensively (module docstring)."""
    return read_zip_file(path, _read_zip, "fastnn model")


def read_zip_file(path, read, kind):
    """read(zip, file size) on the zip file at `path`; any failure but a missing or
    unreadable file becomes ModelFileError naming the file (not a readable `kind` file)."""
    path = os.fspath(path)
    remove_stale_temporaries(path)
    try:
        with zipfile.ZipFile(path) as z:
            return read(z, os.path.getsize(path))
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, ValueError,
            TypeError, OverflowError, RecursionError, MemoryError, NotImplementedError,
            OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ModelFileError(f"{path}: not a readable {kind} file "
                             f"({type(e).__name__}: {e})") from None


def _read_zip(z, file_size):
    arch = read_json_member(z, file_size, _ARCH, _ARCH_MAX_BYTES, "the architecture record")
    if arch is None:
        raise ModelFileError("not a fastnn model file (no architecture record)")
    if not isinstance(arch, dict):
        raise ModelFileError(f"the architecture record is not a model: {str(arch)[:80]}")
    expected = _expected_state(arch)
    members = {info.filename: info for info in z.infolist()}
    names = {n[:-len(".npy")] for n in members if n.endswith(".npy")} - {_ARCH}
    if names != set(expected) or len(members) != len(expected) + 1:
        extra = sorted(set(members) - {k + ".npy" for k in expected} - {_ARCH + ".npy"})
        raise ModelFileError(f"its arrays do not match its architecture: missing "
                             f"{sorted(set(expected) - names)}, unexpected {extra}")
    return arch, read_members(z, file_size, expected)


def read_json_member(z, file_size, name, max_bytes, what):
    """The JSON text held as a 0-d string array in member `name` of the open zip `z`,
    parsed; None when there is no such member. A claimed size above max_bytes, or one the
    file cannot hold, raises ModelFileError."""
    info = {i.filename: i for i in z.infolist()}.get(name + ".npy")
    if info is None:
        return None
    if info.file_size > max_bytes:
        raise ModelFileError(f"{what} claims {info.file_size} bytes, more than {max_bytes}")
    _plausible(info, file_size)
    with z.open(info) as f:
        text = np.lib.format.read_array(f, allow_pickle=False)
    if text.shape != () or text.dtype.kind != "U":
        raise ModelFileError(f"{what} is not text")
    return json.loads(str(text))


def read_members(z, file_size, expected):
    """{name: array} for expected = {name: (shape, dtype)}, the .npy members of the open
    zip `z` (of a file of file_size bytes): each one's header and sizes are checked against
    `expected` and the file before anything is allocated."""
    members = {info.filename: info for info in z.infolist()}
    total = 0
    for name, (shape, dtype) in expected.items():
        info = members[name + ".npy"]
        _plausible(info, file_size)
        with z.open(info) as f:
            reader = _HEADER_READERS.get(np.lib.format.read_magic(f))
            if reader is None:
                raise ModelFileError(f"{name}: not a .npy array of format 1.0 or 2.0")
            got_shape, fortran, got_dtype = reader(f)
            header = f.tell()
        if tuple(got_shape) != shape or got_dtype != dtype or fortran:
            raise ModelFileError(f"{name}: expected a {dtype} array of shape {shape}, the file "
                                 f"has {got_dtype} {got_shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header + nbytes:
            raise ModelFileError(f"{name}: the member holds {info.file_size - header} bytes of "
                                 f"data, its header says {nbytes}")
        total += nbytes
    if total > _DEFLATE_MAX_RATIO * file_size:
        raise ModelFileError(f"it claims {total} bytes of arrays in {file_size} bytes")
    state = {}
    for name in expected:
        with z.open(members[name + ".npy"]) as f:
            state[name] = np.lib.format.read_array(f, allow_pickle=False)
    return state


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _plausible(info, file_size):
    """A member's sizes as its zip records give them are possible in a file of file_size."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelFileError(f"{info.filename}: compression method {info.compress_type} (numpy "
                             "writes stored or deflated members)")
    if info.compress_size > file_size:
        raise ModelFileError(f"{info.filename}: {info.compress_size} compressed bytes in a "
                             f"file of {file_size}")
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED
                                  else _DEFLATE_MAX_RATIO)
    if info.file_size > limit:
        raise ModelFileError(f"{info.filename}: claims {info.file_size} bytes from "
                             f"{info.compress_size} compressed")


def _expected_state(spec, prefix="", depth=0):
    """{name: (shape, dtype)} of the state_dict of the model the architecture `spec`
    describes, from the specification alone (nothing is built or allocated)."""
    if not isinstance(spec, dict) or depth > 100:
        raise ModelFileError(f"layer {prefix or 'model'}: not a layer specification")
    kind = spec.get("type")
    if kind == "Sequential":
        state = {}
        layer_specs = spec.get("layers")
        if not isinstance(layer_specs, list):
            raise ModelFileError("Sequential: no list of layers")
        for i, layer in enumerate(layer_specs):
            state.update(_expected_state(layer, f"{prefix}{i}.", depth + 1))
        return state

    def size(key):
        v = spec.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2**40:
            raise ModelFileError(f"layer {prefix[:-1]} ({kind}): {key} is {v!r}")
        return v

    dtype = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}.get(
        spec.get("dtype", "float32"))
    if dtype is None:
        raise ModelFileError(f"layer {prefix[:-1]} ({kind}): dtype is {spec.get('dtype')!r}")
    if kind == "Linear":
        shapes = {"weight": (size("out_features"), size("in_features"))}
        if spec.get("bias", True):
            shapes["bias"] = (size("out_features"),)
    elif kind == "BatchNorm1d":
        C = (size("num_features"),)
        shapes = {"weight": C, "bias": C} if spec.get("affine", True) else {}
        shapes.update(running_mean=C, running_var=C)
    elif kind == "Embedding":
        shapes = {"weight": (size("num_embeddings"), size("embedding_dim"))}
    elif kind == "Dropout":
        return {f"{prefix}seed": ((), np.dtype(np.uint64)),
                f"{prefix}counter": ((), np.dtype(np.uint64))}
    elif kind in ("Flatten", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "GELU", "Softmax"):
        return {}
    elif kind in _REGISTERED:  # only its constructor knows its shapes
        return state_shapes(_build(spec), prefix)
    else:
        raise ModelFileError(f"unknown layer type {kind!r} (a layer of your own: register "
                             "its class with fastnn.register_module before loading)")
    return {f"{prefix}{k}": (v, dtype) for k, v in shapes.items()}


def _build(spec):
    kind = spec.get("type")
    cls = _layer_class(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelFileError(f"unknown layer type {kind!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    if cls is layers.Sequential:
        return layers.Sequential(*[_build(s) for s in args["layers"]])
    try:
        return cls(**args)
    except Exception as e:  # a user's constructor may raise anything
        if cls in _BUILT_IN.values():
            raise
        raise ModelFileError(f"{kind}({args}) raised {type(e).__name__}: {e}") from None


def load(path):
    """Rebuild the model saved at `path` and load its parameters and buffers. A file that is
    not a fastnn model, or damaged, raises ModelFileError."""
    arch, state = _read(path)
    try:
        model = _build(arch)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(f"{os.fspath(path)}: its architecture does not build: {e}") from None
    model.load_state_dict(state)
    return model


def load_into(model, path):
    """Load the file at `path` into an existing model of the same architecture; a file for a
    different architecture raises ValueError saying how they differ."""
    arch, state = _read(path)
    mine = _architecture(model)
    if arch != mine:
        raise ModelFileError(f"{path}: saved for a different architecture:\n  file:  {arch}\n"
                         f"  model: {mine}")
    model.load_state_dict(state)
    return model
