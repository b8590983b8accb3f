"""The random search on a cluster executor: a Dask LocalCluster (real scheduler and worker
processes on this machine) through Client.get_executor(), against the local process pool."""
import pytest

import fastnn
from fastnn.experiments import search

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install 'fastnn[cluster]')")


def test_dask_cluster_search_finds_the_same_trials_as_the_process_pool():
    X, y = fastnn.datasets.load_digits()
    (X_train, y_train), (X_val, y_val) = fastnn.data.split(X[:600], y[:600], (0.7, 0.3), seed=1)
    train, val = (X_train, y_train), (X_val, y_val)
    kwargs = dict(n_trials=4, epochs=2, seed=5, hidden=(32, 32))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_cluster = search.random_search(train, val, executor=client.get_executor(), **kwargs)
    local = search.random_search(train, val, **kwargs)  # the default local process pool
    assert [r["index"] for r in on_cluster] == [r["index"] for r in local]
    assert on_cluster[0]["index"] == local[0]["index"]
    for a, b in zip(on_cluster, local):
        assert a["val_acc_curve"] == b["val_acc_curve"]
        assert (a["lr"], a["weight_decay"]) == (b["lr"], b["weight_decay"])
