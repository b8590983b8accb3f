"""Optimizers over one flat parameter arena per group and dtype, and gradient clipping.

Each optimizer follows torch.optim's documented update rule and defaults. When it is built,
the parameters of each group are packed into one contiguous buffer per dtype (an Arena):
every Parameter's .data and .grad become views into it (values kept, layers keep working),
so a step, a gradient clip or zero_grad is one kernel call per buffer however many layers
there are. Optimizer state (momentum, running averages) is flat too.

The textbook forms map onto these as follows (constant learning rate):
  Momentum    v = mu * v - lr * g;  p += v           == SGD(lr, momentum=mu)
              (torch's buffer is b = -v / lr: b = mu * b + g, p -= lr * b)
  Nesterov    SGD(lr, momentum=mu, nesterov=True)
  AdaGrad     s += g * g;  p -= lr * g / (sqrt(s) + eps)   == Adagrad(lr, eps=eps)
  RMSprop     s = a * s + (1 - a) * g * g;  p -= lr * g / (sqrt(s) + eps)
              == RMSprop(lr, alpha=a, eps=eps)
  Adam        m, v averages, bias-corrected;  p -= lr * m_hat / (sqrt(v_hat) + eps)
              == Adam(lr, betas, eps): PyTorch's form, eps outside the square root.
  Adam, the   lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t);  p -= lr_t * m / (sqrt(v) + eps)
  textbook's  (Kingma & Ba's "efficient" ordering with their epsilon-hat, Keras, "Deep
              Learning from Scratch") == Adam(lr, betas, eps, eps_hat=True). The two differ
              by where eps sits: here it is eps / sqrt(1 - b2^t) in PyTorch's terms.
  L2 (weight decay) adds weight_decay * p to the gradient (AdamW instead shrinks p by
  lr * weight_decay); l1 adds l1 * sign(p).
"""
import math

import numpy as np

from .. import _native, runtime
from .. import functional as F
from ..arena import Arena, contiguous_run
from ..layers import Parameter
from . import lr_scheduler

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Arena",
    "Optimizer",
    "RMSprop",
    "clip_grad_norm_",
    "clip_grad_value_",
    "lr_scheduler",
]


class Optimizer:
    """Base class: param_groups (list of dicts, as torch.optim), step(), zero_grad(),
    state_dict(), load_state_dict(). Subclasses define `defaults`, `_validate(group)`,
    `_new_state(group, arena)` and `_update(group, data, grad, state)`, which returns the
    kernel's name and arguments (fastnn._native.KERNELS) for one flat run."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        groups = list(params)
        if not groups:
            raise ValueError("params: the optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups, self._arenas, self._state = [], [], []
        self._kernels = []  # the Kernel of each run's update in the last step, in order
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a dict with "params" (a list of Parameters) and optional hyperparameters."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("params: expected Parameters or dicts with a 'params' list")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"params: expected fastnn.Parameter, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError("params: a parameter appears in more than one group")
            seen.add(id(p))
        if not params:
            raise ValueError("params: a parameter group is empty")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group: unknown option(s) {sorted(unknown)}")
        group = {**self.defaults, **group, "params": params}
        self._validate(group)
        dtypes = list(dict.fromkeys(p.data.dtype for p in params))
        arenas = [Arena([p for p in params if p.data.dtype == dt]) for dt in dtypes]
        self.param_groups.append(group)
        self._arenas.append(arenas)
        self._state.append([self._new_state(group, a) for a in arenas])

    def zero_grad(self):
        """Zero every gradient: one fill per flat buffer (on fastnn's threads natively)."""
        ops = runtime.ops
        for arenas in self._arenas:
            for arena in arenas:
                for _, _, grad in arena.runs:
                    ops.zero(grad)

    def step(self):
        """One update of every parameter, with the hyperparameters now in param_groups: one
        kernel call per flat run of parameters (one per group and dtype when packed)."""
        # The optimizer made every buffer it passes here (flat, contiguous, one dtype and
        # size), so it runs the kernels without fastnn.functional's checks: at 10k parameters
        # those would cost more than the step. Each run's Kernel is kept and pointed at the
        # new step's scalars (Kernel.update), so a step is one C call per run.
        ops, index = runtime.ops, 0
        for group, arenas, states in zip(self.param_groups, self._arenas, self._state):
            for arena, state in zip(arenas, states):
                self._begin_step(group, arena, state)
                for offset, data, grad in arena.runs:
                    part = state if len(arena.runs) == 1 else {
                        k: (v[offset:offset + data.size] if isinstance(v, np.ndarray) else v)
                        for k, v in state.items()}
                    name, args = self._update(group, data, grad, part)
                    kernel = self._kernels[index] if index < len(self._kernels) else None
                    if kernel is None or kernel.name != name or not kernel.update(args):
                        kernel = _native.Kernel(name, args)
                        self._kernels[index:index + 1] = [kernel]
                    ops.run(kernel)
                    index += 1

    def _begin_step(self, group, arena, state):
        """Per-step bookkeeping before the updates (step counts, lazy state buffers)."""

    def state_dict(self):
        """{"state": per group, per arena, the flat state buffers (copies) and step counts;
        "param_groups": the hyperparameters, with "params" as indices}. Flat per arena,
        unlike torch's per-parameter layout."""
        groups, index = [], 0
        for group in self.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            hyper["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(hyper)
        state = [[{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                  for s in states] for states in self._state]
        return {"optimizer": type(self).__name__, "state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore what state_dict() returned, for an optimizer over the same parameters."""
        kind = state_dict.get("optimizer", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"state_dict: saved from {kind}, this optimizer is "
                             f"{type(self).__name__}")
        groups, state = state_dict["param_groups"], state_dict["state"]
        if len(groups) != len(self.param_groups) or len(state) != len(self._state):
            raise ValueError(f"state_dict: {len(groups)} parameter groups, this optimizer "
                             f"has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"state_dict: group {i} has {len(saved['params'])} "
                                 f"parameters, this optimizer's has {len(group['params'])}")
        for i, (saved, arenas) in enumerate(zip(state, self._arenas)):
            if len(saved) != len(arenas):
                raise ValueError(f"state_dict: group {i} has {len(saved)} dtypes, "
                                 f"expected {len(arenas)}")
            for s, arena in zip(saved, arenas):
                for k, v in s.items():
                    if isinstance(v, np.ndarray) and v.shape != (arena.size,):
                        raise ValueError(f"state_dict: {k} of group {i} has shape {v.shape}, "
                                         f"expected ({arena.size},)")
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self._state = [[{k: (np.array(v, dtype=a.dtype) if isinstance(v, np.ndarray) else v)
                         for k, v in s.items()} for s, a in zip(saved, arenas)]
                       for saved, arenas in zip(state, self._arenas)]

    def _buffer(self, state, key, arena, fill=0.0):
        """The flat state buffer `key`, created (filled with `fill`) on first use."""
        if state.get(key) is None:
            state[key] = np.full(arena.size, fill, arena.dtype)
        return state[key]

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} parameters, {opts}")
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening and Nesterov momentum,
    as torch.optim.SGD."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, l1=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, l1=l1))

    def _validate(self, g):
        for name in ("lr", "momentum", "dampening", "weight_decay", "l1"):
            F.check.number(name, g[name])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("nesterov: Nesterov momentum requires a momentum and zero "
                             f"dampening, got momentum={g['momentum']}, "
                             f"dampening={g['dampening']}")

    def _new_state(self, group, arena):
        return {"momentum_buffer": None, "first": True}

    def _begin_step(self, g, arena, state):
        if g["momentum"] != 0:
            state["first"] = state["momentum_buffer"] is None
            self._buffer(state, "momentum_buffer", arena)

    def _update(self, g, data, grad, state):
        buf = state["momentum_buffer"] if g["momentum"] != 0 else None
        return "sgd_step", (data, buf, grad, g["lr"], g["momentum"], g["dampening"],
                            g["weight_decay"], g["l1"], g["nesterov"],
                            buf is not None and state["first"])


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, l1=0.0):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, l1=l1))

    def _validate(self, g):
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                     "l1"):
            F.check.number(name, g[name])

    def _new_state(self, group, arena):
        return {"step": 0,
                "sum": np.full(arena.size, group["initial_accumulator_value"], arena.dtype)}

    def _begin_step(self, g, arena, state):
        state["step"] += 1

    def _update(self, g, data, grad, state):
        clr = g["lr"] / (1 + (state["step"] - 1) * g["lr_decay"])
        return "adagrad_step", (data, state["sum"], grad, clr, g["weight_decay"], g["l1"],
                                g["eps"])


class RMSprop(Optimizer):
    """RMSprop with optional centering and momentum, as torch.optim.RMSprop."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, l1=0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, l1=l1))

    def _validate(self, g):
        for name in ("lr", "eps", "weight_decay", "momentum", "l1"):
            F.check.number(name, g[name])
        F.check.number("alpha", g["alpha"], 0.0, 1.0)

    def _new_state(self, group, arena):
        return {"step": 0, "square_avg": np.zeros(arena.size, arena.dtype),
                "grad_avg": None, "momentum_buffer": None}

    def _begin_step(self, g, arena, state):
        state["step"] += 1
        if g["centered"]:
            self._buffer(state, "grad_avg", arena)
        if g["momentum"] > 0:
            self._buffer(state, "momentum_buffer", arena)

    def _update(self, g, data, grad, state):
        grad_avg = state["grad_avg"] if g["centered"] else None
        buf = state["momentum_buffer"] if g["momentum"] > 0 else None
        return "rmsprop_step", (data, state["square_avg"], grad_avg, buf, grad, g["lr"],
                                g["alpha"], g["eps"], g["weight_decay"], g["l1"], g["momentum"])


class Adam(Optimizer):
    """Adam (optionally AMSGrad), as torch.optim.Adam; weight_decay is coupled L2.

    eps_hat=True: the textbook's update instead (the module docstring): lr_t = lr *
    sqrt(1 - beta2^t) / (1 - beta1^t), p -= lr_t * m / (sqrt(v) + eps), as Keras and "Deep
    Learning from Scratch" (whose eps is 1e-7). Computed as PyTorch's update with eps /
    sqrt(1 - beta2^t), which is the same expression."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, l1=0.0, eps_hat=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad, l1=l1,
                                      eps_hat=eps_hat))

    def _validate(self, g):
        for name in ("lr", "eps", "weight_decay", "l1"):
            F.check.number(name, g[name])
        if len(g["betas"]) != 2:
            raise ValueError(f"betas: expected two values, got {g['betas']!r}")
        for i, b in enumerate(g["betas"]):
            F.check.number(f"betas[{i}]", b, 0.0, 1.0, high_open=True)
        if not isinstance(g["eps_hat"], bool):
            raise TypeError(f"eps_hat: expected a bool, got {g['eps_hat']!r}")

    def _new_state(self, group, arena):
        return {"step": 0, "exp_avg": np.zeros(arena.size, arena.dtype),
                "exp_avg_sq": np.zeros(arena.size, arena.dtype), "max_exp_avg_sq": None}

    def _begin_step(self, g, arena, state):
        state["step"] += 1
        if g["amsgrad"]:
            self._buffer(state, "max_exp_avg_sq", arena)

    def _update(self, g, data, grad, state):
        vmax = state["max_exp_avg_sq"] if g["amsgrad"] else None
        beta1, beta2 = g["betas"]
        eps = g["eps"] / math.sqrt(1 - beta2 ** state["step"]) if g["eps_hat"] else g["eps"]
        return "adam_step", (data, state["exp_avg"], state["exp_avg_sq"], vmax, grad, g["lr"],
                             beta1, beta2, eps, g["weight_decay"], g["l1"], self.decoupled,
                             state["step"])


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay), as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, l1=0.0, eps_hat=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1, eps_hat)


def _grad_runs(params):
    """The gradients of `params` as few flat buffers as possible (an arena's: one)."""
    grads = [p.grad for p in params if isinstance(p, Parameter)]
    if len(grads) != len(list(params)):
        raise TypeError("params: expected fastnn.Parameter objects")
    runs, current = [], []
    for g in grads:
        if current and (g.dtype != current[0].dtype or contiguous_run(current + [g]) is None):
            runs.append(current)
            current = []
        current.append(g)
    if current:
        runs.append(current)
    return [contiguous_run(r) if len(r) > 1 else r[0].reshape(-1) for r in runs]


def clip_grad_norm_(params, max_norm, norm_type=2.0):
    """Scale the gradients in place so that their global L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6); a NaN or inf norm
    gives NaN or zero gradients, as there). Returns the norm
    before clipping. One pass per flat buffer, summed in a fixed order: the same for any
    thread count."""
    params = [params] if isinstance(params, Parameter) else list(params)
    F.check.number("max_norm", max_norm)
    if norm_type != 2:
        raise ValueError(f"norm_type: only the L2 norm (2) is supported, got {norm_type!r}")
    runs = _grad_runs(params)
    total = math.sqrt(sum(F.sum_squares(g) for g in runs))
    coef = max_norm / (total + 1e-6)
    if not coef >= 1:  # and a NaN norm makes every gradient NaN, as in torch
        for g in runs:
            F.scale_inplace(g, coef)
    return total


def clip_grad_value_(params, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    params = [params] if isinstance(params, Parameter) else list(params)
    F.check.number("clip_value", clip_value)
    for g in _grad_runs(params):
        F.clamp_inplace(g, -clip_value, clip_value)
