"""Feeding data to a model: a shuffled train/validation/test split, a mini-batch iterator that
allocates nothing per batch, and z-score standardisation.

Shapes: X is (n, ...) with the samples along the first axis (usually (n, features)); y is
(n,) or (n, ...). Everything is NumPy and reproducible for a given seed.
"""
import math

import numpy as np

__all__ = ["BatchIterator", "Standardizer", "batches", "split"]


def _check_pair(X, y):
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"X, y: expected arrays with a sample axis, got shapes {X.shape} "
                         f"and {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"X, y: expected the same number of samples, got {len(X)} and {len(y)}")
    return X, y


def split(X, y, ratios=(0.8, 0.1, 0.1), seed=0, stratify=None):
    """Shuffle the samples and cut them into parts of the given proportions.

    X: (n, ...); y: (n, ...) with the same n. ratios: positive numbers that sum to 1, one per
    part (the default gives train, validation, test). The parts get round(cumulative ratio
    * n) boundaries, so their sizes add up to n exactly; a part that would be empty raises
    ValueError. stratify: None, or (n,) class labels (usually y itself): then each part
    holds every class in about the proportions of the whole (within one or two samples of
    ratio * the class's count), with the same part sizes.

    Returns one (X_part, y_part) pair per ratio, e.g. ((X_train, y_train), (X_val, y_val),
    (X_test, y_test)): copies, shapes (n_part, ...). The permutation comes from
    np.random.default_rng(seed), so a seed always gives the same split; the parts are
    disjoint and together hold every sample once.
    """
    X, y = _check_pair(X, y)
    ratios = tuple(ratios)
    numbers = (int, float, np.integer, np.floating)
    if not ratios or not all(isinstance(r, numbers) and r > 0 for r in ratios):
        raise ValueError(f"ratios: expected positive numbers, got {ratios}")
    if not math.isclose(math.fsum(ratios), 1.0, rel_tol=0, abs_tol=1e-9):
        raise ValueError(f"ratios: expected numbers that sum to 1, got {ratios} "
                         f"(sum {math.fsum(ratios)})")
    n = len(X)
    cumulative = np.cumsum(ratios)
    bounds = [0] + [int(math.floor(c * n + 0.5)) for c in cumulative[:-1]] + [n]
    sizes = np.diff(bounds)
    if (sizes <= 0).any():
        raise ValueError(f"ratios: {ratios} of {n} samples gives part sizes {sizes.tolist()}; "
                         "every part needs at least one sample")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if stratify is not None:
        order = _stratified(order, stratify, n)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        if stratify is not None:  # in quantile order the classes alternate: shuffle
            idx = rng.permutation(idx)
        parts.append((X[idx], y[idx]))
    return tuple(parts)


def _stratified(order, labels, n):
    """`order` (a permutation of n) re-sorted by each sample's quantile within its class,
    (rank in the class + 1/2) / class size: any cut of it takes each class in proportion."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"stratify: expected one label per sample, shape ({n},), got "
                         f"{labels.shape}")
    _, classes = np.unique(labels[order], return_inverse=True)
    counts = np.bincount(classes)
    # the rank of each sample of `order` among the earlier ones of its class
    by_class = np.argsort(classes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    quantile = (rank + 0.5) / counts[classes]
    return order[np.lexsort((classes, quantile))]


class BatchIterator:
    """Mini-batches (X_batch, y_batch) of (X, y), one pass over the data per iteration (epoch).

    X: (n, ...); y: (n, ...) with the same n. Each batch is (batch_size, ...) except possibly
    the last, which holds the n % batch_size leftover samples, or is dropped with
    drop_last=True. len() is the number of batches per epoch.

    With shuffle=True every new iteration (epoch) draws a new permutation from one generator,
    np.random.default_rng(seed), made when the iterator is: the epochs differ from each other
    but the whole sequence of epochs is the same for a seed. With shuffle=False the samples
    come in order.

    The batches are gathered (np.take) into two buffers allocated once, so the steady state
    allocates nothing. The yielded arrays ARE those buffers (the last, short batch is a view
    of their first rows): the next batch overwrites them. Copy a batch to keep it, and run
    one iteration over an iterator at a time.
    """

    def __init__(self, X, y, batch_size, shuffle=True, seed=0, drop_last=False):
        X, y = _check_pair(X, y)
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size <= 0):
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.X, self.y = X, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._rng = np.random.default_rng(seed)
        b = min(self.batch_size, len(X))
        self._xbuf = np.empty((b,) + X.shape[1:], dtype=X.dtype)
        self._ybuf = np.empty((b,) + y.shape[1:], dtype=y.dtype)

    def __len__(self):
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n = len(self.X)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            m = len(idx)
            xb = self._xbuf if m == len(self._xbuf) else self._xbuf[:m]
            yb = self._ybuf if m == len(self._ybuf) else self._ybuf[:m]
            # mode="clip": with the default mode="raise" NumPy gathers into a temporary and
            # copies it to `out`; the indices are a permutation, so they are all in range.
            np.take(self.X, idx, axis=0, out=xb, mode="clip")
            np.take(self.y, idx, axis=0, out=yb, mode="clip")
            yield xb, yb


def batches(X, y, batch_size, shuffle=True, seed=0, drop_last=False):
    """A BatchIterator over (X, y): iterate it once per epoch. See BatchIterator.

    X: (n, ...), y: (n, ...); yields (X_batch (batch_size, ...), y_batch (batch_size, ...)),
    arrays that the next batch overwrites.
    """
    return BatchIterator(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


class Standardizer:
    """Z-score standardisation of features: (X - mean) / std, per feature (column).

    Fit it on the training split only, then transform the training, validation and test
    splits with the training statistics, so nothing about the held-out data leaks into the
    model.

    fit(X_train): X_train (n, features), n >= 1. Stores mean_ and std_, float64 arrays of
    shape (features,): the mean and the population standard deviation (ddof=0). A feature
    that is constant in X_train gets std 1 and its exact value as mean, so it maps to 0.
    transform(X): X (m, features) -> (m, features) in X's dtype if it is float32/float64,
    else float64 (a new array).
    """

    def __init__(self):
        self.mean_ = None
        self.std_ = None

    @staticmethod
    def _check(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-d array (samples, features), got shape {X.shape}")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"X: expected a numeric array, got dtype {X.dtype}")
        return X

    def fit(self, X):
        """Compute per-feature mean_ and std_ of X (n, features); returns self."""
        X = self._check(X)
        if len(X) == 0:
            raise ValueError(f"X: expected at least one sample to fit, got shape {X.shape}")
        X64 = X.astype(np.float64, copy=False)
        mean = X64.mean(axis=0)
        std = X64.std(axis=0)
        # Exact test: the float mean of a constant column may differ from it by an ulp,
        # which would leave a tiny nonzero std and blow the column up instead of zeroing it.
        constant = X64.max(axis=0) == X64.min(axis=0)
        mean[constant] = X64[0, constant]
        std[constant] = 1.0
        self.mean_, self.std_ = mean, std
        return self

    def transform(self, X):
        """(X - mean_) / std_ for X (m, features) -> (m, features), a new array."""
        if self.mean_ is None:
            raise RuntimeError("Standardizer: call fit(X_train) before transform")
        X = self._check(X)
        if X.shape[1] != len(self.mean_):
            raise ValueError(f"X: expected {len(self.mean_)} features (as fitted), "
                             f"got {X.shape[1]}")
        dtype = X.dtype if X.dtype.kind == "f" and X.dtype.itemsize >= 4 else np.dtype(np.float64)
        out = np.subtract(X, self.mean_.astype(dtype), dtype=dtype)
        out /= self.std_.astype(dtype)
        return out

    def fit_transform(self, X):
        """fit(X) then transform(X)."""
        return self.fit(X).transform(X)
