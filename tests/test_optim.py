"""Optimizers, gradient clipping and lr schedulers: native vs reference, vs torch.optim,
thread counts, state_dict, param_groups, the flat arena, textbook forms, bad arguments."""
import math
import re

import numpy as np
import pytest

import fastnn
from fastnn import Linear, Parameter, optim
from fastnn.optim import lr_scheduler
from helpers import assert_close, on_one_and_two_threads

DTYPES = [np.float32, np.float64]
# A few parameters of different shapes (a weight, a bias, a 3-d one, a scalar-sized one).
SHAPES = [(7, 5), (5,), (3, 4, 2), (1,)]
STEPS = 100

# Option combinations per optimizer; l1 is fastnn's own (torch has none).
OPTIONS = {
    optim.SGD: [
        dict(lr=0.05),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, l1=0.01),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, l1=0.01),
        dict(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=0.1, l1=0.01),
    ],
    optim.Adagrad: [
        dict(lr=0.1),
        dict(lr=0.1, lr_decay=0.05),
        dict(lr=0.1, weight_decay=0.1),
        dict(lr=0.1, initial_accumulator_value=0.3),
        dict(lr=0.1, l1=0.01),
        dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3, l1=0.01),
    ],
    optim.RMSprop: [
        dict(lr=0.01),
        dict(lr=0.01, centered=True),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, centered=True, momentum=0.9),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, l1=0.01),
        dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1, l1=0.01),
    ],
    optim.Adam: [
        dict(lr=0.01),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, l1=0.01),
        dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.1, l1=0.01),
    ],
    optim.AdamW: [
        dict(lr=0.01),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, l1=0.01),
        dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.1, l1=0.01),
    ],
}
CASES = [pytest.param(cls, kw, id=f"{cls.__name__}-{i}")
         for cls, kws in OPTIONS.items() for i, kw in enumerate(kws)]
NO_L1_CASES = [c for c in CASES if "l1" not in c.values[1]]


def make_params(shapes=SHAPES, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def grad_sequence(shapes=SHAPES, steps=STEPS, dtype=np.float64, seed=1):
    """A fixed sequence of random gradients: per step, one array per parameter shape."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def train(opt, params, grads):
    """opt.step() once per entry of grads, after writing that step's gradients."""
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad[...] = g
        opt.step()


def run(cls, kw, backend, dtype, shapes=SHAPES, steps=STEPS):
    params = make_params(shapes, dtype)
    with fastnn.use_backend(backend):
        opt = cls(params, **kw)
        train(opt, params, grad_sequence(shapes, steps, dtype))
    return [p.data.copy() for p in params], opt.state_dict()["state"]


def bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ native vs reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls, kw", CASES)
def test_native_matches_reference(cls, kw, dtype):
    native, _ = run(cls, kw, "native", dtype)
    ref, _ = run(cls, kw, "reference", dtype)
    for a, r in zip(native, ref):
        assert a.dtype == np.dtype(dtype)
        assert np.all(np.isfinite(a))
        assert_close(a, r, dtype)


# The float32 kernels take coefficients such as 1 - beta2 formed in double and rounded once,
# as the reference and torch do: in float32, 1 - 0.999f = 0.00099998713, 1.3e-5 below 0.001f.


def state_cases():
    for case in CASES:
        cls, kw = case.values
        for dtype in DTYPES:
            yield pytest.param(cls, kw, dtype, id=f"{case.id}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("cls, kw, dtype", list(state_cases()))
def test_native_state_matches_reference(cls, kw, dtype):
    _, native = run(cls, kw, "native", dtype)
    _, ref = run(cls, kw, "reference", dtype)
    for a, r in zip(native[0], ref[0]):
        assert a.keys() == r.keys()
        for k in a:
            if isinstance(r[k], np.ndarray):
                assert a[k].dtype == np.dtype(dtype)
                assert_close(a[k], r[k], dtype)
            else:
                assert a[k] == r[k], k


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_adam_float32_second_moment_after_one_step(backend):
    """One Adam step with g = 1 gives exp_avg_sq = float32(1 - beta2), not 1 - 0.999f."""
    p = Parameter(np.zeros(4, np.float32))
    p.grad[...] = 1
    with fastnn.use_backend(backend):
        opt = optim.Adam([p])
        opt.step()
    assert_close(opt.state_dict()["state"][0][0]["exp_avg_sq"], np.full(4, np.float32(0.001)))


# ------------------------------------------------------------------ against torch.optim


def torch_run(cls, kw, shapes=SHAPES, steps=STEPS):
    torch = pytest.importorskip("torch")
    name = cls.__name__
    params = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in make_params(shapes)]
    opt = getattr(torch.optim, name)(params, foreach=False, **kw)
    for gs in grad_sequence(shapes, steps):
        for p, g in zip(params, gs):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.detach().numpy().copy() for p in params]


@pytest.mark.parametrize("cls, kw", NO_L1_CASES)
def test_matches_torch(cls, kw):
    want = torch_run(cls, kw)
    got, _ = run(cls, kw, "native", np.float64)
    for a, r in zip(got, want):
        assert_close(a, r, np.float64)


@pytest.mark.parametrize("cls", list(OPTIONS))
def test_defaults_match_torch(cls):
    torch = pytest.importorskip("torch")
    ours = cls(make_params()).defaults
    theirs = getattr(torch.optim, cls.__name__)([torch.zeros(1, requires_grad=True)]).defaults
    extras = {"l1": 0, "eps_hat": False}  # fastnn's own options, off by default
    for k, v in ours.items():
        if k in extras:
            assert v == extras[k], k
        else:
            assert theirs[k] == v, k


# ------------------------------------------------------------------ thread counts

BIG_SHAPES = [(400, 510), (200_003,), (3,)]  # > 200k elements: the kernels use the team


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls, kw", [pytest.param(c, kws[-1], id=c.__name__)
                                     for c, kws in OPTIONS.items()])
def test_one_and_two_threads_bitwise_equal(cls, kw, dtype, threads):
    grads = grad_sequence(BIG_SHAPES, 4, dtype, seed=3)

    def go():
        params = make_params(BIG_SHAPES, dtype, seed=2)
        opt = cls(params, **kw)
        norms = []
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad[...] = g
            norms.append(optim.clip_grad_norm_(params, 100.0))  # clips: the norm is ~900
            opt.step()
        return [p.data.copy() for p in params], norms, opt.state_dict()["state"]

    (p1, n1, s1), (p2, n2, s2) = on_one_and_two_threads(go)
    assert all(bitwise_equal(a, b) for a, b in zip(p1, p2))
    assert n1 == n2 and n1[0] > 100
    for k, v in s1[0][0].items():
        assert bitwise_equal(v, s2[0][0][k]) if isinstance(v, np.ndarray) else v == s2[0][0][k]


def test_clip_and_value_one_and_two_threads_bitwise_equal(threads):
    rng = np.random.default_rng(4)
    g0 = [rng.standard_normal(s).astype(np.float32) for s in BIG_SHAPES]

    def go():
        params = make_params(BIG_SHAPES, np.float32)
        optim.SGD(params)  # packs them into one arena: one flat buffer
        for p, g in zip(params, g0):
            p.grad[...] = g
        norm = optim.clip_grad_norm_(params, 10.0)
        optim.clip_grad_value_(params, 0.004)
        return norm, np.concatenate([p.grad.ravel() for p in params])

    (n1, g1), (n2, g2) = on_one_and_two_threads(go)
    assert n1 == n2
    assert bitwise_equal(g1, g2)


# ------------------------------------------------------------------ state_dict


@pytest.mark.parametrize("cls, kw", [pytest.param(c, kws[-1], id=c.__name__)
                                     for c, kws in OPTIONS.items()]
                         + [pytest.param(optim.SGD, dict(lr=0.05, momentum=0.9), id="SGD-mom")])
def test_state_dict_round_trip(cls, kw):
    grads = grad_sequence()
    params = make_params()
    opt = cls(params, **kw)
    train(opt, params, grads[:25])
    opt.param_groups[0]["lr"] *= 0.5  # as a scheduler would: the state_dict carries it
    train(opt, params, grads[25:50])
    saved, values = opt.state_dict(), [p.data.copy() for p in params]
    train(opt, params, grads[50:])  # the uninterrupted run; must not alter `saved`

    fresh = [Parameter(v.copy()) for v in values]
    opt2 = cls(fresh, **kw)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kw["lr"] * 0.5
    train(opt2, fresh, grads[50:])
    for a, b in zip(fresh, params):
        assert bitwise_equal(a.data, b.data)
    for k, v in opt.state_dict()["state"][0][0].items():
        w = opt2.state_dict()["state"][0][0][k]
        assert bitwise_equal(v, w) if isinstance(v, np.ndarray) else v == w


def test_state_dict_is_a_copy():
    params = make_params()
    opt = optim.Adam(params)
    train(opt, params, grad_sequence(steps=2))
    sd = opt.state_dict()
    before = sd["state"][0][0]["exp_avg"].copy()
    train(opt, params, grad_sequence(steps=2, seed=9))
    assert bitwise_equal(sd["state"][0][0]["exp_avg"], before)
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]


# ------------------------------------------------------------------ param_groups


def split(params):
    """(weights, biases): the 2-d and 1-d parameters."""
    return [p for p in params if p.data.ndim > 1], [p for p in params if p.data.ndim == 1]


@pytest.mark.parametrize("cls, kw", [pytest.param(optim.SGD, dict(momentum=0.9), id="SGD"),
                                     pytest.param(optim.Adam, {}, id="Adam"),
                                     pytest.param(optim.AdamW, {}, id="AdamW")])
def test_two_groups_behave_as_two_optimizers(cls, kw):
    grads = grad_sequence(steps=20)
    params = make_params()
    w, b = split(params)
    opt = cls([{"params": w, "weight_decay": 0.1}, {"params": b, "lr": 0.003,
                                                    "weight_decay": 0.0}], lr=0.01, **kw)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.003
    train(opt, params, grads)

    params2 = make_params()
    w2, b2 = split(params2)
    opt_w = cls(w2, lr=0.01, weight_decay=0.1, **kw)
    opt_b = cls(b2, lr=0.003, weight_decay=0.0, **kw)
    for gs in grads:
        for p, g in zip(params2, gs):
            p.grad[...] = g
        opt_w.step()
        opt_b.step()
    for a, r in zip(params, params2):
        assert bitwise_equal(a.data, r.data)


def test_changing_lr_takes_effect_at_next_step():
    params = make_params()
    grads = grad_sequence(steps=2)
    opt = optim.SGD(params, lr=0.1)
    train(opt, params, grads[:1])
    before = [p.data.copy() for p in params]
    opt.param_groups[0]["lr"] = 0.001
    train(opt, params, grads[1:])
    for p, b, g in zip(params, before, grads[1]):
        assert_close(p.data, b - 0.001 * g)


def test_add_param_group():
    params = make_params()
    w, b = split(params)
    opt = optim.SGD(w, lr=0.1, momentum=0.9)
    opt.add_param_group({"params": b, "lr": 0.01})
    group = opt.param_groups[1]
    assert group["lr"] == 0.01 and group["momentum"] == 0.9 and group["params"] == b
    before = [p.data.copy() for p in b]
    for p in params:
        p.grad[...] = 1.0
    opt.step()  # the first momentum step is plain SGD
    for p, v in zip(b, before):
        assert_close(p.data, v - 0.01)
    with pytest.raises(ValueError, match="params"):
        opt.add_param_group({"params": [b[0]]})
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [Parameter(np.zeros(2))], "lr": -1.0})


# ------------------------------------------------------------------ the arena


def two_linears(dtype=np.float32, seed=0):
    fastnn.manual_seed(seed)
    return Linear(6, 5, dtype=dtype, activation="relu"), Linear(5, 3, dtype=dtype)


def test_arena_packs_layers_into_one_buffer():
    l1, l2 = two_linears()
    params = l1.parameters() + l2.parameters()
    values = [p.data.copy() for p in params]
    grads = [np.full_like(p.grad, i + 1) for i, p in enumerate(params)]
    for p, g in zip(params, grads):
        p.grad[...] = g
    opt = optim.SGD(params, lr=0.1)
    assert len(opt._arenas) == 1 and len(opt._arenas[0]) == 1
    arena = opt._arenas[0][0]
    assert arena.data.ndim == 1 and arena.size == sum(v.size for v in values)
    for p, v, g in zip(params, values, grads):
        assert np.shares_memory(p.data, arena.data) and np.shares_memory(p.grad, arena.grad)
        assert bitwise_equal(p.data, v) and bitwise_equal(p.grad, g)
    assert bitwise_equal(arena.data, np.concatenate([v.ravel() for v in values]))

    # the layers still train: backward accumulates into the arena's grad
    opt.zero_grad()
    assert not arena.grad.any() and not any(p.grad.any() for p in params)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    y = l2(l1(x))
    l1.backward(l2.backward(np.ones_like(y)))
    flat = np.concatenate([p.grad.ravel() for p in params])
    assert flat.any() and bitwise_equal(arena.grad, flat)
    before = arena.data.copy()
    opt.step()
    assert_close(arena.data, before - np.float32(0.1) * flat)
    assert bitwise_equal(l1.weight.data.ravel(), arena.data[:l1.weight.data.size])


def test_arena_matches_unpacked_training():
    """Training two Linear layers through the arena gives what per-parameter updates give."""
    l1, l2 = two_linears(np.float64)
    m1, m2 = two_linears(np.float64)
    opt = optim.SGD(l1.parameters() + l2.parameters(), lr=0.05, momentum=0.9)
    bufs = {}
    x = np.random.default_rng(5).standard_normal((8, 6))
    for step in range(5):
        for a, b in ((l1, l2), (m1, m2)):
            a.zero_grad(), b.zero_grad()
            y = b(a(x))
            a.backward(b.backward(y - 1.0))
        opt.step()
        for p in m1.parameters() + m2.parameters():
            buf = bufs[id(p)] = p.grad.copy() if step == 0 else 0.9 * bufs[id(p)] + p.grad
            p.data -= 0.05 * buf
    for p, q in zip(l1.parameters() + l2.parameters(), m1.parameters() + m2.parameters()):
        assert_close(p.data, q.data)


def test_mixed_dtypes_get_one_arena_each():
    p32 = make_params([(3, 2), (4,)], np.float32)
    p64 = make_params([(5,), (2, 2)], np.float64)
    params = [p32[0], p64[0], p32[1], p64[1]]
    opt = optim.Adam(params)
    arenas = opt._arenas[0]
    assert [a.dtype for a in arenas] == [np.float32, np.float64]
    assert [a.size for a in arenas] == [10, 9]
    for p in params:
        arena = arenas[0] if p.data.dtype == np.float32 else arenas[1]
        assert np.shares_memory(p.data, arena.data) and np.shares_memory(p.grad, arena.grad)
    for p in params:
        p.grad[...] = 1
    opt.step()
    for p in params:
        assert p.data.dtype == p.grad.dtype
    opt.zero_grad()
    assert not any(p.grad.any() for p in params)


def test_second_optimizer_reuses_the_arena():
    l1, l2 = two_linears()
    params = l1.parameters() + l2.parameters()
    first = optim.SGD(params, lr=0.1)
    second = optim.Adam(params)
    a, b = first._arenas[0][0], second._arenas[0][0]
    assert np.shares_memory(a.data, b.data) and np.shares_memory(a.grad, b.grad)
    assert a.data.__array_interface__ == b.data.__array_interface__
    # a contiguous run of an arena (the second layer's weight and bias) is used in place too
    third = optim.SGD(l2.parameters())
    assert np.shares_memory(third._arenas[0][0].data, a.data)


def test_optimizer_on_a_subset_keeps_earlier_optimizer_working():
    """A second optimizer over a non-contiguous subset of packed parameters (the weights
    only) leaves them in place, as several runs: both optimizers keep reaching the layers."""
    l1, l2 = two_linears()
    params = l1.parameters() + l2.parameters()
    first = optim.SGD(params, lr=0.1)
    second = optim.SGD([l1.weight, l2.weight], lr=0.01)
    arena = first._arenas[0][0]
    assert all(np.shares_memory(p.data, arena.data) for p in params)
    assert len(second._arenas[0][0].runs) == 2
    for p in params:
        p.grad[...] = 1
    before = [p.data.copy() for p in params]
    first.step()
    for p, b in zip(params, before):
        assert_close(p.data, b - np.float32(0.1))
    second.step()
    assert_close(l1.bias.data, before[1] - np.float32(0.1))
    for p, b in ((l1.weight, before[0]), (l2.weight, before[2])):
        assert_close(p.data, b - np.float32(0.1) - np.float32(0.01))
    second.zero_grad()
    assert not l1.weight.grad.any() and l1.bias.grad.all()
    assert optim.clip_grad_norm_(params, 1e9) == math.sqrt(l1.bias.data.size + l2.bias.data.size)


def test_parameters_that_are_views_train_in_place():
    """Parameters that do not own their memory are not packed; the step is still right."""
    base = np.arange(12.0)
    a, b = Parameter(base.reshape(3, 4)), Parameter(np.zeros(4))
    opt = optim.Adam([a, b], lr=0.1)
    ref = [Parameter(np.arange(12.0).reshape(3, 4).copy()), Parameter(np.zeros(4))]
    ref_opt = optim.Adam(ref, lr=0.1)
    for p in (a, b, *ref):
        p.grad[...] = 0.5
    opt.step()
    ref_opt.step()
    assert np.shares_memory(a.data, base)
    for p, r in zip((a, b), ref):
        assert bitwise_equal(p.data, r.data)


def test_zero_grad_zeroes_every_group():
    params = make_params()
    w, b = split(params)
    opt = optim.SGD([{"params": w}, {"params": b}])
    for p in params:
        p.grad[...] = 3.0
    opt.zero_grad()
    assert not any(p.grad.any() for p in params)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_grad_large_buffers_on_threads(backend, dtype, threads):
    """A buffer of several parallel chunks (NaN included) is zeroed to the last element, and
    the parameters next to it are not touched."""
    fastnn.set_num_threads(2)
    params = [fastnn.Parameter(np.ones(n, dtype)) for n in (100_001, 200_001)]
    opt = optim.Adam(params)
    for p in params:
        p.grad[...] = np.nan
    with fastnn.use_backend(backend):
        opt.zero_grad()
    for p in params:
        assert not p.grad.any() and not np.isnan(p.grad).any()
        assert (p.data == 1).all()


# ------------------------------------------------------------------ textbook forms


def test_textbook_momentum_equals_sgd_momentum():
    lr, mu = 0.05, 0.9
    grads = grad_sequence()
    params = make_params()
    train(optim.SGD(params, lr=lr, momentum=mu), params, grads)
    ps = [p.data.copy() for p in make_params()]
    vs = [np.zeros_like(p) for p in ps]
    for gs in grads:
        for p, v, g in zip(ps, vs, gs):
            v[...] = mu * v - lr * g
            p += v
    for a, r in zip(params, ps):
        assert_close(a.data, r, np.float64)


def test_textbook_adagrad_equals_adagrad():
    lr, eps = 0.1, 1e-8
    grads = grad_sequence()
    params = make_params()
    train(optim.Adagrad(params, lr=lr, eps=eps), params, grads)
    ps = [p.data.copy() for p in make_params()]
    ss = [np.zeros_like(p) for p in ps]
    for gs in grads:
        for p, s, g in zip(ps, ss, gs):
            s += g * g
            p -= lr * g / (np.sqrt(s) + eps)
    for a, r in zip(params, ps):
        assert_close(a.data, r, np.float64)


def test_textbook_rmsprop_equals_rmsprop():
    lr, a, eps = 0.01, 0.9, 1e-6
    grads = grad_sequence()
    params = make_params()
    train(optim.RMSprop(params, lr=lr, alpha=a, eps=eps), params, grads)
    ps = [p.data.copy() for p in make_params()]
    ss = [np.zeros_like(p) for p in ps]
    for gs in grads:
        for p, s, g in zip(ps, ss, gs):
            s[...] = a * s + (1 - a) * g * g
            p -= lr * g / (np.sqrt(s) + eps)
    for x, r in zip(params, ps):
        assert_close(x.data, r, np.float64)


def test_textbook_adam_equals_adam():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    grads = grad_sequence()
    params = make_params()
    train(optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps), params, grads)
    ps = [p.data.copy() for p in make_params()]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, 1):
        for p, m, v, g in zip(ps, ms, vs, gs):
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            p -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    for x, r in zip(params, ps):
        assert_close(x.data, r, np.float64)


# ------------------------------------------------------------------ bad arguments

BAD = [
    (optim.SGD, dict(lr=-0.1), "lr"),
    (optim.SGD, dict(lr=float("nan")), "lr"),
    (optim.SGD, dict(lr="0.1"), "lr"),
    (optim.SGD, dict(momentum=-0.9), "momentum"),
    (optim.SGD, dict(dampening=-0.1), "dampening"),
    (optim.SGD, dict(weight_decay=-1e-4), "weight_decay"),
    (optim.SGD, dict(l1=-1e-4), "l1"),
    (optim.SGD, dict(nesterov=True), "nesterov"),
    (optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    (optim.Adagrad, dict(lr=-0.1), "lr"),
    (optim.Adagrad, dict(lr_decay=-0.1), "lr_decay"),
    (optim.Adagrad, dict(weight_decay=-0.1), "weight_decay"),
    (optim.Adagrad, dict(initial_accumulator_value=-0.1), "initial_accumulator_value"),
    (optim.Adagrad, dict(eps=-1e-10), "eps"),
    (optim.Adagrad, dict(l1=-0.1), "l1"),
    (optim.RMSprop, dict(lr=-0.1), "lr"),
    (optim.RMSprop, dict(alpha=-0.1), "alpha"),
    (optim.RMSprop, dict(alpha=1.1), "alpha"),
    (optim.RMSprop, dict(eps=-1e-8), "eps"),
    (optim.RMSprop, dict(momentum=-0.1), "momentum"),
    (optim.RMSprop, dict(weight_decay=-0.1), "weight_decay"),
    (optim.RMSprop, dict(l1=-0.1), "l1"),
    (optim.Adam, dict(lr=-0.1), "lr"),
    (optim.Adam, dict(eps=-1e-8), "eps"),
    (optim.Adam, dict(weight_decay=-0.1), "weight_decay"),
    (optim.Adam, dict(l1=-0.1), "l1"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "betas[0]"),
    (optim.Adam, dict(betas=(-0.1, 0.999)), "betas[0]"),
    (optim.Adam, dict(betas=(0.9, 1.0)), "betas[1]"),
    (optim.Adam, dict(betas=(0.9, 1.5)), "betas[1]"),
    (optim.Adam, dict(betas=(0.9,)), "betas"),
    (optim.AdamW, dict(betas=(0.9, 1.0)), "betas[1]"),
    (optim.AdamW, dict(weight_decay=-0.01), "weight_decay"),
]


@pytest.mark.parametrize("cls, kw, name", [pytest.param(c, k, n, id=f"{c.__name__}-{k}")
                                           for c, k, n in BAD])
def test_bad_hyperparameter_raises(cls, kw, name):
    pattern = "^" + re.escape(name) + r"(?!\w)"
    with pytest.raises(ValueError, match=pattern):
        cls(make_params(), **kw)
    # the same value in a parameter group is checked too
    with pytest.raises(ValueError, match=pattern):
        cls([{"params": make_params(), **kw}])


def test_boundary_hyperparameters_accepted():
    optim.RMSprop(make_params(), alpha=0.0)
    optim.RMSprop(make_params(), alpha=1.0)
    optim.Adam(make_params(), betas=(0.0, 0.0), lr=0.0, eps=0.0)
    optim.SGD(make_params(), lr=0.0, momentum=0.9, nesterov=True)


def test_bad_params_raise():
    with pytest.raises(ValueError, match="params"):
        optim.SGD([])
    with pytest.raises(TypeError, match="params"):
        optim.SGD([np.zeros(3)])
    with pytest.raises(TypeError, match="params"):
        optim.Adam([{"params": [Parameter(np.zeros(2)), np.zeros(2)]}])
    p, q = make_params()[:2]
    with pytest.raises(ValueError, match="params"):
        optim.SGD([{"params": [p]}, {"params": [q, p]}])
    with pytest.raises(ValueError, match="params"):
        optim.SGD([p, p])
    with pytest.raises(ValueError, match="momentun"):
        optim.SGD([{"params": [p], "momentun": 0.9}])
    with pytest.raises(ValueError, match="params"):
        optim.SGD([{"params": []}])


def test_load_state_dict_of_mismatched_optimizer_raises():
    opt = optim.Adam(make_params(), amsgrad=True)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="state_dict"):  # fewer parameters
        optim.Adam(make_params()[:2]).load_state_dict(sd)
    with pytest.raises(ValueError, match="state_dict"):  # same count, other sizes
        optim.Adam(make_params([(7, 5), (5,), (3, 4, 3), (1,)])).load_state_dict(sd)
    with pytest.raises(ValueError, match="state_dict"):  # two groups
        w, b = split(make_params())
        optim.Adam([{"params": w}, {"params": b}]).load_state_dict(sd)


def test_load_state_dict_of_another_optimizer_class_raises():
    params = make_params()
    adam = optim.Adam(params)
    adam.step()
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="state_dict"):
        sgd.load_state_dict(adam.state_dict())
    assert sgd.param_groups[0]["lr"] == 0.1 and "betas" not in sgd.param_groups[0]
    with pytest.raises(ValueError, match="state_dict"):  # AdamW is not Adam
        optim.AdamW(params).load_state_dict(adam.state_dict())


# ------------------------------------------------------------------ gradient clipping


def clip_problem(dtype=np.float64, scale=1.0, seed=6):
    params = make_params(dtype=dtype)
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad[...] = scale * rng.standard_normal(p.grad.shape)
    return params


def all_grads(params):
    return np.concatenate([p.grad.ravel() for p in params]).astype(np.float64)


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "arena"])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_clip_grad_norm_scales_to_max_norm(backend, packed):
    params = clip_problem()
    if packed:
        optim.SGD(params)
    g0 = all_grads(params)
    norm0 = np.linalg.norm(g0)
    with fastnn.use_backend(backend):
        total = optim.clip_grad_norm_(params, 1.0)
    assert isinstance(total, float)
    assert abs(total - norm0) <= 1e-12 * norm0
    assert norm0 > 1
    assert abs(np.linalg.norm(all_grads(params)) - 1.0) <= 1e-6
    assert_close(all_grads(params), g0 * (1.0 / (norm0 + 1e-6)))


def test_clip_grad_norm_below_max_norm_changes_nothing():
    params = clip_problem(np.float32)
    g0 = all_grads(params)
    total = optim.clip_grad_norm_(params, 1e3)
    assert abs(total - np.linalg.norm(g0)) <= 1e-12 * total  # summed in float64
    assert bitwise_equal(all_grads(params), g0)


def test_clip_grad_norm_single_parameter_and_mixed_dtypes():
    p = Parameter(np.array([3.0, 4.0]))
    p.grad[...] = p.data
    assert optim.clip_grad_norm_(p, 1.0) == 5.0
    assert_close(p.grad, np.array([3.0, 4.0]) / (5 + 1e-6))
    a, b = make_params([(3,)], np.float32)[0], make_params([(4,)], np.float64)[0]
    a.grad[...], b.grad[...] = 1.0, 2.0
    assert abs(optim.clip_grad_norm_([a, b], 100.0) - math.sqrt(3 + 16)) <= 1e-12 * 5


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    params = clip_problem()
    tparams = [torch.zeros(p.grad.shape, dtype=torch.float64, requires_grad=True)
               for p in params]
    for t, p in zip(tparams, params):
        t.grad = torch.from_numpy(p.grad.copy())
    want = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
    got = optim.clip_grad_norm_(params, max_norm)
    assert abs(got - want) <= 1e-12 * want
    for t, p in zip(tparams, params):
        assert_close(p.grad, t.grad.numpy())


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_clip_grad_value_clamps(backend):
    params = clip_problem(np.float32, scale=2.0)
    want = [np.clip(p.grad, -0.5, 0.5) for p in params]
    with fastnn.use_backend(backend):
        optim.clip_grad_value_(params, 0.5)
    for p, w in zip(params, want):
        assert bitwise_equal(p.grad, w)


def test_clip_bad_arguments_raise():
    params = clip_problem()
    for norm_type in (1, 1.0, 3, float("inf")):
        with pytest.raises(ValueError, match="norm_type"):
            optim.clip_grad_norm_(params, 1.0, norm_type=norm_type)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm_(params, -1.0)
    with pytest.raises(ValueError, match="clip_value"):
        optim.clip_grad_value_(params, -1.0)
    with pytest.raises(TypeError, match="params"):
        optim.clip_grad_norm_([np.zeros(3)], 1.0)


# ------------------------------------------------------------------ lr schedulers

EPOCHS = 30
SCHEDULERS = [
    pytest.param("StepLR", dict(step_size=7, gamma=0.3), id="StepLR"),
    pytest.param("MultiStepLR", dict(milestones=[12, 3, 20], gamma=0.5), id="MultiStepLR"),
    pytest.param("ExponentialLR", dict(gamma=0.9), id="ExponentialLR"),
    pytest.param("CosineAnnealingLR", dict(T_max=12, eta_min=0.001), id="Cosine"),
    pytest.param("CosineAnnealingLR", dict(T_max=10), id="Cosine-eta0"),
]


def torch_and_fastnn_sgd(torch, lrs=(0.1, 0.05)):
    t = [torch.zeros(2, requires_grad=True) for _ in lrs]
    topt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(t, lrs)], lr=lrs[0])
    fopt = optim.SGD([{"params": [Parameter(np.zeros(2))], "lr": lr} for lr in lrs])
    return topt, fopt


def assert_lrs_close(got, want, base=0.1):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert abs(g - w) <= 1e-12 * max(abs(w), 1e-3 * base), (got, want)


def assert_schedules_agree(topt, fopt, tsched, fsched):
    """EPOCHS epochs of torch's and fastnn's schedulers side by side, the learning rates
    compared after each; returns fastnn's first group's learning rates."""
    assert_lrs_close(fsched.get_last_lr(), tsched.get_last_lr())
    lrs = []
    for _ in range(EPOCHS):
        topt.step()
        fopt.step()
        tsched.step()
        fsched.step()
        assert_lrs_close(fsched.get_last_lr(), tsched.get_last_lr())
        assert_lrs_close([g["lr"] for g in fopt.param_groups], tsched.get_last_lr())
        lrs.append(fsched.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("name, kw", SCHEDULERS)
def test_scheduler_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    topt, fopt = torch_and_fastnn_sgd(torch)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    fsched = getattr(lr_scheduler, name)(fopt, **kw)
    assert_schedules_agree(topt, fopt, tsched, fsched)


def warmup_then(module, opt, then, **kw):
    """A linear warm-up of 5 epochs into schedule `then`, by module (torch's or fastnn's
    lr_scheduler)."""
    warmup = module.LinearLR(opt, start_factor=0.1, total_iters=5)
    return module.SequentialLR(opt, [warmup, getattr(module, then)(opt, **kw)], milestones=[5])


@pytest.mark.parametrize("then, kw", [("CosineAnnealingLR", dict(T_max=20, eta_min=0.001)),
                                      ("StepLR", dict(step_size=4, gamma=0.5)),
                                      ("LinearLR", dict(start_factor=1.0, end_factor=0.2,
                                                        total_iters=10))])
def test_warmup_into_another_schedule_matches_torch(then, kw):
    torch = pytest.importorskip("torch")
    topt, fopt = torch_and_fastnn_sgd(torch)
    tsched = warmup_then(torch.optim.lr_scheduler, topt, then, **kw)
    fsched = warmup_then(lr_scheduler, fopt, then, **kw)
    lrs = assert_schedules_agree(topt, fopt, tsched, fsched)
    assert len({round(lr, 12) for lr in lrs}) > 8


@pytest.mark.parametrize("opt_name, opt_kw", [("SGD", dict(momentum=0.9)),
                                              ("Adam", dict(betas=(0.9, 0.99)))])
@pytest.mark.parametrize("kw", [dict(), dict(anneal_strategy="linear"),
                                dict(three_phase=True, pct_start=0.25),
                                dict(cycle_momentum=False, div_factor=10.0,
                                     final_div_factor=100.0)],
                         ids=["cos", "linear", "three-phase", "no-momentum"])
def test_one_cycle_matches_torch(opt_name, opt_kw, kw):
    torch = pytest.importorskip("torch")
    t = [torch.zeros(2, requires_grad=True) for _ in range(2)]
    topt = getattr(torch.optim, opt_name)([{"params": [t[0]]}, {"params": [t[1]]}], lr=0.1,
                                          **opt_kw)
    fopt = getattr(optim, opt_name)([{"params": [Parameter(np.zeros(2))]},
                                     {"params": [Parameter(np.zeros(2))]}], lr=0.1, **opt_kw)
    args = dict(max_lr=[0.5, 0.2], total_steps=40, **kw)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, **args)
    fsched = lr_scheduler.OneCycleLR(fopt, **args)
    key = "betas" if opt_name == "Adam" else "momentum"
    for step in range(41):
        if step:
            topt.step()
            fopt.step()
            tsched.step()
            fsched.step()
        assert_lrs_close(fsched.get_last_lr(), tsched.get_last_lr(), base=0.5)
        for fg, tg in zip(fopt.param_groups, topt.param_groups):
            assert np.allclose(fg[key], tg[key], rtol=1e-12, atol=0), (step, fg[key], tg[key])
    with pytest.raises(ValueError, match="stepped 41 times, more than total_steps"):
        fsched.step()


@pytest.mark.parametrize("make, match", [
    (lambda o: lr_scheduler.LinearLR(o, start_factor=0.0), "start_factor"),
    (lambda o: lr_scheduler.LinearLR(o, end_factor=1.5), "end_factor"),
    (lambda o: lr_scheduler.LinearLR(o, total_iters=0), "total_iters"),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o)], [5]), "milestones"),
    (lambda o: lr_scheduler.SequentialLR(o, [], []), "schedulers"),
    (lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o), lr_scheduler.ReduceLROnPlateau(o)], [5]),
     "schedulers\\[1\\]"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1), "total_steps"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5),
     "pct_start"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10,
                                       anneal_strategy="exp"), "anneal_strategy"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=10), "max_lr"),
    (lambda o: lr_scheduler.OneCycleLR(optim.Adagrad(make_params()), max_lr=0.1,
                                       total_steps=10), "cycle_momentum"),
])
def test_warmup_and_one_cycle_bad_arguments_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=r"^" + match):
        make(optim.SGD(make_params(), lr=0.1))


def test_cosine_closed_form():
    fopt = optim.SGD(make_params(), lr=0.2)
    sched = lr_scheduler.CosineAnnealingLR(fopt, T_max=10, eta_min=0.01)
    for e in range(1, EPOCHS + 1):
        sched.step()
        want = 0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * e / 10)) / 2
        assert abs(sched.get_last_lr()[0] - want) <= 1e-12 * want


# metrics that improve, stall (patience), improve by less than the threshold, and stall long
# enough to reach min_lr, with cooldown periods after each reduction
PLATEAU_METRICS = [10, 9, 9, 9, 9, 8.9995, 8.9995, 8, 8, 8, 8, 8, 7.99, 7.99, 7.99, 7.99,
                   7.99, 7.99, 7.99, 7.99, 7.99, 7.99, 7.99, 7.99, 7.99, 5, 5, 5, 5, 5]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode, threshold", [("rel", 1e-3), ("abs", 0.005)])
@pytest.mark.parametrize("patience, cooldown", [(2, 0), (1, 2), (0, 1)])
def test_reduce_lr_on_plateau_matches_torch(mode, threshold_mode, threshold, patience,
                                            cooldown):
    torch = pytest.importorskip("torch")
    topt, fopt = torch_and_fastnn_sgd(torch)
    kw = dict(mode=mode, factor=0.5, patience=patience, threshold=threshold,
              threshold_mode=threshold_mode, cooldown=cooldown, min_lr=[0.01, 0.02])
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    fsched = lr_scheduler.ReduceLROnPlateau(fopt, **kw)
    assert len(PLATEAU_METRICS) == EPOCHS
    lrs = set()
    for m in PLATEAU_METRICS:
        m = m if mode == "min" else 20 - m  # improving upwards
        tsched.step(m)
        fsched.step(m)
        assert fsched.get_last_lr() == tsched.get_last_lr()
        assert [g["lr"] for g in fopt.param_groups] == [g["lr"] for g in topt.param_groups]
        lrs.add(tuple(fsched.get_last_lr()))
    assert len(lrs) >= 3  # some reductions happened
    assert fsched.get_last_lr() == [0.01, 0.02] or patience == 2  # reached min_lr


def test_reduce_lr_on_plateau_eps():
    """A reduction smaller than eps (1e-8) is skipped: 1e-7 -> 5e-8 -> 2.5e-8 -> 1.25e-8,
    then the change to 6.25e-9 is below eps and the lr stays."""
    fopt = optim.SGD(make_params(), lr=1e-7)
    sched = lr_scheduler.ReduceLROnPlateau(fopt, patience=0, factor=0.5)
    sched.step(1.0)  # the first metric is an improvement
    sched.step(1.0)
    assert fopt.param_groups[0]["lr"] == 5e-8
    for _ in range(8):
        sched.step(1.0)
    assert fopt.param_groups[0]["lr"] == 1.25e-8


SCHEDULER_BAD = [
    ("StepLR", dict(step_size=0), "step_size"),
    ("StepLR", dict(step_size=2.5), "step_size"),
    ("StepLR", dict(step_size=3, gamma=-0.1), "gamma"),
    ("MultiStepLR", dict(milestones=[3, 0]), "milestones"),
    ("MultiStepLR", dict(milestones=[3], gamma=0), "gamma"),
    ("ExponentialLR", dict(gamma=-1.0), "gamma"),
    ("CosineAnnealingLR", dict(T_max=0), "T_max"),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=-0.1), "eta_min"),
    ("ReduceLROnPlateau", dict(mode="mean"), "mode"),
    ("ReduceLROnPlateau", dict(threshold_mode="ratio"), "threshold_mode"),
    ("ReduceLROnPlateau", dict(factor=1.0), "factor"),
    ("ReduceLROnPlateau", dict(factor=0.0), "factor"),
    ("ReduceLROnPlateau", dict(patience=-1), "patience"),
    ("ReduceLROnPlateau", dict(cooldown=-1), "cooldown"),
    ("ReduceLROnPlateau", dict(min_lr=[0.1, 0.2]), "min_lr"),
]


@pytest.mark.parametrize("name, kw, arg", [pytest.param(*b, id=f"{b[0]}-{b[2]}-{i}")
                                           for i, b in enumerate(SCHEDULER_BAD)])
def test_scheduler_bad_arguments_raise(name, kw, arg):
    with pytest.raises(ValueError, match=r"^" + re.escape(arg) + r"\b"):
        getattr(lr_scheduler, name)(optim.SGD(make_params(), lr=0.1), **kw)


def test_scheduler_drives_training_lr():
    """The lr a scheduler sets is the one the next step uses."""
    params = make_params()
    opt = optim.SGD(params, lr=0.1)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    sched.step()
    before = params[0].data.copy()
    params[0].grad[...] = 1.0
    opt.step()
    assert_close(params[0].data, before - 0.01)


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_eps_hat_is_the_textbook_update_written_out(cls):
    """lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); p -= lr_t m / (sqrt(v) + eps) (Kingma & Ba's
    efficient ordering, Keras, "Deep Learning from Scratch"), in float64, 200 steps of a
    fixed gradient sequence (AdamW: weight decay 0, so the two classes agree)."""
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(50)
    grads = rng.standard_normal((200, 50)) * np.geomspace(1e-6, 1, 50)  # eps matters for some
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-7
    p, m, v = p0.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate(grads, 1):
        m += (1 - b1) * (g - m)
        v += (1 - b2) * (g * g - v)
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        p -= lr_t * m / (np.sqrt(v) + eps)
    param = fastnn.Parameter(p0.copy())
    kwargs = dict(lr=lr, betas=(b1, b2), eps=eps, eps_hat=True)
    if cls == "AdamW":
        kwargs["weight_decay"] = 0.0
    opt = getattr(optim, cls)([param], **kwargs)
    for g in grads:
        param.grad[...] = g
        opt.step()
    np.testing.assert_allclose(param.data, p, rtol=1e-12, atol=1e-14)
    torch_form = fastnn.Parameter(p0.copy())
    opt = optim.Adam([torch_form], lr=lr, betas=(b1, b2), eps=eps)
    for g in grads:
        torch_form.grad[...] = g
        opt.step()
    assert np.abs(torch_form.data - p).max() > 1e-4  # the option changes the answer


def test_eps_hat_must_be_a_bool():
    with pytest.raises(TypeError, match="eps_hat"):
        optim.Adam([fastnn.Parameter(np.zeros(2))], eps_hat="yes")
