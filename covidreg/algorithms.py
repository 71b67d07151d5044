"""The torch.optim algorithms covidreg trains with, by name: one entry of ``ALGORITHMS`` each.

A registry of names and of the state each algorithm's functional form keeps, with no config in
it, so the config can list the names (and imports nothing that imports the config). torch is
imported only when an algorithm is used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# how one state tensor of a parameter starts (None: created by the algorithm's first step)
StateInit = Callable[["torch.Tensor", dict[str, Any], bool], "torch.Tensor | None"]


def _zeros(param: torch.Tensor, defaults: dict[str, Any], fused: bool) -> torch.Tensor:
    import torch

    return torch.zeros_like(param, memory_format=torch.preserve_format)


def _created_by_step(param: torch.Tensor, defaults: dict[str, Any], fused: bool) -> None:
    return None  # torch.optim.SGD's momentum buffer: the first step's gradient


def _step_count(param: torch.Tensor, defaults: dict[str, Any], fused: bool) -> torch.Tensor:
    import torch

    # as torch.optim keeps it: a float32 scalar, on the parameter's device for fused kernels
    return torch.zeros((), dtype=torch.float32, device=param.device if fused else "cpu")


def _accumulator(param: torch.Tensor, defaults: dict[str, Any], fused: bool) -> torch.Tensor:
    import torch

    return torch.full_like(param, defaults["initial_accumulator_value"])


def _mu_product(param: torch.Tensor, defaults: dict[str, Any], fused: bool) -> torch.Tensor:
    import torch

    return torch.ones((), dtype=torch.float32)


# the config keys an algorithm takes from the config where its functional form has them; its
# other hyperparameters are torch.optim's defaults
CONFIG_OPTIONS = ("momentum", "nesterov", "weight_decay")


@dataclass(frozen=True)
class Algorithm:
    """One torch.optim algorithm: ``torch.optim.<name>`` and its functional form
    ``torch.optim.<name.lower()>.<name.lower()>``, called as
    ``function(params, grads, *state lists, lr=..., **options, fused/foreach)``."""

    name: str
    state: tuple[tuple[str, StateInit | None], ...]  # the functional form's state lists, in order
    fused: bool  # torch has a fused kernel for it (else its foreach implementation runs)

    def defaults(self) -> dict[str, Any]:
        """torch.optim's defaults for this algorithm, from its constructor's signature."""
        import torch

        signature = inspect.signature(getattr(torch.optim, self.name).__init__)
        return {
            key: p.default
            for key, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    def function(self) -> Callable[..., None]:
        module = importlib.import_module(f"torch.optim.{self.name.lower()}")
        return getattr(module, self.name.lower())


_ADAM_STATE = (("exp_avg", _zeros), ("exp_avg_sq", _zeros), ("max_exp_avg_sq", None))
_STEP = ("step", _step_count)

ALGORITHMS: dict[str, Algorithm] = {
    "sgd": Algorithm("SGD", (("momentum_buffer", _created_by_step),), fused=True),
    "adagrad": Algorithm("Adagrad", (("sum", _accumulator), _STEP), fused=True),
    "rmsprop": Algorithm(
        "RMSprop",
        (("square_avg", _zeros), ("grad_avg", _zeros), ("momentum_buffer", _zeros), _STEP),
        fused=False,
    ),
    "adam": Algorithm("Adam", (*_ADAM_STATE, _STEP), fused=True),
    "adamw": Algorithm("AdamW", (*_ADAM_STATE, _STEP), fused=True),
    "nadam": Algorithm(
        "NAdam",
        (("exp_avg", _zeros), ("exp_avg_sq", _zeros), ("mu_product", _mu_product), _STEP),
        fused=False,
    ),
}
OPTIMIZER_NAMES = tuple(ALGORITHMS)
