"""The `fastnn` command line.

    fastnn train   train an MLP on a dataset (default: the embedded 8x8 digits) and report
                   the test accuracy; writes the model and a loss-curve PNG to --output
    fastnn info    what this build is (version, OpenMP, threads, BLAS, flags)
    fastnn bench MODEL
                   time a saved model's training step beside PyTorch's (fastnn.benchmark)
    fastnn experiment NAME
                   reproduce one of the course experiments (optimizers, init, batchnorm,
                   overfit, search, charlm; see fastnn.experiments): trains with fastnn and
                   writes PNG figures and summary.md to --output
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np


import fastnn

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop",
              "adagrad": "Adagrad"}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu")


class _Parser(argparse.ArgumentParser):
    """Bad options: a one-line error and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help that gives each option's default, where it has one (not None or False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _fail(message):
    """A one-line error and exit code 2, as for a bad option."""
    print(f"fastnn train: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def _number(kind, positive=True):
    """An argparse type: a finite `kind` (int or float) > 0, or >= 0 when not positive."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        what = "finite float" if kind is float else kind.__name__
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            article = "an" if what == "int" else "a"
            expected = f"a positive {what}" if positive else f"{article} {what} >= 0"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _threads(text):
    n = _number(int)(text)
    cores = fastnn.runtime._usable_cores()
    if n > cores:
        raise argparse.ArgumentTypeError(f"expected at most the {cores} usable cores, got {n}")
    return n


def _check_output(path):
    """The --output folder can be created and written (checked before training, created
    only when the results are written)."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        _fail(f"--output {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"--output {path}: {existing} is not writable")


def _probability(text):
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 <= p < 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {text!r}")
    return p


def build_mlp(n_in, hidden, n_out, activation="relu", batchnorm=True, dropout=0.0):
    """Linear (+ BatchNorm1d) + activation (+ Dropout) per hidden size, then Linear.
    With BatchNorm the Linear has no bias (BatchNorm's beta takes its place) and the
    activation is fused into BatchNorm; without it, into the Linear where it can be."""
    fusable = activation in ("relu", "tanh", "sigmoid")
    layers, width = [], n_in
    for size in hidden:
        act = activation if fusable else None
        if batchnorm:
            linear = fastnn.Linear(width, size, bias=False)
            layers += [linear, fastnn.BatchNorm1d(size, activation=act)]
        else:
            linear = fastnn.Linear(width, size, activation=act)
            linear.bias.data[...] = 0
            layers.append(linear)
        # He for the ReLU family, Glorot otherwise, with the gain of the activation that
        # follows (wherever it is fused)
        if activation in ("relu", "leaky_relu", "gelu"):
            fastnn.init.he_normal(linear.weight.data, "leaky_relu" if activation ==
                                  "leaky_relu" else "relu")
        else:
            fastnn.init.xavier_normal(linear.weight.data, fastnn.init.calculate_gain(activation))
        if not fusable:
            layers.append(fastnn.LeakyReLU() if activation == "leaky_relu" else fastnn.GELU())
        if dropout > 0:
            layers.append(fastnn.Dropout(dropout))
        width = size
    layers.append(fastnn.Linear(width, n_out))
    return fastnn.Sequential(*layers)


def _load_data(args):
    if args.dataset == "digits":
        X, y = fastnn.datasets.load_digits()
        return fastnn.data.split(X, y, (0.8, 0.1, 0.1), seed=args.seed)
    try:
        X, y = fastnn.datasets.load_mnist(args.data_path, "train")
        X_test, y_test = fastnn.datasets.load_mnist(args.data_path, "test")
    except (OSError, ValueError) as e:
        _fail(str(e).splitlines()[0])
    (X_train, y_train), (X_val, y_val), _ = fastnn.data.split(X, y, (0.9, 0.05, 0.05),
                                                              seed=args.seed)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)


def _list(values, shown=8):
    values = [int(v) for v in values]
    return ", ".join(map(str, values[:shown])) + (f", ... ({len(values)} in all)"
                                                   if len(values) > shown else "")


def _mpi_world():
    """(fastnn.distributed, COMM_WORLD) for --distributed; without MPI a one-line error
    saying what is missing (exit 2)."""
    import fastnn.distributed as distributed

    try:
        return distributed, distributed.world()
    except distributed.MPIUnavailableError as e:
        _fail(f"--distributed: {e}")


def train(args):
    if args.sync_batchnorm and not args.distributed:
        _fail("--sync-batchnorm needs --distributed")
    if args.data_path is not None and args.dataset == "digits":
        _fail("--data-path is for --dataset mnist (the digits are embedded)")
    if args.dataset == "mnist" and args.data_path is None:
        _fail("--dataset mnist needs --data-path DIR (the folder holding the IDX files)")
    if args.resume is not None and not os.path.isfile(args.resume):
        _fail(f"--resume {args.resume}: no such checkpoint file")
    _check_output(args.output)
    if not args.distributed:
        return _train(args)
    distributed, comm = _mpi_world()
    with distributed.abort_on_error(comm):  # one failing rank ends the job, not a hang
        return _train(args, distributed, comm)


def _train(args, distributed=None, comm=None):
    """The train command; with MPI (comm), one rank of a data-parallel job, of which rank 0
    alone prints and writes files."""
    rank0 = comm is None or comm.Get_rank() == 0
    say = print if rank0 else (lambda *a, **kw: None)
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    elif comm is not None:  # the ranks on one machine share its cores
        local = comm.Split_type(distributed.mpi().COMM_TYPE_SHARED)
        fastnn.set_num_threads(max(1, fastnn.get_num_threads() // local.Get_size()))
        local.Free()
    fastnn.manual_seed(args.seed)
    start = time.perf_counter()
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = _load_data(args)
    scaler = fastnn.data.Standardizer().fit(X_train)  # fitted on the training split only
    X_train, X_val, X_test = (scaler.transform(a) for a in (X_train, X_val, X_test))
    labels = np.unique(np.concatenate([y_train, y_val, y_test]))
    n_classes = int(labels[-1]) + 1
    if len(labels) != n_classes and not args.allow_missing_classes:
        missing = sorted(set(range(n_classes)) - set(labels.tolist()))
        _fail(f"the labels are {_list(labels)}: classes {_list(missing)} of 0..{n_classes - 1} "
              f"have no sample (a {n_classes}-class output layer); relabel them 0..K-1, or "
              "pass --allow-missing-classes")
    model = build_mlp(X_train.shape[1], args.hidden, n_classes, args.activation,
                      args.batchnorm, args.dropout)
    optimizer = getattr(fastnn.optim, OPTIMIZERS[args.optimizer])(
        model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    options = dict(patience=args.patience, progress=args.progress, stop_on_nonfinite=True,
                   checkpoint_dir=args.output if args.checkpoint_every else None,
                   checkpoint_every=args.checkpoint_every)
    if comm is None:
        trainer = fastnn.train.Trainer(model, optimizer, **options)
    else:
        trainer = distributed.DistributedTrainer(
            model, optimizer, comm=comm, sync_batchnorm=args.sync_batchnorm, **options)
    say(f"fastnn {fastnn.__version__}: {args.dataset}, {len(X_train)} train / {len(X_val)} "
        f"validation / {len(X_test)} test samples, {n_classes} classes, "
        f"{fastnn.get_num_threads()} threads")
    if comm is not None:
        ranks = comm.Get_size()
        say(f"data parallel over MPI: {ranks} ranks x batch {args.batch_size} = global batch "
            f"{ranks * args.batch_size}, BatchNorm statistics "
            f"{'synchronised' if args.sync_batchnorm else 'per rank'}")
    say(model)

    class Report(fastnn.train.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            say(f"epoch {epoch:3d}  train loss {logs['train_loss']:.4f} "
                f"acc {logs['train_acc']:.4f}  validation loss {logs['val_loss']:.4f} "
                f"acc {logs['val_acc']:.4f}", flush=True)

    trainer.callbacks.append(Report())
    model_path = os.path.join(args.output, "model.npz")
    if rank0:
        os.makedirs(args.output, exist_ok=True)
    try:
        history = trainer.fit((X_train, y_train), (X_val, y_val), epochs=args.epochs,
                              batch_size=args.batch_size, seed=args.seed, resume=args.resume)
    except fastnn.ModelFileError as e:  # --resume: a damaged file, or another model's
        _fail(f"--resume {e}")
    except fastnn.train.NonFiniteLossError as e:
        print(f"fastnn train: error: {e} (--lr {args.lr})", file=sys.stderr)
        if comm is not None:  # the other ranks may be waiting in a collective: end the job
            raise SystemExit(1)
        return 1
    except KeyboardInterrupt:
        if not rank0:
            return 130
        fastnn.save(model, model_path)  # the best weights so far (fit restored them)
        resume = (f"; resume with --resume {os.path.join(args.output, 'checkpoint.npz')}"
                  if args.checkpoint_every and trainer.epoch >= args.checkpoint_every else "")
        print(f"fastnn train: interrupted in epoch {trainer.epoch + 1}: wrote the best model "
              f"so far to {model_path}{resume}", file=sys.stderr)
        return 130
    test_loss, test_acc = trainer.evaluate(X_test, y_test)
    seconds = time.perf_counter() - start
    if not rank0:
        return 0
    fastnn.save(model, model_path)
    from . import plot  # matplotlib is imported only here

    curve_path = plot.plot_history(history, os.path.join(args.output, "loss.png"))
    print(f"test loss {test_loss:.4f}  test accuracy {test_acc:.4f}  "
          f"({len(history['train_loss'])} epochs, {seconds:.1f} s)")
    print(f"wrote {model_path} and {curve_path}")
    return 0


def experiment(args):
    """`fastnn experiment NAME`: run one experiment of fastnn.experiments."""
    from . import experiments  # imported only here: the experiments need matplotlib

    def fail(message):
        print(f"fastnn experiment: error: {message}", file=sys.stderr)
        return 2

    # options that belong to one experiment only are refused elsewhere, not ignored
    only = {"--trials": ("search", args.trials), "--epochs": ("search", args.epochs),
            "--words": ("charlm", args.words), "--data-path": (None, args.data_path)}
    for option, (owner, value) in only.items():
        if value is None:
            continue
        if owner is None and args.name == "charlm":
            return fail(f"{option} is not used by charlm (give a word list with --words FILE)")
        if owner is not None and args.name != owner:
            return fail(f"{option} is an option of `fastnn experiment {owner}`, not of "
                        f"{args.name}")
    kwargs = {}
    if args.trials is not None:
        kwargs["trials"] = args.trials
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.words is not None:
        kwargs["words"] = args.words
    if args.threads is not None:
        fastnn.set_num_threads(args.threads)
    output = args.output or os.path.join("fastnn-experiments", args.name)
    start = time.perf_counter()
    try:
        experiments.get(args.name).run(output, data_path=args.data_path, seed=args.seed,
                                       quick=args.quick, **kwargs)
    except (OSError, ValueError) as e:
        return fail(str(e).splitlines()[0])
    figures = sorted(f for f in os.listdir(output) if f.endswith(".png"))
    print(f"fastnn experiment {args.name}: wrote summary.md and {', '.join(figures)} to "
          f"{output} in {time.perf_counter() - start:.1f} s")
    return 0


def bench(args):
    """`fastnn bench MODEL`: the model's training step beside PyTorch's (fastnn.benchmark)."""
    from . import benchmark

    try:
        model = fastnn.load(args.model)
        x, target = benchmark.example_batch(model, args.batch_size)
        result = benchmark.compare_with_torch(model, x, target, args.optimizer, args.lr,
                                              args.threads, args.rounds)
    except (OSError, ValueError, TypeError, ImportError) as e:
        print(f"fastnn bench: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{args.model}: batch {args.batch_size}, {args.optimizer} (lr {args.lr}): "
          f"{benchmark.report(result)}")
    return 0


def info(args):
    print(json.dumps(fastnn.build_info(), indent=2))
    return 0


def main(argv=None):
    parser = _Parser(prog="fastnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastnn {fastnn.__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("info", help="show what this build is").set_defaults(func=info)
    p = sub.add_parser("train", help="train an MLP and report its test accuracy",
                       formatter_class=_Help)
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-path", help="folder with the MNIST IDX files (for --dataset mnist)")
    p.add_argument("--allow-missing-classes", action="store_true",
                   help="accept labels with gaps (an output for every class up to the largest "
                        "label); otherwise they must be 0..K-1")
    p.add_argument("--hidden", type=_sizes, default=[256, 128],
                   help="hidden layer sizes, comma-separated")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dropout", type=_probability, default=0.0, help="dropout probability")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=_number(float), default=1e-3, help="learning rate")
    p.add_argument("--weight-decay", type=_number(float, positive=False), default=0.0,
                   help="L2 weight decay (AdamW: decoupled)")
    p.add_argument("--epochs", type=_number(int), default=40, help="at most")
    p.add_argument("--batch-size", type=_number(int), default=64)
    p.add_argument("--patience", type=_number(int), default=10,
                   help="early stopping: epochs without a better validation loss")
    p.add_argument("--seed", type=_number(int, positive=False), default=0)
    p.add_argument("--threads", type=_threads, default=None,
                   help="fastnn threads (default: OMP_NUM_THREADS, else the usable cores)")
    p.add_argument("--output", default="fastnn-output", help="folder for model.npz, loss.png")
    p.add_argument("--checkpoint-every", type=_number(int), default=None, metavar="N",
                   help="write a resumable checkpoint to OUTPUT/checkpoint.npz every N epochs")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run a checkpoint was written by (same options)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI, one rank per process (mpirun -n N fastnn "
                        "train --distributed); --batch-size is per rank")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="with --distributed: BatchNorm statistics over the global batch")
    p.set_defaults(func=train)
    from .experiments import NAMES as EXPERIMENTS  # a plain module: no matplotlib import

    p = sub.add_parser("experiment", help="reproduce a course experiment: figures and a "
                       "markdown summary of measured numbers",
                       formatter_class=_Help)
    p.add_argument("name", choices=EXPERIMENTS, metavar="NAME",
                   help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--output", default=None,
                   help="folder for the figures and summary.md (default "
                        "fastnn-experiments/NAME)")
    p.add_argument("--data-path", default=None,
                   help="folder with the MNIST IDX files (default: the embedded digits)")
    p.add_argument("--seed", type=_number(int, positive=False), default=0)
    p.add_argument("--quick", action="store_true", help="a run of a few seconds (smaller "
                   "budgets; the numbers are not the experiment's)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="fastnn threads (default: OMP_NUM_THREADS, else the usable cores)")
    p.add_argument("--trials", type=_number(int), default=None,
                   help="search: number of trials (default 100)")
    p.add_argument("--epochs", type=_number(int), default=None,
                   help="search: epochs per trial (default 50)")
    p.add_argument("--words", default=None,
                   help="charlm: a text file with one word per line (default: built-in names)")
    p.set_defaults(func=experiment)
    p = sub.add_parser("bench", help="time a saved model's training step beside PyTorch's",
                       formatter_class=_Help)
    p.add_argument("model", help="a model file (fastnn.save; fastnn train writes one)")
    p.add_argument("--batch-size", type=_number(int), default=32)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    p.add_argument("--lr", type=_number(float), default=0.01, help="learning rate")
    p.add_argument("--threads", type=_threads, default=None,
                   help="both libraries' threads (default: fastnn's, OMP_NUM_THREADS or the "
                        "usable cores)")
    p.add_argument("--rounds", type=_number(int), default=7,
                   help="timed rounds (of 0.2 s at least); the best counts")
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    if args.command is None:  # bare `fastnn`: what it can do
        parser.exit(2, parser.format_help())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
