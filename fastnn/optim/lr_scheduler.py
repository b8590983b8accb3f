"""Learning-rate schedules, as torch.optim.lr_scheduler: each sets the "lr" of every
parameter group when step() is called (once per epoch, after the optimizer's steps).

The epoch-indexed schedules use the closed forms torch documents; creating one sets the
epoch-0 learning rate (and records it as "initial_lr" in each group).
"""
import bisect
import math
import numbers

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "MultiStepLR",
           "ReduceLROnPlateau", "StepLR"]


class LRScheduler:
    """Base: lr of group i at epoch e = self.lr_at(base_lrs[i], e)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def lr_at(self, base_lr, epoch):
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set each group's lr."""
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def get_last_lr(self):
        """The learning rates set by the last step(), one per group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lrs = state["last_epoch"], list(state["base_lrs"])


def _positive(name, value, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ValueError(f"{name}: expected a positive {'int' if integer else 'number'}, "
                         f"got {value!r}")
    return value


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _positive("step_size", step_size, integer=True)
        self.gamma = _positive("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones = sorted(_positive("milestones", m, integer=True) for m in milestones)
        self.gamma = _positive("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = _positive("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma**epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _positive("T_max", T_max, integer=True)
        if not isinstance(eta_min, numbers.Real) or eta_min < 0:
            raise ValueError(f"eta_min: expected a number >= 0, got {eta_min!r}")
        self.eta_min = eta_min
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class ReduceLROnPlateau:
    """Multiply the lr by `factor` when the metric passed to step(metric) has not improved
    for more than `patience` epochs, as torch.optim.lr_scheduler.ReduceLROnPlateau."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        if not isinstance(factor, numbers.Real) or not 0 < factor < 1:
            raise ValueError(f"factor: expected a number in (0, 1), got {factor!r}")
        for name, v in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        groups = optimizer.param_groups
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * len(groups)
        if len(self.min_lrs) != len(groups):
            raise ValueError(f"min_lr: expected {len(groups)} values, got {len(self.min_lrs)}")
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.last_epoch = 0

    def _better(self, a):
        if self.mode == "min":
            bound = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return a < bound
        bound = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return a > bound

    def step(self, metric):
        """Record one epoch's metric (e.g. validation loss) and reduce the lr if it stalls."""
        metric = float(metric)
        self.last_epoch += 1
        if self._better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, min_lr)
                if group["lr"] - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    _STATE = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def state_dict(self):
        """The progress to checkpoint: best metric, bad epochs, cooldown, epoch."""
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state):
        for k in self._STATE:
            setattr(self, k, state[k])
