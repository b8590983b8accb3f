"""Time S2 training steps (workload S2 of the README: 784-512-512-10 MLP, batch 128 per process, float32,
Adam), data-parallel over MPI or in one process; print one JSON object (from rank 0).

    mpirun -n 2 python bench/distributed_steps.py --threads 1   # 2 ranks, DataParallel
    python bench/distributed_steps.py --threads 2 --single      # 1 process, no MPI

Each process trains on its own fixed random batch (a fresh batch costs the same). After
`warmup` steps, all ranks meet in a barrier and `steps` steps are timed; the gradient
all-reduce is timed inside DataParallel (allreduce_seconds, which includes waiting for the
slower rank), then alone, back to back (allreduce_alone_seconds). Run by
bench/test_bench_distributed.py, which launches both and compares them.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

# The repository root, for `bench`; last, so that `fastnn` is the installed package (with its
# compiled extension), not the source tree.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastnn  # noqa: E402
from bench.test_bench_steps import build_model, build_optimizer, inputs  # noqa: E402

WORKLOAD = "S2"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="per process (default S2's 128)")
    parser.add_argument("--single", action="store_true", help="one process, without MPI")
    args = parser.parse_args()
    fastnn.set_num_threads(args.threads)
    x, target = inputs(WORKLOAD)
    if args.batch is not None:  # a bigger batch: the S2 batch repeated
        x, target = np.resize(x, (args.batch, x.shape[1])), np.resize(target, args.batch)
    model = build_model(WORKLOAD)
    optimizer = build_optimizer(WORKLOAD, model.parameters(), fastnn.optim)
    comm, rank, ranks = None, 0, 1
    if not args.single:
        from fastnn import distributed

        comm = distributed.world()
        rank, ranks = comm.Get_rank(), comm.Get_size()
        model = distributed.DataParallel(model, comm)
        if rank:  # every rank its own data
            x = np.ascontiguousarray(np.roll(x, 7 * rank, axis=0))
    loss_fn = fastnn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), target)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if comm is not None:
        comm.Barrier()
        allreduce_before = model.allreduce_seconds
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if comm is not None:
        comm.Barrier()
    seconds = time.perf_counter() - start
    result = {"ranks": ranks, "threads_per_rank": args.threads, "batch_per_rank": len(x),
              "steps": args.steps, "step_seconds": seconds / args.steps,
              "samples_per_second": ranks * len(x) * args.steps / seconds}
    if comm is not None:
        per_rank = np.array([(model.allreduce_seconds - allreduce_before) / args.steps])
        everyone = np.empty(ranks)
        comm.Allgather(per_rank, everyone)
        result["allreduce_seconds"] = float(everyone.mean())  # per step, mean over ranks
        result["allreduce_fraction"] = result["allreduce_seconds"] / result["step_seconds"]
        # The same all-reduces back to back, without the steps: the transfer alone, without
        # the wait for a slower rank that the in-step figure includes.
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            model.average_gradients()
        comm.Barrier()
        result["allreduce_alone_seconds"] = (time.perf_counter() - start) / args.steps
    if rank == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
