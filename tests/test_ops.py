"""The kernel table (fastnn._native.KERNELS), Kernel, Plan and the two Ops backends.

Every kernel is called three ways on the same arguments: by the native backend's method (a
Kernel built and run), by a Plan replaying that Kernel (the recorded path of fastnn.fused)
and by the reference backend (the NumPy twin, which takes the arguments by name in its own
code). Distinct sizes for every dimension and distinct values in every array mean that an
argument taken in another order on any path gives another result.
"""
import inspect

import numpy as np
import pytest

import fastnn
from fastnn import _native
from fastnn.ops import NativeOps, ReferenceOps

# one size per dimension letter of the table, all different
SIZES = {"B": 5, "C": 7, "O": 3, "D": 4, "V": 6, "N": 9, "K": 8, "n": 11}
STAR = (3, 2)  # the shape of the "*" arrays
SCALARS = {"act": 2, "eps": 1e-5, "momentum": 0.5, "training": 1, "negative_slope": 0.1,
           "p": 0.3, "seed": 7, "offset": 11, "scale": 0.5, "lr": 0.1, "dampening": 0.1,
           "weight_decay": 0.01, "l1": 0.001, "nesterov": 0, "first": 0, "clr": 0.1,
           "alpha": 0.9, "beta1": 0.9, "beta2": 0.99, "decoupled": 0, "step": 3, "s": 0.5,
           "lo": 0.7, "hi": 1.2, "unbiased": 1, "ignore_index": 3, "smoothing": 0.2,
           "mean": 1, "dloss": 0.7}
SCRATCH = {"work"}  # written by the C kernels only, as working space


def arguments(name, dtype, seed=0):
    """Fresh arguments for kernel `name`: positive floats (square roots and logs stay
    defined), indices in range, every array distinct."""
    spec = _native.SPECS[name]
    rng = np.random.default_rng(seed)
    args = []
    for arg, shape in zip(spec.array_names, spec.shapes):
        dims = (STAR if shape.startswith("*") else ()) + tuple(
            SIZES[letter] for letter in shape.lstrip("*"))
        flags = _native.KERNELS[name][1].split()[len(args)].split(":")[1]
        if "#" in flags:
            bound = SIZES["V"] if arg == "idx" else SIZES["K"]
            args.append(rng.integers(0, bound, dims, dtype=np.int64))
        else:
            kind = np.float64 if "%" in flags else dtype
            # RMSprop's centred variance square_avg - grad_avg**2 stays positive
            high = 0.15 if arg == "grad_avg" else 1.5
            args.append(rng.uniform(0.5 * high / 1.5, high, dims).astype(kind))
    return args + [SCALARS[s] for s in spec.scalar_names]


def outputs(name, args, result):
    spec = _native.SPECS[name]
    written = [a for a, f, n in zip(args, _native.KERNELS[name][1].split(), spec.array_names)
               if "!" in f.split(":")[1] and n not in SCRATCH]
    return written, result


@pytest.mark.parametrize("name", sorted(_native.KERNELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_the_same_on_every_path(name, dtype):
    direct = arguments(name, dtype)
    result = NativeOps().__getattribute__(name)(*direct)

    replayed = arguments(name, dtype)
    plan = _native.Plan()
    plan.add(_native.Kernel(name, tuple(replayed)), None, None)
    replay_result = plan.run(np.zeros(1), np.zeros(1, np.int64))

    twin = arguments(name, dtype)
    twin_result = ReferenceOps().__getattribute__(name)(*twin)

    got, value = outputs(name, direct, result)
    again, _ = outputs(name, replayed, replay_result)
    want, want_value = outputs(name, twin, twin_result)
    assert got or value is not None, f"{name}: no output compared"
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: replayed != direct")
    if name == "cross_entropy_forward":  # the one value a Plan returns
        assert replay_result == value
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"{name}: != twin")
    if want_value is not None:
        np.testing.assert_allclose(value, want_value, rtol=rtol)


@pytest.mark.parametrize("name", sorted(_native.KERNELS))
def test_the_twin_takes_the_arguments_of_the_table(name):
    params = list(inspect.signature(getattr(ReferenceOps, name)).parameters)[1:]
    assert tuple(params) == _native.SPECS[name].arguments


def test_a_kernel_checks_its_arguments_against_the_table():
    out, x, w, b = (np.zeros((4, 3), np.float32), np.ones((4, 5), np.float32),
                    np.ones((3, 5), np.float32), np.ones(3, np.float32))
    _native.Kernel("linear_forward", (out, x, w, b, 0)).run()
    np.testing.assert_array_equal(out, 6)
    with pytest.raises(ValueError, match="x: dimension B is 3, expected 4"):
        _native.Kernel("linear_forward", (out, w, x, b, 0))  # x and weight swapped
    with pytest.raises(TypeError, match="expected 5 arguments"):
        _native.Kernel("linear_forward", (out, x, w, b))
    with pytest.raises(TypeError, match="x is required, got None"):
        _native.Kernel("linear_forward", (out, None, w, b, 0))
    with pytest.raises(TypeError, match="weight: expected dtype float32, got float64"):
        _native.Kernel("linear_forward", (out, x, w.astype(np.float64), b, 0))
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        _native.Kernel("activation_forward", (x, x, 0, 0.0))
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        out.flags.writeable = False
        _native.Kernel("linear_forward", (out, x, w, b, 0))
    with pytest.raises(ValueError, match="act: expected one of"):
        _native.Kernel("linear_forward", (np.zeros((4, 3), np.float32), x, w, b, 99))
    with pytest.raises(TypeError, match="work is required"):  # read unless act is none
        _native.Kernel("linear_backward", (None, None, None, None, out, x, w, out.copy(), 2))
    with pytest.raises(ValueError, match="name: expected a kernel"):
        _native.Kernel("nope", ())


def test_update_accepts_only_what_the_kernel_was_checked_for():
    out, x, w = np.zeros((4, 3)), np.ones((4, 5)), np.ones((3, 5))
    kernel = _native.Kernel("linear_forward", (out, x, w, None, 0))
    x2 = np.full((4, 5), 2.0)
    assert kernel.update((out, x2, w, None, 0))
    kernel.run()
    np.testing.assert_array_equal(out, 10)
    assert kernel.args[1] is x2
    assert not kernel.update((out, np.ones((2, 5)), w, None, 0))  # another shape
    assert not kernel.update((out, np.ones((4, 5), np.float32), w, None, 0))  # dtype
    assert not kernel.update((out, np.ones((5, 4)).T, w, None, 0))  # layout
    assert not kernel.update((out, x2, w, np.ones(3), 0))  # None before: check in full
    assert not kernel.update((out, x2, w, None, 9))  # an unknown act
    overlapping = np.zeros(32)
    assert not kernel.update((overlapping[:12].reshape(4, 3), overlapping[:20].reshape(4, 5),
                              w, None, 0))
    assert kernel.args[1] is x2  # unchanged after a refusal
    sgd = _native.Kernel("sgd_step", (np.ones(3), None, np.ones(3), 0.5, 0, 0, 0, 0, 0, 0))
    assert not sgd.update((np.zeros(3), None, np.ones(3), "fast", 0, 0, 0, 0, 0, 0))
    assert not sgd.update((np.zeros(3), None, np.ones(3), 0.5, 0, 0, 0, 0, 0, 2**70))
    p = sgd.args[0]
    sgd.run()  # still the call it was: p -= 0.5 * 1
    np.testing.assert_array_equal(p, 0.5)


def test_backends_switched_mid_run_train_like_either_backend():
    """Steps alternate native / reference (through FusedStep, which replays only natively)
    and end where a run on the reference backend alone ends (float64)."""
    x = np.random.default_rng(0).standard_normal((16, 6))
    y = np.random.default_rng(1).integers(0, 3, 16)

    def run(backends):
        fastnn.manual_seed(3)
        model = fastnn.Sequential(
            fastnn.Linear(6, 8, dtype=np.float64),
            fastnn.BatchNorm1d(8, dtype=np.float64, activation="relu"),
            fastnn.Linear(8, 3, dtype=np.float64))
        # (SGD: well conditioned, so the two backends' rounding stays at a few ulps)
        opt = fastnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = fastnn.fused.FusedStep(model, fastnn.CrossEntropyLoss())
        losses = []
        for backend in backends:
            with fastnn.use_backend(backend):
                opt.zero_grad()
                losses.append(step(x, y))
                opt.step()
            # the reference backend takes the layer path, and the next native step records
            assert (step._plan is not None) == (backend == "native")
        return losses, [p.data.copy() for p in model.parameters()], model[1].running_var

    mixed = run(["native", "native", "reference", "native", "reference", "reference",
                 "native", "native"])
    reference = run(["reference"] * 8)
    np.testing.assert_allclose(mixed[0], reference[0], rtol=1e-12)
    for a, b in zip(mixed[1] + [mixed[2]], reference[1] + [reference[2]]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_index_arrays_are_checked_on_every_call():
    """A batch buffer refilled in place keeps its identity: the range is checked anyway."""
    out, weight = np.zeros((4, 2)), np.ones((3, 2))
    idx = np.array([0, 1, 2, 1])
    kernel = _native.Kernel("embedding_forward", (out, weight, idx))
    with pytest.raises(IndexError, match="idx: 3 is out of range"):
        _native.Kernel("embedding_forward", (out, weight, np.array([0, 3, 1, 1])))
    idx[1] = 3
    assert not kernel.update((out, weight, idx))
    idx[1] = -1
    assert not kernel.update((out, weight, idx))
    idx[1] = 2
    assert kernel.update((out, weight, idx))
    layer = fastnn.Embedding(3, 2, dtype=np.float64)
    batch = np.array([[0, 1], [2, 1]])
    layer(batch)
    batch[0, 0] = 5
    with pytest.raises(IndexError, match="idx: index 5 is out of range"):
        layer(batch)
