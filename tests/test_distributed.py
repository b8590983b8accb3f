"""fastnn.distributed: data-parallel training over MPI.

The tests marked `mpi` start real MPI jobs (mpirun -n 2 on this machine, tests/mpi_worker.py
on every rank) and skip, saying why, when mpirun or mpi4py is missing. The others need no MPI.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import cli, distributed
from fastnn.data import batches
from fastnn.distributed import ShardedBatches

import mpi_worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_worker.py")
TIMEOUT = 120  # seconds: a job that hangs fails the test instead of the whole run

_missing = [what for what, ok in (("mpirun", shutil.which("mpirun") is not None),
                                  ("mpi4py", importlib.util.find_spec("mpi4py") is not None))
            if not ok]
# CI sets FASTNN_REQUIRE_MPI=1 after installing MPI: there the MPI tests must run, not skip.
REQUIRE_MPI = os.environ.get("FASTNN_REQUIRE_MPI") == "1"
mpi = pytest.mark.skipif(bool(_missing) and not REQUIRE_MPI, reason=f"needs MPI: {' and '.join(_missing)} not "
                         "installed (pip install 'fastnn[mpi]'; apt-get install openmpi-bin "
                         "libopenmpi-dev)")


def run_mpi(n, *args, cwd=None):
    """Run `python args...` on n ranks; the CompletedProcess (text). cwd: run there (for
    `-m fastnn`, not in the source tree, whose fastnn has no compiled extension)."""
    command = distributed.local_mpirun(n) + [sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)


def checked(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---- without MPI ----

@pytest.fixture
def no_mpi4py(monkeypatch):
    """mpi4py impossible to import, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)


def test_missing_mpi_is_a_clear_error(no_mpi4py):
    with pytest.raises(distributed.MPIUnavailableError, match=r"mpi4py.*fastnn\[mpi\]"):
        distributed.world()
    with pytest.raises(distributed.MPIUnavailableError):
        distributed.DataParallel(fastnn.Linear(2, 2))


def test_cli_distributed_without_mpi_exits_2_with_one_line(no_mpi4py, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--distributed", "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--distributed" in err and "mpi4py" in err, err


def test_cli_sync_batchnorm_needs_distributed(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--sync-batchnorm", "--epochs", "1"])
    assert e.value.code == 2
    assert "--sync-batchnorm needs --distributed" in capsys.readouterr().err


def test_sharded_batches_split_every_global_batch():
    X = np.arange(103 * 2, dtype=np.float64).reshape(103, 2)
    y = np.arange(103)
    ranks, b = 3, 8
    shards = [ShardedBatches(X, y, b, r, ranks, seed=5) for r in range(ranks)]
    whole = batches(X, y, b * ranks, shuffle=True, seed=5, drop_last=True)
    assert all(len(s) == len(whole) == 103 // 24 for s in shards)
    for _ in range(2):  # two epochs: a new permutation each, the same on every rank
        for global_batch, *parts in zip(whole, *shards):
            xs = np.concatenate([x.copy() for x, _ in parts])
            ys = np.concatenate([t.copy() for _, t in parts])
            np.testing.assert_array_equal(xs, global_batch[0])
            np.testing.assert_array_equal(ys, global_batch[1])
            assert all(len(t) == b for _, t in parts)


def test_sharded_batches_bad_arguments():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="batch_size: 4 per rank times 3 ranks"):
        ShardedBatches(X, y, 4, 0, 3)
    with pytest.raises(ValueError, match=r"rank: expected an int in \[0, 2\), got 2"):
        ShardedBatches(X, y, 2, 2, 2)
    with pytest.raises(ValueError, match="num_ranks"):
        ShardedBatches(X, y, 2, 0, 0)


def test_local_mpirun_bad_n():
    with pytest.raises(ValueError, match="n: expected a positive int, got 0"):
        distributed.local_mpirun(0)


# ---- with MPI: 2 ranks ----

def one_process(dtype):
    """The state_dict and history after training mpi_worker's model in this one process, with
    the plain Trainer on the global batch."""
    train, val = mpi_worker.data(dtype)
    net = mpi_worker.model(dtype, mpi_worker.MODEL_SEED)
    trainer = fastnn.train.Trainer(net, fastnn.optim.Adam(net.parameters(), lr=1e-2),
                                   **mpi_worker.trainer_kwargs())
    history = trainer.fit(train, val, epochs=mpi_worker.EPOCHS,
                          batch_size=mpi_worker.GLOBAL_BATCH, seed=3)
    assert trainer.step == 20
    return net.state_dict(), history


def two_ranks(tmp_path, dtype, sync):
    out = tmp_path / "state.npz"
    checked(run_mpi(2, WORKER, "train", str(out), "--dtype", np.dtype(dtype).name,
                    *(["--sync-batchnorm"] if sync else [])))
    with np.load(out) as z:
        state = {k: z[k] for k in z.files}
    history = json.loads(str(state.pop("history")))
    assert int(state.pop("steps")) == 20
    # every rank ends with bitwise the same parameters and buffers
    assert float(state.pop("rank_difference")) == 0.0
    return state, history


def max_difference(state, expected):
    assert state.keys() == expected.keys()
    return max(float(np.abs(state[k].astype(np.float64) - v).max()) for k, v in expected.items())


@mpi
def test_two_ranks_with_sync_batchnorm_train_like_one_process(tmp_path):
    """2 ranks x 20 per rank with synchronised BatchNorm (and dropout) = 1 process x 40,
    parameters and running statistics after 20 Adam steps, float64."""
    state, history = two_ranks(tmp_path, np.float64, sync=True)
    expected, expected_history = one_process(np.float64)
    assert max_difference(state, expected) <= 1e-12
    np.testing.assert_allclose(history["train_loss"], expected_history["train_loss"],
                               rtol=1e-12)
    np.testing.assert_allclose(history["val_loss"], expected_history["val_loss"], rtol=1e-12)


@mpi
def test_two_ranks_float32(tmp_path):
    state, _ = two_ranks(tmp_path, np.float32, sync=True)
    expected, _ = one_process(np.float32)
    scale = max(float(np.abs(v).max()) for v in expected.values())
    assert max_difference(state, expected) <= 1e-4 * scale


@mpi
def test_per_rank_batchnorm_differs_from_one_process(tmp_path):
    """Without sync_batchnorm each rank normalises with its own 20 samples: the comparison
    above is not vacuous. The ranks still agree with each other (checked in two_ranks)."""
    state, _ = two_ranks(tmp_path, np.float64, sync=False)
    expected, _ = one_process(np.float64)
    assert max_difference(state, expected) > 1e-3


@mpi
def test_a_callback_stopping_one_rank_stops_every_rank(tmp_path):
    out = tmp_path / "steps.npz"
    checked(run_mpi(2, WORKER, "stop", str(out)))  # without agreement: a hang, then timeout
    with np.load(out) as z:
        assert z["steps"].tolist() == [7, 7] and int(z["epochs"]) == 2


@mpi
def test_a_failing_rank_aborts_the_job():
    proc = run_mpi(2, WORKER, "fail")  # rank 0 waits in a Barrier that rank 1 never reaches
    assert proc.returncode != 0
    assert "rank 1 of 2 failed" in proc.stderr
    assert "RuntimeError: deliberate failure on rank 1" in proc.stderr


@mpi
def test_cli_train_distributed(tmp_path):
    args = ["train", "--epochs", "2", "--hidden", "32", "--no-progress", "--seed", "1"]
    proc = checked(run_mpi(2, "-m", "fastnn", *args, "--distributed", "--sync-batchnorm",
                           "--batch-size", "32", "--output", str(tmp_path / "mpi"),
                           cwd=tmp_path))
    out = proc.stdout
    # rank 0 alone prints and writes
    assert out.count("epoch   1 ") == 1 and out.count("test accuracy") == 1, out
    assert "2 ranks x batch 32 = global batch 64, BatchNorm statistics synchronised" in out
    model = fastnn.load(tmp_path / "mpi" / "model.npz")
    assert isinstance(model[1], fastnn.BatchNorm1d)
    # the same run in one process with the global batch (float32: the printed losses agree
    # to rounding)
    single = checked(subprocess.run(
        [sys.executable, "-m", "fastnn", *args, "--batch-size", "64", "--output",
         str(tmp_path / "one")], capture_output=True, text=True, timeout=TIMEOUT,
        cwd=tmp_path)).stdout

    def losses(text):
        return [float(line.split()[4]) for line in text.splitlines() if line.startswith("epoch")]

    np.testing.assert_allclose(losses(out), losses(single), atol=2e-4)


@mpi
def test_cli_train_distributed_as_the_readme_runs_it(tmp_path):
    """The README's command, options as given there (the progress bar on: no bar on rank 1,
    where there was a crash)."""
    proc = checked(run_mpi(2, "-m", "fastnn", "train", "--distributed", "--sync-batchnorm",
                           cwd=tmp_path))
    assert proc.stdout.count("test accuracy") == 1, proc.stdout
    assert fastnn.load(tmp_path / "fastnn-output" / "model.npz") is not None
