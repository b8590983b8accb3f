"""The `fastnn` command line.

    fastnn info    what this build is (version, OpenMP, threads, BLAS, flags)
    fastnn demo    train a small regression MLP built from fastnn.Linear layers
"""
import argparse
import json
import sys
import time

import numpy as np

import fastnn


def demo(args):
    """Fit y = sin(3 x0) * cos(2 x1) with a 2-64-64-1 MLP of fused Linear layers and plain SGD.

    (The optimizers, losses and the training loop arrive with the layer API; this shows the
    Linear kernels learning.)"""
    fastnn.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.uniform(-1, 1, (args.samples, 2)).astype(np.float32)
    Y = (np.sin(3 * X[:, :1]) * np.cos(2 * X[:, 1:])).astype(np.float32)
    layers = [
        fastnn.Linear(2, 64, activation="tanh"),
        fastnn.Linear(64, 64, activation="tanh"),
        fastnn.Linear(64, 1),
    ]
    params = [p for layer in layers for p in layer.parameters()]
    print(f"fastnn {fastnn.__version__}: {fastnn.get_num_threads()} threads, "
          f"backend {fastnn.get_backend()}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(args.samples)
        total = 0.0
        for i in range(0, args.samples, args.batch_size):
            idx = order[i:i + args.batch_size]
            h = X[idx]
            for layer in layers:
                h = layer(h)
            err = h - Y[idx]
            total += float(np.sum(err * err))
            grad = (2 / len(idx)) * err  # d(mean squared error)/d(output)
            for p in params:
                p.grad.fill(0)
            for layer in reversed(layers):
                grad = layer.backward(grad)
            for p in params:
                p.data -= args.lr * p.grad
        if epoch == 1 or epoch % max(1, args.epochs // 10) == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  mse {total / args.samples:.5f}")
    seconds = time.perf_counter() - start
    print(f"trained {args.epochs} epochs in {seconds:.2f} s")
    return 0


def info(args):
    print(json.dumps(fastnn.build_info(), indent=2))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show what this build is").set_defaults(func=info)
    p = sub.add_parser("demo", help="train a small MLP from fastnn.Linear layers")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
