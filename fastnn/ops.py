"""Backends as objects, after thinc's Ops: one method per kernel of csrc/fastnn.h.

Every method takes the kernel's arguments in the header's order, as fastnn._native.KERNELS
lists them: the arrays it writes first, then the arrays it reads (None where the kernel
takes a NULL pointer), then the scalars; activation kinds are fastnn.h's codes
(functional.ELEMENTWISE). `run(kernel)` runs a prebuilt fastnn._native.Kernel, the one
description of a call that layers keep and fastnn.fused records.

ReferenceOps computes with NumPy (fastnn.reference, the twin every kernel is tested
against); NativeOps, the default, makes the C call. fastnn.set_backend chooses one;
fastnn.runtime.ops is the one in use. Nothing here checks more than a Kernel does (types,
shapes, layout, overlap): fastnn.functional checks its arguments first, in its own terms.
"""
import numpy as np

from . import _native, reference

__all__ = ["NativeOps", "ReferenceOps"]

# fastnn.h's activation codes, by name and back
ACTIVATIONS = _native.ELEMENTWISE
_NAMES = {code: name for name, code in ACTIVATIONS.items()}


class ReferenceOps:
    """The NumPy twin of every kernel, in the kernels' signatures."""

    name = "reference"

    def run(self, kernel):
        """Make the call `kernel` describes; returns what the kernel returns (or None)."""
        return getattr(self, kernel.name)(*kernel.args)

    def embedding_forward(self, out, weight, idx):
        reference.embedding_forward(weight, idx, out)

    def embedding_backward(self, dweight, dy, idx):
        reference.embedding_backward(dweight, dy, idx)

    def linear_forward(self, out, x, weight, bias, act):
        reference.linear_forward(x, weight, bias, _NAMES[act], out)

    def linear_backward(self, dx, dweight, dbias, work, dy, x, weight, y, act):
        reference.linear_backward(dy, x, weight, y, _NAMES[act], dweight, dbias, dx,
                                  input_grad=dx is not None)

    def batchnorm_forward_train(self, out, save_mean, save_invstd, running_mean, running_var,
                                x, weight, bias, eps, momentum, act, unbiased):
        reference.batchnorm_forward(x, weight, bias, running_mean, running_var, True,
                                    momentum, eps, _NAMES[act], out, save_mean, save_invstd,
                                    bool(unbiased))

    def batchnorm_forward_eval(self, out, save_mean, save_invstd, running_mean, running_var,
                               x, weight, bias, eps, act):
        reference.batchnorm_forward(x, weight, bias, running_mean, running_var, False, 0.0,
                                    eps, _NAMES[act], out, save_mean, save_invstd)

    def batchnorm_backward(self, dx, dweight, dbias, dy, x, y, mean, invstd, weight, act,
                           training):
        reference.batchnorm_backward(dy, x, y, mean, invstd, weight, bool(training),
                                     _NAMES[act], dweight, dbias, dx)

    def activation_forward(self, out, x, act, negative_slope):
        reference.activation_forward(x, _NAMES[act], negative_slope, out)

    def activation_backward(self, dx, dy, x, y, act, negative_slope):
        reference.activation_backward(dy, x, y, _NAMES[act], negative_slope, dx)

    def softmax_forward(self, out, x):
        reference.softmax_forward(x, out)

    def softmax_backward(self, dx, dy, y):
        reference.softmax_backward(dy, y, dx)

    def dropout_apply(self, out, x, p, scale, seed, offset):
        reference.dropout_apply(x, p, seed, offset, out, scale)

    def cross_entropy_forward(self, probs, row_loss, logits, target, weight, ignore_index,
                              smoothing, mean):
        return reference.cross_entropy_forward(logits, target, probs, weight, ignore_index,
                                               smoothing, bool(mean), row_loss)[0]

    def cross_entropy_backward(self, dlogits, probs, target, weight, row_dloss, ignore_index,
                               smoothing, dloss, mean):
        reference.cross_entropy_backward(probs, target, dloss, dlogits, weight, row_dloss,
                                         ignore_index, smoothing, bool(mean))

    def squared_error_sum(self, pred, target):
        d = pred.astype(np.float64) - target
        return float(np.sum(d * d))

    def squared_error_backward(self, dpred, pred, target, scale):
        reference.mse_backward(pred, target, scale, dpred)

    def sgd_step(self, p, buf, grad, lr, momentum, dampening, weight_decay, l1, nesterov,
                 first):
        reference.sgd_step(p, buf, grad, lr, momentum, dampening, weight_decay, l1,
                           bool(nesterov), bool(first))

    def adagrad_step(self, p, state_sum, grad, clr, weight_decay, l1, eps):
        reference.adagrad_step(p, state_sum, grad, clr, weight_decay, l1, eps)

    def rmsprop_step(self, p, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps,
                     weight_decay, l1, momentum):
        reference.rmsprop_step(p, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps,
                               weight_decay, l1, momentum)

    def adam_step(self, p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps,
                  weight_decay, l1, decoupled, step):
        reference.adam_step(p, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2,
                            eps, weight_decay, l1, bool(decoupled), step)

    def sum_squares(self, x):
        return reference.sum_squares(x)

    def scale_inplace(self, x, s):
        reference.scale_inplace(x, s)

    def clamp_inplace(self, x, lo, hi):
        reference.clamp_inplace(x, lo, hi)

    def zero(self, x):
        """x[...] = 0 (any dtype)."""
        x.fill(0)


def _native_method(name):
    def method(self, *args):
        return _native.Kernel(name, args).run()

    method.__name__ = name
    method.__doc__ = f"The C kernel {name} (csrc/fastnn.h)."
    return method


class NativeOps(ReferenceOps):
    """The C/OpenMP kernels: each method builds the Kernel and runs it."""

    name = "native"

    def run(self, kernel):
        return kernel.run()

    def zero(self, x):
        _native.zero_inplace(x)


for _name in _native.KERNELS:
    setattr(NativeOps, _name, _native_method(_name))
del _name
