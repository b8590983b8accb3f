"""Datasets, all local: the 8x8 digits shipped inside fastnn, MNIST read from IDX files you
downloaded, and character n-grams for a character-level language model. No network access.

Every loader returns X (n, features) and y (n,) int64 class indices.
"""
import gzip
import io
import os
import struct
import zlib
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["char_ngrams", "load_digits", "load_mnist"]


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype such as float32, got {dtype}")
    return dtype


@lru_cache(maxsize=1)
def _digits_uint8():
    # importlib.resources finds the file in a source tree, an installed wheel or a zip.
    res = resources.files("fastnn").joinpath("data-files").joinpath("digits.npz")
    with np.load(io.BytesIO(res.read_bytes()), allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_digits(dtype=np.float32):
    """The 8x8 handwritten digits that scikit-learn ships (UCI ML hand-written digits).

    Returns X (1797, 64) of `dtype`: each row an 8x8 image (row-major) with integer values in
    [0, 16]; y (1797,) int64: the digit, 0..9 (174 to 183 images per class). New arrays at
    every call. The data file is part of fastnn (fastnn/data-files/, see its README for source and
    licence). Scale or standardise X yourself (e.g. X / 16 or fastnn.data.Standardizer).
    """
    dtype = _float_dtype(dtype)
    images, labels = _digits_uint8()
    return images.astype(dtype), labels.astype(np.int64)


# IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a
# type byte (0x08: unsigned byte), the number of dimensions, then each dimension as int32,
# followed by the data. Magic numbers 2051 (0x803) for images (n, rows, cols) and 2049 (0x801)
# for labels (n,).
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_MNIST_FILES = {"train": "train", "test": "t10k", "t10k": "t10k"}
_MNIST_SOURCE = ("MNIST is four files, train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                 "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, from "
                 "http://yann.lecun.com/exdb/mnist/ or a mirror such as "
                 "https://ossci-datasets.s3.amazonaws.com/mnist/ (gzipped or not)")


def _find(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_idx(path, magic, ndim):
    """The uint8 data of the IDX file at path (gzipped or not), shape from its header."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic; an IDX file starts with two zero bytes
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        got = f"none (a {len(raw)}-byte file)" if found is None else f"{found:#010x}"
        raise ValueError(f"{path}: bad magic number {got}, expected {magic:#010x} "
                         f"(an IDX file of unsigned bytes with {ndim} dimension(s))")
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    size = int(np.prod(shape, dtype=np.int64))
    data = raw[4 + 4 * ndim:]
    if len(data) != size:
        raise ValueError(f"{path}: header says shape {shape} ({size} bytes of data), "
                         f"the file has {len(data)} bytes of data")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_mnist(path, kind="train", dtype=np.float32):
    """MNIST from the standard IDX files in the folder `path` (no download).

    kind: "train" (train-images-idx3-ubyte, train-labels-idx1-ubyte, 60000 images) or "test"
    (alias "t10k": t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, 10000 images). Each file
    may be gzipped and named with a ".gz" suffix. The same layout also holds Fashion-MNIST.

    Returns X (n, rows * cols) = (n, 784) of `dtype`, pixel values scaled from 0..255 to
    [0, 1]; y (n,) int64 labels. Raises FileNotFoundError naming the missing files and
    where to get MNIST, ValueError for a bad magic number, a truncated file, or image and
    label counts that differ.
    """
    dtype = _float_dtype(dtype)
    if kind not in _MNIST_FILES:
        raise ValueError(f"kind: expected one of {sorted(_MNIST_FILES)}, got {kind!r}")
    prefix = _MNIST_FILES[kind]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find(path, name) for name in names]
    if None in found:
        missing = [f"{name}[.gz]" for name, p in zip(names, found) if p is None]
        where = os.fspath(path)
        raise FileNotFoundError(f"load_mnist: {' and '.join(missing)} not found in {where!r}. "
                                + _MNIST_SOURCE)
    images = _read_idx(found[0], _IMAGES_MAGIC, 3)
    labels = _read_idx(found[1], _LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise ValueError(f"load_mnist: {found[0]} has {len(images)} images but {found[1]} "
                         f"has {len(labels)} labels")
    X = images.reshape(len(images), -1).astype(dtype)
    X /= 255
    return X, labels.astype(np.int64)


def char_ngrams(words, block_size=3):
    """Examples for a character-level language model (as in Karpathy's makemore).

    words: an iterable of non-empty strings (e.g. names). The vocabulary itos is ['.'] plus
    the sorted set of characters in the words; '.' (index 0) is the start and end token, so
    it may not occur inside a word. A word w gives len(w) + 1 examples: for each character of
    w + '.', the block_size preceding characters (padded on the left with '.') as context.

    Returns X (n, block_size) int64 context indices, y (n,) int64 index of the next
    character, itos (list of str, itos[i] is the character of index i), with
    n = sum(len(w) + 1). E.g. "ava", block_size 3: ... -> a, ..a -> v, .av -> a, ava -> .
    """
    if isinstance(words, str):
        raise TypeError("words: expected an iterable of strings, got one string")
    words = list(words)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size <= 0:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    if not words:
        raise ValueError("words: expected at least one word, got none")
    for w in words:
        if not isinstance(w, str) or not w:
            raise ValueError(f"words: expected non-empty strings, got {w!r}")
        if "." in w:
            raise ValueError(f"words: '.' is the start/end token and may not occur in a word, "
                             f"got {w!r}")
    itos = ["."] + sorted(set("".join(words)))
    stoi = {ch: i for i, ch in enumerate(itos)}
    # One sequence: for each word, block_size '.' of padding, its characters, then '.'. The
    # targets are every position but the padding; a target's context is the block_size
    # positions just before it, which never reach back into the previous word.
    seq, is_target = [], []
    for w in words:
        seq += [0] * block_size + [stoi[ch] for ch in w] + [0]
        is_target += [False] * block_size + [True] * (len(w) + 1)
    seq = np.array(seq, dtype=np.int64)
    pos = np.flatnonzero(is_target)
    windows = np.lib.stride_tricks.sliding_window_view(seq, block_size)
    return windows[pos - block_size], seq[pos], itos
