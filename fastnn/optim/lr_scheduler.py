"""Learning-rate schedules, as torch.optim.lr_scheduler: each sets the "lr" of every
parameter group when step() is called (once per epoch, after the optimizer's steps, or once
per optimizer step: Trainer(scheduler_interval="step")).

The epoch-indexed schedules use the closed forms torch documents; creating one sets the
epoch-0 learning rate (and records it as "initial_lr" in each group). A linear warm-up into
any other schedule is torch's SequentialLR of a LinearLR and that schedule:

    warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
    SequentialLR(opt, [warmup, CosineAnnealingLR(opt, T_max=45)], milestones=[5])
"""
import bisect
import math
import numbers

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "LinearLR", "MultiStepLR",
           "OneCycleLR", "ReduceLROnPlateau", "SequentialLR", "StepLR"]


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


class LinearLR(LRScheduler):
    """lr = base_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters)
    / total_iters): a linear warm-up (or decay) over total_iters epochs, then constant."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = _factor("start_factor", start_factor, zero=False)
        self.end_factor = _factor("end_factor", end_factor, zero=True)
        self.total_iters = _positive("total_iters", total_iters, integer=True)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                          * min(self.total_iters, epoch) / self.total_iters)


def _factor(name, value, zero):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (0 <= value <= 1 if zero else 0 < value <= 1):
        raise ValueError(f"{name}: expected a number in {'[0' if zero else '(0'}, 1], got "
                         f"{value!r}")
    return value


class SequentialLR(LRScheduler):
    """schedulers[0] until epoch milestones[0], then schedulers[1] from its epoch 0, and so
    on: the lr at epoch e is schedulers[k].lr_at(base_lr, e - milestones[k - 1]), k the
    number of milestones <= e (as torch.optim.lr_scheduler.SequentialLR)."""

    def __init__(self, optimizer, schedulers, milestones):
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError("schedulers: expected at least one scheduler, got none")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler) or isinstance(scheduler, OneCycleLR):
                raise TypeError(f"schedulers[{i}]: expected a closed-form LRScheduler (not "
                                f"ReduceLROnPlateau or OneCycleLR), got "
                                f"{type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}]: belongs to another optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"milestones: expected {len(schedulers) - 1} (one fewer than the "
                             f"schedulers), got {len(milestones)}")
        for m in milestones:
            _positive("milestones", m, integer=True)
        if milestones != sorted(milestones):
            raise ValueError(f"milestones: expected increasing epochs, got {milestones}")
        self.schedulers, self.milestones = schedulers, milestones
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        k = bisect.bisect_right(self.milestones, epoch)
        return self.schedulers[k].lr_at(base_lr, epoch - (self.milestones[k - 1] if k else 0))


class OneCycleLR(LRScheduler):
    """The 1cycle policy, as torch.optim.lr_scheduler.OneCycleLR: stepped once per
    optimizer step (Trainer(scheduler_interval="step")), total_steps times (or epochs *
    steps_per_epoch). The lr rises from max_lr / div_factor to max_lr over pct_start of the
    steps, then falls to max_lr / div_factor / final_div_factor (three_phase: back to the
    start first, then down), annealed by cosine or linearly; with cycle_momentum, the
    momentum (Adam's beta1) moves the opposite way between max_momentum and base_momentum."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                 base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False):
        if total_steps is not None:
            self.total_steps = _positive("total_steps", total_steps, integer=True)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_positive("epochs", epochs, integer=True)
                                * _positive("steps_per_epoch", steps_per_epoch, integer=True))
        else:
            raise ValueError("total_steps: expected total_steps, or epochs and steps_per_epoch")
        if isinstance(pct_start, bool) or not isinstance(pct_start, numbers.Real) \
                or not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start: expected a number in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy: expected 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy, self.cycle_momentum = anneal_strategy, bool(cycle_momentum)
        groups = optimizer.param_groups
        if self.cycle_momentum and not ("momentum" in optimizer.defaults
                                        or "betas" in optimizer.defaults):
            raise ValueError("cycle_momentum: the optimizer has no momentum or betas; pass "
                             "cycle_momentum=False")
        self._beta1 = "betas" in optimizer.defaults
        _positive("div_factor", div_factor)
        _positive("final_div_factor", final_div_factor)
        for group, top, base, high in zip(groups, _per_group("max_lr", max_lr, groups),
                                          _per_group("base_momentum", base_momentum, groups),
                                          _per_group("max_momentum", max_momentum, groups)):
            group["initial_lr"] = _positive("max_lr", top) / div_factor
            group["max_lr"], group["min_lr"] = top, group["initial_lr"] / final_div_factor
            if self.cycle_momentum:
                group["max_momentum"], group["base_momentum"] = high, base
                self._set_momentum(group, high)
        end = float(pct_start * self.total_steps) - 1
        if three_phase:
            self._phases = [(end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                            (float(2 * pct_start * self.total_steps) - 2, "max_lr",
                             "initial_lr", "base_momentum", "max_momentum"),
                            (self.total_steps - 1, "initial_lr", "min_lr", "max_momentum",
                             "max_momentum")]
        else:
            self._phases = [(end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                            (self.total_steps - 1, "max_lr", "min_lr", "base_momentum",
                             "max_momentum")]
        super().__init__(optimizer)

    def _set_momentum(self, group, value):
        if self._beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def step(self):
        """Advance one optimizer step and set each group's lr (and momentum)."""
        if self.last_epoch + 1 > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {self.last_epoch + 1} times, more than "
                             f"total_steps ({self.total_steps})")
        self.last_epoch += 1
        for group in self.optimizer.param_groups:
            group["lr"], momentum = self._lr_and_momentum(group, self.last_epoch)
            if momentum is not None:
                self._set_momentum(group, momentum)

    def _lr_and_momentum(self, group, step):
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
            if step <= end or i == len(self._phases) - 1:
                pct = (step - start) / (end - start)
                momentum = self._anneal(group[m0], group[m1], pct) if self.cycle_momentum \
                    else None
                return self._anneal(group[lr0], group[lr1], pct), momentum
            start = end


def _per_group(name, value, groups):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(groups)
    if len(values) != len(groups):
        raise ValueError(f"{name}: expected {len(groups)} values (one per group), got "
                         f"{len(values)}")
    return values


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
