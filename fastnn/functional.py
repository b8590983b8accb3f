"""The public kernel API: NumPy arrays in, NumPy arrays out, optional `out=`.

Each function validates its arguments once, then calls the backend in use
(fastnn.runtime.ops, chosen by fastnn.set_backend(): the C/OpenMP kernels or their NumPy
twin, fastnn.reference). Inputs that are not C-contiguous are copied once; output buffers
must be C-contiguous.
"""
import numpy as np

from . import _native, runtime
from . import _validate as check

__all__ = [
    "ACTIVATIONS",
    "ELEMENTWISE",
    "activation_backward",
    "activation_forward",
    "adagrad_step",
    "adam_step",
    "batchnorm_backward",
    "batchnorm_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_apply",
    "embedding_backward",
    "embedding_forward",
    "clamp_inplace",
    "mse_backward",
    "mse_forward",
    "rmsprop_step",
    "scale_inplace",
    "sgd_step",
    "softmax_backward",
    "softmax_forward",
    "sum_squares",
    "linear_backward",
    "linear_forward",
]

# Activation names and their codes in csrc/fastnn.h (FASTNN_ACT_*): those that linear and
# batchnorm fuse, and all the elementwise ones.
ACTIVATIONS, ELEMENTWISE = _native.ACTIVATIONS, _native.ELEMENTWISE


def _linear_args(x, weight, bias):
    x = check.float_array("x", x, 2)
    weight = check.float_array("weight", weight, 2, x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"x: expected shape (batch, {weight.shape[1]}) to match weight {weight.shape}, "
            f"got {x.shape}"
        )
    if bias is not None:
        bias = check.float_array("bias", bias, 1, x.dtype)
        check.shape("bias", bias, (weight.shape[0],))
    return x, weight, bias


def _forward_output(y, activation, shape, dtype):
    """The forward output a fused activation's backward reads (None when it reads none)."""
    if activation == "none":
        return None
    if y is None:
        raise ValueError(f"y: the forward output is needed for activation={activation!r}")
    y = check.float_array("y", y, 2, dtype)
    check.shape("y", y, shape)
    return y


def linear_forward(x, weight, bias=None, activation="none", out=None):
    """y = act(x @ weight.T + bias).

    x: (B, C) float32 or float64; weight: (OC, C) and bias: (OC,) or None, same dtype;
    activation: "none", "relu", "tanh" or "sigmoid"; out: optional (B, OC) array to write into.
    Returns y (B, OC).
    """
    x, weight, bias = _linear_args(x, weight, bias)
    check.choice("activation", activation, ACTIVATIONS)
    out_shape = (x.shape[0], weight.shape[0])
    if out is None:
        out = np.empty(out_shape, dtype=x.dtype)
    else:
        check.output_array("out", out, out_shape, x.dtype)
        check.disjoint(("out", "x", "weight", "bias"), (out, x, weight, bias), 1)
    runtime.ops.linear_forward(out, x, weight, bias, ACTIVATIONS[activation])
    return out



def linear_backward(dy, x, weight, y=None, activation="none", dweight=None, dbias=None,
                    dx=None, work=None):
    """Backward of linear_forward.

    dy: (B, OC) gradient of the loss w.r.t. the output; x (B, C), weight (OC, C): the forward
    inputs; y (B, OC): the forward output, needed unless activation is "none".
    Accumulates (+=) dweight (OC, C) and dbias (OC,) when given. Returns dx (B, C), written
    into `dx` when given. work: optional (B, OC) scratch buffer, reused to avoid allocating.
    """
    x, weight, _ = _linear_args(x, weight, None)
    check.choice("activation", activation, ACTIVATIONS)
    B, C, OC = x.shape[0], x.shape[1], weight.shape[0]
    dy = check.float_array("dy", dy, 2, x.dtype)
    check.shape("dy", dy, (B, OC))
    y = _forward_output(y, activation, (B, OC), x.dtype)
    if dweight is not None:
        check.output_array("dweight", dweight, (OC, C), x.dtype)
    if dbias is not None:
        check.output_array("dbias", dbias, (OC,), x.dtype)
    if dx is None:
        dx = np.empty((B, C), dtype=x.dtype)
    else:
        check.output_array("dx", dx, (B, C), x.dtype)
    if activation != "none":  # the native kernel's scratch for dz
        if work is None:
            work = np.empty((B, OC), dtype=x.dtype)
        else:
            check.output_array("work", work, (B, OC), x.dtype)
    else:
        work = None
    check.disjoint(("dx", "dweight", "dbias", "work", "dy", "x", "weight", "y"),
                   (dx, dweight, dbias, work, dy, x, weight, y), 4)
    runtime.ops.linear_backward(dx, dweight, dbias, work, dy, x, weight, y,
                                ACTIVATIONS[activation])
    return dx



def _channel_vector(name, a, C, dtype):
    if a is None:
        return None
    a = check.float_array(name, a, 1, dtype)
    check.shape(name, a, (C,))
    return a


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training=True, momentum=0.1, eps=1e-5, activation="none", out=None,
                      save_mean=None, save_invstd=None, running_var_unbiased=True):
    """BatchNorm1d over the batch axis of x, then an optional fused activation.

    x: (B, C) float32 or float64; weight (gamma), bias (beta): (C,) or None (no affine).
    training=True: normalise with the batch mean and biased variance and, when given, update
    running_mean and running_var (C,) in place with `momentum` (the unbiased variance goes
    into running_var, as in PyTorch; running_var_unbiased=False: the biased one, as the
    textbook's BatchNormalization keeps). training=False: normalise with the running statistics.
    activation: "none", "relu", "tanh" or "sigmoid". out (B, C), save_mean, save_invstd (C,):
    optional buffers. Returns (y, mean, invstd), invstd = 1 / sqrt(var + eps); the backward
    takes mean and invstd.

    y = act((x - mean) * (weight * invstd) + bias), centred first. PyTorch's CPU kernel
    computes x * alpha + (bias - mean * alpha) instead, which cancels in float32 for data far
    from zero (a constant channel of 1e4: |y - bias| 0.027 there, 0 here; N(1e4, 1) data: 2.6e-3
    against float64 there, 5.2e-4 here) and gives NaN for an infinite weight where this
    gives +-inf (NaN only where x == mean). A negative running_var in evaluation gives NaN,
    as there.
    """
    x = check.float_array("x", x, 2)
    B, C = x.shape
    weight = _channel_vector("weight", weight, C, x.dtype)
    bias = _channel_vector("bias", bias, C, x.dtype)
    check.choice("activation", activation, ACTIVATIONS)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if running_mean is not None:
        check.output_array("running_mean", running_mean, (C,), x.dtype)
        check.output_array("running_var", running_var, (C,), x.dtype)
    if training and B <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if not training and running_mean is None:
        raise ValueError("running_mean, running_var: needed when training=False")
    out = _output("out", out, (B, C), x.dtype)
    save_mean = _output("save_mean", save_mean, (C,), x.dtype)
    save_invstd = _output("save_invstd", save_invstd, (C,), x.dtype)
    check.disjoint(
        ("out", "save_mean", "save_invstd", "running_mean", "running_var", "x", "weight",
         "bias"),
        (out, save_mean, save_invstd, running_mean, running_var, x, weight, bias), 5)
    act = ACTIVATIONS[activation]
    if training:
        runtime.ops.batchnorm_forward_train(out, save_mean, save_invstd, running_mean,
                                            running_var, x, weight, bias, float(eps),
                                            float(momentum), act, bool(running_var_unbiased))
    else:
        runtime.ops.batchnorm_forward_eval(out, save_mean, save_invstd, running_mean,
                                           running_var, x, weight, bias, float(eps), act)
    return out, save_mean, save_invstd



def batchnorm_backward(dy, x, y, mean, invstd, weight=None, training=True, activation="none",
                       dweight=None, dbias=None, dx=None):
    """Backward of batchnorm_forward.

    dy, x: (B, C); y: the forward output (read unless activation is "none"); mean, invstd:
    (C,) as batchnorm_forward returned; weight: (C,) or None; training: the mode of the
    forward. Accumulates (+=) dweight and dbias (C,) when given; returns dx (B, C), written
    into `dx` when given.
    """
    x = check.float_array("x", x, 2)
    B, C = x.shape
    dy = check.float_array("dy", dy, 2, x.dtype)
    check.shape("dy", dy, (B, C))
    check.choice("activation", activation, ACTIVATIONS)
    y = _forward_output(y, activation, (B, C), x.dtype)
    mean = _channel_vector("mean", mean, C, x.dtype)
    invstd = _channel_vector("invstd", invstd, C, x.dtype)
    if mean is None or invstd is None:
        raise ValueError("mean, invstd: needed (as batchnorm_forward returned them)")
    weight = _channel_vector("weight", weight, C, x.dtype)
    if dweight is not None:
        check.output_array("dweight", dweight, (C,), x.dtype)
    if dbias is not None:
        check.output_array("dbias", dbias, (C,), x.dtype)
    dx = _output("dx", dx, (B, C), x.dtype)
    check.disjoint(("dx", "dweight", "dbias", "dy", "x", "y", "mean", "invstd", "weight"),
                   (dx, dweight, dbias, dy, x, y, mean, invstd, weight), 3)
    runtime.ops.batchnorm_backward(dx, dweight, dbias, dy, x, y, mean, invstd, weight,
                                   ACTIVATIONS[activation], bool(training))
    return dx



def _output(name, a, shape, dtype):
    """A checked output buffer, or a new one."""
    if a is None:
        return np.empty(shape, dtype=dtype)
    return check.output_array(name, a, shape, dtype)


def _same_shape(name, a, like):
    a = check.float_array(name, a, like.ndim, like.dtype)
    check.shape(name, a, like.shape)
    return a


def activation_forward(x, kind, negative_slope=0.01, out=None):
    """act(x) elementwise over an array of any shape.

    kind: "none", "relu", "tanh", "sigmoid", "leaky_relu" (negative_slope), "gelu" (exact,
    x * Phi(x)) or "gelu_tanh" (the tanh approximation). Returns an array of x's shape.
    """
    x = check.float_array("x", x, np.ndim(x))
    check.choice("kind", kind, ELEMENTWISE)
    out = _output("out", out, x.shape, x.dtype)
    check.disjoint(("out", "x"), (out, x), 1)
    runtime.ops.activation_forward(out, x, ELEMENTWISE[kind], float(negative_slope))
    return out



def activation_backward(dy, x, y, kind, negative_slope=0.01, dx=None):
    """dy * act'(x): x is the forward input and y its output (both of dy's shape)."""
    x = check.float_array("x", x, np.ndim(x))
    dy = _same_shape("dy", dy, x)
    y = _same_shape("y", y, x)
    check.choice("kind", kind, ELEMENTWISE)
    dx = _output("dx", dx, dy.shape, dy.dtype)
    check.disjoint(("dx", "dy", "x", "y"), (dx, dy, x, y), 1)
    runtime.ops.activation_backward(dx, dy, x, y, ELEMENTWISE[kind], float(negative_slope))
    return dx



def softmax_forward(x, out=None):
    """Softmax along the last axis of x (at least 1-d)."""
    x = check.float_array("x", x, max(1, np.ndim(x)))
    out = _output("out", out, x.shape, x.dtype)
    check.disjoint(("out", "x"), (out, x), 1)
    runtime.ops.softmax_forward(out, x)
    return out



def softmax_backward(dy, y, dx=None):
    """Backward of softmax_forward from its output y: y * (dy - sum(dy * y, last axis))."""
    y = check.float_array("y", y, max(1, np.ndim(y)))
    dy = _same_shape("dy", dy, y)
    dx = _output("dx", dx, dy.shape, dy.dtype)
    check.disjoint(("dx", "dy", "y"), (dx, dy, y), 1)
    runtime.ops.softmax_backward(dx, dy, y)
    return dx



def dropout_apply(x, p, seed, offset=0, out=None, scale=None):
    """Dropout: x * mask * scale, elementwise over any shape; scale defaults to 1 / (1 - p),
    inverted dropout (scale=1: the textbook's, whose evaluation multiplies by 1 - p).

    mask[i] = (uniform(seed, offset + i) >= p), from a counter-based generator: the same
    (seed, offset) gives the same mask for any thread count, so one call is the forward and
    the same call on dy is the backward. 0 <= p < 1; seed, offset: integers in [0, 2**64).
    out must not share memory with x (torch's inplace=True has no equivalent here: pass
    out=None, or another buffer).
    """
    x = check.float_array("x", x, np.ndim(x))
    if not (isinstance(p, (int, float)) and 0 <= p < 1):
        raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**64:
            raise ValueError(f"{name}: expected an integer in [0, 2**64), got {v!r}")
    scale = 1 / (1 - p) if scale is None else check.number("scale", scale)
    out = _output("out", out, x.shape, x.dtype)
    runtime.ops.dropout_apply(out, x, float(p), float(scale), int(seed), int(offset))
    return out


def embedding_forward(weight, idx, out=None):
    """weight (V, D) rows gathered by the integer array idx (any shape): idx.shape + (D,).
    An index outside [0, V) raises IndexError naming it."""
    weight = check.float_array("weight", weight, 2)
    idx = check.index_array("idx", idx, weight.shape[0])
    out = _output("out", out, idx.shape + (weight.shape[1],), weight.dtype)
    check.disjoint(("out", "weight"), (out, weight), 1)
    runtime.ops.embedding_forward(out, weight, idx)
    return out



def embedding_backward(dweight, dy, idx):
    """dweight (V, D)[idx[i]] += dy[i] for every i in order (repeated indices add up,
    deterministically). dy: idx.shape + (D,). Returns dweight."""
    if not isinstance(dweight, np.ndarray) or dweight.dtype not in check.FLOAT_DTYPES:
        raise TypeError(f"dweight: expected a float32 or float64 numpy.ndarray, got {dweight!r:.60}")
    if dweight.ndim != 2:
        raise ValueError(f"dweight: expected a 2-d array, got shape {dweight.shape}")
    check.output_array("dweight", dweight, dweight.shape, dweight.dtype)
    idx = check.index_array("idx", idx, dweight.shape[0])
    dy = check.float_array("dy", dy, idx.ndim + 1, dweight.dtype)
    check.shape("dy", dy, idx.shape + (dweight.shape[1],))
    check.disjoint(("dweight", "dy"), (dweight, dy), 1)
    runtime.ops.embedding_backward(dweight, dy, idx)
    return dweight



def logits_and_target(logits, target, ignore_index=None):
    """logits (N, K) float and target (N,) int64 classes in [0, K) (or ignore_index),
    checked."""
    logits = check.float_array("logits", logits, 2)
    target = np.asarray(target)
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target: expected shape ({logits.shape[0]},) to match logits "
                         f"{logits.shape}, got {target.shape}")
    target = check.index_array("target", target, logits.shape[1], what="class",
                               also=ignore_index)
    return logits, target


REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_options(weight, ignore_index, label_smoothing, reduction):
    """torch.nn.CrossEntropyLoss's options, checked: (weight as a 1-d float64 array or
    None, ignore_index, label_smoothing, reduction)."""
    if weight is not None:
        weight = np.asarray(weight)
        if weight.dtype.kind not in "iuf":
            raise TypeError(f"weight: expected real class weights, got dtype {weight.dtype}")
        weight = np.array(weight, dtype=np.float64)  # a copy the caller cannot change
        if weight.ndim != 1:
            raise ValueError(f"weight: expected a 1-d array of class weights, got shape "
                             f"{weight.shape}")
    ignore_index = check.integer("ignore_index", ignore_index)
    label_smoothing = check.number("label_smoothing", label_smoothing, 0.0, 1.0)
    check.choice("reduction", reduction, REDUCTIONS)
    return weight, ignore_index, float(label_smoothing), reduction


def class_weights(weight, logits):
    """The class weights in logits' dtype, checked against its K (None stays None)."""
    if weight is None:
        return None
    if weight.shape[0] != logits.shape[1]:
        raise ValueError(f"weight: expected one weight per class, {logits.shape[1]}, got "
                         f"{weight.shape[0]}")
    return np.ascontiguousarray(weight, dtype=logits.dtype)


def cross_entropy_forward(logits, target, probs=None, row_loss=None, *, weight=None,
                          ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy of logits (N, K) against integer classes target (N,), as
    torch.nn.functional.cross_entropy with the same options: class weights weight (K,),
    rows whose target is ignore_index left out, label smoothing, and reduction "mean" (over
    the weights of the rows not ignored), "sum" or "none".

    Computed stably through log-sum-exp. Returns (loss, probs): the loss a float, or for
    "none" the rows' losses (N,) in logits' dtype; probs = softmax(logits) (N, K), which
    cross_entropy_backward takes. row_loss: optional (N,) float64 buffer for the rows'
    losses.
    """
    weight, ignore_index, smoothing, reduction = cross_entropy_options(
        weight, ignore_index, label_smoothing, reduction)
    logits, target = logits_and_target(logits, target, ignore_index)
    weight = class_weights(weight, logits)
    probs = _output("probs", probs, logits.shape, logits.dtype)
    row_loss = _output("row_loss", row_loss, (logits.shape[0],), np.dtype(np.float64))
    check.disjoint(("probs", "row_loss", "logits"), (probs, row_loss, logits), 2)
    loss = runtime.ops.cross_entropy_forward(probs, row_loss, logits, target, weight,
                                             ignore_index, smoothing, reduction == "mean")
    return (row_loss.astype(logits.dtype) if reduction == "none" else loss), probs


def cross_entropy_backward(probs, target, dloss=1.0, dlogits=None, *, weight=None,
                           ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """d(loss)/d(logits) (N, K) from probs = softmax(logits), for cross_entropy_forward's
    loss with the same options: dloss is the gradient of that loss, a number, or for
    reduction "none" the rows' gradients (N,) (a number there stands for every row)."""
    weight, ignore_index, smoothing, reduction = cross_entropy_options(
        weight, ignore_index, label_smoothing, reduction)
    probs, target = logits_and_target(probs, target, ignore_index)
    weight = class_weights(weight, probs)
    row_dloss, dloss = row_gradient(dloss, probs, reduction)
    dlogits = _output("dlogits", dlogits, probs.shape, probs.dtype)
    check.disjoint(("dlogits", "probs"), (dlogits, probs), 1)
    runtime.ops.cross_entropy_backward(dlogits, probs, target, weight, row_dloss,
                                       ignore_index, smoothing, dloss, reduction == "mean")
    return dlogits


def row_gradient(dloss, probs, reduction):
    """dloss as (row_dloss (N,) in probs' dtype or None, the number that multiplies it);
    an array only for reduction "none"."""
    if np.ndim(dloss) == 0:
        return None, check.real("dloss", np.asarray(dloss).item())
    if reduction != "none":
        raise ValueError(f"dloss: expected a number, the gradient of the {reduction} loss, "
                         f"got an array of shape {np.shape(dloss)}")
    row_dloss = check.float_array("dloss", np.asarray(dloss, dtype=probs.dtype), 1)
    check.shape("dloss", row_dloss, (probs.shape[0],))
    return row_dloss, 1.0


def mse_forward(pred, target):
    """mean((pred - target) ** 2) over arrays of one shape, accumulated in float64."""
    pred = check.float_array("pred", pred, np.ndim(pred))
    target = _same_shape("target", target, pred)
    return runtime.ops.squared_error_sum(pred, target) / pred.size if pred.size else float("nan")



def mse_backward(pred, target, scale=None, dpred=None):
    """d(loss)/d(pred) = scale * (pred - target); scale defaults to 2 / n (the mean)."""
    pred = check.float_array("pred", pred, np.ndim(pred))
    target = _same_shape("target", target, pred)
    if scale is None:
        scale = 2 / max(1, pred.size)
    dpred = _output("dpred", dpred, pred.shape, pred.dtype)
    check.disjoint(("dpred", "pred", "target"), (dpred, pred, target), 1)
    runtime.ops.squared_error_backward(dpred, pred, target, float(scale))
    return dpred



def _flat(names, arrays, writeable, optional=()):
    """Check flat optimizer buffers: 1-d, one float dtype and size, C-contiguous; the first
    `writeable` of them (those updated in place) writeable and not overlapping any other;
    None only for the names in `optional`."""
    first = arrays[0]
    if not isinstance(first, np.ndarray) or first.dtype not in check.FLOAT_DTYPES:
        raise TypeError(f"{names[0]}: expected a float32 or float64 numpy.ndarray, got "
                        f"{type(first).__name__}")
    for i, (name, a) in enumerate(zip(names, arrays)):
        if a is None and name in optional:
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if i < writeable:
            check.output_array(name, a, (first.size,), first.dtype)
        else:
            check.shape(name, a, (first.size,))
            if a.dtype != first.dtype or not (a.flags.c_contiguous and a.flags.aligned):
                raise TypeError(f"{name}: expected a C-contiguous, aligned {first.dtype} array")
    check.disjoint(names, arrays, writeable)


def _hyper(**values):
    """Each non-negative number (not NaN), as the optimizer classes require."""
    for name, value in values.items():
        check.number(name, value)


def sgd_step(p, buf, grad, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0,
             nesterov=False, first=False):
    """torch.optim.SGD's update of the flat parameter buffer p (n,) in place, from grad (n,).

    buf (n,): the momentum buffer, updated in place (needed with momentum, else None);
    first: this is the buffer's first step (it takes the gradient itself). weight_decay:
    coupled L2; l1: adds l1 * sign(p) to the gradient.
    """
    _flat(("p", "buf", "grad"), (p, buf, grad), 2, optional=("buf",))
    _hyper(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, l1=l1)
    if momentum != 0 and buf is None:
        raise ValueError(f"buf: the momentum buffer is needed with momentum={momentum!r}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov: Nesterov momentum requires a momentum and zero dampening, "
                         f"got momentum={momentum!r}, dampening={dampening!r}")
    runtime.ops.sgd_step(p, buf, grad, lr, momentum, dampening, weight_decay, l1, nesterov,
                         first)


def adagrad_step(p, state_sum, grad, clr, weight_decay=0.0, l1=0.0, eps=1e-10):
    """torch.optim.Adagrad's update in place; clr = lr / (1 + (step - 1) * lr_decay)."""
    _flat(("p", "state_sum", "grad"), (p, state_sum, grad), 2)
    _hyper(clr=clr, weight_decay=weight_decay, l1=l1, eps=eps)
    runtime.ops.adagrad_step(p, state_sum, grad, clr, weight_decay, l1, eps)


def rmsprop_step(p, square_avg, grad_avg, momentum_buf, grad, lr, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, l1=0.0, momentum=0.0):
    """torch.optim.RMSprop's update in place; grad_avg for centered=True, momentum_buf for
    momentum > 0, else None."""
    _flat(("p", "square_avg", "grad_avg", "momentum_buf", "grad"),
          (p, square_avg, grad_avg, momentum_buf, grad), 4,
          optional=("grad_avg", "momentum_buf"))
    _hyper(lr=lr, eps=eps, weight_decay=weight_decay, l1=l1, momentum=momentum)
    check.number("alpha", alpha, 0.0, 1.0)
    if momentum > 0 and momentum_buf is None:
        raise ValueError(f"momentum_buf: needed with momentum={momentum!r}")
    runtime.ops.rmsprop_step(p, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps,
                             weight_decay, l1, momentum)


def adam_step(p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, l1=0.0, decoupled=False, step=1):
    """torch.optim.Adam's update in place (decoupled=True: AdamW's weight decay); step: the
    step number, from 1; max_exp_avg_sq for amsgrad=True, else None."""
    _flat(("p", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "grad"),
          (p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad), 4, optional=("max_exp_avg_sq",))
    _hyper(lr=lr, eps=eps, weight_decay=weight_decay, l1=l1)
    check.number("beta1", beta1, 0.0, 1.0, high_open=True)
    check.number("beta2", beta2, 0.0, 1.0, high_open=True)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step: expected an integer >= 1, got {step!r}")
    runtime.ops.adam_step(p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps,
                          weight_decay, l1, decoupled, int(step))


def sum_squares(x):
    """sum(x ** 2) over a flat float buffer, accumulated in float64 in a fixed order."""
    _flat(("x",), (x,), 0)
    return runtime.ops.sum_squares(x)


def scale_inplace(x, s):
    """x *= s over a flat float buffer."""
    _flat(("x",), (x,), 1)
    runtime.ops.scale_inplace(x, float(s))


def clamp_inplace(x, lo, hi):
    """x = min(max(x, lo), hi) over a flat float buffer."""
    _flat(("x",), (x,), 1)
    runtime.ops.clamp_inplace(x, float(lo), float(hi))
