"""The course experiments (fastnn.experiments, `fastnn experiment NAME`): each runs in quick
mode, writes its PNGs and summary.md, and its measured numbers show what the experiment is
about."""
import concurrent.futures
import math
import os
import struct
import tomllib

import numpy as np
import pytest

import fastnn
from fastnn import cli, experiments
from fastnn.experiments import (batchnorm, charlm, common, init, optimizers, overfit,
                                search)

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """The experiments' networks are small: one thread, which the kernels make bitwise
    equal to two, and which does not slow down when other processes hold the cores."""
    fastnn.set_num_threads(1)


def assert_outputs(folder, pngs):
    """summary.md and every named PNG exist; the PNGs are PNGs; the summary embeds them."""
    assert sorted(f for f in os.listdir(folder) if f.endswith(".png")) == sorted(pngs)
    for name in pngs:
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read(8) == PNG, name
    with open(os.path.join(folder, "summary.md"), encoding="utf-8") as f:
        text = f.read()
    for name in pngs:
        assert f"]({name})" in text
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]  # atomic writes
    return text


# ---------------------------------------------------------------------------- optimizers


def test_optimizers(tmp_path):
    r = optimizers.run(tmp_path, quick=True)
    text = assert_outputs(tmp_path, ["optimizers_2d.png", "optimizers_mlp.png"])
    f0 = optimizers.f2d(*optimizers.START)
    f = r["f_final"]
    assert all(0 <= v < f0 / 10 for v in f.values()), f
    # AdaGrad damps the steep y direction at once: far lower f than SGD in the same 30 steps
    assert f["AdaGrad"] < f["SGD"] / 10, f
    # at the same learning rate, momentum goes much further along the shallow x direction
    assert r["f_same_lr"]["Momentum"] < r["f_same_lr"]["SGD"] / 10, r["f_same_lr"]
    # on the MLP, plain SGD at lr 0.01 is the slowest
    loss = r["loss_final"]
    assert all(loss[name] < loss["SGD"] for name in optimizers.NAMES if name != "SGD"), loss
    assert f"{f['AdaGrad']:.3e}" in text  # the summary quotes the measured numbers


def test_optimizers_are_the_textbook_rules():
    """Momentum v = mu v - lr g, p += v and AdaGrad h += g^2, p -= lr g / (sqrt(h) + eps),
    written out by hand, visit the same points as fastnn's SGD(momentum) and Adagrad."""
    p, v = np.array(optimizers.START), np.zeros(2)
    q, h = np.array(optimizers.START), np.zeros(2)
    momentum, adagrad = [p.copy()], [q.copy()]
    for _ in range(30):
        v = 0.9 * v - 0.1 * np.array([p[0] / 10, 2 * p[1]])
        p = p + v
        momentum.append(p)
        g = np.array([q[0] / 10, 2 * q[1]])
        h = h + g * g
        q = q - 1.5 * g / (np.sqrt(h) + 1e-7)
        adagrad.append(q)
    np.testing.assert_allclose(optimizers.path_2d("Momentum", 0.1), momentum, rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(optimizers.path_2d("AdaGrad", 1.5), adagrad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="name: expected one of"):
        optimizers.make_optimizer("Nadam", [], 0.1)


# ---------------------------------------------------------------------------------- init


def test_init(tmp_path):
    r = init.run(tmp_path, quick=True)
    assert_outputs(tmp_path, ["init_hist_sigmoid.png", "init_hist_tanh.png",
                              "init_hist_relu.png", "init_training.png"])
    std = {act: {k: [layer["std"] for layer in v] for k, v in r["activations"][act].items()}
           for act in init.ACTIVATIONS}
    # std 0.01: tanh activations collapse toward 0, by about 10x per layer; Xavier's do not
    assert std["tanh"]["std 0.01"][-1] < 1e-3
    assert std["tanh"]["Xavier"][-1] > 0.2
    # std 1 with sigmoid: most outputs stuck near 0 or 1 (the flat tails)
    assert r["activations"]["sigmoid"]["std 1"][-1]["saturated"] > 0.3
    # ReLU: He keeps the spread through the 5 layers, Xavier lets it shrink
    assert 0.5 < std["relu"]["He"][-1] / std["relu"]["He"][0] < 2
    assert std["relu"]["Xavier"][-1] / std["relu"]["Xavier"][0] < 0.5
    # training: std 0.01 does not move off the uniform guess, He does
    assert r["loss_final"]["std 0.01"] > 2.2 > 1.5 > r["loss_final"]["He"], r["loss_final"]


def test_init_weight_schemes():
    w = np.empty((200, 300), np.float32)
    fastnn.manual_seed(0)
    assert common.init_weight(w, 0.01).std() == pytest.approx(0.01, rel=0.05)
    assert common.init_weight(w, "xavier").std() == pytest.approx(math.sqrt(2 / 500), rel=0.05)
    assert common.init_weight(w, "he").std() == pytest.approx(math.sqrt(2 / 300), rel=0.05)
    with pytest.raises(ValueError, match="scheme: expected .* got 'lecun'"):
        common.init_weight(w, "lecun")
    with pytest.raises(ValueError, match="scheme: expected a positive std, got -1"):
        common.init_weight(w, -1)


# ----------------------------------------------------------------------------- batchnorm


def test_batchnorm(tmp_path):
    r = batchnorm.run(tmp_path, quick=True)
    pngs = ["batchnorm_grid.png"] + [f"diag_{k}_{kind}.png" for k in ("with_bn", "without_bn")
                                     for kind in ("activations", "gradients", "update_ratios")]
    assert_outputs(tmp_path, pngs)
    grid = r["grid"]
    assert len(grid) == 4
    mid = min(grid, key=lambda s: abs(math.log10(s) + 1.33))  # w = 0.046
    # at a small initial scale BatchNorm trains, the plain network is stuck near chance
    assert grid[mid]["with_bn"] > grid[mid]["without_bn"] + 0.3, grid
    for d in r["diagnostics"].values():
        assert 0 <= d["saturated_first"] <= 1 and 0 <= d["saturated_last"] <= 1
        ratios = list(d["update_ratio"].values())
        assert len(ratios) == 5 and all(-6 < v < -1 for v in ratios), ratios


# ------------------------------------------------------------------------------- overfit


def test_overfit(tmp_path):
    r = overfit.run(tmp_path, quick=True, epochs=8, n_train=200)
    text = assert_outputs(tmp_path, ["overfit.png"])
    assert set(r) == set(overfit.VARIANTS)
    for v in r.values():
        assert 0 <= v["test_acc"] <= v["best_test_acc"] <= 1
        assert v["gap"] == pytest.approx(v["train_acc"] - v["test_acc"])
    assert "Accuracy after 8 epochs: 200 training" in text  # given sizes beat quick's
    # the regularised runs are different runs, not copies of the plain one
    assert r["dropout 0.2"]["train_acc"] != r["none"]["train_acc"]


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_idx_files(tmp_path):
    """--data-path: MNIST-format files (here small synthetic ones) replace the digits."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 60)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):  # class c lights up rows 2c..2c+1
            images[i, 2 * c:2 * c + 2, 4:24] = 255
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, 0x803)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, 0x801)
    data = common.load_data(str(tmp_path), max_train=100)
    assert data["name"] == "mnist" and data["n_features"] == 784
    assert [len(data[k][0]) for k in ("train", "val", "test")] == [100, 40, 60]
    r = overfit.run(tmp_path / "out", data_path=str(tmp_path), epochs=40, n_train=100)
    text = assert_outputs(tmp_path / "out", ["overfit.png"])
    assert "60 test samples of mnist" in text
    assert r["none"]["test_acc"] > 0.3  # the lit rows are easy to learn


def test_weight_decay_is_on_the_weights_only():
    model = common.build_mlp(4, [3], 2, "relu", "he", batchnorm=True)
    opt = common.sgd_weight_decay(model, 0.01, 0.1)
    decayed, free = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and free["weight_decay"] == 0.0
    # the Linear weights; BatchNorm's gamma (1.weight) and beta, and the biases, go free
    assert sorted(names[id(p)] for p in decayed["params"]) == ["0.weight", "2.weight"]
    assert sorted(names[id(p)] for p in free["params"]) == ["1.bias", "1.weight", "2.bias"]


# -------------------------------------------------------------------------------- search


def small_problem(n=160):
    X, y = fastnn.datasets.load_digits()
    X /= 16
    (Xtr, ytr), (Xva, yva) = fastnn.data.split(X[:2 * n], y[:2 * n], (0.5, 0.5), seed=1)
    return (Xtr, ytr), (Xva, yva)


def test_search_samples_log_uniform_in_the_stated_ranges():
    trials = search.make_trials(400, 1, seed=3)
    lr = np.log10([t.lr for t in trials])
    wd = np.log10([t.weight_decay for t in trials])
    assert lr.min() >= -6 and lr.max() <= -2 and wd.min() >= -8 and wd.max() <= -4
    # uniform in the exponent: each quarter of the range holds about a quarter of the trials
    for e in (lr + 6, wd + 8):
        counts = np.histogram(e, bins=4, range=(0, 4))[0]
        assert counts.min() > 70, counts
    # a trial's sample depends on (seed, index) only, not on how many trials there are
    assert search.make_trials(5, 1, seed=3) == trials[:5]
    assert search.make_trials(5, 1, seed=4)[0].lr != trials[0].lr
    with pytest.raises(ValueError, match="n_trials: expected a positive int, got 0"):
        search.make_trials(0, 1)
    with pytest.raises(ValueError, match=r"lr_range: expected \(low, high\)"):
        search.sample_hyperparameters(0, 0, lr_range=(-2, -6))


def test_search_same_best_trial_on_threads_and_processes(threads):
    train, val = small_problem()
    kwargs = dict(n_trials=4, epochs=2, seed=7, hidden=(32, 32), batch_size=40,
                  lr_range=(-3, -1))
    fastnn.set_num_threads(min(2, len(os.sched_getaffinity(0))))
    before = fastnn.get_num_threads()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        on_threads = search.random_search(train, val, executor=pool, **kwargs)
    assert fastnn.get_num_threads() == before  # the in-process trials' setting is undone
    on_processes = search.random_search(train, val, **kwargs)  # the default process pool
    assert [r["index"] for r in on_threads] == [r["index"] for r in on_processes]
    assert on_threads[0] == on_processes[0]  # every number of the best trial, bitwise
    accs = [r["val_acc"] for r in on_threads]
    assert accs == sorted(accs, reverse=True)
    assert len(on_threads[0]["val_acc_curve"]) == 2


def test_search_run_never_touches_the_test_split(tmp_path, monkeypatch):
    real = common.load_data

    def poisoned(*args, **kwargs):
        data = real(*args, **kwargs)
        X, y = data["test"]
        # any use of these (a forward, a loss, an accuracy) raises or gives NaN
        data["test"] = (np.full_like(X, np.nan), np.full_like(y, -1))
        return data

    monkeypatch.setattr(common, "load_data", poisoned)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        r = search.run(tmp_path, quick=True, executor=pool, verbose=False)
    text = assert_outputs(tmp_path, ["search_best.png", "search_scatter.png"])
    assert r["n_trials"] == len(r["results"]) == 6
    assert all(0 <= t["val_acc"] <= 1 for t in r["results"])
    assert "test split unused" in text


# -------------------------------------------------------------------------------- charlm


def test_charlm_builtin_words(tmp_path):
    r = charlm.run(tmp_path, quick=True, n_samples=8)
    assert_outputs(tmp_path, ["charlm_loss.png"])
    words = charlm.load_words()
    assert len(words) >= 300 and len(set(words)) == len(words)
    alphabet = set("".join(words))
    assert r["alphabet"] == "".join(sorted(alphabet))
    assert len(r["samples"]) == 8
    assert all(set(w) <= alphabet for w in r["samples"]), r["samples"]
    # it learned something: below the uniform guess, on words it was not trained on
    assert r["val_loss"] < r["train_loss"] + 1.5 and r["val_loss"] < r["uniform_loss"] - 0.2
    assert sum(r["n_words"]) == len(words)


def test_charlm_word_file(tmp_path):
    path = tmp_path / "words.txt"
    words = ["abba", "baab", "abab", "bbaa", "aabb", "baba"] * 10
    path.write_text("# a comment\n\n" + "\n".join(words) + "\n")
    r = charlm.run(tmp_path / "out", quick=True, words=str(path), steps=50, n_samples=5)
    assert r["alphabet"] == "ab"
    assert all(set(w) <= {"a", "b"} for w in r["samples"])
    bad = tmp_path / "bad.txt"
    bad.write_text("anna\nx.y\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected one word .* got 'x.y'"):
        charlm.load_words(str(bad))


def test_builtin_words_are_package_data():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    assert "fastnn.experiments" in config["tool"]["setuptools"]["packages"]
    assert "data-files/names.txt" in config["tool"]["setuptools"]["package-data"]["fastnn"]


# ------------------------------------------------------------------------ command line


def test_cli_experiment(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["experiment", "overfit", "--quick", "--output", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == ""
    assert stdout.startswith("fastnn experiment overfit: wrote summary.md and overfit.png to")
    assert (out / "summary.md").is_file()


@pytest.mark.parametrize("argv, message", [
    (["experiment", "optimizers", "--bogus"], "unrecognized arguments: --bogus"),
    (["experiment", "nope"], "invalid choice: 'nope'"),
    (["experiment", "search", "--trials", "0"], "expected a positive int, got '0'"),
    (["experiment", "init", "--words", "w.txt"], "--words is an option of `fastnn experiment "
                                                  "charlm`, not of init"),
    (["experiment", "charlm", "--data-path", "d"], "--data-path is not used by charlm"),
    (["experiment", "optimizers", "--data-path", "/nonexistent"], "data_path: expected a "
                                                                   "folder"),
])
def test_cli_experiment_bad_arguments(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        code = cli.main(argv + ["--output", str(tmp_path / "o")])
        raise SystemExit(code)
    assert e.value.code == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and stderr.count("\n") == 1 and message in stderr, stderr


def test_experiment_names():
    assert experiments.NAMES == ("optimizers", "init", "batchnorm", "overfit", "search",
                                 "charlm")
    with pytest.raises(ValueError, match="name: expected one of optimizers, .* got 'x'"):
        experiments.get("x")
