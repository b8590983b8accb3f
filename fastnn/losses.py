"""Losses: forward(prediction, target) -> float, then backward() -> d(loss)/d(prediction)."""
import numpy as np

from . import _native, runtime
from . import functional as F

__all__ = ["CrossEntropyLoss", "MSELoss"]

# where CrossEntropyLoss keeps each option
_STORED = {"weight": "_class_weight", "ignore_index": "_ignore_index",
           "label_smoothing": "_smoothing", "reduction": "_reduction"}


class CrossEntropyLoss:
    """Softmax cross-entropy of logits (N, K) against integer class targets (N,), as
    torch.nn.CrossEntropyLoss: one fused, stable (log-sum-exp) kernel.

    weight: (K,) class weights; ignore_index: rows with this target count for nothing;
    label_smoothing: the target is (1 - label_smoothing) * onehot + label_smoothing / K;
    reduction: "mean" (over the weights of the rows not ignored: NaN when every row is),
    "sum", or "none" (forward returns the rows' losses (N,), and backward takes their
    gradient (N,)). Class-probability targets and (N, K, d1, ...) logits are not taken."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        self._probs = self._dlogits = self._row_loss = self._target = None
        self._configure(weight, ignore_index, label_smoothing, reduction)

    def _configure(self, weight, ignore_index, label_smoothing, reduction):
        """Check and set the options; the next call builds its Kernels afresh."""
        weight, self._ignore_index, self._smoothing, self._reduction = \
            F.cross_entropy_options(weight, ignore_index, label_smoothing, reduction)
        if weight is not None:
            weight.flags.writeable = False  # a cast copy of it may be in use: set a new one
        self._class_weight, self._mean = weight, reduction == "mean"
        self._weight = None  # the class weights in the last logits' dtype
        self._forward = self._backward = None  # the Kernels of the last forward, backward

    def _option(name, doc):
        def set_option(self, value):
            options = {"weight": self.weight, "ignore_index": self.ignore_index,
                       "label_smoothing": self.label_smoothing, "reduction": self.reduction}
            self._configure(**{**options, name: value})
        return property(lambda self: getattr(self, _STORED[name]), set_option, doc=doc)

    weight = _option("weight", "(K,) float64 class weights (read-only), or None")
    ignore_index = _option("ignore_index", "the target value whose rows count for nothing")
    label_smoothing = _option("label_smoothing", "in [0, 1]")
    reduction = _option("reduction", '"mean", "sum" or "none"')
    del _option

    def forward(self, logits, target):
        """logits (N, K) float32/float64, target (N,) integers in [0, K) or ignore_index ->
        the loss (a float; for reduction "none", the rows' losses (N,) in logits' dtype)."""
        # (update checks the targets' range too, on every call)
        if not (self._forward is not None and self._forward.update(
                (self._probs, self._row_loss, logits, target, self._weight,
                 self._ignore_index, self._smoothing, self._mean))):
            self._forward = self._forward_kernel(logits, target)
            logits, target = self._forward.args[2:4]
        self._target = target
        loss = runtime.ops.run(self._forward)
        return self._row_loss.astype(logits.dtype) if self._reduction == "none" else loss

    def _forward_kernel(self, logits, target):
        # checked before touching any buffer
        logits, target = F.logits_and_target(logits, target, self._ignore_index)
        self._weight = F.class_weights(self._class_weight, logits)
        if self._probs is None or self._probs.shape != logits.shape \
                or self._probs.dtype != logits.dtype:
            self._probs = np.empty(logits.shape, logits.dtype)
            self._dlogits = np.empty(logits.shape, logits.dtype)
            self._row_loss = np.empty(logits.shape[0], np.float64)
        return _native.Kernel("cross_entropy_forward",
                              (self._probs, self._row_loss, logits, target, self._weight,
                               self._ignore_index, self._smoothing, self._mean))

    __call__ = forward

    def backward(self, dloss=1.0):
        """The gradient (N, K) with respect to the logits of forward's loss times dloss: a
        number, or for reduction "none" the gradient of each row's loss (N,)."""
        if self._target is None:
            raise ValueError("CrossEntropyLoss.backward: called before forward")
        if type(dloss) is float:  # the step's common case, checked as cheaply as it can be
            row_dloss = None
        else:
            row_dloss, dloss = F.row_gradient(dloss, self._probs, self._reduction)
        # probs and target were checked by forward; the buffers are the loss's own
        args = (self._dlogits, self._probs, self._target, self._weight, row_dloss,
                self._ignore_index, self._smoothing, dloss, self._mean)
        if self._backward is None or not self._backward.update(args):
            self._backward = _native.Kernel("cross_entropy_backward", args)
        runtime.ops.run(self._backward)
        return self._dlogits

    def __repr__(self):
        options = []
        if self.weight is not None:
            options.append(f"weight={self.weight.tolist()}")
        for name, default in (("ignore_index", -100), ("reduction", "mean"),
                              ("label_smoothing", 0.0)):
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)!r}")
        return f"CrossEntropyLoss({', '.join(options)})"


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
