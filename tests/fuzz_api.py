"""A bounded, seeded hypothesis run over the public functional API and the layers with bad
arguments: wrong dtypes, shapes and strides, None, lists, read-only, misaligned and
big-endian arrays, one array passed as two arguments (aliasing), NaN and Inf. Every call must
return or raise TypeError, ValueError or IndexError; anything else fails, and a crash ends
this process with a signal. Run by tests/test_reliability.py in a subprocess:

    python tests/fuzz_api.py EXAMPLES
"""
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F

ALLOWED = (TypeError, ValueError, IndexError)
f32 = np.float32


def arr(*shape, dtype=f32, low=-1.0):
    return np.random.default_rng(0).uniform(low, 1.0, shape).astype(dtype)


def idx(*shape, bound=5):
    return np.random.default_rng(1).integers(0, bound, shape)


# name -> (function, valid keyword arguments), small sizes: B=3, C=4, O=2, V=5
def calls():
    return {
        "linear_forward": (F.linear_forward, dict(x=arr(3, 4), weight=arr(2, 4), bias=arr(2),
                                                  activation="relu", out=arr(3, 2))),
        "linear_backward": (F.linear_backward, dict(
            dy=arr(3, 2), x=arr(3, 4), weight=arr(2, 4), y=arr(3, 2), activation="tanh",
            dweight=arr(2, 4), dbias=arr(2), dx=arr(3, 4), work=arr(3, 2))),
        "batchnorm_forward": (F.batchnorm_forward, dict(
            x=arr(3, 4), weight=arr(4), bias=arr(4), running_mean=arr(4),
            running_var=arr(4, low=0.1), training=True, momentum=0.1, eps=1e-5,
            activation="relu", out=arr(3, 4), save_mean=arr(4), save_invstd=arr(4))),
        "batchnorm_backward": (F.batchnorm_backward, dict(
            dy=arr(3, 4), x=arr(3, 4), y=arr(3, 4), mean=arr(4), invstd=arr(4, low=0.1),
            weight=arr(4), training=True, activation="sigmoid", dweight=arr(4),
            dbias=arr(4), dx=arr(3, 4))),
        "activation_forward": (F.activation_forward, dict(x=arr(3, 4), kind="gelu",
                                                          negative_slope=0.1, out=arr(3, 4))),
        "activation_backward": (F.activation_backward, dict(
            dy=arr(3, 4), x=arr(3, 4), y=arr(3, 4), kind="leaky_relu", negative_slope=0.1,
            dx=arr(3, 4))),
        "softmax_forward": (F.softmax_forward, dict(x=arr(3, 4), out=arr(3, 4))),
        "softmax_backward": (F.softmax_backward, dict(dy=arr(3, 4), y=arr(3, 4), dx=arr(3, 4))),
        "dropout_apply": (F.dropout_apply, dict(x=arr(3, 4), p=0.5, seed=1, offset=0,
                                                out=arr(3, 4))),
        "embedding_forward": (F.embedding_forward, dict(weight=arr(5, 4), idx=idx(3, 2),
                                                        out=arr(3, 2, 4))),
        "embedding_backward": (F.embedding_backward, dict(dweight=arr(5, 4), dy=arr(3, 2, 4),
                                                          idx=idx(3, 2))),
        "cross_entropy_forward": (F.cross_entropy_forward, dict(
            logits=arr(3, 5), target=idx(3), probs=arr(3, 5),
            row_loss=arr(3, dtype=np.float64), weight=arr(5), ignore_index=-100,
            label_smoothing=0.1, reduction="none")),
        "cross_entropy_backward": (F.cross_entropy_backward, dict(
            probs=arr(3, 5), target=idx(3), dloss=0.5, dlogits=arr(3, 5), weight=arr(5),
            ignore_index=-100, label_smoothing=0.1, reduction="mean")),
        "mse_forward": (F.mse_forward, dict(pred=arr(3, 4), target=arr(3, 4))),
        "mse_backward": (F.mse_backward, dict(pred=arr(3, 4), target=arr(3, 4), scale=0.5,
                                              dpred=arr(3, 4))),
        "sgd_step": (F.sgd_step, dict(p=arr(6), buf=arr(6), grad=arr(6), lr=0.1, momentum=0.9,
                                      dampening=0.0, weight_decay=0.01, l1=0.0,
                                      nesterov=True, first=False)),
        "adagrad_step": (F.adagrad_step, dict(p=arr(6), state_sum=arr(6, low=0.0),
                                              grad=arr(6), clr=0.1)),
        "rmsprop_step": (F.rmsprop_step, dict(
            p=arr(6), square_avg=arr(6, low=0.5), grad_avg=arr(6, low=0.0) * 0.1,
            momentum_buf=arr(6), grad=arr(6), lr=0.1, momentum=0.9)),
        "adam_step": (F.adam_step, dict(p=arr(6), exp_avg=arr(6), exp_avg_sq=arr(6, low=0.0),
                                        max_exp_avg_sq=arr(6, low=0.0), grad=arr(6), lr=0.1,
                                        step=2)),
        "sum_squares": (F.sum_squares, dict(x=arr(6))),
        "scale_inplace": (F.scale_inplace, dict(x=arr(6), s=0.5)),
        "clamp_inplace": (F.clamp_inplace, dict(x=arr(6), lo=-0.5, hi=0.5)),
    }


def misaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


ARRAY_MUTATIONS = {
    "none": lambda a, others: None,
    "int64": lambda a, others: a.astype(np.int64),
    "float16": lambda a, others: a.astype(np.float16),
    "float64": lambda a, others: a.astype(np.float64),
    "complex": lambda a, others: a.astype(np.complex64),
    "object": lambda a, others: a.astype(object),
    "bigendian": lambda a, others: a.astype(a.dtype.newbyteorder(">")),
    "extra_dim": lambda a, others: a[..., None],
    "fewer_dims": lambda a, others: a.reshape(-1)[:1].reshape(()),
    "longer": lambda a, others: np.concatenate([a.reshape(-1)] * 2).reshape(
        (a.shape[0] * 2,) + a.shape[1:]) if a.ndim else a,
    "empty": lambda a, others: a[:0],
    "strided": lambda a, others: np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a,
    "transposed": lambda a, others: a.T.copy().T if a.ndim > 1 else a[::-1],
    "misaligned": lambda a, others: misaligned(a),
    "readonly": lambda a, others: readonly(a),
    "nan": lambda a, others: np.full_like(a, np.nan) if a.dtype.kind == "f" else a,
    "inf": lambda a, others: np.full_like(a, -np.inf) if a.dtype.kind == "f" else a,
    "huge_index": lambda a, others: np.full_like(a, 2**62) if a.dtype.kind == "i" else a,
    "negative_index": lambda a, others: -a - 1 if a.dtype.kind == "i" else a,
    "list": lambda a, others: a.tolist(),
    "scalar": lambda a, others: 1.0,
    "string": lambda a, others: "x",
    "alias": lambda a, others: others[0] if others else a,
    "alias_view": lambda a, others: (others[0].reshape(-1)[:a.size].reshape(a.shape)
                                     if others and others[0].size >= a.size else a),
}
OTHER_MUTATIONS = {
    "none": lambda v: None,
    "nan": lambda v: float("nan"),
    "inf": lambda v: float("inf"),
    "negative": lambda v: -1,
    "huge": lambda v: 2**70,
    "string": lambda v: "nonsense",
    "bool": lambda v: True,
    "array": lambda v: np.ones(2),
}


@st.composite
def mutated_call(draw):
    table = calls()
    name = draw(st.sampled_from(sorted(table)))
    fn, kwargs = table[name]
    keys = sorted(kwargs)
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
    arrays = [v for v in kwargs.values() if isinstance(v, np.ndarray)]
    for key in chosen:
        value = kwargs[key]
        if isinstance(value, np.ndarray):
            mutation = draw(st.sampled_from(sorted(ARRAY_MUTATIONS)))
            others = [a for a in arrays if a is not value]
            kwargs[key] = ARRAY_MUTATIONS[mutation](value, others)
        else:
            mutation = draw(st.sampled_from(sorted(OTHER_MUTATIONS)))
            kwargs[key] = OTHER_MUTATIONS[mutation](value)
        chosen[chosen.index(key)] = f"{key}:{mutation}"
    return name, fn, kwargs, chosen


LAYERS = {
    "Linear": lambda: fastnn.Linear(4, 2, activation="tanh"),
    "BatchNorm1d": lambda: fastnn.BatchNorm1d(4, activation="relu"),
    "GELU": lambda: fastnn.GELU(),
    "Softmax": lambda: fastnn.Softmax(),
    "Dropout": lambda: fastnn.Dropout(0.3),
    "Flatten": lambda: fastnn.Flatten(),
}


@st.composite
def mutated_layer_call(draw):
    kind = draw(st.sampled_from(sorted(LAYERS)))
    x = arr(3, 4)
    mutation = draw(st.sampled_from(sorted(ARRAY_MUTATIONS)))
    dy_mutation = draw(st.sampled_from(sorted(ARRAY_MUTATIONS)))
    return kind, mutation, dy_mutation, ARRAY_MUTATIONS[mutation](x, []), x


def run(examples):
    failures = []

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated_call())
    def fuzz_functional(case):
        name, fn, kwargs, chosen = case
        try:
            fn(**kwargs)
        except ALLOWED:
            pass
        except Exception as e:  # noqa: BLE001 - any other exception is a finding
            failures.append(f"{name} {chosen}: {type(e).__name__}: {e}")

    @settings(max_examples=examples // 4, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated_layer_call())
    def fuzz_layers(case):
        kind, mutation, dy_mutation, x, good = case
        layer = LAYERS[kind]()
        try:
            layer(good)  # a valid call first, so the bad one meets the layer's saved state
            y = layer(x)
            layer.backward(ARRAY_MUTATIONS[dy_mutation](np.asarray(y, f32), [good]))
        except ALLOWED:
            pass
        except Exception as e:  # noqa: BLE001
            failures.append(f"{kind} x:{mutation} dy:{dy_mutation}: {type(e).__name__}: {e}")

    fuzz_functional()
    fuzz_layers()
    for line in failures[:20]:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
