"""The training loop: early stopping, optimizers, schedulers, penalties, seeding, exact resume."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from covidreg import train as train_module
from covidreg.config import Config
from covidreg.data import (
    HW01Dataset,
    feature_columns,
    fit_standardization,
    holdout_split,
    make_loader,
    resolve_features,
)
from covidreg.errors import CovidRegError
from covidreg.model import ManualMLP, build_model
from covidreg.train import (
    EarlyStopping,
    EpochRecord,
    Trainer,
    batches,
    build_optimizer,
    build_scheduler,
    evaluate,
    parameter_groups,
    penalty,
    predict,
    resolve_device,
    seed_everything,
    train_one_epoch,
)
from tests.conftest import synthetic_rows

CPU = torch.device("cpu")
NAMES = resolve_features(["strong"])


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks: one thread avoids thread-pool wake-ups dominating each optimizer step."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**changes: Any) -> Config:
    base = {"hidden": [16], "batch_size": 16, "epochs": 12, "patience": 0, "lr": 0.01}
    return dataclasses.replace(Config(), **{**base, **changes})


@dataclasses.dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: torch.Tensor
    y_valid: torch.Tensor


@pytest.fixture(scope="module")
def split() -> Split:
    rows = synthetic_rows(4, 30, seed=0)
    x = rows[:, feature_columns(NAMES)].astype(np.float32)
    y = rows[:, -1].astype(np.float32)
    train_idx, valid_idx = holdout_split(np.repeat(np.arange(4), 30), "blocked", 0.2)
    return Split(
        x[train_idx], y[train_idx], torch.from_numpy(x[valid_idx]), torch.from_numpy(y[valid_idx])
    )


def make_trainer(cfg: Config, data: Split, seed: int = 0) -> Trainer:
    """Built the way a run builds it: seed, model, statistics of the training rows, loader."""
    seed_everything(seed)
    model = build_model(cfg, NAMES)
    model.set_normalization(*fit_standardization(data.x_train, NAMES))
    loader = make_loader(HW01Dataset(data.x_train, data.y_train), cfg.batch_size, True, seed)
    return Trainer(model, cfg, loader, data.x_valid, data.y_valid, CPU)


def plain_mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return ((model(x).double() - y.double()) ** 2).mean().item()


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- early stopping ------------------------------------------------------------------------------


def run_stopper(stopper: EarlyStopping, losses: list[float]) -> int | None:
    """The epoch after which training stops (None: it never does)."""
    for epoch, loss in enumerate(losses, start=1):
        stopper.step(loss, epoch)
        if stopper.should_stop:
            return epoch
    return None


def test_patience_counts_exactly() -> None:
    stopper = EarlyStopping(patience=3)
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5]
    assert run_stopper(stopper, losses) == 8
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (1.0, 5, 3)


def test_improvement_resets_the_count() -> None:
    stopper = EarlyStopping(patience=3)
    assert run_stopper(stopper, [3.0, 4.0, 4.0, 2.0, 5.0, 5.0, 5.0, 5.0]) == 7
    assert stopper.best_epoch == 4


def test_min_delta_tie_is_not_an_improvement() -> None:
    stopper = EarlyStopping(patience=5, min_delta=0.25)
    assert stopper.step(1.5, 1) is True
    assert stopper.step(1.25, 2) is False  # exactly min_delta better: not an improvement
    assert (stopper.best, stopper.bad_epochs) == (1.5, 1)
    assert stopper.step(1.2, 3) is True  # more than min_delta better
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (1.2, 3, 0)


def test_equal_loss_is_not_an_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    stopper.step(1.0, 1)
    assert stopper.step(1.0, 2) is False
    assert stopper.step(1.0, 3) is False
    assert stopper.should_stop


def test_patience_zero_never_stops() -> None:
    stopper = EarlyStopping(patience=0)
    assert run_stopper(stopper, [1.0] + [2.0] * 1000) is None
    assert stopper.bad_epochs == 1000


def test_nan_is_never_an_improvement() -> None:
    stopper = EarlyStopping(patience=10)
    assert stopper.step(math.nan, 1) is False
    assert stopper.step(math.inf, 2) is False
    assert stopper.best == math.inf
    assert stopper.step(3.0, 3) is True
    assert stopper.step(math.nan, 4) is False
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (3.0, 3, 1)


def test_early_stopping_state_round_trip() -> None:
    stopper = EarlyStopping(patience=4, min_delta=0.1)
    run_stopper(stopper, [3.0, 2.0, 2.5, 2.5])
    copy = EarlyStopping(patience=4, min_delta=0.1)
    copy.load_state_dict(stopper.state_dict())
    assert (copy.best, copy.best_epoch, copy.bad_epochs) == (2.0, 2, 2)
    assert run_stopper(copy, [2.5, 2.5]) == 2  # two more bad epochs reach patience 4


# --- optimizers and schedulers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
        ("rmsprop", torch.optim.RMSprop),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_build_optimizer_by_name(name: str, cls: type[torch.optim.Optimizer]) -> None:
    cfg = config(optimizer=name, lr=0.02, weight_decay=1e-3, momentum=0.7, nesterov=name == "sgd")
    model = build_model(cfg, NAMES)
    optimizer = build_optimizer(model, cfg)
    assert type(optimizer) is cls
    for group in optimizer.param_groups:
        assert group["lr"] == 0.02
        assert group["weight_decay"] == 1e-3
        if name in ("sgd", "rmsprop"):
            assert group["momentum"] == 0.7
        if name == "sgd":
            assert group["nesterov"] is True
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}


def test_output_lr_gives_the_head_its_own_group() -> None:
    cfg = config(lr=0.001, output_lr=0.1, hidden=[8, 4])
    model = build_model(cfg, NAMES)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert groups["head"]["lr"] == 0.1
    assert groups["body"]["lr"] == 0.001
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    body_params = [p for m in model.body for p in m.parameters()]
    assert {id(p) for p in groups["body"]["params"]} == {id(p) for p in body_params}


@pytest.mark.parametrize("output_lr", [0.0, 0.001], ids=["unset", "equal"])
def test_one_group_without_a_separate_output_lr(output_lr: float) -> None:
    cfg = config(lr=0.001, output_lr=output_lr, hidden=[8, 4])
    model = build_model(cfg, NAMES)
    groups = build_optimizer(model, cfg).param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("all", 0.001)]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("output_lr", [0.0, 0.001, 0.1], ids=["unset", "equal", "own"])
def test_parameter_groups_are_the_optimizers(output_lr: float) -> None:
    """The groups and rates the batched folds read without building an optimizer."""
    cfg = config(lr=0.001, output_lr=output_lr, hidden=[8, 4])
    model = build_model(cfg, NAMES)
    expected = build_optimizer(model, cfg).param_groups
    got = parameter_groups(model, cfg)
    assert [(g["name"], g["lr"]) for g in got] == [(g["name"], g["lr"]) for g in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert [id(p) for p in mine["params"]] == [id(p) for p in theirs["params"]]


def test_unknown_optimizer() -> None:
    cfg = config(optimizer="lbfgs")
    with pytest.raises(CovidRegError, match="unknown optimizer 'lbfgs'"):
        build_optimizer(build_model(cfg, NAMES), cfg)


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
    optimizer = build_optimizer(build_model(cfg, NAMES), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    assert type(scheduler) is cls
    for key, value in attributes.items():
        assert getattr(scheduler, key) == value
    assert build_scheduler(optimizer, config(scheduler="none")) is None


def scripted_valid_losses(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> None:
    """Make Trainer see ``losses`` as its validation losses, epoch by epoch."""
    script = iter(losses)
    for epochs in (train_module.AutogradEpochs, train_module.HandWrittenEpochs):
        monkeypatch.setattr(epochs, "evaluate", lambda self, x, y: next(script))


@pytest.mark.parametrize(
    ("losses", "expected_lr"),
    [
        ([1.0] * 6, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05]),  # flat valid loss: reduced after 3 bad
        ([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], [0.1] * 6),  # improving valid loss: never reduced
    ],
    ids=["flat", "improving"],
)
def test_plateau_steps_on_the_valid_loss(
    split: Split, monkeypatch: pytest.MonkeyPatch, losses: list[float], expected_lr: list[float]
) -> None:
    cfg = config(scheduler="plateau", plateau_patience=2, gamma=0.5, lr=0.1, epochs=6)
    trainer = make_trainer(cfg, split)
    scripted_valid_losses(monkeypatch, losses)
    result = trainer.fit()
    assert [r.lr for r in result.history] == pytest.approx(expected_lr)
    assert [r.valid_loss for r in result.history] == losses


def test_step_scheduler_in_the_loop(split: Split) -> None:
    result = make_trainer(config(scheduler="step", step_size=2, gamma=0.5, epochs=5), split).fit()
    assert [r.lr for r in result.history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])


# --- penalty, one epoch, evaluation --------------------------------------------------------------


def test_penalty_values() -> None:
    torch.manual_seed(0)
    model = build_model(config(hidden=[8, 4], batch_norm=True), NAMES)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    l2_sum = sum(float((w.double() ** 2).sum()) for w in weights)
    l1_sum = sum(float(w.double().abs().sum()) for w in weights)
    assert penalty(model, 0.0, 0.0) is None
    assert penalty(model, 0.0, 0.5).item() == pytest.approx(0.5 * l2_sum, rel=1e-5)
    assert penalty(model, 0.25, 0.0).item() == pytest.approx(0.25 * l1_sum, rel=1e-5)
    both = penalty(model, 0.25, 0.5).item()
    assert both == pytest.approx(0.25 * l1_sum + 0.5 * l2_sum, rel=1e-5)
    # biases and batch-norm weights are not penalised
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.BatchNorm1d)) and m.bias is not None:
                m.bias.fill_(100.0)
    assert penalty(model, 0.25, 0.5).item() == pytest.approx(both, rel=1e-6)


def test_train_one_epoch_reports_plain_mse_but_trains_with_the_penalty(split: Split) -> None:
    n = len(split.y_train)
    cfg = config(optimizer="sgd", lr=1e-3, momentum=0.0, batch_size=n)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)

    def one_full_batch_epoch(l2: float) -> tuple[float, float, dict[str, torch.Tensor]]:
        trainer = make_trainer(cfg, split)
        before = plain_mse(trainer.model, x, y)
        loss = train_one_epoch(trainer.model, trainer.loader, trainer.optimizer, CPU, l2=l2)
        return loss, before, copy_state(trainer.model)

    loss, before, no_penalty = one_full_batch_epoch(0.0)
    loss_l2, before_l2, with_penalty = one_full_batch_epoch(10.0)
    assert loss == pytest.approx(before, rel=1e-5)
    assert loss_l2 == pytest.approx(before_l2, rel=1e-5)  # the penalty is not in the report
    assert loss_l2 == pytest.approx(loss, rel=1e-6)
    assert not torch.equal(with_penalty["body.0.weight"], no_penalty["body.0.weight"])
    shrink = with_penalty["body.0.weight"].norm() < no_penalty["body.0.weight"].norm()
    assert shrink  # weight decay by the penalty's gradient


def test_valid_loss_never_includes_the_penalty(split: Split) -> None:
    cfg = config(l2=5.0, l1=0.5, epochs=6)
    trainer = make_trainer(cfg, split)
    result = trainer.fit()
    by_hand = plain_mse(trainer.model, split.x_valid, split.y_valid)
    assert evaluate(trainer.model, split.x_valid, split.y_valid) == pytest.approx(by_hand, rel=1e-6)
    assert result.best_valid_mse == pytest.approx(by_hand, rel=1e-6)
    extra = penalty(trainer.model, cfg.l1, cfg.l2).item()
    assert extra > 1e-2 * by_hand  # far beyond the tolerance: including it would show


HAND_WRITTEN_CASES = {
    "relu-level": {"target": "level"},
    "tanh-dropout-delta-adam": {
        "activation": "tanh",
        "dropout": 0.3,
        "target": "delta",
        "hidden": [16, 8],
        "optimizer": "adam",
    },
    "gelu-dropout-sgd": {"activation": "gelu", "dropout": 0.15, "optimizer": "sgd"},
    "selu-output-lr": {"activation": "selu", "output_lr": 0.003, "hidden": [16, 8]},
    "leaky-relu-l1": {"activation": "leaky_relu", "l1": 1e-3},
    "sigmoid-l2-delta": {"activation": "sigmoid", "l2": 1e-2, "target": "delta"},
    "relu-l1-l2-dropout": {"l1": 1e-3, "l2": 1e-2, "dropout": 0.3, "hidden": [16, 8]},
    "sgd-nesterov-decay": {"optimizer": "sgd", "nesterov": True, "weight_decay": 1e-2},
    "sgd-no-momentum": {"optimizer": "sgd", "momentum": 0.0},
    "adamw-cosine": {"optimizer": "adamw", "weight_decay": 1e-2, "scheduler": "cosine"},
    "adagrad-step-lr": {"optimizer": "adagrad", "scheduler": "step", "step_size": 2},
    "rmsprop": {"optimizer": "rmsprop", "momentum": 0.5},  # no fused kernel: step()
}


def count_direct_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Optimizer steps that called the fused kernel directly."""
    calls = [0]
    real = train_module.fused_kernel_step

    def counted_kernel(*args: Any, **kwargs: Any) -> Any:
        step = real(*args, **kwargs)
        if step is None:
            return None

        def counted_step(grads: Any) -> None:
            calls[0] += 1
            step(grads)

        return counted_step

    monkeypatch.setattr(train_module, "fused_kernel_step", counted_kernel)
    return calls


def count_hand_written_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = ManualMLP.backward

    def counted(self: ManualMLP, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ManualMLP, "backward", counted)
    return calls


@pytest.mark.parametrize("changes", list(HAND_WRITTEN_CASES.values()), ids=list(HAND_WRITTEN_CASES))
def test_hand_written_gradients_train_exactly_like_autograd(
    split: Split, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any]
) -> None:
    cfg = config(epochs=6, **changes)
    calls = count_hand_written_steps(monkeypatch)
    direct = count_direct_steps(monkeypatch)
    fast = make_trainer(cfg, split, seed=4)
    fast_result = fast.fit()
    rng_after_fast = torch.get_rng_state()
    assert calls[0] == 6 * len(fast.loader)  # every step took the hand-written path
    # after the first step() made the optimizer's state, its kernel is called directly
    assert direct[0] == (0 if cfg.optimizer == "rmsprop" else calls[0] - 1)
    monkeypatch.setattr(train_module, "AUTOGRAD_ONLY", True)
    slow = make_trainer(cfg, split, seed=4)
    slow_result = slow.fit()
    assert calls[0] == 6 * len(fast.loader)  # and this run none
    assert_same_state(fast.model.state_dict(), slow.model.state_dict())
    assert [vars(r) for r in fast_result.history] == [vars(r) for r in slow_result.history]
    for fast_state, slow_state in zip(
        fast.optimizer.state_dict()["state"].values(),
        slow.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert_same_state(fast_state, slow_state)
    assert torch.equal(torch.get_rng_state(), rng_after_fast)  # the same dropout draws


# --- the optimizer's fused kernel, called directly ---------------------------------------------

FUSED_CASES = {
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
    "sgd-momentum": {"optimizer": "sgd", "momentum": 0.9},
    "sgd-nesterov-decay": {"optimizer": "sgd", "nesterov": True, "weight_decay": 1e-2},
    "adam": {"optimizer": "adam"},
    "adam-decay": {"optimizer": "adam", "weight_decay": 1e-2},
    "adamw": {"optimizer": "adamw", "weight_decay": 1e-2},
    "adagrad": {"optimizer": "adagrad", "weight_decay": 1e-3},
    "two-groups": {"optimizer": "adam", "output_lr": 3e-3, "hidden": [16, 8]},
}


def step_pair(cfg: Config) -> tuple[list[nn.Parameter], torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = build_model(cfg, NAMES)
    optimizer = build_optimizer(model, cfg)
    return list(model.parameters()), optimizer, build_scheduler(optimizer, cfg)


@pytest.mark.parametrize("changes", list(FUSED_CASES.values()), ids=list(FUSED_CASES))
def test_the_direct_fused_kernel_steps_exactly_like_step(changes: dict[str, Any]) -> None:
    cfg = config(lr=0.05, scheduler="step", step_size=2, gamma=0.5, **changes)
    public_params, public, public_scheduler = step_pair(cfg)
    direct_params, direct, direct_scheduler = step_pair(cfg)
    generator = torch.Generator().manual_seed(1)
    for n in range(7):
        grads = [torch.randn(p.shape, generator=generator) for p in public_params]
        grads[0][:3] = 0.0  # weights a batch does not reach
        for p, grad in zip(public_params, grads, strict=True):
            p.grad = grad.clone()
        public.step()
        step = train_module.optimizer_step(direct, direct_params, direct=n > 0)
        if n > 0:
            assert train_module.fused_kernel_step(direct, direct_params) is not None
        step([grad.clone() for grad in grads])
        public_scheduler.step()  # the learning rate changes every 2 steps
        direct_scheduler.step()
    for p, q in zip(public_params, direct_params, strict=True):
        assert torch.equal(p, q)
    public_state, direct_state = public.state_dict(), direct.state_dict()
    assert public_state["param_groups"] == direct_state["param_groups"]
    for key, state in public_state["state"].items():
        assert_same_state(state, direct_state["state"][key])


def test_the_direct_fused_kernel_is_not_used_where_it_does_not_apply() -> None:
    def direct(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> Any:
        return train_module.fused_kernel_step(optimizer, params)

    cfg = config(optimizer="sgd", momentum=0.9)
    params, optimizer, _ = step_pair(cfg)
    assert direct(optimizer, params) is None  # no momentum buffers before the first step
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert direct(optimizer, params) is not None
    handle = optimizer.register_step_post_hook(lambda *args: None)
    assert direct(optimizer, params) is None  # a hook would be skipped
    handle.remove()
    handle = register_optimizer_step_pre_hook(lambda *args: None)
    assert direct(optimizer, params) is None  # a hook for every optimizer, too
    handle.remove()
    assert direct(optimizer, params) is not None
    assert direct(optimizer, params[:2]) is None  # parameters it was not given
    rmsprop_params, rmsprop, _ = step_pair(config(optimizer="rmsprop"))
    assert direct(rmsprop, rmsprop_params) is None  # no fused kernel
    unfused = torch.optim.Adam(params, lr=0.01)
    unfused.step()
    assert direct(unfused, params) is None
    wrapped = train_module.optimizer_step(unfused, params)
    before = params[0].detach().clone()
    wrapped([torch.ones_like(p) for p in params])  # falls back to step()
    assert not torch.equal(params[0], before)


# --- subnormal floats ----------------------------------------------------------------------------

FLUSH_SUPPORTED = torch.set_flush_denormal(False)  # False is also the default


@pytest.mark.skipif(not FLUSH_SUPPORTED, reason="this CPU cannot flush subnormal floats")
def test_denormals_flushed_sets_the_mode_and_restores_it() -> None:
    tiny = torch.full((1,), 2e-38)
    assert not train_module.flushing_denormals()
    assert (tiny * 0.25).item() > 0  # IEEE: a subnormal result
    with train_module.denormals_flushed(True):
        assert train_module.flushing_denormals()
        assert (tiny * 0.25).item() == 0.0
        with train_module.denormals_flushed(False):
            assert not train_module.flushing_denormals()
        assert train_module.flushing_denormals()
    assert not train_module.flushing_denormals()
    with pytest.raises(KeyError), train_module.denormals_flushed(True):
        raise KeyError("boom")
    assert not train_module.flushing_denormals()


@pytest.mark.skipif(not FLUSH_SUPPORTED, reason="this CPU cannot flush subnormal floats")
@pytest.mark.parametrize("flush", [True, False])
def test_training_flushes_denormals_only_inside_its_loop(split: Split, flush: bool) -> None:
    seen: list[bool] = []
    trainer = make_trainer(config(epochs=3, flush_denormal=flush), split)
    trainer.fit(on_epoch=lambda record, stopper: seen.append(train_module.flushing_denormals()))
    assert seen == [flush] * 3
    assert not train_module.flushing_denormals()


def test_batch_norm_trains_with_autograd(split: Split, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_hand_written_steps(monkeypatch)
    result = make_trainer(config(batch_norm=True, epochs=3), split).fit()
    assert calls[0] == 0
    assert all(math.isfinite(r.train_loss) for r in result.history)


def test_evaluate_is_in_eval_mode_without_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(config(dropout=0.5, hidden=[32]), NAMES)
    x, y = torch.randn(20, 14), torch.randn(20)
    model.train()
    first = evaluate(model, x, y)
    assert not model.training
    assert first == evaluate(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    out = predict(model, x, batch_size=7)
    assert out.dtype == np.float64 and out.shape == (20,)
    np.testing.assert_allclose(out, model(x).detach().double().numpy(), rtol=1e-6)


def test_batches_match_the_dataloader() -> None:
    dataset = HW01Dataset(np.arange(30, dtype=np.float32).reshape(15, 2), np.arange(15.0))
    direct = list(batches(make_loader(dataset, 4, True, seed=3)))
    via_loader = list(make_loader(dataset, 4, True, seed=3))
    assert len(direct) == len(via_loader) == 4
    for (x1, y1), (x2, y2) in zip(direct, via_loader, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


# --- the loop ------------------------------------------------------------------------------------


def test_fit_restores_the_best_epochs_weights(split: Split) -> None:
    cfg = config(lr=0.03, epochs=300, patience=10)
    trainer = make_trainer(cfg, split)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def remember(record: EpochRecord, stopper: EarlyStopping) -> None:
        snapshots[record.epoch] = copy_state(trainer.model)

    result = trainer.fit(on_epoch=remember)
    losses = [r.valid_loss for r in result.history]
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == result.best_epoch + 10
    assert result.best_valid_mse == min(losses)
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert losses[-1] > result.best_valid_mse  # the last weights are not the best ones
    assert evaluate(trainer.model, split.x_valid, split.y_valid) == result.best_valid_mse
    assert_same_state(copy_state(trainer.model), snapshots[result.best_epoch])
    assert [r.epoch for r in result.history] == list(range(1, len(losses) + 1))


def test_fit_runs_to_max_epochs_without_patience(split: Split) -> None:
    result = make_trainer(config(epochs=7), split).fit()
    assert result.stop_reason == "max_epochs"
    assert len(result.history) == 7
    assert all(math.isfinite(r.train_loss) for r in result.history)


@pytest.mark.parametrize("which", ["valid", "train"])
def test_divergence_stops_and_keeps_the_best_weights(
    split: Split, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    trainer = make_trainer(config(epochs=20), split)
    epochs = train_module.HandWrittenEpochs
    method = "evaluate" if which == "valid" else "train"
    real = getattr(epochs, method)
    calls = {"n": 0}

    def nan_at_epoch_4(*args: Any, **kwargs: Any) -> float:
        calls["n"] += 1
        return math.nan if calls["n"] == 4 else real(*args, **kwargs)

    monkeypatch.setattr(epochs, method, nan_at_epoch_4)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    result = trainer.fit(
        on_epoch=lambda r, s: snapshots.update({r.epoch: copy_state(trainer.model)})
    )
    assert result.stop_reason == "diverged"
    assert "diverged at epoch 4" in result.message
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert_same_state(copy_state(trainer.model), snapshots[result.best_epoch])
    assert evaluate(trainer.model, split.x_valid, split.y_valid) == result.best_valid_mse


def test_divergence_in_the_first_epoch_is_an_error(
    split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(config(epochs=5), split)
    scripted_valid_losses(monkeypatch, [math.inf, 1.0])
    with pytest.raises(CovidRegError, match=r"diverged at epoch 1.*lower --lr"):
        trainer.fit()


def test_real_divergence_with_a_huge_learning_rate(split: Split) -> None:
    cfg = config(optimizer="sgd", lr=1e3, momentum=0.9, epochs=30)
    try:
        result = make_trainer(cfg, split).fit()
    except CovidRegError as exc:  # diverged in epoch 1: no weights worth keeping
        assert "diverged at epoch 1" in str(exc)
        return
    assert result.stop_reason == "diverged"
    assert all(math.isfinite(r.valid_loss) for r in result.history)


# --- reproducibility and exact resume ------------------------------------------------------------

# dropout draws from the global RNG, shuffling from the loader's generators, and with this
# learning rate the valid loss bounces, so the plateau scheduler and the best epoch both carry
# state across the checkpoint at epoch 15.
RESUME_CONFIG = {
    "lr": 0.03,
    "dropout": 0.2,
    "scheduler": "plateau",
    "plateau_patience": 1,
    "gamma": 0.5,
    "epochs": 20,
    "checkpoint_every": 15,
}


def test_seed_everything_makes_runs_bit_identical(split: Split) -> None:
    cfg = config(**RESUME_CONFIG)
    first = make_trainer(cfg, split, seed=7)
    initial = copy_state(first.model)
    r1 = first.fit()
    second = make_trainer(cfg, split, seed=7)
    assert_same_state(initial, second.model.state_dict())
    r2 = second.fit()
    assert_same_state(first.model.state_dict(), second.model.state_dict())
    assert [vars(r) for r in r1.history] == [vars(r) for r in r2.history]
    other = make_trainer(cfg, split, seed=8)
    other.fit()
    assert not torch.equal(
        other.model.state_dict()["head.weight"], first.model.state_dict()["head.weight"]
    )


class Interrupted(Exception):
    pass


def test_resume_from_state_is_bit_identical(split: Split) -> None:
    cfg = config(**RESUME_CONFIG)
    whole = make_trainer(cfg, split, seed=3)
    whole_result = whole.fit()

    saved = io.BytesIO()

    def save_and_stop(trainer: Trainer) -> None:
        torch.save(trainer.state_dict(), saved)
        raise Interrupted

    interrupted = make_trainer(cfg, split, seed=3)
    with pytest.raises(Interrupted):
        interrupted.fit(on_checkpoint=save_and_stop)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert state["epoch"] == 15

    torch.manual_seed(12345)  # whatever happened in between must not matter
    np.random.seed(1)
    resumed = make_trainer(cfg, split, seed=3)
    resumed.load_state_dict(state)
    resumed_result = resumed.fit()

    assert [vars(r) for r in resumed_result.history] == [vars(r) for r in whole_result.history]
    assert len(whole_result.history) == 20
    assert (resumed_result.best_epoch, resumed_result.best_valid_mse) == (
        whole_result.best_epoch,
        whole_result.best_valid_mse,
    )
    assert resumed_result.stop_reason == whole_result.stop_reason
    assert_same_state(resumed.model.state_dict(), whole.model.state_dict())
    assert_same_state(
        resumed.optimizer.state_dict()["state"][0], whole.optimizer.state_dict()["state"][0]
    )


def test_the_saved_history_reads_back_exactly() -> None:
    history = [
        EpochRecord(1, 0.1 + 0.2, 1e-300, 1e-3),
        EpochRecord(2, 2.0 / 3.0, 123456.789, 0.1),
        EpochRecord(3, 5e-324, 1.0, 0.0),
    ]
    columns = train_module._history_columns(history)
    assert all(isinstance(v, torch.Tensor) for v in columns.values())  # cheap to save
    buffer = io.BytesIO()
    torch.save(columns, buffer)
    buffer.seek(0)
    restored = train_module._history_records(torch.load(buffer, weights_only=True))
    assert [vars(r) for r in restored] == [vars(r) for r in history]
    assert all(type(r.epoch) is int and type(r.lr) is float for r in restored)
    # the list of dicts earlier versions saved still reads
    assert train_module._history_records([vars(r) for r in history]) == history
    assert train_module._history_records(train_module._history_columns([])) == []


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(CovidRegError, match="no CUDA GPU is available"):
            resolve_device("cuda")
