"""Optimizers and learning-rate schedules by name.

Each optimizer is torch.optim's own algorithm, called through its public functional form
(``torch.optim.adam.adam`` and so on) on state the engine keeps per model: the engine trains a
stack of models in which each model has its own step count and learning rates, and may skip a
step (it has fewer batches, or has stopped), which one torch.optim optimizer over the stack
cannot express. The hyperparameters torch does not take from the config are read from the
torch.optim class's own defaults. Adding an optimizer is one entry of ``algorithms.ALGORITHMS``.

The algorithms themselves, by name, are ``covidreg.algorithms``; torch is imported only when an
optimizer is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covidreg.algorithms import ALGORITHMS, CONFIG_OPTIONS, OPTIMIZER_NAMES, Algorithm
from covidreg.errors import CovidRegError

if TYPE_CHECKING:
    import torch

    from covidreg.config import Config


def algorithm_options(
    algorithm: Algorithm, cfg: Config, defaults: dict[str, Any]
) -> dict[str, Any]:
    """The functional form's keyword-only arguments but lr: ``CONFIG_OPTIONS`` from the
    config, the others from torch's ``defaults`` (``betas`` as ``beta1``, ``beta2``)."""
    known = dict(defaults)
    if "betas" in known:
        known["beta1"], known["beta2"] = known.pop("betas")
    known.update({key: getattr(cfg, key) for key in CONFIG_OPTIONS})
    parameters = inspect.signature(algorithm.function()).parameters.values()
    wanted = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "lr"]
    return {key: known[key] for key in wanted}


class StackOptimizer:
    """One algorithm over the parameters of several models, each with its own state.

    ``state[name][model][i]`` is the state tensor ``name`` of parameter i of model ``model``,
    exactly what torch.optim would keep for that parameter, so each model's updates are those
    of its own torch.optim optimizer: its own step count, its own learning rates, and no update
    at a step it skips.
    """

    def __init__(
        self, cfg: Config, params: Sequence[Sequence[torch.Tensor]], groups: Sequence[int]
    ) -> None:
        if cfg.optimizer not in ALGORITHMS:
            raise CovidRegError(
                f"unknown optimizer '{cfg.optimizer}'; use {', '.join(OPTIMIZER_NAMES)}"
            )
        algorithm = ALGORITHMS[cfg.optimizer]
        defaults = algorithm.defaults()
        first = params[0][0]
        fused = (
            algorithm.fused
            and first.dtype.is_floating_point
            and first.device.type
            in (
                "cpu",
                "cuda",
            )
        )
        self.function = algorithm.function()
        self.options = algorithm_options(algorithm, cfg, defaults)
        # one fused kernel per step (torch's own); else torch's foreach implementation
        self.flags = {"fused": True} if fused else {"foreach": True}
        self.names = [name for name, _ in algorithm.state]
        self.state: dict[str, list[list[torch.Tensor | None]]] = {
            name: [
                [] if init is None else [init(p, defaults, fused) for p in model]
                for model in params
            ]
            for name, init in algorithm.state
        }
        self.groups = list(groups)  # the rate group of each parameter position

    def step(
        self,
        models: Sequence[int],
        params: Sequence[Sequence[torch.Tensor]],
        grads: Sequence[Sequence[torch.Tensor]],
        rates: Sequence[Sequence[float]],
    ) -> None:
        """Update ``params[j]`` (the parameters of model ``models[j]``) with ``grads[j]`` at
        that model's rates (``rates[models[j]][group]``); one functional call per rate."""
        by_rate: dict[float, list[tuple[int, int, int]]] = {}
        for j, model in enumerate(models):
            for i, group in enumerate(self.groups):
                by_rate.setdefault(rates[model][group], []).append((j, model, i))
        for lr, members in by_rate.items():
            state = {
                name: []
                if not self.state[name][0]
                else [self.state[name][m][i] for _, m, i in members]
                for name in self.names
            }
            self.function(
                [params[j][i] for j, _, i in members],
                [grads[j][i] for j, _, i in members],
                *(state[name] for name in self.names),
                lr=lr,
                **self.options,
                **self.flags,
            )
            for name in self.names:  # a first step may create state (SGD's momentum buffers)
                for value, (_, m, i) in zip(state[name], members, strict=False):
                    self.state[name][m][i] = value

    def state_dict(self, models: Sequence[int]) -> dict[str, Any]:
        return {name: [self.state[name][m] for m in models] for name in self.names}

    def load_state_dict(self, saved: dict[str, Any], models: Sequence[int]) -> None:
        """Restore ``state_dict``'s lists; a state of other shapes (another optimizer or
        parameter grouping) is a ValueError."""
        for name in self.names:
            for m, values in zip(models, saved[name], strict=True):
                current = self.state[name][m]
                shapes = [None if t is None else tuple(t.shape) for t in current]
                if len(values) != len(current) or any(
                    t is not None and shape is not None and tuple(t.shape) != shape
                    for t, shape in zip(values, shapes, strict=False)
                ):
                    raise ValueError(f"optimizer state '{name}' has other shapes")
                self.state[name][m] = list(values)


class LearningRates:
    """One model's learning rate per parameter group, epoch by epoch.

    Without a scheduler the rates stay as built, and no torch.optim object is made (the first
    one a process builds imports torch._dynamo, over a second of start-up). With one, torch's
    own scheduler runs over a stand-in optimizer whose groups hold only the rates.
    """

    def __init__(self, base: list[float], cfg: Config) -> None:
        self.cfg = cfg
        self.base = list(base)
        self.stand_in: Any = None
        self.scheduler: Any = None
        if cfg.scheduler != "none":
            import torch

            self.stand_in = torch.optim.SGD(
                [{"params": [torch.zeros(0)], "lr": lr} for lr in base], lr=cfg.lr
            )
            self.scheduler = build_scheduler(self.stand_in, cfg)
            self.stand_in.step()  # tells the scheduler it was stepped (no gradients: a no-op)

    def rates(self) -> list[float]:
        if self.stand_in is None:
            return self.base
        return [float(group["lr"]) for group in self.stand_in.param_groups]

    def step(self, valid_loss: float) -> None:
        """After an epoch: the scheduler's step (plateau watches the validation loss)."""
        if self.scheduler is None:
            return
        if self.cfg.scheduler == "plateau":
            self.scheduler.step(valid_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        return {"scheduler": self.scheduler.state_dict(), "rates": self.rates()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is None or state is None:
            return
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.stand_in.param_groups, state["rates"], strict=True):
            group["lr"] = lr


def build_scheduler(optimizer: Any, cfg: Config) -> Any:
    """The LR scheduler named by ``cfg.scheduler`` (None for 'none'); stepped once per epoch."""
    import torch

    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    if cfg.scheduler == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    raise CovidRegError(f"unknown scheduler '{cfg.scheduler}'")
