"""Losses: forward(prediction, target) -> float, then backward() -> d(loss)/d(prediction)."""
import numpy as np

from . import _native, runtime
from . import functional as F

__all__ = ["CrossEntropyLoss", "MSELoss"]


class CrossEntropyLoss:
    """Mean softmax cross-entropy of logits (N, K) against integer class targets (N,), as
    torch.nn.CrossEntropyLoss: one fused, stable (log-sum-exp) kernel."""

    def __init__(self):
        self._probs = self._dlogits = self._row_loss = self._target = None
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def forward(self, logits, target):
        """logits (N, K) float32/float64, target (N,) integers in [0, K) -> the mean loss."""
        # (update checks the targets' range too, on every call)
        if not (self._forward is not None
                and self._forward.update((self._probs, self._row_loss, logits, target))):
            self._forward = self._forward_kernel(logits, target)
            target = self._forward.args[3]
        self._target = target
        return runtime.ops.run(self._forward)

    def _forward_kernel(self, logits, target):
        logits, target = F.logits_and_target(logits, target)  # before touching any buffer
        if self._probs is None or self._probs.shape != logits.shape \
                or self._probs.dtype != logits.dtype:
            self._probs = np.empty(logits.shape, logits.dtype)
            self._dlogits = np.empty(logits.shape, logits.dtype)
            self._row_loss = np.empty(logits.shape[0], np.float64)
        return _native.Kernel("cross_entropy_forward",
                              (self._probs, self._row_loss, logits, target))

    __call__ = forward

    def backward(self, dloss=1.0):
        """d(dloss * loss)/d(logits), (N, K)."""
        if self._target is None:
            raise ValueError("CrossEntropyLoss.backward: called before forward")
        scale = float(dloss) / max(1, self._probs.shape[0])
        # probs and target were checked by forward; the buffers are the loss's own
        args = (self._dlogits, self._probs, self._target, scale)
        if self._backward is None or not self._backward.update(args):
            self._backward = _native.Kernel("cross_entropy_backward", args)
        runtime.ops.run(self._backward)
        return self._dlogits

    def __repr__(self):
        return "CrossEntropyLoss()"


class MSELoss:
    """Mean squared error over all elements, as torch.nn.MSELoss."""

    def __init__(self):
        self._pred = self._target = self._dpred = None

    def forward(self, pred, target):
        """pred, target: float arrays of one shape -> mean((pred - target) ** 2)."""
        pred = F.check.float_array("pred", pred, np.ndim(pred))
        target = F.check.float_array("target", target, pred.ndim, pred.dtype)
        F.check.shape("target", target, pred.shape)
        self._pred, self._target = pred, target
        if not pred.size:
            return float("nan")
        return runtime.ops.squared_error_sum(pred, target) / pred.size

    __call__ = forward

    def backward(self, dloss=1.0):
        """d(dloss * loss)/d(pred), pred's shape."""
        if self._pred is None:
            raise ValueError("MSELoss.backward: called before forward")
        if self._dpred is None or self._dpred.shape != self._pred.shape \
                or self._dpred.dtype != self._pred.dtype:
            self._dpred = np.empty(self._pred.shape, self._pred.dtype)
        scale = 2 * float(dloss) / max(1, self._pred.size)
        runtime.ops.squared_error_backward(self._dpred, self._pred, self._target, scale)
        return self._dpred

    def __repr__(self):
        return "MSELoss()"
