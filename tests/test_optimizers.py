"""Optimizers and schedules by name: StackOptimizer is torch.optim's algorithm, step for step.

The reference for each case is one torch.optim optimizer per model, built with the same
hyperparameters and the same implementation (fused where StackOptimizer calls the fused kernel,
else foreach), over the tensors the engine hands to StackOptimizer: each model's flat row as one
parameter, or its body's and head's parts. Updates and state must be the same bits.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import covidreg
from covidreg.algorithms import ALGORITHMS, OPTIMIZER_NAMES
from covidreg.config import CHOICES, FIELDS, Config
from covidreg.errors import CovidRegError
from covidreg.model import build_model
from covidreg.optimizers import (
    LearningRates,
    StackOptimizer,
    algorithm_options,
    build_scheduler,
)
from covidreg.stack import flatten, parameter_groups
from tests.conftest import LAYOUT

NAMES = ["cli_d1", "ili_d1", "cli_d2", "ili_d2", "tested_positive_d1", "tested_positive_d2"]
N_MODELS = 3
N_STEPS = 8
# the models that step at each step: a model without a batch, or stopped, skips it
STEPPING = [[0, 1, 2], [0, 2], [1], [0, 1, 2], [2], [0, 1], [0, 1, 2], [1, 2]]
# the config keys each algorithm takes from the config (the rest are torch's defaults)
CONFIG_HYPERPARAMETERS = {
    "sgd": ("momentum", "nesterov", "weight_decay"),
    "adagrad": ("weight_decay",),
    "rmsprop": ("momentum", "weight_decay"),
    "adam": ("weight_decay",),
    "adamw": ("weight_decay",),
    "nadam": ("weight_decay",),
}

CASES: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
    "sgd-decay": {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 1e-2},
    "sgd-momentum": {"optimizer": "sgd", "momentum": 0.9},
    "sgd-nesterov-decay": {
        "optimizer": "sgd",
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-2,
    },
    "adagrad": {"optimizer": "adagrad"},
    "adagrad-decay": {"optimizer": "adagrad", "weight_decay": 1e-3},
    "rmsprop": {"optimizer": "rmsprop", "momentum": 0.0},
    "rmsprop-momentum-decay": {"optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 1e-3},
    "adam": {"optimizer": "adam"},
    "adam-decay": {"optimizer": "adam", "weight_decay": 1e-2},
    "adamw": {"optimizer": "adamw"},
    "adamw-decay": {"optimizer": "adamw", "weight_decay": 0.1},
    "nadam": {"optimizer": "nadam"},
    "nadam-decay": {"optimizer": "nadam", "weight_decay": 1e-2},
}


def config(**changes: Any) -> Config:
    return dataclasses.replace(Config(), **{"hidden": [8, 4], "lr": 0.05, **changes})


def rates_at(step: int, cfg: Config) -> list[list[float]]:
    """Each model's rates at ``step``: its own, changing over the steps, and at some steps
    equal to another model's (those share one functional call)."""
    base = [cfg.lr, cfg.lr * (0.5 if step % 3 else 1.0), cfg.lr * 0.25 * (1 + step % 2)]
    head = cfg.output_lr
    if head in (0, cfg.lr):
        return [[lr] for lr in base]
    return [[lr, head * (j + 1) if step % 2 else base[(j + 1) % 3]] for j, lr in enumerate(base)]


@dataclasses.dataclass
class Layout:
    """The engine's layout: [S, P] weights and gradients, each model's row split per group."""

    flat: torch.Tensor
    grad: torch.Tensor
    params: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]]
    groups: list[int]


def stack_layout(cfg: Config) -> Layout:
    models = []
    for seed in range(N_MODELS):
        torch.manual_seed(seed)
        models.append(build_model(cfg, LAYOUT, NAMES))
    flat = torch.stack([flatten(m) for m in models])
    grad = torch.zeros_like(flat)
    _, groups = parameter_groups(cfg, len(models[0].linears()))
    head = models[0].head.weight.numel() + 1
    cut = [flat.shape[1]] if len(groups) == 1 else [flat.shape[1] - head, head]
    return Layout(
        flat,
        grad,
        [list(flat[j].split(cut)) for j in range(N_MODELS)],
        [list(grad[j].split(cut)) for j in range(N_MODELS)],
        groups,
    )


def torch_optimizers(cfg: Config, layout: Layout, flags: dict[str, bool]) -> list[Any]:
    """One torch.optim optimizer per model over copies of its parameters, one group per rate."""
    cls = getattr(torch.optim, ALGORITHMS[cfg.optimizer].name)
    hyper = {key: getattr(cfg, key) for key in CONFIG_HYPERPARAMETERS[cfg.optimizer]}
    optimizers = []
    for j in range(N_MODELS):
        groups = [
            {"params": [torch.nn.Parameter(p.clone())], "lr": lr}
            for p, lr in zip(layout.params[j], rates_at(0, cfg)[j], strict=True)
        ]
        optimizers.append(cls(groups, **hyper, **flags))
    return optimizers


def gradients(step: int, layout: Layout) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + step)
    grad = torch.randn(layout.grad.shape, generator=generator)
    grad[:, :20] = 0.0  # weights no row of a batch reaches (a one-hot state absent from it)
    grad[:, 25] = 1e-30  # the tiny gradients that decay into subnormal state
    return grad


def assert_same_as_torch(
    stack: StackOptimizer, layout: Layout, references: list[Any], where: str
) -> None:
    for j, reference in enumerate(references):
        theirs = [p for g in reference.param_groups for p in g["params"]]
        for i, (mine, param) in enumerate(zip(layout.params[j], theirs, strict=True)):
            assert torch.equal(mine, param.detach()), f"{where}: model {j} parameter {i}"
            state = reference.state.get(param, {})
            for name in stack.names:
                value = stack.state[name][j][i] if stack.state[name][j] else None
                if name in state:
                    assert value is not None, f"{where}: {name} of model {j}"
                    assert value.dtype == state[name].dtype, f"{where}: {name}"
                    assert value.device == state[name].device, f"{where}: {name}"
                    assert torch.equal(value, state[name]), f"{where}: {name} of model {j}"
                else:  # a buffer this setting does not use (RMSprop's without momentum)
                    assert value is None or not value.any(), f"{where}: {name} of model {j}"
            assert set(state) <= set(stack.names), where


@pytest.mark.parametrize("output_lr", [0.0, 0.02], ids=["one-group", "output-lr"])
@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_stack_optimizer_steps_exactly_like_torch_optim(
    changes: dict[str, Any], output_lr: float
) -> None:
    cfg = config(output_lr=output_lr, **changes)
    layout = stack_layout(cfg)
    assert len(layout.groups) == (2 if output_lr else 1)
    stack = StackOptimizer(cfg, layout.params, layout.groups)
    uses_fused = ALGORITHMS[cfg.optimizer].fused
    assert stack.flags == ({"fused": True} if uses_fused else {"foreach": True})
    references = torch_optimizers(cfg, layout, stack.flags)
    for step, models in enumerate(STEPPING):
        rates = rates_at(step, cfg)
        layout.grad.copy_(gradients(step, layout))
        stack.step(
            models, [layout.params[j] for j in models], [layout.grads[j] for j in models], rates
        )
        for j in models:
            reference = references[j]
            for group, lr, grad in zip(
                reference.param_groups, rates[j], layout.grads[j], strict=True
            ):
                group["lr"] = lr
                group["params"][0].grad = grad.clone()
            reference.step()
        assert_same_as_torch(stack, layout, references, f"step {step}")
    # the models that skipped steps took fewer of them, as their own optimizers did
    if "step" in stack.names:
        counts = [float(stack.state["step"][j][0]) for j in range(N_MODELS)]
        assert counts == [sum(j in models for models in STEPPING) for j in range(N_MODELS)]
    assert not torch.equal(layout.flat[0], layout.flat[1])  # the steps did change the weights


def test_every_algorithm_is_tested() -> None:
    assert {case["optimizer"] for case in CASES.values()} == set(ALGORITHMS)
    assert set(CONFIG_HYPERPARAMETERS) == set(ALGORITHMS)


def test_adding_an_optimizer_is_one_entry() -> None:
    """The config's choices and help come from ALGORITHMS, and each entry names torch.optim's
    class and its functional form, with keyword arguments that form takes."""
    assert CHOICES["optimizer"] == OPTIMIZER_NAMES == tuple(ALGORITHMS)
    for name, algorithm in ALGORITHMS.items():
        assert name in FIELDS["optimizer"].metadata["help"]
        cls = getattr(torch.optim, algorithm.name)
        assert issubclass(cls, torch.optim.Optimizer)
        module = importlib.import_module(f"torch.optim.{algorithm.name.lower()}")
        assert algorithm.function() is getattr(module, algorithm.name.lower())
        accepted = inspect.signature(algorithm.function()).parameters
        options = algorithm_options(algorithm, config(optimizer=name), algorithm.defaults())
        assert set(options) <= set(accepted), name
        assert "lr" in accepted
        # the state lists, in the functional form's positional order after params and grads
        positional = list(accepted)[2 : 2 + len(algorithm.state)]
        for (state_name, _), argument in zip(algorithm.state, positional, strict=True):
            assert state_name in argument, (name, state_name, argument)
        if algorithm.fused:
            assert "fused" in inspect.signature(cls.__init__).parameters


def test_no_module_calls_a_private_torch_optimizer_kernel() -> None:
    private = re.compile(r"torch\._fused|torch\._foreach|_single_tensor_|_multi_tensor_")
    sources = sorted(Path(covidreg.__file__).parent.rglob("*.py"))
    assert len(sources) > 10
    offenders = [
        f"{path.name}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if private.search(line)
    ]
    assert offenders == []


def test_unknown_optimizer() -> None:
    layout = stack_layout(config())
    with pytest.raises(CovidRegError, match="unknown optimizer 'lbfgs'; use sgd, adagrad"):
        StackOptimizer(config(optimizer="lbfgs"), layout.params, layout.groups)


def test_optimizer_state_round_trip_and_shape_check() -> None:
    cfg = config(optimizer="adam")
    layout = stack_layout(cfg)
    stack = StackOptimizer(cfg, layout.params, layout.groups)
    layout.grad.copy_(gradients(0, layout))
    stack.step([0, 1, 2], layout.params, layout.grads, rates_at(0, cfg))
    buffer = io.BytesIO()
    torch.save(stack.state_dict([2, 0]), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = StackOptimizer(cfg, layout.params, layout.groups)
    fresh.load_state_dict(saved, [2, 0])
    for name in stack.names:
        for m in (0, 2):
            assert all(
                torch.equal(a, b)
                for a, b in zip(fresh.state[name][m], stack.state[name][m], strict=True)
            )
        assert fresh.state[name][1] == [] or float(fresh.state[name][1][0].abs().sum()) == 0.0
    other = StackOptimizer(config(optimizer="adam", output_lr=0.02), *_grouped(cfg, 0.02))
    with pytest.raises(ValueError, match="other shapes"):
        other.load_state_dict(saved, [2, 0])


def _grouped(cfg: Config, output_lr: float) -> tuple[list[list[torch.Tensor]], list[int]]:
    layout = stack_layout(dataclasses.replace(cfg, output_lr=output_lr))
    return layout.params, layout.groups


# --- learning-rate schedules --------------------------------------------------------------------

SCHEDULES: dict[str, dict[str, Any]] = {
    "step": {"scheduler": "step", "step_size": 3, "gamma": 0.5},
    "exponential": {"scheduler": "exponential", "gamma": 0.8},
    "cosine": {"scheduler": "cosine", "epochs": 12, "min_lr": 1e-4},
    "plateau": {"scheduler": "plateau", "plateau_patience": 2, "gamma": 0.5, "min_lr": 1e-3},
}
# validation losses with plateaus, so that the plateau schedule cuts the rate
VALID_LOSSES = [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]


def torch_schedule(cfg: Config, base: list[float], losses: list[float]) -> list[list[float]]:
    """Each epoch's rates of a real optimizer, stepped per batch, under torch's own scheduler."""
    params = [torch.nn.Parameter(torch.ones(3)) for _ in base]
    optimizer = torch.optim.SGD(
        [{"params": [p], "lr": lr} for p, lr in zip(params, base, strict=True)], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler
    scheduler = {
        "step": lambda: sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma),
        "exponential": lambda: sched.ExponentialLR(optimizer, gamma=cfg.gamma),
        "cosine": lambda: sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr),
        "plateau": lambda: sched.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        ),
    }[cfg.scheduler]()
    seen = []
    for loss in losses:
        seen.append([group["lr"] for group in optimizer.param_groups])
        for p in params:
            p.grad = torch.ones(3)
        optimizer.step()
        if cfg.scheduler == "plateau":
            scheduler.step(loss)
        else:
            scheduler.step()
    return seen


def our_schedule(rates: LearningRates, losses: list[float]) -> list[list[float]]:
    seen = []
    for loss in losses:
        seen.append(list(rates.rates()))
        rates.step(loss)
    return seen


@pytest.mark.parametrize("changes", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_learning_rates_follow_torchs_scheduler(changes: dict[str, Any]) -> None:
    cfg = config(lr=0.1, **changes)
    base = [0.1, 0.03]
    expected = torch_schedule(cfg, base, VALID_LOSSES)
    got = our_schedule(LearningRates(base, cfg), VALID_LOSSES)
    assert got == expected  # the same floats
    assert len({tuple(r) for r in got}) > 2  # the schedule did change the rates


@pytest.mark.parametrize("changes", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_learning_rates_state_round_trip(changes: dict[str, Any]) -> None:
    cfg = config(lr=0.1, **changes)
    whole = LearningRates([0.1, 0.03], cfg)
    expected = our_schedule(whole, VALID_LOSSES)
    first = LearningRates([0.1, 0.03], cfg)
    our_schedule(first, VALID_LOSSES[:7])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = LearningRates([0.1, 0.03], cfg)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert our_schedule(resumed, VALID_LOSSES[7:]) == expected[7:]


def test_constant_rates_build_no_optimizer() -> None:
    rates = LearningRates([0.1, 0.03], config(scheduler="none"))
    assert rates.stand_in is None and rates.scheduler is None
    assert our_schedule(rates, VALID_LOSSES) == [[0.1, 0.03]] * len(VALID_LOSSES)
    assert rates.state_dict() is None
    rates.load_state_dict(None)
    assert rates.rates() == [0.1, 0.03]


@pytest.mark.parametrize(
    ("name", "cls", "attributes"),
    [
        ("step", torch.optim.lr_scheduler.StepLR, {"step_size": 7, "gamma": 0.25}),
        ("exponential", torch.optim.lr_scheduler.ExponentialLR, {"gamma": 0.25}),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 40, "eta_min": 1e-5}),
        (
            "plateau",
            torch.optim.lr_scheduler.ReduceLROnPlateau,
            {"factor": 0.25, "patience": 3, "min_lrs": [1e-5]},
        ),
    ],
)
def test_build_scheduler_by_name(name: str, cls: type, attributes: dict[str, Any]) -> None:
    cfg = config(
        scheduler=name, step_size=7, gamma=0.25, epochs=40, min_lr=1e-5, plateau_patience=3
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = build_scheduler(optimizer, cfg)
    assert type(scheduler) is cls
    for key, value in attributes.items():
        assert getattr(scheduler, key) == value
    assert build_scheduler(optimizer, config(scheduler="none")) is None
    with pytest.raises(CovidRegError, match="unknown scheduler 'linear'"):
        build_scheduler(optimizer, config(scheduler="linear"))
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.1)
