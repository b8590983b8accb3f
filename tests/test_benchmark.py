"""fastnn.benchmark and `fastnn bench`: a user's model timed beside PyTorch's."""
import numpy as np
import pytest

import fastnn
from fastnn import benchmark, cli


def char_mlp():
    fastnn.manual_seed(0)
    return fastnn.Sequential(fastnn.Embedding(27, 10), fastnn.Flatten(),
                             fastnn.Linear(30, 64, bias=False),
                             fastnn.BatchNorm1d(64, activation="tanh"), fastnn.Dropout(0.1),
                             fastnn.Linear(64, 32), fastnn.GELU(), fastnn.LeakyReLU(0.2),
                             fastnn.Linear(32, 27))


def test_example_batch_fits_the_model():
    x, target = benchmark.example_batch(char_mlp(), 16)
    assert x.shape == (16, 3) and x.dtype == np.int64 and x.max() < 27
    assert target.shape == (16,) and target.max() < 27
    mlp = fastnn.Sequential(fastnn.Linear(8, 4, dtype=np.float64), fastnn.Linear(4, 3,
                                                                               dtype=np.float64))
    x, target = benchmark.example_batch(mlp, 5)
    assert x.shape == (5, 8) and x.dtype == np.float64 and target.max() < 3
    with pytest.raises(TypeError, match="a Linear last"):
        benchmark.example_batch(fastnn.Sequential(fastnn.Linear(2, 2), fastnn.ReLU()), 4)


def test_the_torch_equivalent_computes_the_same_function():
    torch = pytest.importorskip("torch")
    model = char_mlp().eval()
    x, _ = benchmark.example_batch(model, 16)
    torch_model, names = benchmark.torch_equivalent(model, torch)
    with torch.no_grad():
        want = torch_model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in names] == [n for n, _ in model.named_parameters()]
    with pytest.raises(TypeError, match=r"model\[1\]: no torch equivalent for Softmax"):
        benchmark.torch_equivalent(fastnn.Sequential(fastnn.Linear(2, 2), fastnn.Softmax()),
                                   torch)


def test_compare_with_torch_times_both_on_one_batch():
    pytest.importorskip("torch")
    model = char_mlp()
    x, target = benchmark.example_batch(model, 32)
    result = benchmark.compare_with_torch(model, x, target, optimizer="adam", lr=1e-3,
                                          threads=1, rounds=2, min_time=0.01)
    assert result["fastnn"] > 0 and result["torch"] > 0 and result["threads"] == 1
    assert result["speedup"] == pytest.approx(result["torch"] / result["fastnn"])
    assert abs(result["loss_fastnn"] - result["loss_torch"]) < 1e-4 * result["loss_torch"]
    assert "faster" in benchmark.report(result)


def test_fastnn_bench_command(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "m.npz"
    fastnn.save(char_mlp(), path)
    code = cli.main(["bench", str(path), "--batch-size", "16", "--rounds", "1", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and out.count("\n") == 1
    assert out.startswith(f"{path}: batch 16, sgd (lr 0.01): training step, 1 thread(s): ")
    code = cli.main(["bench", str(tmp_path / "missing.npz")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("fastnn bench: error: ")
