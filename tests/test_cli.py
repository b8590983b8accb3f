"""The command line: `fastnn train` (digits and MNIST IDX files) and `fastnn info`."""
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import cli, data, datasets

PNG = b"\x89PNG\r\n\x1a\n"
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)\s+train loss (\d+\.\d{4}) acc (\d\.\d{4})\s+"
                        r"validation loss (\d+\.\d{4}) acc (\d\.\d{4})$")
TEST_LINE = re.compile(r"^test loss (\d+\.\d{4})\s+test accuracy (\d\.\d{4})\s+"
                       r"\((\d+) epochs, [\d.]+ s\)$")


def run_main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def parse(out):
    lines = out.splitlines()
    epochs = [m for m in map(EPOCH_LINE.match, lines) if m]
    tests = [m for m in map(TEST_LINE.match, lines) if m]
    assert len(tests) == 1, out
    return lines, epochs, tests[0]


def digits_test_split(seed=0):
    X, y = datasets.load_digits()
    (Xtr, _), _, (Xte, yte) = data.split(X, y, (0.8, 0.1, 0.1), seed=seed)
    return data.Standardizer().fit(Xtr).transform(Xte), yte


def accuracy(model, X, y):
    model.eval()
    return float(np.mean(model(X).argmax(axis=1) == y))


# ---------------------------------------------------------------------------- fastnn train


def test_train_digits_in_process(tmp_path, capsys, threads):
    out_dir = tmp_path / "run"
    code, out, err = run_main(["train", "--epochs", "5", "--no-progress", "--output",
                               str(out_dir), "--hidden", "64"], capsys)
    assert code == 0 and err == ""
    lines, epochs, test = parse(out)
    assert lines[0].startswith(f"fastnn {fastnn.__version__}: digits, 1438 train / 179 "
                               "validation / 180 test samples")
    assert [int(m.group(1)) for m in epochs] == [1, 2, 3, 4, 5]
    assert int(test.group(3)) == 5
    test_acc = float(test.group(2))
    assert test_acc > 0.85
    assert lines[-1] == f"wrote {out_dir / 'model.npz'} and {out_dir / 'loss.png'}"
    # the model file rebuilds the model with the same test accuracy
    model = fastnn.load(out_dir / "model.npz")
    assert isinstance(model, fastnn.Sequential) and model[0].in_features == 64
    assert model[-1].out_features == 10
    X_test, y_test = digits_test_split()
    assert accuracy(model, X_test, y_test) == pytest.approx(test_acc, abs=5e-5)
    assert (out_dir / "loss.png").read_bytes()[:8] == PNG
    assert sorted(os.listdir(out_dir)) == ["loss.png", "model.npz"]


def test_train_options(tmp_path, capsys, threads):
    argv = ["train", "--hidden", "32,16", "--activation", "tanh", "--no-batchnorm",
            "--dropout", "0.1", "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "1e-4",
            "--batch-size", "32", "--seed", "1", "--threads", "1", "--epochs", "2",
            "--no-progress", "--output", str(tmp_path)]
    code, out, err = run_main(argv, capsys)
    assert code == 0 and err == ""
    assert fastnn.get_num_threads() == 1
    lines, epochs, test = parse(out)
    assert "1 threads" in lines[0]
    assert len(epochs) == 2
    assert "BatchNorm1d" not in out and "Dropout(p=0.1)" in out
    model = fastnn.load(tmp_path / "model.npz")
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Dropout", "Linear", "Dropout", "Linear"]
    assert (model[0].in_features, model[0].out_features) == (64, 32)
    assert (model[2].in_features, model[2].out_features) == (32, 16)
    assert model[0].activation == model[2].activation == "tanh"
    assert model[0].bias is not None and model[4].activation == "none"
    assert model[1].p == 0.1
    X_test, y_test = digits_test_split(seed=1)
    assert accuracy(model, X_test, y_test) == pytest.approx(float(test.group(2)), abs=5e-5)


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu"])
def test_train_unfused_activations(tmp_path, capsys, activation):
    code, out, _ = run_main(["train", "--activation", activation, "--hidden", "16",
                             "--epochs", "1", "--no-progress", "--output", str(tmp_path)],
                            capsys)
    assert code == 0
    model = fastnn.load(tmp_path / "model.npz")
    expected = "GELU" if activation == "gelu" else "LeakyReLU"
    assert [type(m).__name__ for m in model] == ["Linear", "BatchNorm1d", expected, "Linear"]


def test_train_seed_is_reproducible(tmp_path, capsys):
    argv = ["train", "--hidden", "16", "--epochs", "2", "--no-progress", "--seed", "3"]
    run_main(argv + ["--output", str(tmp_path / "a")], capsys)
    run_main(argv + ["--output", str(tmp_path / "b")], capsys)
    a, b = fastnn.load(tmp_path / "a" / "model.npz"), fastnn.load(tmp_path / "b" / "model.npz")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=k)


def test_train_subprocess(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fastnn", "train", "--epochs", "3",
                           "--no-progress", "--output", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines, epochs, test = parse(proc.stdout)
    assert [int(m.group(1)) for m in epochs] == [1, 2, 3]
    assert float(test.group(2)) > 0.9
    model = fastnn.load(tmp_path / "model.npz")
    X_test, y_test = digits_test_split()
    assert accuracy(model, X_test, y_test) == pytest.approx(float(test.group(2)), abs=5e-5)
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------ bad options


@pytest.mark.parametrize("bad", [
    ["--epochs", "0"],
    ["--epochs", "two"],
    ["--lr", "-1"],
    ["--lr", "0"],
    ["--hidden", "0"],
    ["--hidden", "32,x"],
    ["--dropout", "1.5"],
    ["--dropout", "-0.1"],
    ["--optimizer", "foo"],
    ["--activation", "swish"],
    ["--batch-size", "0"],
    ["--weight-decay", "-1"],
    ["--dataset", "cifar"],
    ["--no-such-option"],
    ["--threads", "4096"],
    ["--seed", "-3"],
    ["--lr", "inf"],
    ["--lr", "nan"],
    ["--weight-decay", "inf"],
    ["--hidden", "256,,128"],
    ["--data-path", "."],  # the digits are embedded
    ["--output", "/dev/null/x"],
    ["--resume", "no-such-checkpoint.npz"],
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, bad):
    """Every option is checked before training: one line, exit 2, nothing written."""
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--no-progress", "--output", str(out_dir), *bad])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "error" in err
    assert not out_dir.exists()


def test_a_damaged_resume_file_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--no-progress", "--output", str(tmp_path / "out"), "--resume",
                  str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"fastnn train: error: --resume {bad}: not a readable checkpoint")


def test_mnist_without_data_path_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--dataset", "mnist", "--no-progress", "--output", str(tmp_path)])
    assert exc.value.code == 2


def test_mnist_without_data_path_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastnn", "train", "--dataset", "mnist",
                           "--no-progress", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--data-path" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_no_command_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err  # the commands, not only "arguments are required"
    assert "usage: fastnn" in err and all(c in err for c in ("info", "train", "experiment"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fastnn {fastnn.__version__}\n"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-path", "--hidden", "--activation", "--no-batchnorm",
                   "--dropout", "--optimizer", "--lr", "--weight-decay", "--epochs",
                   "--batch-size", "--patience", "--seed", "--threads", "--output",
                   "--no-progress"):
        assert option in out, option


# ------------------------------------------------------------------------------ fastnn info


def test_info_prints_build_info_json(capsys):
    code, out, err = run_main(["info"], capsys)
    assert code == 0 and err == ""
    info = json.loads(out)
    expected = fastnn.build_info()
    assert set(info) == set(expected)
    assert {"version", "openmp", "num_threads", "blas", "compile_args"} <= set(info)
    assert info["version"] == fastnn.__version__


# ------------------------------------------------------------------------------------ MNIST


def idx_bytes(array, magic):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def write_tiny_mnist(folder, n_train=200, n_test=50, classes=range(10)):
    """Images whose class c lights up a 4x4 block at row 2 + 2c: easy to learn."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.choice(list(classes), n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c:6 + 2 * c, 10:14] = 250
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x803))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))


def test_train_mnist_from_idx_files(tmp_path, capsys):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_tiny_mnist(mnist)
    out_dir = tmp_path / "run"
    code, out, err = run_main(["train", "--dataset", "mnist", "--data-path", str(mnist),
                               "--hidden", "32", "--epochs", "3", "--batch-size", "32",
                               "--lr", "0.01", "--no-progress", "--output", str(out_dir)],
                              capsys)
    assert code == 0 and err == ""
    lines, epochs, test = parse(out)
    assert "mnist, 180 train / 10 validation / 50 test samples" in lines[0]
    assert len(epochs) == 3
    model = fastnn.load(out_dir / "model.npz")
    assert model[0].in_features == 784 and model[-1].out_features == 10
    assert float(test.group(2)) >= 0.5


def test_labels_with_gaps_are_refused_unless_asked(tmp_path, capsys):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_tiny_mnist(mnist, classes=(0, 3, 9))
    argv = ["train", "--dataset", "mnist", "--data-path", str(mnist), "--hidden", "16",
            "--epochs", "1", "--no-progress", "--output", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == "" and err.count("\n") == 1
    assert ("the labels are 0, 3, 9: classes 1, 2, 4, 5, 6, 7, 8 of 0..9 have no sample "
            "(a 10-class output layer)") in err
    code, out, _ = run_main(argv + ["--allow-missing-classes"], capsys)
    assert code == 0 and "10 classes" in out.splitlines()[0]


def test_train_mnist_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--dataset", "mnist", "--data-path", str(tmp_path),
                  "--no-progress", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "train-images-idx3-ubyte" in err


def test_a_diverging_run_stops_with_one_line_and_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastnn", "train", "--optimizer", "sgd",
                           "--lr", "1e4", "--no-batchnorm", "--no-progress", "--output",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # not the repository root: its fastnn/ is the source
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(r"training loss is (nan|inf) at epoch 1, step \d+ \(the last finite "
                     r"loss was .* at step \d+\): the run diverged; try a lower learning "
                     r"rate \(--lr 10000.0\)", proc.stderr), proc.stderr
    assert "test loss" not in proc.stdout


def test_ctrl_c_keeps_the_best_model_and_a_checkpoint_to_resume(tmp_path):
    import signal

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "fastnn", "train", "--epochs", "100000",
                             "--patience", "100000", "--checkpoint-every", "1",
                             "--no-progress", "--hidden", "32", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("epoch   3"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(rf"fastnn train: interrupted in epoch \d+: wrote the best model so far "
                    rf"to {re.escape(str(out / 'model.npz'))}; resume with --resume "
                    rf"{re.escape(str(out / 'checkpoint.npz'))}\n$", err), err
    X, y = digits_test_split()
    assert accuracy(fastnn.load(out / "model.npz"), X, y) > 0.5  # trained: chance is 0.1
    resumed = subprocess.run([sys.executable, "-m", "fastnn", "train", "--epochs", "6",
                              "--no-progress", "--hidden", "32", "--output", str(out),
                              "--resume", str(out / "checkpoint.npz")],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.match, resumed.stdout.splitlines()) if m]
    assert epochs and epochs[0] >= 3 and epochs[-1] == 6
