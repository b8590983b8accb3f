"""Data-parallel training over MPI (mpi4py): one process (rank) per model replica.

    mpirun -n 2 fastnn train --distributed [--sync-batchnorm] ...

or from Python, in a script started by mpirun on every rank:

    from fastnn import distributed
    with distributed.abort_on_error():           # a failing rank aborts the whole job
        model = build_model()                    # any fastnn Module
        trainer = distributed.DistributedTrainer(model, optim.Adam(model.parameters()),
                                                 sync_batchnorm=True, patience=5)
        trainer.fit((X, y), (X_val, y_val), epochs=10, batch_size=64)   # 64 per rank
        if distributed.rank() == 0:
            fastnn.save(model, "model.npz")

How it works:
- DataParallel(model) broadcasts rank 0's parameters and buffers, so every replica starts
  equal. Its backward runs the model's backward and then averages the gradients across ranks
  with one in-place MPI Allreduce per flat gradient buffer (the arena: one buffer per dtype
  for a Sequential), passed through the buffer protocol (no pickling). Every rank then holds
  the same gradient and takes the same optimizer step, so the replicas stay equal.
- ShardedBatches gives each rank a disjoint slice of every global batch of the epoch's seeded
  permutation: the global batch is batch_size * ranks, and the union of the ranks' slices of
  a step is exactly the batch one process with that global batch size would take.
- BatchNorm1d normalises with each rank's own batch statistics by default. sync_batchnorm=True
  combines them over all ranks (counts, means and centred sums of squares, exactly as
  Chan et al.), and the backward sums dy and dy * xhat over all ranks, so N ranks compute what
  one process would on the global batch, running statistics included.
- Dropout masks: each rank draws the part of the mask that one process would draw for its
  slice of the global batch, so dropout, too, matches one process.
- DistributedTrainer (a fastnn.train.Trainer) shards the data, reports the training loss and
  accuracy over all ranks, shows progress and writes checkpoints on rank 0 only, and
  evaluates with rank 0's BatchNorm running statistics (as torch's DistributedDataParallel
  broadcasts its buffers), so early stopping decides the same on every rank.

Without mpi4py (or without an MPI library) `import fastnn.distributed` still works; what
needs MPI raises MPIUnavailableError saying what is missing.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from . import functional as F
from .arena import Arena
from .data import BatchIterator
from .layers import BatchNorm1d, Dropout, Module
from .train import Trainer

__all__ = ["DataParallel", "DistributedTrainer", "MPIUnavailableError", "ShardedBatches",
           "abort_on_error", "convert_sync_batchnorm", "local_mpirun", "mpi", "rank", "size", "world"]

INSTALL_HINT = ("pip install 'fastnn[mpi]' (mpi4py) and an MPI library, e.g. Debian's "
                "openmpi-bin libopenmpi-dev")


class MPIUnavailableError(ImportError):
    """mpi4py or the MPI library it loads is missing."""


def mpi():
    """The mpi4py.MPI module; MPIUnavailableError (one line: what is missing) without it."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # no mpi4py, or mpi4py without a loadable libmpi
        raise MPIUnavailableError(f"MPI is not available ({e}): {INSTALL_HINT}") from None
    except (RuntimeError, OSError) as e:  # libmpi found but failed to initialise
        raise MPIUnavailableError(f"MPI failed to start ({e}): {INSTALL_HINT}") from None
    return MPI


def world():
    """MPI.COMM_WORLD, the communicator of all ranks of the job."""
    return mpi().COMM_WORLD


def rank(comm=None):
    """This process's rank in `comm` (default COMM_WORLD): 0 .. size - 1."""
    return (comm or world()).Get_rank()


def size(comm=None):
    """The number of ranks in `comm` (default COMM_WORLD)."""
    return (comm or world()).Get_size()


def local_mpirun(n):
    """The command line (a list) that starts `n` ranks on this machine with the mpirun on
    PATH: Open MPI's also gets --oversubscribe (more ranks than cores is allowed, e.g. in
    tests) and, for root, --allow-run-as-root. Raises MPIUnavailableError without mpirun."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise MPIUnavailableError(f"mpirun is not on PATH: {INSTALL_HINT}")
    command = [mpirun, "-n", str(n)]
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        command.append("--oversubscribe")
        if os.geteuid() == 0:
            command.append("--allow-run-as-root")
    return command


@contextlib.contextmanager
def abort_on_error(comm=None):
    """Run the block; if it raises on one rank, print the traceback (with the rank) and call
    MPI Abort, which ends every rank of the job, instead of leaving the other ranks waiting
    forever in their next collective call. A SystemExit with a non-zero code (a command-line
    error, already printed) aborts with that code; with a single rank it is re-raised as is.
    """
    try:
        yield
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        comm = comm or world()
        if code == 0 or comm.Get_size() == 1:
            raise
        sys.stderr.flush()
        comm.Abort(code)
    except BaseException:
        comm = comm or world()
        sys.stdout.flush()
        print(f"fastnn.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed; "
              "aborting the job", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        if comm.Get_size() == 1:
            raise
        comm.Abort(1)


class ShardedBatches(BatchIterator):
    """This rank's mini-batches: a disjoint shard of every global batch of each epoch.

    X: (n, ...), y: (n, ...). Every epoch draws one permutation from
    np.random.default_rng(seed) (the same on every rank, and the same sequence as
    fastnn.data.batches with that seed) and cuts it into global batches of
    batch_size * num_ranks samples; this rank takes samples [rank * batch_size,
    (rank + 1) * batch_size) of each, as (batch_size, ...) arrays. An incomplete last global
    batch is dropped, so that every rank takes the same number of equal steps (collective
    calls must pair up, and averaging per-rank means is only the global mean for equal
    shards). Raises ValueError when n < batch_size * num_ranks. The yielded arrays are
    buffers the next batch overwrites, as for BatchIterator.
    """

    def __init__(self, X, y, batch_size, rank, num_ranks, seed=0):
        super().__init__(X, y, batch_size, shuffle=True, seed=seed, drop_last=True)
        if isinstance(num_ranks, bool) or not isinstance(num_ranks, (int, np.integer)) \
                or num_ranks < 1:
            raise ValueError(f"num_ranks: expected a positive int, got {num_ranks!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < num_ranks:
            raise ValueError(f"rank: expected an int in [0, {num_ranks}), got {rank!r}")
        self.rank, self.num_ranks = int(rank), int(num_ranks)
        self.global_batch_size = self.batch_size * self.num_ranks
        if len(self.X) < self.global_batch_size:
            raise ValueError(f"batch_size: {self.batch_size} per rank times {self.num_ranks} "
                             f"ranks is a global batch of {self.global_batch_size}, more "
                             f"than the {len(self.X)} samples")

    def __len__(self):
        return len(self.X) // self.global_batch_size

    def __iter__(self):
        order = self._rng.permutation(len(self.X))
        b, start = self.batch_size, self.rank * self.batch_size
        for k in range(len(self)):
            idx = order[k * self.global_batch_size + start:][:b]
            np.take(self.X, idx, axis=0, out=self._xbuf, mode="clip")
            np.take(self.y, idx, axis=0, out=self._ybuf, mode="clip")
            yield self._xbuf, self._ybuf


def _modules(module):
    """`module` and all its sub-modules, depth first, each once."""
    seen, stack = {}, [module]
    while stack:
        m = stack.pop()
        if id(m) not in seen:
            seen[id(m)] = m
            stack.extend(reversed(m.children()))
    return list(seen.values())


# ---- synchronised BatchNorm: a BatchNorm1d whose `sync` is a BatchNormSync (so the layers
# stay BatchNorm1d, and fastnn.save/load, config() and checkpoints are unchanged) ----

def convert_sync_batchnorm(model, comm=None):
    """Make every BatchNorm1d in `model` normalise, in training, with the statistics of the
    batch over all ranks of `comm` (default COMM_WORLD): each layer's `sync` becomes a
    BatchNormSync. Evaluation is unchanged. Returns the number of layers converted. Every
    rank must run the same layers in the same order."""
    comm = comm or world()
    layers = [m for m in _modules(model) if isinstance(m, BatchNorm1d)]
    for bn in layers:
        bn.sync = BatchNormSync(comm)
    return len(layers)


class BatchNormSync:
    """The collective calls a synchronised BatchNorm1d makes (see BatchNorm1d's `sync`)."""

    def __init__(self, comm):
        self.comm = comm

    def batch_stats(self, x):
        """(count, mean (C,), biased variance (C,)) over the rows of x (B, C) on all ranks, in
        float64. Each rank contributes (count, sum, centred sum of squares); they are
        combined exactly (Chan et al.): M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2, with no
        E[x^2] - E[x]^2 cancellation. Allgather, then the same fixed-order sum on every rank,
        so every rank gets bitwise the same statistics."""
        comm = self.comm
        B, C = x.shape
        x64 = x.astype(np.float64, copy=False)
        local = np.empty(1 + 2 * C)
        local[0] = B
        mean_r = x64.mean(axis=0)
        local[1:1 + C] = mean_r * B
        local[1 + C:] = ((x64 - mean_r) ** 2).sum(axis=0)
        parts = np.empty((comm.Get_size(), 1 + 2 * C))
        comm.Allgather(local, parts)
        counts, sums, m2 = parts[:, 0], parts[:, 1:1 + C], parts[:, 1 + C:]
        n = counts.sum()
        mean = sums.sum(axis=0) / n
        means_r = sums / np.maximum(counts, 1)[:, None]
        m2_total = m2.sum(axis=0) + (counts[:, None] * (means_r - mean) ** 2).sum(axis=0)
        return int(n), mean, m2_total / n

    def sum_(self, a):
        """a += the other ranks' a, in place (Allreduce)."""
        self.comm.Allreduce(mpi().IN_PLACE, a, op=mpi().SUM)

    def __reduce__(self):  # a communicator does not pickle: a copy of the model is unsynced
        return _unsynchronised, ()


def _unsynchronised():
    return None


class DataParallel(Module):
    """`module` replicated on every rank of `comm` (default COMM_WORLD), its gradients
    averaged across ranks after each backward.

    Construction broadcasts rank 0's parameters and buffers (in place) to all ranks, makes the
    module's Dropout layers draw the shard of the mask one process would, and with
    sync_batchnorm=True converts its BatchNorm1d layers (convert_sync_batchnorm).

    forward(x): module.forward on this rank's batch (B, ...). backward(dy): module.backward,
    then every flat gradient buffer (one per dtype for a Sequential) is summed over the ranks
    with one in-place Allreduce and divided by the number of ranks. The whole of .grad is
    averaged, so zero the gradients before each step (as Trainer does); gradients accumulated
    over several backward calls would be averaged again each time.

    parameters(), state_dict(), load_state_dict() and config() are the module's own (same
    names), so checkpoints and fastnn.save of `.module` are those of the plain model.
    allreduce_seconds: total time spent averaging gradients (for benchmarks).
    """

    def __init__(self, module, comm=None, sync_batchnorm=False):
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a fastnn Module, got {type(module).__name__}")
        self.module = module
        self.comm = comm or world()
        self._mpi = mpi()
        self.sync_batchnorm = bool(sync_batchnorm)
        self.allreduce_seconds = 0.0
        params = module.parameters()
        # Arena packs parameters that own their memory and otherwise finds the stretches that
        # already lie back to back (a Sequential's arena: one per dtype).
        runs = [run for dt in dict.fromkeys(p.dtype for p in params)
                for run in Arena([p for p in params if p.dtype == dt]).runs]
        self._grads = [grad for _, _, grad in runs]
        for _, data, _ in runs:  # every replica starts from rank 0's parameters
            self.comm.Bcast(data, root=0)
        self.broadcast_buffers()
        for m in _modules(module):
            if isinstance(m, Dropout):
                m.shard = (self.comm.Get_rank(), self.comm.Get_size())
        if self.sync_batchnorm:
            convert_sync_batchnorm(module, self.comm)

    @property
    def rank(self):
        return self.comm.Get_rank()

    @property
    def size(self):
        return self.comm.Get_size()

    def broadcast_buffers(self):
        """Copy rank 0's buffers (BatchNorm running statistics, dropout counters) to every
        rank, in place. Collective: every rank must call it."""
        for _, buf in self.module.named_buffers():
            self.comm.Bcast(buf, root=0)

    def average_gradients(self):
        """Sum every flat gradient buffer over the ranks (in place) and divide by the number
        of ranks. Collective."""
        start = time.perf_counter()
        MPI, scale = self._mpi, 1.0 / self.comm.Get_size()
        for grad in self._grads:
            self.comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
            if scale != 1.0:
                F.scale_inplace(grad, scale)
        self.allreduce_seconds += time.perf_counter() - start

    def forward(self, x):
        return self.module.forward(x)

    def backward(self, dy, input_grad=True):
        """module.backward(dy), then the gradients averaged over the ranks; returns dx.
        input_grad=False (a Sequential module): the input is data, dx is skipped (None)."""
        if input_grad:
            dx = self.module.backward(dy)
        else:
            dx = self.module.backward(dy, input_grad=False)
        self.average_gradients()
        return dx

    def children(self):
        return [self.module]

    def named_parameters(self, prefix=""):
        return self.module.named_parameters(prefix)

    def named_buffers(self, prefix=""):
        return self.module.named_buffers(prefix)

    def config(self):
        return self.module.config()

    def __repr__(self):
        return (f"DataParallel(ranks={self.size}, sync_batchnorm={self.sync_batchnorm}, "
                f"module={self.module!r})")


class DistributedTrainer(Trainer):
    """A fastnn.train.Trainer for one rank of a data-parallel job; run it on every rank.

    model: a fastnn Module (wrapped in DataParallel(model, comm, sync_batchnorm) here) or a
    DataParallel. The other arguments are Trainer's. fit's batch_size is per rank: the global
    batch is batch_size * ranks (see ShardedBatches). The epoch's training loss and accuracy
    are over all ranks; "step_loss" is this rank's. Validation runs on every rank with rank
    0's buffers, so every rank makes the same early-stopping decision. Progress bars and
    checkpoint files come from rank 0 only (save_checkpoint is collective: call it on every
    rank).
    """

    def __init__(self, model, optimizer, comm=None, sync_batchnorm=False, **kwargs):
        if not isinstance(model, DataParallel):
            model = DataParallel(model, comm, sync_batchnorm)
        elif sync_batchnorm and not model.sync_batchnorm:
            raise ValueError("sync_batchnorm: the DataParallel model was built without it")
        super().__init__(model, optimizer, **kwargs)
        self.comm = model.comm

    @property
    def rank(self):
        return self.comm.Get_rank()

    def _batches(self, X, y, batch_size, seed):
        return ShardedBatches(X, y, batch_size, self.rank, self.comm.Get_size(), seed)

    def _reduce_totals(self, loss, correct, seen):
        totals = np.array([loss, correct, seen], np.float64)
        self.comm.Allreduce(self.model._mpi.IN_PLACE, totals, op=self.model._mpi.SUM)
        return float(totals[0]), int(totals[1]), int(totals[2])

    def _bar(self, total, done):
        return super()._bar(total, done) if self.rank == 0 else None

    def _stop_after_step(self):
        # a callback may stop one rank (TerminateOnNaN on its own loss): all stop together,
        # or the others would wait in the next step's reduction
        if not self.callbacks:
            return self.stop_training
        stop = np.array(self.stop_training, np.bool_)
        self.comm.Allreduce(self.model._mpi.IN_PLACE, stop, op=self.model._mpi.LOR)
        self.stop_training = bool(stop)
        return self.stop_training

    def evaluate(self, X, y, batch_size=1024):
        self.model.broadcast_buffers()  # rank 0's running statistics on every rank
        return super().evaluate(X, y, batch_size)

    def _early_stopping(self, logs):
        super()._early_stopping(logs)
        # The validation losses agree bitwise, so this only guards against a rank that
        # disagrees and would otherwise leave the others waiting in the next epoch.
        stop = np.array(self.stop_training, np.bool_)
        self.comm.Bcast(stop, root=0)
        self.stop_training = bool(stop)

    def fit(self, *args, **kwargs):
        history = super().fit(*args, **kwargs)
        self.model.broadcast_buffers()
        return history

    def save_checkpoint(self, path, data=None):
        self.model.broadcast_buffers()
        if self.rank == 0:
            super().save_checkpoint(path, data)
