"""fastnn.data (split, batches, Standardizer) and fastnn.datasets (digits, MNIST, n-grams)."""
import gzip
import struct

import numpy as np
import pytest

from fastnn import data, datasets


def make_xy(n=100, features=3):
    X = np.arange(n * features, dtype=np.float64).reshape(n, features)
    return X, np.arange(n, dtype=np.int64)  # y[i] == i identifies the sample


# ---------------------------------------------------------------------------------- split

def test_split_sizes_disjoint_covering():
    X, y = make_xy(1000)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data.split(X, y, (0.8, 0.1, 0.1), seed=1)
    assert (len(ytr), len(yva), len(yte)) == (800, 100, 100)
    both = np.concatenate([ytr, yva, yte])
    assert np.array_equal(np.sort(both), y)  # disjoint and covering
    for Xp, yp in ((Xtr, ytr), (Xva, yva), (Xte, yte)):
        assert np.array_equal(Xp, X[yp])  # rows stay paired with their labels
    assert not np.array_equal(ytr, np.arange(800))  # shuffled


def test_split_rounding_sums_to_n():
    X, y = make_xy(1797)
    parts = data.split(X, y)
    assert sum(len(p[1]) for p in parts) == 1797
    assert [len(p[1]) for p in parts] == [1438, 179, 180]
    parts = data.split(X, y, ratios=(0.5, 0.5))
    assert [len(p[1]) for p in parts] == [899, 898]  # 898.5 rounds up


def test_split_deterministic_for_a_seed():
    X, y = make_xy(50)
    a, b, c = data.split(X, y, seed=3), data.split(X, y, seed=3), data.split(X, y, seed=4)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not np.array_equal(a[0][1], c[0][1])


@pytest.mark.parametrize("ratios", [(0.8, 0.3), (0.8, 0.1), (1.0, 0.0), (1.2, -0.2), (), ("a",)])
def test_split_bad_ratios(ratios):
    X, y = make_xy(10)
    with pytest.raises(ValueError, match="ratios"):
        data.split(X, y, ratios)


def test_split_empty_part_and_length_mismatch():
    X, y = make_xy(5)
    with pytest.raises(ValueError, match="ratios.*at least one sample"):
        data.split(X, y, (0.8, 0.1, 0.1))  # 5 samples: val and test would be empty
    with pytest.raises(ValueError, match="same number of samples"):
        data.split(X, y[:4])


@pytest.mark.parametrize("seed", range(20))
def test_stratified_split_keeps_each_classs_share(seed):
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(50, 600)), int(rng.integers(2, 8))
    labels = rng.choice(classes, n, p=rng.dirichlet(np.ones(classes)))
    X, ids = make_xy(n)
    ratios = (0.7, 0.2, 0.1)
    parts = data.split(X, ids, ratios, seed=seed, stratify=labels)
    plain = data.split(X, ids, ratios, seed=seed)
    assert [len(p[1]) for p in parts] == [len(p[1]) for p in plain]  # the same sizes
    assert np.array_equal(np.sort(np.concatenate([p[1] for p in parts])), ids)
    for ratio, (Xp, yp) in zip(ratios, parts):
        assert np.array_equal(Xp, X[yp])
        for c in range(classes):
            share = ratio * np.count_nonzero(labels == c)
            assert abs(np.count_nonzero(labels[yp] == c) - share) < 2, (c, share)
    again = data.split(X, ids, ratios, seed=seed, stratify=labels)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(parts, again))


def test_stratified_split_of_a_rare_class_and_bad_labels():
    X, ids = make_xy(100)
    labels = np.zeros(100, int)
    labels[:10] = 1  # 10 of class 1: 8, 1 and 1 of them
    parts = data.split(X, ids, seed=0, stratify=labels)
    assert [np.count_nonzero(labels[p[1]] == 1) for p in parts] == [8, 1, 1]
    assert [len(p[1]) for p in parts] == [80, 10, 10]
    with pytest.raises(ValueError, match=r"stratify: expected one label per sample, shape "
                                         r"\(100,\), got \(99,\)"):
        data.split(X, ids, stratify=labels[:99])


# -------------------------------------------------------------------------------- batches

def epoch(it):
    """The labels of one epoch, batch by batch (copied: the iterator reuses its buffers)."""
    return [yb.copy() for _, yb in it]


def test_batches_cover_each_sample_once_per_epoch():
    X, y = make_xy(103)
    it = data.batches(X, y, 10, seed=0)
    assert len(it) == 11
    for _ in range(3):
        seen = []
        for Xb, yb in it:
            assert np.array_equal(Xb, X[yb])
            seen.append(yb.copy())
        assert [len(s) for s in seen] == [10] * 10 + [3]
        assert np.array_equal(np.sort(np.concatenate(seen)), y)


def test_batches_epochs_differ_and_run_is_reproducible():
    X, y = make_xy(64)
    it = data.batches(X, y, 16, seed=7)
    e1, e2 = np.concatenate(epoch(it)), np.concatenate(epoch(it))
    assert not np.array_equal(e1, e2)
    again = data.batches(X, y, 16, seed=7)
    assert np.array_equal(np.concatenate(epoch(again)), e1)
    assert np.array_equal(np.concatenate(epoch(again)), e2)
    other = data.batches(X, y, 16, seed=8)
    assert not np.array_equal(np.concatenate(epoch(other)), e1)


def test_batches_no_shuffle_in_order():
    X, y = make_xy(25)
    it = data.batches(X, y, 10, shuffle=False)
    for _ in range(2):
        assert [b.tolist() for b in epoch(it)] == [list(range(0, 10)), list(range(10, 20)),
                                                   list(range(20, 25))]


def test_batches_drop_last_and_len():
    X, y = make_xy(103)
    it = data.batches(X, y, 10, drop_last=True)
    assert len(it) == 10
    got = epoch(it)
    assert len(got) == 10 and all(len(b) == 10 for b in got)
    assert len(data.batches(X, y, 103)) == 1 and len(data.batches(X, y, 500)) == 1
    assert len(data.batches(X, y, 500, drop_last=True)) == 0
    assert len(list(data.batches(X, y, 500, drop_last=True))) == 0
    assert len(data.batches(X, y, 1)) == 103


def test_batches_reuse_buffers():
    X, y = make_xy(35)
    it = data.batches(X, y, 10)
    out = list(it)
    assert len(out) == 4
    assert all(Xb is out[0][0] and yb is out[0][1] for Xb, yb in out[:3])  # the same arrays
    Xlast, ylast = out[3]
    assert Xlast.shape == (5, 3) and np.shares_memory(Xlast, out[0][0])
    assert np.shares_memory(ylast, out[0][1])
    assert Xlast.dtype == X.dtype and ylast.dtype == y.dtype
    assert next(iter(it))[0] is out[0][0]  # and across epochs


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4", None])
def test_batches_bad_batch_size(bad):
    X, y = make_xy(10)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(X, y, bad)


def test_batches_length_mismatch():
    X, y = make_xy(10)
    with pytest.raises(ValueError, match="same number of samples"):
        data.batches(X, y[:9], 2)


# --------------------------------------------------------------------------- Standardizer

def test_standardizer_fit_on_train_only():
    rng = np.random.default_rng(0)
    Xtr = rng.normal(5.0, 3.0, size=(200, 4)).astype(np.float32)
    Xte = rng.normal(5.0, 3.0, size=(50, 4)).astype(np.float32)
    s = data.Standardizer().fit(Xtr)
    np.testing.assert_allclose(s.mean_, Xtr.astype(np.float64).mean(0))
    np.testing.assert_allclose(s.std_, Xtr.astype(np.float64).std(0))
    Ztr = s.transform(Xtr)
    assert Ztr.dtype == np.float32 and Ztr.shape == Xtr.shape
    np.testing.assert_allclose(Ztr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Ztr.std(0), 1, atol=1e-5)
    Zte = s.transform(Xte)  # training statistics, not the test set's own
    np.testing.assert_allclose(Zte, (Xte - s.mean_) / s.std_, rtol=1e-5, atol=1e-5)
    assert abs(Zte.mean(0)).max() > 1e-3
    np.testing.assert_array_equal(data.Standardizer().fit_transform(Xtr), Ztr)


def test_standardizer_constant_feature_and_dtypes():
    X = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 3.0]])
    s = data.Standardizer().fit(X)
    Z = s.transform(X)
    assert Z.dtype == np.float64
    assert np.array_equal(Z[:, 0], np.zeros(3))  # exactly, despite 0.1's rounding
    assert s.std_[0] == 1.0
    assert s.transform(X.astype(np.int64)).dtype == np.float64


def test_standardizer_errors():
    with pytest.raises(RuntimeError, match="fit"):
        data.Standardizer().transform(np.zeros((2, 3)))
    s = data.Standardizer().fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 features"):
        s.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-d"):
        s.transform(np.zeros(3))
    with pytest.raises(ValueError, match="at least one sample"):
        data.Standardizer().fit(np.zeros((0, 3)))


# ---------------------------------------------------------------------------- load_digits

def test_load_digits():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16 and np.array_equal(X, np.round(X))
    counts = np.bincount(y)
    assert len(counts) == 10 and counts.sum() == 1797 and counts.min() >= 170
    # the first image is a 0 (as in scikit-learn's copy)
    assert y[0] == 0 and X[0, :8].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]
    X64, _ = datasets.load_digits(dtype=np.float64)
    assert X64.dtype == np.float64 and np.array_equal(X64, X)
    X[:] = -1  # new arrays at every call: the cache is not touched
    assert datasets.load_digits()[0].min() == 0
    with pytest.raises(TypeError, match="dtype"):
        datasets.load_digits(dtype=np.int32)


# ----------------------------------------------------------------------------- load_mnist

def idx_bytes(array, magic):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def write_mnist(folder, prefix, images, labels, gz):
    for name, arr, magic in ((f"{prefix}-images-idx3-ubyte", images, 0x803),
                             (f"{prefix}-labels-idx1-ubyte", labels, 0x801)):
        raw = idx_bytes(arr, magic)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind,prefix", [("train", "train"), ("test", "t10k"), ("t10k", "t10k")])
def test_load_mnist(tmp_path, gz, kind, prefix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_mnist(tmp_path, prefix, images, labels, gz)
    X, y = datasets.load_mnist(tmp_path, kind=kind)
    assert X.shape == (5, 784) and X.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [3, 1, 4, 1, 5]
    np.testing.assert_array_equal(X, (images.reshape(5, 784) / np.float32(255)))
    assert X[0, 0] == 0 and X[0, 1] == 1 and X.min() >= 0 and X.max() <= 1
    X64, _ = datasets.load_mnist(str(tmp_path), kind=kind, dtype=np.float64)
    assert X64.dtype == np.float64 and np.allclose(X64, X)


def test_load_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match="train-images-idx3-ubyte.*train-labels-idx1-ubyte.*MNIST"):
        datasets.load_mnist(tmp_path)
    write_mnist(tmp_path, "t10k", np.zeros((2, 28, 28)), np.zeros(2), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"load_mnist: t10k-labels-idx1-ubyte\[\.gz\] not"):
        datasets.load_mnist(tmp_path, kind="test")
    with pytest.raises(FileNotFoundError, match="not found"):
        datasets.load_mnist(tmp_path / "nowhere")


def test_load_mnist_bad_files(tmp_path):
    images, labels = np.zeros((3, 28, 28)), np.zeros(3)
    write_mnist(tmp_path, "train", images, labels, gz=False)
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()
    # labels where images are expected: magic 0x801
    img.write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(ValueError, match="bad magic number 0x00000801, expected 0x00000803"):
        datasets.load_mnist(tmp_path)
    img.write_bytes(good[:-10])  # truncated
    with pytest.raises(ValueError, match="header says shape"):
        datasets.load_mnist(tmp_path)
    img.write_bytes(good[:6])
    with pytest.raises(ValueError, match="too short"):
        datasets.load_mnist(tmp_path)
    img.write_bytes(idx_bytes(np.zeros((2, 28, 28)), 0x803))  # 2 images, 3 labels
    with pytest.raises(ValueError, match="2 images but .* 3 labels"):
        datasets.load_mnist(tmp_path)
    img.write_bytes(gzip.compress(good)[:-20])  # a broken gzip stream
    with pytest.raises(ValueError, match="not a valid gzip file"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        datasets.load_mnist(tmp_path, kind="val")


# ----------------------------------------------------------------------------- char_ngrams

def test_char_ngrams_emma_ava():
    X, y, itos = datasets.char_ngrams(["emma", "ava"], block_size=3)
    assert itos == [".", "a", "e", "m", "v"]
    # by hand: ... -> e, ..e -> m, .em -> m, emm -> a, mma -> ., ... -> a, ..a -> v, .av -> a,
    # ava -> .
    contexts = ["...", "..e", ".em", "emm", "mma", "...", "..a", ".av", "ava"]
    targets = "emma.ava."
    assert X.dtype == np.int64 and y.dtype == np.int64 and X.shape == (9, 3)
    assert ["".join(itos[i] for i in row) for row in X] == contexts
    assert "".join(itos[i] for i in y) == targets
    assert X.tolist() == [[0, 0, 0], [0, 0, 2], [0, 2, 3], [2, 3, 3], [3, 3, 1],
                          [0, 0, 0], [0, 0, 1], [0, 1, 4], [1, 4, 1]]
    assert y.tolist() == [2, 3, 3, 1, 0, 1, 4, 1, 0]


def test_char_ngrams_block_sizes():
    X, y, itos = datasets.char_ngrams(["ab"], block_size=1)
    assert X.tolist() == [[0], [1], [2]] and y.tolist() == [1, 2, 0]
    X, y, _ = datasets.char_ngrams(iter(["ab", "b"]), block_size=5)  # longer than the words
    assert X.tolist() == [[0] * 5, [0, 0, 0, 0, 1], [0, 0, 0, 1, 2], [0] * 5, [0, 0, 0, 0, 2]]
    assert y.tolist() == [1, 2, 0, 2, 0]


@pytest.mark.parametrize("words", [[], ["ok", ""], ["ok", 3], ["a.b"]])
def test_char_ngrams_bad_words(words):
    with pytest.raises(ValueError, match="word"):
        datasets.char_ngrams(words)


def test_char_ngrams_bad_arguments():
    with pytest.raises(TypeError, match="one string"):
        datasets.char_ngrams("emma")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="block_size"):
            datasets.char_ngrams(["emma"], block_size=bad)


def test_batches_steady_state_allocates_no_batch():
    import tracemalloc
    X = np.zeros((1000, 784), dtype=np.float32)
    it = iter(data.batches(X, np.zeros(1000, dtype=np.int64), 128))
    next(it)
    tracemalloc.start()
    try:
        for _ in range(5):
            next(it)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 * 784 * 4 // 10  # a gathered batch would be 401 kB
