"""Run by tests/test_distributed.py under mpirun (one process per rank); not a test module.

    mpirun -n 2 python tests/mpi_worker.py train OUT.npz [--sync-batchnorm] [--dtype float64]
        DistributedTrainer.fit of model() on data(), every rank initialised from a different
        seed (the broadcast must make them equal); rank 0 writes the final state_dict, the
        history and the largest parameter difference between ranks to OUT.npz.
    mpirun -n 2 python tests/mpi_worker.py fail
        rank 1 raises while rank 0 waits in a collective call: abort_on_error must end both.
    mpirun -n 2 python tests/mpi_worker.py stop OUT.npz
        a callback stops rank 1 alone after its 7th step (as TerminateOnNaN would on a loss
        only that rank sees): both ranks must stop there; rank 0 writes the step counts.
"""
import argparse
import json
import sys

import numpy as np

import fastnn
from fastnn import distributed

N_SAMPLES, N_FEATURES, N_CLASSES = 200, 12, 5
GLOBAL_BATCH = 40  # 5 steps per epoch, 4 epochs: 20 steps
EPOCHS = 4
MODEL_SEED = 100


def data(dtype):
    """(X (200, 12), y (200,)) train and (X (60, 12), y (60,)) validation, fixed."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N_SAMPLES + 60, N_FEATURES)) * 2 + 0.5
    y = (np.abs(X[:, :3]).sum(axis=1) * 1.3).astype(np.int64) % N_CLASSES
    X = X.astype(dtype)
    return (X[:N_SAMPLES], y[:N_SAMPLES]), (X[N_SAMPLES:], y[N_SAMPLES:])


def model(dtype, seed):
    """Linear -> BatchNorm1d+ReLU -> Dropout -> Linear -> BatchNorm1d+tanh -> Linear."""
    fastnn.manual_seed(seed)
    return fastnn.Sequential(
        fastnn.Linear(N_FEATURES, 24, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(24, dtype=dtype, activation="relu"),
        fastnn.Dropout(0.2),
        fastnn.Linear(24, 16, bias=False, dtype=dtype),
        fastnn.BatchNorm1d(16, dtype=dtype, activation="tanh"),
        fastnn.Linear(16, N_CLASSES, dtype=dtype),
    )


def trainer_kwargs():
    return dict(patience=None, restore_best=False, progress=False)


def train(out, sync_batchnorm, dtype):
    comm = distributed.world()
    rank, size = comm.Get_rank(), comm.Get_size()
    train_data, val_data = data(dtype)
    net = model(dtype, MODEL_SEED + rank)  # different on every rank until the broadcast
    opt = fastnn.optim.Adam(net.parameters(), lr=1e-2)
    trainer = distributed.DistributedTrainer(net, opt, sync_batchnorm=sync_batchnorm,
                                             **trainer_kwargs())
    history = trainer.fit(train_data, val_data, epochs=EPOCHS, batch_size=GLOBAL_BATCH // size,
                          seed=3)
    flat = np.concatenate([v.ravel().astype(np.float64) for v in net.state_dict().values()])
    everyone = np.empty((size, flat.size))
    comm.Allgather(flat, everyone)
    if rank == 0:
        state = net.state_dict()
        state["rank_difference"] = np.abs(everyone - everyone[0]).max()
        state["steps"] = np.array(trainer.step)
        state["history"] = np.array(json.dumps(
            {k: history[k] for k in ("train_loss", "train_acc", "val_loss")}))
        np.savez(out, **state)


def stop(out):
    comm = distributed.world()
    rank = comm.Get_rank()
    train_data, val_data = data(np.float64)
    net = model(np.float64, MODEL_SEED)

    class StopRankOne(fastnn.train.Callback):
        def on_step_end(self, trainer, step, loss):
            if rank == 1 and step == 7:
                trainer.stop_training = True

    trainer = distributed.DistributedTrainer(net, fastnn.optim.Adam(net.parameters()),
                                             callbacks=[StopRankOne()], **trainer_kwargs())
    trainer.fit(train_data, val_data, epochs=EPOCHS, batch_size=GLOBAL_BATCH // comm.Get_size())
    steps = np.array(comm.allgather(trainer.step))
    if rank == 0:
        np.savez(out, steps=steps, epochs=np.array(trainer.epoch))


def fail():
    comm = distributed.world()
    if comm.Get_rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    comm.Barrier()  # rank 0 would wait here forever without the abort


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("train", "fail", "stop"))
    parser.add_argument("out", nargs="?")
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    fastnn.set_num_threads(1)
    with distributed.abort_on_error():
        if args.mode == "train":
            train(args.out, args.sync_batchnorm, np.dtype(args.dtype))
        elif args.mode == "stop":
            stop(args.out)
        else:
            fail()
    return 0


if __name__ == "__main__":
    sys.exit(main())
