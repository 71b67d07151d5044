"""The engine: early stopping, members, stack groups, and the epochs of a stack (best weights,
stopping, divergence, reruns, exact resume, penalties)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covidreg.config import Config
from covidreg.engine import (
    EarlyStopping,
    Engine,
    EpochRecord,
    FittedModel,
    Member,
    build_member,
    check_batch_size,
    fit_members,
    history_columns,
    history_records,
    predict,
    stack_groups,
)
from covidreg.errors import CovidRegError
from covidreg.model import MLP
from covidreg.reproducibility import flushing_denormals
from covidreg.schema import Arrays
from covidreg.stack import Stack, flatten, unflatten_into
from tests.conftest import LAYOUT, synthetic_rows, write_hw01_csv

CPU = torch.device("cpu")
NAMES = LAYOUT.resolve_features(
    ["strong_states"]
)  # one-hot states: weights some batches never reach
ROWS = synthetic_rows(4, 30, seed=0)
X = ROWS[:, LAYOUT.columns(NAMES)].astype(np.float32)
Y = ROWS[:, -1].astype(np.float32)
UNEVEN = (40, 29, 35)  # batches of 16: 3, 2 and 3 steps, short last batches of 8, 13, 3


def config(**changes: Any) -> Config:
    base = {
        "hidden": [8],
        "batch_size": 16,
        "epochs": 12,
        "patience": 0,
        "lr": 0.01,
        "checkpoint_every": 0,
        "threads": 1,
        "device": "cpu",  # the bit-for-bit claims here are the CPU's
        "ridge_blend": 0.0,  # the network alone; the blend has tests of its own
    }
    return dataclasses.replace(Config(), **{**base, **changes})


def rows_of(j: int, n_train: int, n_valid: int = 24) -> tuple[Arrays, Arrays]:
    """Member j's training and validation rows: its own sample of the synthetic rows."""
    order = np.random.default_rng(j).permutation(len(X))
    train, valid = order[:n_train], order[n_train : n_train + n_valid]
    return Arrays(X[train], Y[train]), Arrays(X[valid], Y[valid])


def make_members(cfg: Config, counts: tuple[int, ...] = (96,), first: int = 0) -> list[Member]:
    """Members ``first, first + 1, ...`` with these training row counts, seeded 10 + j."""
    return [
        build_member(cfg, LAYOUT, NAMES, *rows_of(j, n), seed=10 + j)
        for j, n in enumerate(counts, start=first)
    ]


def plain_mse(model: MLP, rows: Arrays) -> float:
    out = predict(model, torch.from_numpy(rows.x))
    return float(np.mean((out - rows.y.astype(np.float64)) ** 2))


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_bit_identical(expected: list[FittedModel], got: list[FittedModel]) -> None:
    assert len(got) == len(expected)
    for k, (ref, out) in enumerate(zip(expected, got, strict=True)):
        assert out.result.history == ref.result.history, f"member {k}"
        assert (out.result.best_epoch, out.result.best_valid_mse, out.result.stop_reason) == (
            ref.result.best_epoch,
            ref.result.best_valid_mse,
            ref.result.stop_reason,
        ), f"member {k}"
        np.testing.assert_array_equal(out.mean, ref.mean)
        np.testing.assert_array_equal(out.std, ref.std)
        assert_same_state(copy_state(ref.model), copy_state(out.model))


class Snapshots:
    """``on_epoch``: each member's stack row after each of its epochs."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.rows: dict[tuple[int, int], torch.Tensor] = {}
        self.calls: list[tuple[int, int]] = []

    def __call__(self, k: int, record: EpochRecord, stopper: EarlyStopping) -> None:
        assert self.engine is not None
        stack = self.engine.stack
        self.rows[k, record.epoch] = stack.flat[stack.ids.index(k)].clone()
        self.calls.append((k, record.epoch))


def fit_with_snapshots(cfg: Config, members: list[Member]) -> tuple[list[FittedModel], Snapshots]:
    snapshots = Snapshots()
    engine = Engine(cfg, members)
    snapshots.engine = engine
    return engine.fit(on_epoch=snapshots), snapshots


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


# --- rate groups, layout, plan -------------------------------------------------------------------


def test_check_batch_size() -> None:
    check_batch_size(config(batch_size=29), 29)
    with pytest.raises(CovidRegError, match="batch_size 30 is larger than the 29 training rows"):
        check_batch_size(config(batch_size=30), 29)
    with pytest.raises(CovidRegError, match="--batch-size 29 or less"):
        make_members(config(batch_size=30), (29,))


@pytest.mark.parametrize(
    ("stack_size", "n_members", "expected"),
    [
        (3, 5, [[0, 1, 2], [3, 4]]),
        (1, 3, [[0], [1], [2]]),
        (2, 4, [[0, 1], [2, 3]]),
        (8, 5, [[0, 1, 2, 3, 4]]),
        (3, 1, [[0]]),
    ],
)
def test_stack_groups_follow_the_stack_size(
    stack_size: int, n_members: int, expected: list[list[int]]
) -> None:
    assert stack_groups(config(stack_size=stack_size), n_members) == expected


def test_the_saved_history_reads_back_exactly() -> None:
    history = [
        EpochRecord(1, 0.1 + 0.2, 1e-300, 1e-3),
        EpochRecord(2, 2.0 / 3.0, 123456.789, 0.1),
        EpochRecord(3, 5e-324, 1.0, 0.0),
    ]
    columns = history_columns(history)
    assert all(isinstance(v, torch.Tensor) for v in columns.values())  # cheap to save
    buffer = io.BytesIO()
    torch.save(columns, buffer)
    buffer.seek(0)
    restored = history_records(torch.load(buffer, weights_only=True))
    assert restored == history
    assert all(type(r.epoch) is int and type(r.lr) is float for r in restored)
    assert history_records(history_columns([])) == []


def test_fit_restores_the_best_epochs_weights() -> None:
    cfg = config(lr=0.03, epochs=300, patience=10)
    members = make_members(cfg)
    (fitted,), snapshots = fit_with_snapshots(cfg, members)
    result = fitted.result
    losses = [r.valid_loss for r in result.history]
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == result.best_epoch + 10 < 300
    assert result.best_valid_mse == min(losses)
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert losses[-1] > result.best_valid_mse  # the last weights are not the best ones
    assert torch.equal(flatten(fitted.model), snapshots.rows[0, result.best_epoch])
    assert plain_mse(fitted.model, members[0].valid) == pytest.approx(result.best_valid_mse, 1e-6)
    assert [r.epoch for r in result.history] == list(range(1, len(losses) + 1))
    assert fitted.model is members[0].model
    np.testing.assert_array_equal(fitted.mean, members[0].mean)


def test_fit_runs_to_max_epochs_with_patience_zero() -> None:
    cfg = config(epochs=7, lr=0.1)  # a rate this high: the valid loss bounces
    ((fitted,), snapshots) = fit_with_snapshots(cfg, make_members(cfg))
    assert fitted.result.stop_reason == "max_epochs"
    assert [r.epoch for r in fitted.result.history] == list(range(1, 8))
    assert all(math.isfinite(r.train_loss) for r in fitted.result.history)
    assert snapshots.calls == [(0, e) for e in range(1, 8)]
    assert torch.equal(flatten(fitted.model), snapshots.rows[0, fitted.result.best_epoch])


def test_each_member_stops_at_its_own_epoch() -> None:
    cfg = config(lr=0.03, epochs=400, patience=6)
    members = make_members(cfg, (96, 70, 84))
    fitted, snapshots = fit_with_snapshots(cfg, members)
    lengths = [len(f.result.history) for f in fitted]
    assert len(set(lengths)) == 3, lengths  # they stopped at different epochs
    for k, f in enumerate(fitted):
        assert f.result.stop_reason == "early_stopping"
        assert len(f.result.history) == f.result.best_epoch + 6
        assert [e for m, e in snapshots.calls if m == k] == list(range(1, lengths[k] + 1))
        assert torch.equal(flatten(f.model), snapshots.rows[k, f.result.best_epoch])
        assert plain_mse(f.model, members[k].valid) == pytest.approx(f.result.best_valid_mse, 1e-6)


def nan_at(monkeypatch: pytest.MonkeyPatch, which: str, member: int, epoch: int) -> None:
    """Make ``member``'s validation (or training) loss NaN in ``epoch``."""
    if which == "valid":
        real_valid = Stack.valid_mse
        seen = {"n": 0}

        def valid_mse(self: Stack) -> torch.Tensor:
            out = real_valid(self)
            if member in self.ids:
                seen["n"] += 1
                if seen["n"] == epoch:
                    out[self.ids.index(member)] = math.nan
            return out

        monkeypatch.setattr(Stack, "valid_mse", valid_mse)
    else:
        real_train = Engine._train_epoch

        def train_epoch(self: Engine, rates: dict[int, list[float]]) -> torch.Tensor:
            out = real_train(self, rates)
            if self.epoch == epoch and member in self.stack.ids:
                out[self.stack.ids.index(member)] = math.inf
            return out

        monkeypatch.setattr(Engine, "_train_epoch", train_epoch)


@pytest.mark.parametrize("which", ["valid", "train"])
def test_divergence_stops_a_member_and_keeps_its_best(
    monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    cfg = config(epochs=8)
    members = make_members(cfg, UNEVEN)
    nan_at(monkeypatch, which, member=1, epoch=4)
    fitted, snapshots = fit_with_snapshots(cfg, members)
    diverged = fitted[1].result
    assert diverged.stop_reason == "diverged"
    assert "diverged at epoch 4" in diverged.message
    assert f"kept the best weights (epoch {diverged.best_epoch})" in diverged.message
    assert [r.epoch for r in diverged.history] == [1, 2, 3]
    assert (1, 4) not in snapshots.calls  # no on_epoch for the diverged epoch
    assert torch.equal(flatten(fitted[1].model), snapshots.rows[1, diverged.best_epoch])
    assert plain_mse(fitted[1].model, members[1].valid) == pytest.approx(
        diverged.best_valid_mse, 1e-6
    )
    for k in (0, 2):  # the others train on
        assert fitted[k].result.stop_reason == "max_epochs"
        assert len(fitted[k].result.history) == 8


def test_divergence_in_the_first_epoch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(epochs=5)
    nan_at(monkeypatch, "valid", member=0, epoch=1)
    with pytest.raises(CovidRegError, match=r"diverged at epoch 1 .*no epoch finished.*lower --lr"):
        fit_members(cfg, make_members(cfg))


def test_real_divergence_with_a_huge_learning_rate() -> None:
    cfg = config(optimizer="sgd", lr=10.0, momentum=0.0, normalize=False, target="level")
    with pytest.raises(CovidRegError, match="diverged at epoch 1"):
        fit_members(cfg, make_members(dataclasses.replace(cfg, hidden=[])))
    (fitted,) = fit_members(cfg, make_members(cfg))  # finite in epoch 1, then not
    assert fitted.result.stop_reason == "diverged"
    assert [r.epoch for r in fitted.result.history] == [1]
    assert "diverged at epoch 2" in fitted.result.message


def test_reruns_are_bit_identical() -> None:
    cfg = config(epochs=10, dropout=0.2, hidden=[8, 4], l1=1e-3)
    first = fit_members(cfg, make_members(cfg, UNEVEN))
    second = fit_members(cfg, make_members(cfg, UNEVEN))
    assert_bit_identical(first, second)
    other = dataclasses.replace(cfg, dropout=0.3)
    assert fit_members(other, make_members(other, UNEVEN))[0].result.history != (
        first[0].result.history
    )


# dropout draws masks, shuffling draws batch orders, and with this rate the valid loss bounces,
# so the plateau scheduler and the best epoch both carry state across the checkpoint
RESUME_CONFIG = {
    "lr": 0.03,
    "dropout": 0.2,
    "scheduler": "plateau",
    "plateau_patience": 1,
    "gamma": 0.5,
    "epochs": 20,
    "checkpoint_every": 8,
}


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("counts", "patience"),
    [((96,), 0), ((96, 70), 0), ((96, 70, 84), 3)],
    ids=["S=1", "S=2", "S=3"],
)
def test_resume_from_a_saved_state_is_bit_identical(counts: tuple[int, ...], patience: int) -> None:
    cfg = config(**RESUME_CONFIG, patience=patience)
    whole = Engine(cfg, make_members(cfg, counts))
    expected = whole.fit()

    saved = io.BytesIO()

    def save_and_stop(engine: Engine) -> None:
        torch.save(engine.state_dict(), saved)
        raise Interrupted

    with pytest.raises(Interrupted):
        Engine(cfg, make_members(cfg, counts)).fit(on_checkpoint=save_and_stop)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert state["epoch"] == 8
    torch.manual_seed(12345)  # whatever ran in between must not matter
    np.random.seed(1)
    resumed = Engine(cfg, make_members(cfg, counts))
    resumed.load_state_dict(state)
    epochs_after: list[tuple[int, int]] = []
    got = resumed.fit(on_epoch=lambda k, record, stopper: epochs_after.append((k, record.epoch)))

    assert_bit_identical(expected, got)
    assert min(e for _, e in epochs_after) == 9  # it went on from the saved epoch
    lengths = [len(f.result.history) for f in expected]
    if patience:  # a member stopped before the checkpoint, the others after it
        assert min(lengths) <= 8 < max(lengths), lengths
    else:
        assert lengths == [20] * len(counts)
    lrs = {r.lr for f in expected for r in f.result.history}
    assert len(lrs) > 1  # the plateau scheduler cut the rate
    everyone = list(range(len(counts)))
    for name, states in whole.optimizer.state_dict(everyone).items():
        for mine, theirs in zip(states, resumed.optimizer.state_dict(everyone)[name], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)), name


def test_resume_from_a_state_saved_after_the_last_epoch() -> None:
    """Saved after the last epoch: the resumed engine has nothing left to train."""
    cfg = config(**{**RESUME_CONFIG, "checkpoint_every": 20})
    expected = fit_members(cfg, make_members(cfg, (96, 70)))
    saved = io.BytesIO()
    engine = Engine(cfg, make_members(cfg, (96, 70)))
    engine.fit(on_checkpoint=lambda e: torch.save(e.state_dict(), saved))
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert state["epoch"] == 20
    epochs: list[int] = []
    got = fit_members(
        cfg, make_members(cfg, (96, 70)), lambda k, r, s: epochs.append(r.epoch), None, state
    )
    assert epochs == []
    assert_bit_identical(expected, got)


def test_resume_from_a_state_of_another_model_is_an_error() -> None:
    cfg = config(epochs=3)
    engine = Engine(cfg, make_members(cfg))
    engine.fit()
    state = engine.state_dict()
    other = config(epochs=3, hidden=[4])
    with pytest.raises(CovidRegError, match="saved training state does not fit"):
        fit_members(other, make_members(other), resume_state=state)


def test_checkpoints_and_after_epoch_fire_on_their_epochs() -> None:
    cfg = config(epochs=9, checkpoint_every=4)
    checkpoints: list[int] = []
    ends: list[int] = []

    def after_epoch(epoch: int) -> None:
        ends.append(epoch)
        if epoch == 7:
            raise Interrupted

    engine = Engine(cfg, make_members(cfg))
    with pytest.raises(Interrupted):
        engine.fit(on_checkpoint=lambda e: checkpoints.append(e.epoch), after_epoch=after_epoch)
    assert (checkpoints, ends) == ([4], [1, 2, 3, 4, 5, 6, 7])


def test_the_reported_train_loss_is_the_plain_mse() -> None:
    """One full batch per epoch: epoch 1's loss is the initial weights' MSE on the training
    rows, with or without a penalty (which trains the weights, but is not reported)."""
    runs = {}
    for name, penalty in (("plain", {}), ("penalised", {"l2": 10.0, "l1": 1.0})):
        cfg = config(optimizer="sgd", lr=1e-3, momentum=0.0, batch_size=96, epochs=2, **penalty)
        (member,) = make_members(cfg)
        initial = plain_mse(member.model, member.train)
        (fitted,) = fit_members(cfg, [member])
        runs[name] = (initial, fitted)
    initial, plain = runs["plain"]
    initial_penalised, penalised = runs["penalised"]
    assert initial == initial_penalised  # the same seed: the same initial weights
    assert plain.result.history[0].train_loss == pytest.approx(initial, rel=1e-6)
    assert penalised.result.history[0].train_loss == plain.result.history[0].train_loss
    weights = [linear.weight.detach() for linear in penalised.model.linears()]
    plain_weights = [linear.weight.detach() for linear in plain.model.linears()]
    assert weights[0].norm() < plain_weights[0].norm()  # the penalty's gradient did act
    penalty = sum(10.0 * float(w.square().sum()) + float(w.abs().sum()) for w in weights)
    assert penalty > 1e-2 * initial  # including it would show far beyond the tolerance


def test_the_valid_loss_never_includes_the_penalty() -> None:
    cfg = config(l2=5.0, l1=0.5, epochs=6, hidden=[8, 4])
    members = make_members(cfg, UNEVEN)
    fitted, snapshots = fit_with_snapshots(cfg, members)
    for k, f in enumerate(fitted):
        for record in f.result.history:
            unflatten_into(snapshots.rows[k, record.epoch], members[k].model)
            mse = plain_mse(members[k].model, members[k].valid)
            assert record.valid_loss == pytest.approx(mse, rel=1e-6), (k, record.epoch)
        weights = [linear.weight.detach() for linear in members[k].model.linears()]
        penalty = sum(5.0 * float(w.square().sum()) + 0.5 * float(w.abs().sum()) for w in weights)
        assert penalty > 1e-2 * f.result.best_valid_mse


def test_a_stack_member_is_close_to_the_same_member_trained_alone() -> None:
    """Stacked products may round differently from a stack of one: close, not the same bits."""
    cfg = config(epochs=15, hidden=[8, 4], dropout=0.1, lr=3e-3)
    together = fit_members(cfg, make_members(cfg, UNEVEN))
    for k, n in enumerate(UNEVEN):
        (alone,) = fit_members(cfg, make_members(cfg, (n,), first=k))
        got, ref = together[k], alone
        assert len(got.result.history) == len(ref.result.history) == 15
        np.testing.assert_allclose(
            [[r.train_loss, r.valid_loss] for r in got.result.history],
            [[r.train_loss, r.valid_loss] for r in ref.result.history],
            rtol=1e-4,
        )
        torch.testing.assert_close(flatten(got.model), flatten(ref.model), rtol=0, atol=1e-4)


DYNAMO_SCRIPT = """
import json, sys
import numpy as np
from covidreg.config import Config
from covidreg.experiment import fit_model, load_data

imported = []
for values in json.loads(sys.argv[1]):
    cfg = Config(**values)
    data = load_data(cfg, with_test=False)
    rows = np.arange(len(data.train))
    fitted = fit_model(cfg, data, rows[:100], rows[100:], seed=0)
    assert len(fitted.result.history) == cfg.epochs
    imported.append("torch._dynamo" in sys.modules)
print(json.dumps(imported))
"""


def test_constant_rates_do_not_import_torch_dynamo(tmp_path: Path) -> None:
    """Any torch.optim optimizer object imports torch._dynamo (over a second of start-up); the
    engine builds one only for a scheduler (the documented cost). In a fresh interpreter (this
    one imported it long ago): constant rates, constant rates in two groups, then a schedule."""
    train_csv = write_hw01_csv(tmp_path / "train.csv", synthetic_rows(4, 30, seed=0))
    runs = [{}, {"output_lr": 1e-2}, {"scheduler": "step", "step_size": 3}]
    configs = [
        dataclasses.asdict(
            Config(
                train_csv=str(train_csv),
                test_csv="",
                epochs=2,
                batch_size=16,
                device="cpu",
                **changes,
            )
        )
        for changes in runs
    ]
    out = subprocess.run(
        [sys.executable, "-c", DYNAMO_SCRIPT, json.dumps(configs)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [False, False, True]


FLUSH_SUPPORTED = torch.set_flush_denormal(False)  # False is also the default


@pytest.mark.skipif(
    not FLUSH_SUPPORTED and sys.platform != "linux", reason="this CPU cannot flush subnormals"
)
@pytest.mark.parametrize("flush", [True, False])
def test_denormals_are_flushed_only_inside_the_loop(flush: bool) -> None:
    seen: list[bool] = []
    cfg = config(epochs=3, flush_denormal=flush)
    assert not flushing_denormals()
    fit_members(cfg, make_members(cfg), on_epoch=lambda k, r, s: seen.append(flushing_denormals()))
    assert seen == [flush] * 3
    assert not flushing_denormals()


def test_predict_gives_float64_in_chunks() -> None:
    cfg = config(dropout=0.5, hidden=[32])
    (member,) = make_members(cfg)
    x = torch.from_numpy(X[:20])
    member.model.train()
    out = predict(member.model, x, batch_size=7)
    assert not member.model.training
    assert out.dtype == np.float64 and out.shape == (20,)
    with torch.no_grad():
        np.testing.assert_allclose(out, member.model(x).double().numpy(), rtol=1e-6)


# --- ridge_blend ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_the_blend_is_the_network_and_a_ridge_fitted_on_its_rows(weight: float) -> None:
    from sklearn.linear_model import Ridge

    (alone,) = fit_members(config(patience=5), make_members(config(patience=5)))
    cfg = config(patience=5, ridge_blend=weight)
    members = make_members(cfg)
    (blended,) = fit_members(cfg, members)
    # early stopping watched the network alone: the same epochs and the same weights
    assert blended.result.history == alone.result.history
    assert blended.result.best_epoch == alone.result.best_epoch
    assert torch.equal(flatten(blended.model), flatten(alone.model))

    # the ridge is scikit-learn's Ridge(alpha=1) on the standardised training rows, fitted to
    # the network's target: the change from tested_positive_d2
    model, train, valid = blended.model, members[0].train, members[0].valid
    skip = NAMES.index("tested_positive_d2")
    assert model.skip_index == skip
    z = model.normalize(torch.from_numpy(train.x)).double().numpy()
    reference = Ridge(alpha=1.0).fit(z, train.y - train.x[:, skip])
    np.testing.assert_allclose(model.ridge_weight.numpy(), reference.coef_, rtol=1e-5, atol=1e-6)
    assert float(model.ridge_bias) == pytest.approx(reference.intercept_, rel=1e-6)

    x = torch.from_numpy(valid.x)
    network = predict(alone.model, x) - valid.x[:, skip]
    ridge = reference.predict(model.normalize(x).double().numpy())
    expected = (1 - weight) * network + weight * ridge + valid.x[:, skip]
    np.testing.assert_allclose(predict(model, x), expected, rtol=1e-5, atol=1e-5)
    # the reported RMSE is the blend's, on the validation rows
    assert blended.result.best_valid_mse == pytest.approx(plain_mse(model, valid), rel=1e-12)
    assert blended.result.best_valid_mse != alone.result.best_valid_mse
    assert blended.result.network_mse == alone.result.best_valid_mse == alone.result.network_mse


@pytest.mark.parametrize("alpha", [10.0, "auto"])
def test_the_blends_ridge_alpha_is_the_configs_or_ridgecvs_choice(alpha: float | str) -> None:
    from sklearn.linear_model import Ridge, RidgeCV

    from covidreg.baselines import RIDGE_ALPHAS

    cfg = config(patience=5, ridge_blend=0.5, ridge_alpha=alpha)
    members = make_members(cfg)
    model, train = members[0].model, members[0].train
    z = model.normalize(torch.from_numpy(train.x)).double().numpy()
    target = train.y - train.x[:, NAMES.index("tested_positive_d2")]
    if alpha == "auto":  # scikit-learn's efficient leave-one-out over the same grid
        alpha = RidgeCV(alphas=RIDGE_ALPHAS).fit(z, target).alpha_
        assert alpha != 1.0  # the grid's choice on these rows, not the fixed default
    reference = Ridge(alpha=alpha).fit(z, target)
    np.testing.assert_allclose(model.ridge_weight.numpy(), reference.coef_, rtol=1e-5, atol=1e-6)
    assert float(model.ridge_bias) == pytest.approx(reference.intercept_, rel=1e-6)


def test_ridge_loo_alpha_is_ridgecvs_alpha_on_other_rows() -> None:
    from sklearn.linear_model import RidgeCV

    from covidreg.baselines import RIDGE_ALPHAS, ridge_loo_alpha

    rng = np.random.default_rng(3)
    for noise in (0.1, 3.0, 30.0):
        z = rng.normal(size=(80, 6))
        y = z @ rng.normal(size=6) + rng.normal(0, noise, 80) + 5.0
        assert ridge_loo_alpha(z, y) == RidgeCV(alphas=RIDGE_ALPHAS).fit(z, y).alpha_


def test_without_a_blend_the_model_has_no_ridge_buffers() -> None:
    (fitted,) = fit_members(config(), make_members(config()))
    assert set(fitted.model.state_dict()) == {
        "input_mean", "input_std", "body.0.weight", "body.0.bias", "head.weight", "head.bias",
    }  # fmt: skip
    (blended,) = fit_members(config(ridge_blend=0.5), make_members(config(ridge_blend=0.5)))
    assert {"ridge_weight", "ridge_bias"} < set(blended.model.state_dict())
