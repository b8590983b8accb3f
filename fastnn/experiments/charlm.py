"""Experiment `charlm`: a character-level MLP language model (makemore part 3).

The model predicts the next character from the previous 3: Embedding(vocabulary, 10) ->
Flatten -> [Linear(no bias) -> BatchNorm1d + tanh] x 2 hidden layers of 100 -> Linear
(vocabulary), with Kaiming-normal weights (tanh gain) and the last layer scaled by 0.1.
'.' marks the start and the end of a word. The words (one per line of a text file, or
fastnn's small built-in list of given names) are shuffled and split 80/10/10 into train,
validation and test words; training is SGD, batch 32, lr 0.1 then 0.01 for the last quarter
of the steps, with the validation loss measured after every epoch; training stops when it
has not improved for 10 epochs, and the weights of the best epoch are kept (so the test
words, used once at the end, give the unbiased loss). Then new words are sampled from the
model, one character at a time, until it emits '.'.
"""
import math
import os
from importlib import resources

import numpy as np

import fastnn
from fastnn import optim
from fastnn.optim.lr_scheduler import MultiStepLR

from . import common

BUILTIN = "names.txt"


def load_words(path=None):
    """The words of a text file, one per line (blank lines and lines starting with '#'
    skipped; surrounding spaces stripped; lower-cased), or, with path None, fastnn's
    built-in list of given names. Returns a list of str."""
    if path is None:
        text = resources.files("fastnn").joinpath("data-files").joinpath(BUILTIN).read_text(
            "utf-8")
        where = f"fastnn/data-files/{BUILTIN}"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"words: expected a text file with one word per line, "
                                    f"got {os.fspath(path)!r}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        where = os.fspath(path)
    words = []
    for number, line in enumerate(text.splitlines(), 1):
        word = line.strip().lower()
        if not word or word.startswith("#"):
            continue
        if "." in word or any(ch.isspace() for ch in word):
            raise ValueError(f"{where}, line {number}: expected one word without '.' or "
                             f"spaces, got {line!r}")
        words.append(word)
    if len(words) < 10:
        raise ValueError(f"{where}: expected at least 10 words, got {len(words)}")
    return words


def encode(words, itos, block_size):
    """(X (n, block_size) int64 contexts, y (n,) int64 next characters) of `words`, indexed
    by the vocabulary itos (fastnn.datasets.char_ngrams, re-indexed to the whole list's
    vocabulary so every split shares it)."""
    X, y, local = fastnn.datasets.char_ngrams(words, block_size)
    stoi = {ch: i for i, ch in enumerate(itos)}
    to_global = np.array([stoi[ch] for ch in local], dtype=np.int64)
    return to_global[X], to_global[y]


def build_model(vocab_size, block_size=3, n_embd=10, n_hidden=100, n_layers=2):
    """The MLP language model: int contexts (B, block_size) -> logits (B, vocab_size)."""
    layers = [fastnn.Embedding(vocab_size, n_embd), fastnn.Flatten()]
    width = block_size * n_embd
    for _ in range(n_layers):
        linear = fastnn.Linear(width, n_hidden, bias=False)  # BatchNorm's beta is the bias
        common.init_weight(linear.weight.data, "he_tanh")
        layers += [linear, fastnn.BatchNorm1d(n_hidden, activation="tanh")]
        width = n_hidden
    out = fastnn.Linear(width, vocab_size)
    out.weight.data *= 0.1  # a less confident first prediction: loss near log(vocab_size)
    out.bias.data[...] = 0
    return fastnn.Sequential(*layers, out)


def sample(model, itos, n, block_size=3, seed=0, max_length=30):
    """n words drawn from the model (evaluation mode), each character from the softmax of
    the logits given the previous block_size characters."""
    rng = np.random.default_rng(seed)
    model.eval()
    words = []
    for _ in range(n):
        context, chars = [0] * block_size, []
        while len(chars) < max_length:
            logits = np.asarray(model(np.array([context], dtype=np.int64))[0], np.float64)
            p = np.exp(logits - logits.max())
            ix = int(rng.choice(len(p), p=p / p.sum()))
            if ix == 0:
                break
            chars.append(itos[ix])
            context = context[1:] + [ix]
        words.append("".join(chars))
    model.train()
    return words


def _plot(history, output):
    fig, (ax,) = common.figure(1, 1, (9, 5))
    steps = np.asarray(history["step_loss"], dtype=np.float64)
    window = max(1, len(steps) // 100)
    ax.plot(np.arange(1, len(steps) + 1), common.smooth(steps, window), color="C0",
            linewidth=1, label=f"train (running mean of {window} steps)")
    per_epoch = len(steps) / max(1, len(history["val_loss"]))
    epochs_end = np.arange(1, len(history["val_loss"]) + 1) * per_epoch
    ax.plot(epochs_end, history["val_loss"], "-o", markersize=3, color="C1",
            label="validation (end of each epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("character-level MLP language model")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return common.save_figure(fig, output, "charlm_loss.png")


def run(output, data_path=None, seed=0, quick=False, words=None, steps=None, n_samples=20,
        block_size=3):
    """Train and sample; writes charlm_loss.png and summary.md into `output`. words: a
    word-list file (None: the built-in names); steps: at most this many SGD steps of batch 32,
    rounded to whole epochs (default 6000, quick 300). data_path is not used (the experiment has its own data).

    Returns {"train_loss", "val_loss", "test_loss": mean cross-entropy of the kept model
    in evaluation mode on the train, validation and test words, "best_epoch": the epoch
    whose weights were kept, "uniform_loss": log(vocabulary size), "novel": samples not in
    the word list,
    "samples": list of str, "alphabet": the training characters, "n_words": (train, val,
    test) word counts, "steps": steps run}.
    """
    output = common.prepare_output(output)
    summary = common.Summary("charlm", __doc__.split("\n\n", 1)[1])
    all_words = load_words(words)
    order = np.random.default_rng(seed).permutation(len(all_words))
    shuffled = [all_words[i] for i in order]
    n1, n2 = int(0.8 * len(shuffled)), int(0.9 * len(shuffled))
    splits = shuffled[:n1], shuffled[n1:n2], shuffled[n2:]
    itos = ["."] + sorted(set("".join(all_words)))
    train, val = encode(splits[0], itos, block_size), encode(splits[1], itos, block_size)

    fastnn.manual_seed(seed)
    model = build_model(len(itos), block_size)
    steps = common.budget(steps, quick, 300, 6000, "steps")
    per_epoch = max(1, len(train[0]) // 32)
    epochs = max(1, round(steps / per_epoch))
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    decay_at = max(1, int(math.ceil(0.75 * epochs)))
    trainer = fastnn.train.Trainer(model, optimizer, scheduler=MultiStepLR(optimizer, [decay_at]),
                                   patience=10, restore_best=True, progress=True)
    history = trainer.fit(train, val, epochs=epochs, batch_size=32, seed=seed)
    train_loss = trainer.evaluate(*train)[0]
    val_loss = trainer.evaluate(*val)[0]
    test_loss = trainer.evaluate(*encode(splits[2], itos, block_size))[0]
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    samples = sample(model, itos, n_samples, block_size, seed)
    known = set(all_words)
    novel = sum(w not in known for w in samples)

    source = os.fspath(words) if words is not None else f"fastnn/data-files/{BUILTIN}"
    summary.heading(f"{len(all_words)} words from {source}")
    summary.text(f"Vocabulary {len(itos)} characters ('.' and {''.join(itos[1:])!r}); "
                 f"{len(splits[0])} / {len(splits[1])} / {len(splits[2])} train / validation "
                 f"/ test words, {len(train[0])} training examples; "
                 f"{len(history['step_loss'])} steps ({len(history['val_loss'])} of at most "
                 f"{epochs} epochs) of batch 32; the kept weights are those of epoch "
                 f"{best_epoch}, the lowest validation loss.")
    summary.table(["words", "loss (nats), kept model, evaluation mode"],
                  [["uniform guess, log(vocabulary)", math.log(len(itos))],
                   ["train", train_loss], ["validation", val_loss], ["test", test_loss]])
    summary.heading("Samples")
    summary.text(f"{novel} of {len(samples)} samples are not in the word list:\n\n"
                 + "\n".join(f"    {w if w else '(empty)'}" for w in samples))
    summary.figure(_plot(history, output), "training and validation loss")
    summary.write(output)
    return {"train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
            "best_epoch": best_epoch, "uniform_loss": math.log(len(itos)),
            "samples": samples, "alphabet": "".join(itos[1:]), "novel": novel,
            "n_words": tuple(len(s) for s in splits), "steps": len(history["step_loss"])}
