"""The folds trained together (covidreg.batched) against the one-after-another loop.

The reference is ``experiment.fit_model`` with ``cv.fold_seed(seed, k)`` for each fold. Without
dropout the two must agree to float rounding: batched matrix products round differently, and
the difference grows slowly with the epochs, so the runs here are short.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covidreg import batched
from covidreg.config import Config
from covidreg.cv import cross_validate, fold_seed, make_folds
from covidreg.data import feature_columns, select
from covidreg.errors import CovidRegError
from covidreg.experiment import FittedModel, LoadedData, fit_model, load_data
from covidreg.model import build_model
from covidreg.train import evaluate

N_FOLDS = 5
RTOL = 1e-4  # histories and best validation MSE
ATOL = 1e-4  # final (best) weights


@pytest.fixture
def train_csv(hw01_files: dict[str, Path]) -> str:
    return str(hw01_files["train"])


def make_cfg(train_csv: str, **overrides: Any) -> Config:
    # 4 states x 30 windows, blocked 5-fold, purge 2: 88, 80, 80, 80, 88 training rows, so with
    # batch_size 16 the folds have 6 or 5 batches and the 88-row folds a short last batch of 8.
    values: dict[str, Any] = {
        "train_csv": train_csv,
        "test_csv": "",
        "epochs": 25,
        "batch_size": 16,
        "patience": 0,
        "hidden": [16, 8],
        "lr": 3e-3,
        "checkpoint_every": 0,
    }
    values.update(overrides)
    return Config(**values)


def setup(cfg: Config) -> tuple[LoadedData, list[tuple[np.ndarray, np.ndarray]], list[int]]:
    data = load_data(cfg, with_test=False)
    folds = make_folds(cfg, data, N_FOLDS)
    return data, folds, [fold_seed(cfg.seed, k) for k in range(1, N_FOLDS + 1)]


def sequential(cfg: Config) -> list[FittedModel]:
    data, folds, seeds = setup(cfg)
    return [fit_model(cfg, data, tr, va, seed) for (tr, va), seed in zip(folds, seeds, strict=True)]


def fold_runs(cfg: Config) -> list[Any]:
    """Every fold's state as fit_folds builds it, before training."""
    return batched._build_folds(cfg, *setup(cfg))


def together(cfg: Config) -> list[FittedModel]:
    data, folds, seeds = setup(cfg)
    return batched.fit_folds(cfg, data, folds, seeds)


def history_array(fitted: FittedModel) -> np.ndarray:
    return np.array([[r.train_loss, r.valid_loss, r.lr] for r in fitted.result.history])


def assert_same_folds(expected: list[FittedModel], got: list[FittedModel]) -> None:
    assert len(got) == len(expected)
    for k, (ref, out) in enumerate(zip(expected, got, strict=True), start=1):
        where = f"fold {k}"
        assert [r.epoch for r in out.result.history] == [r.epoch for r in ref.result.history], where
        assert out.result.best_epoch == ref.result.best_epoch, where
        assert out.result.stop_reason == ref.result.stop_reason, where
        np.testing.assert_allclose(
            history_array(out), history_array(ref), rtol=RTOL, atol=0, err_msg=where
        )
        assert out.result.best_valid_mse == pytest.approx(ref.result.best_valid_mse, rel=RTOL)
        np.testing.assert_array_equal(out.mean, ref.mean)
        np.testing.assert_array_equal(out.std, ref.std)
        ref_state, out_state = ref.model.state_dict(), out.model.state_dict()
        assert list(out_state) == list(ref_state), where
        for name, value in ref_state.items():
            torch.testing.assert_close(
                out_state[name], value, rtol=0, atol=ATOL, msg=f"{where}: {name}"
            )


def assert_bit_identical(expected: list[FittedModel], got: list[FittedModel]) -> None:
    """The same folds bit for bit: histories, best epochs, stop reasons, statistics, weights."""
    assert len(got) == len(expected)
    for k, (ref, out) in enumerate(zip(expected, got, strict=True), start=1):
        assert out.result.history == ref.result.history, f"fold {k}"
        assert (out.result.best_epoch, out.result.stop_reason) == (
            ref.result.best_epoch,
            ref.result.stop_reason,
        )
        np.testing.assert_array_equal(out.mean, ref.mean)
        for name, value in ref.model.state_dict().items():
            assert torch.equal(out.model.state_dict()[name], value), f"fold {k}: {name}"


def test_the_synthetic_folds_have_uneven_batches(train_csv: str) -> None:
    """The precondition of the comparisons below: padding and step masks are exercised."""
    cfg = make_cfg(train_csv)
    _, folds, _ = setup(cfg)
    n_rows = [len(tr) for tr, _ in folds]
    n_batches = {-(-n // cfg.batch_size) for n in n_rows}
    assert len(n_batches) > 1
    assert any(n % cfg.batch_size for n in n_rows)


CASES: dict[str, dict[str, Any]] = {
    "adam": {},
    "adam-l2-weight-decay": {"weight_decay": 0.05},
    "adamw-output-lr": {"optimizer": "adamw", "weight_decay": 0.1, "output_lr": 1e-2},
    "sgd-momentum": {"optimizer": "sgd", "lr": 1e-3, "epochs": 15},
    "sgd-nesterov-decay": {
        "optimizer": "sgd",
        "lr": 1e-3,
        "nesterov": True,
        "weight_decay": 1e-3,
        "epochs": 15,
    },
    "sgd-plain": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.0},
    "adagrad": {"optimizer": "adagrad", "lr": 3e-2, "weight_decay": 1e-3},
    "rmsprop-momentum": {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.5},
    "rmsprop-plain": {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.0},
    "step-scheduler": {"scheduler": "step", "step_size": 7, "gamma": 0.5},
    "exponential-scheduler": {"scheduler": "exponential", "gamma": 0.9, "output_lr": 1e-2},
    "cosine-scheduler": {"scheduler": "cosine", "lr": 1e-2, "min_lr": 1e-4},
    "l1-l2-delta": {"l1": 1e-3, "l2": 1e-3, "target": "delta"},
    "tanh-one-layer-unnormalised": {"activation": "tanh", "hidden": [12], "normalize": False},
    "gelu-three-layers-batch-32": {"activation": "gelu", "hidden": [16, 8, 4], "batch_size": 32},
    "relu-dropout": {"dropout": 0.3},
    "gelu-dropout-early-stopping": {
        "activation": "gelu",
        "dropout": 0.2,
        "epochs": 60,
        "lr": 1e-2,
        "patience": 4,
    },
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_folds_trained_together_equal_the_sequential_loop(
    train_csv: str, overrides: dict[str, Any]
) -> None:
    cfg = make_cfg(train_csv, **overrides)
    assert_same_folds(sequential(cfg), together(cfg))


def test_early_stopping_stops_each_fold_at_its_own_epoch(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=80, lr=1e-2, patience=4)
    expected, got = sequential(cfg), together(cfg)
    assert_same_folds(expected, got)
    assert len({len(f.result.history) for f in got}) > 1  # folds stopped at different epochs
    assert {f.result.stop_reason for f in got} == {"early_stopping"}
    for fold in got:  # the best weights are restored, not the last ones
        assert fold.result.best_epoch < len(fold.result.history)


def test_plateau_scheduler_runs_per_fold(train_csv: str) -> None:
    cfg = make_cfg(
        train_csv, epochs=60, lr=1e-2, scheduler="plateau", plateau_patience=2, patience=8
    )
    expected, got = sequential(cfg), together(cfg)
    assert_same_folds(expected, got)
    first_cuts = {next(r.epoch for r in f.result.history if r.lr < cfg.lr) for f in got}
    assert len(first_cuts) > 1  # each fold's learning rate was cut at its own epoch


@pytest.mark.parametrize(
    ("overrides", "imported"),
    [({}, False), ({"output_lr": 1e-2}, False), ({"scheduler": "step", "step_size": 3}, True)],
    ids=["constant", "constant-output-lr", "step-scheduler"],
)
def test_constant_rates_build_no_torch_optimizer(
    train_csv: str, overrides: dict[str, Any], imported: bool
) -> None:
    """Any torch.optim optimizer imports torch._dynamo (over a second); folds at constant rates
    need none. Run in a fresh interpreter: this one has imported it long ago."""
    cfg = make_cfg(train_csv, epochs=2, **overrides)
    code = (
        "import sys, dataclasses, json\n"
        "from covidreg.config import Config\n"
        "from covidreg.cv import cross_validate, make_folds\n"
        "from covidreg.experiment import load_data\n"
        "cfg = Config(**json.loads(sys.argv[1]))\n"
        "data = load_data(cfg, with_test=False)\n"
        "fitted = cross_validate(cfg, data, make_folds(cfg, data, 5))\n"
        "assert len(fitted) == 5 and all(len(f.result.history) == 2 for f in fitted)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(imported)


def test_fold_models_hold_their_best_weights(train_csv: str) -> None:
    """Each unstacked model is a plain MLP whose validation MSE is the fold's best."""
    cfg = make_cfg(train_csv, target="delta", epochs=15)
    data, folds, seeds = setup(cfg)
    columns = feature_columns(data.feature_names)
    for fitted, (_, valid_idx) in zip(
        batched.fit_folds(cfg, data, folds, seeds), folds, strict=True
    ):
        fresh = build_model(cfg, data.feature_names)
        fresh.load_state_dict(fitted.model.state_dict())  # a normal MLP state_dict
        valid = select(data.train, columns, valid_idx)
        mse = evaluate(fresh, torch.from_numpy(valid.x), torch.from_numpy(valid.y))
        assert mse == pytest.approx(fitted.result.best_valid_mse, rel=1e-5)


def test_reruns_are_bit_identical(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=10, dropout=0.2)
    assert_bit_identical(together(cfg), together(cfg))


def test_dropout_is_applied_in_training_only(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=12, dropout=0.3)
    data, folds, seeds = setup(cfg)
    with_dropout = batched.fit_folds(cfg, data, folds, seeds)
    without = batched.fit_folds(dataclasses.replace(cfg, dropout=0.0), data, folds, seeds)
    noisy = np.mean([history_array(f)[4:, 0] for f in with_dropout])
    clean = np.mean([history_array(f)[4:, 0] for f in without])
    assert noisy > clean  # the training loss is measured with the masks on
    columns = feature_columns(data.feature_names)
    for fitted, (_, valid_idx) in zip(with_dropout, folds, strict=True):
        valid = select(data.train, columns, valid_idx)
        mse = evaluate(fitted.model, torch.from_numpy(valid.x), torch.from_numpy(valid.y))
        assert mse == pytest.approx(fitted.result.best_valid_mse, rel=1e-5)  # eval: no masks


def test_dropout_masks_are_independent_per_fold_and_unbiased() -> None:
    """Statistical equivalence with nn.Dropout: the same fold weights get different masks in
    different folds, and the mean over masks is the eval-mode output (inverted dropout)."""
    cfg = Config(hidden=[32], dropout=0.5, target="level")
    torch.manual_seed(0)
    model = build_model(cfg, ["a", "b", "c"])
    net = batched._StackedMLP([model, model], cfg, torch.device("cpu"))
    x = torch.randn(1, 1, 3).expand(2, 20000, 3).contiguous()
    with torch.no_grad():
        train_out = net(x, None, training=True)
        eval_out = net(x, None, training=False)
    assert torch.equal(eval_out[0], eval_out[1])
    assert not torch.equal(train_out[0], train_out[1])
    expected = model.eval()(x[0, :1])
    torch.testing.assert_close(eval_out[:, :1], expected.expand(2, 1), rtol=1e-5, atol=1e-6)
    spread = train_out.std(dim=1) / train_out.shape[1] ** 0.5
    assert (train_out.mean(dim=1) - expected).abs().max() < 5 * spread.max()


def test_batch_norm_falls_back_to_the_sequential_loop(train_csv: str) -> None:
    cfg = make_cfg(train_csv, batch_norm=True, epochs=5)
    assert not batched.supports(cfg)
    data, folds, seeds = setup(cfg)
    with pytest.raises(CovidRegError, match="batch_norm"):
        batched.fit_folds(cfg, data, folds, seeds)
    got = cross_validate(cfg, data, folds)
    for ref, out in zip(sequential(cfg), got, strict=True):
        assert out.result.history == ref.result.history  # the same code path: exact
        assert out.trainer is not None


def _recording_events(log: list[tuple[Any, ...]]) -> batched.FoldEvents:
    return batched.FoldEvents(
        on_fold_start=lambda k, n: log.append(("start", k, n)),
        on_epoch=lambda r, stopper: log.append(("epoch", r.epoch, stopper.best_epoch)),
        on_fold_fitted=lambda k, fitted: log.append(("fitted", k, fitted.result.best_epoch)),
        on_epoch_mean=lambda epoch, mse: log.append(("mean", epoch, mse)),
    )


def test_callbacks_fire_in_the_sequential_order(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=40, lr=1e-2, patience=3)
    data, folds, _ = setup(cfg)
    log_together: list[tuple[Any, ...]] = []
    log_sequential: list[tuple[Any, ...]] = []
    cross_validate(cfg, data, folds, _recording_events(log_together), together=True)
    cross_validate(cfg, data, folds, _recording_events(log_sequential), together=False)
    # together, the means arrive live between the fold events; one after another, at the end
    assert [e for e in log_together if e[0] != "mean"] == [
        e for e in log_sequential if e[0] != "mean"
    ]
    means_together = np.array([e[1:] for e in log_together if e[0] == "mean"])
    means_sequential = np.array([e[1:] for e in log_sequential if e[0] == "mean"])
    np.testing.assert_allclose(means_together, means_sequential, rtol=RTOL)
    assert [e[0] for e in log_together[:2]] == ["start", "mean"]  # fold 1 is reported live
    starts = [e for e in log_together if e[0] == "start"]
    assert starts == [("start", k, N_FOLDS) for k in range(1, N_FOLDS + 1)]


def test_on_epoch_mean_averages_the_running_folds_and_may_abort(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=60, lr=1e-2, patience=3)
    data, folds, seeds = setup(cfg)
    means: list[tuple[int, float]] = []
    fitted = batched.fit_folds(
        cfg, data, folds, seeds, batched.FoldEvents(on_epoch_mean=lambda e, m: means.append((e, m)))
    )
    last_epoch = max(len(f.result.history) for f in fitted)
    assert [e for e, _ in means] == list(range(1, last_epoch + 1))
    for epoch, mean in means:
        running = [
            f.result.history[epoch - 1].valid_loss for f in fitted if len(f.result.history) >= epoch
        ]
        assert mean == pytest.approx(sum(running) / len(running), rel=1e-12)

    class Pruned(Exception):
        pass

    def prune(epoch: int, mse: float) -> None:
        if epoch == 3:
            raise Pruned

    with pytest.raises(Pruned):
        batched.fit_folds(cfg, data, folds, seeds, batched.FoldEvents(on_epoch_mean=prune))


def test_divergence_is_reported_as_the_sequential_loop_does(train_csv: str) -> None:
    cfg = make_cfg(
        train_csv, optimizer="sgd", lr=10.0, momentum=0.0, normalize=False, target="level"
    )
    with pytest.raises(CovidRegError, match="diverged at epoch 1") as expected:
        sequential(cfg)
    with pytest.raises(CovidRegError, match="diverged at epoch 1") as got:
        together(cfg)
    assert str(got.value) == str(expected.value)


GRAD_CASES: dict[str, dict[str, Any]] = {
    "relu-two-layers": {},
    "leaky-relu-delta": {"activation": "leaky_relu", "target": "delta"},
    "tanh-one-layer": {"activation": "tanh", "hidden": [12]},
    "sigmoid": {"activation": "sigmoid"},
    "gelu-three-layers": {"activation": "gelu", "hidden": [16, 8, 4]},
    "selu": {"activation": "selu"},
    "relu-dropout": {"dropout": 0.3},
    "linear-only": {"hidden": []},
}


@pytest.mark.parametrize("overrides", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_hand_written_step_equals_autograd_on_the_stack(
    train_csv: str, overrides: dict[str, Any]
) -> None:
    """The batched step's hand-written forward/backward gives autograd's losses and gradients
    on the stacked model: the losses bit for bit, the gradients to 1e-6 of their largest element
    (with dropout: the same masks, drawn from the same RNG state)."""
    cfg = make_cfg(train_csv, **overrides)
    data, folds, seeds = setup(cfg)
    runs = batched._build_folds(cfg, data, folds, seeds)
    models = [run.model for run in runs]
    device = torch.device("cpu")
    net = batched._StackedMLP(models, cfg, device)
    assert net.manual_grads
    inputs = batched._Inputs.stack([run.train for run in runs], models, device)
    steps = batched._Batches(inputs.n_rows, cfg.batch_size, device)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    index = steps.order(generators, list(range(N_FOLDS)), inputs.y.shape[1])
    x, y, skip = inputs.rows(index, (steps.n_steps, N_FOLDS, steps.batch_size))
    assert (skip is not None) == (cfg.target == "delta")
    for s in range(steps.n_steps):
        step_skip = None if skip is None else skip[s]
        torch.manual_seed(s)
        loss_ref, grad_ref = net.loss_and_gradient(
            x[s], y[s], step_skip, steps.row_weight[s], manual=False
        )
        grad_ref = grad_ref.clone()
        torch.manual_seed(s)
        loss, grad = net.loss_and_gradient(x[s], y[s], step_skip, steps.row_weight[s], manual=True)
        assert torch.equal(loss, loss_ref), s
        # to rounding: autograd takes the head's backward through other operations (and BLAS
        # kernels may sum in another order), so cancelling sums may differ in their last bits
        scale = grad_ref.abs().max().item()
        torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6 * scale)


# --- fold groups in forked processes -----------------------------------------------------------

needs_fork = pytest.mark.skipif(
    not batched._can_fork(), reason="fold processes fork, which covidreg uses on Linux only"
)


def test_fold_processes_resolves_auto_and_caps_at_the_folds(train_csv: str) -> None:
    cpu = torch.device("cpu")
    cfg = make_cfg(train_csv)
    assert cfg.fold_processes == 0  # the default: one process per available core
    for wanted, expected in ((1, 1), (3, 3), (9, 5)):
        cfg = make_cfg(train_csv, fold_processes=wanted)
        assert batched.fold_processes(cfg, 5, cpu, lockstep=False) == (
            expected if batched._can_fork() else 1
        )
    auto = make_cfg(train_csv, fold_processes=0, threads=1)
    cores = batched.available_cpus()
    assert batched.fold_processes(auto, 5, cpu, lockstep=False) == (
        max(1, min(cores, 5)) if batched._can_fork() else 1
    )
    many = make_cfg(train_csv, fold_processes=4)
    assert batched.fold_processes(many, 1, cpu, lockstep=False) == 1  # one fold
    assert batched.fold_processes(many, 5, cpu, lockstep=True) == 1  # a per-epoch mean
    assert batched.fold_processes(many, 5, torch.device("cuda"), lockstep=False) == 1


@needs_fork
@pytest.mark.parametrize("n_processes", [2, 3, 5])
def test_fold_processes_give_bit_identical_folds(train_csv: str, n_processes: int) -> None:
    """However the folds are split between processes, each fold trains exactly as in one:
    the same histories and weights, bit for bit (dropout and early stopping included).

    The layers are wide enough for every product to reach the BLAS kernels: products below
    400 multiply-adds take a plain loop in every case (with the head as a batched product of
    one output column, 3 and 5 processes failed here).
    """
    cfg = make_cfg(train_csv, epochs=40, lr=1e-2, patience=4, dropout=0.2, hidden=[64])
    expected = together(dataclasses.replace(cfg, fold_processes=1))
    got = together(dataclasses.replace(cfg, fold_processes=n_processes))
    assert len({len(f.result.history) for f in got}) > 1  # folds stopped at different epochs
    assert_bit_identical(expected, got)


SUBSET_CASES: dict[str, dict[str, Any]] = {
    "sgd-momentum": {"optimizer": "sgd", "lr": 1e-3},
    "adam-dropout": {"dropout": 0.2},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.1},
    "adagrad": {"optimizer": "adagrad", "lr": 3e-2},
    "rmsprop-momentum": {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.5},
    "plateau-early-stopping": {"scheduler": "plateau", "plateau_patience": 2, "patience": 4},
}


@pytest.mark.parametrize("overrides", SUBSET_CASES.values(), ids=SUBSET_CASES.keys())
def test_a_subset_of_the_stack_goes_on_where_it_was(
    train_csv: str, overrides: dict[str, Any]
) -> None:
    """Folds moved to a trainer of their own in mid-training (as a fold process does) end
    exactly as they would have in the whole stack: weights, optimizer state, step counts."""
    values = {"epochs": 30, "lr": 1e-2, "hidden": [64], "fold_processes": 1, **overrides}
    cfg = make_cfg(train_csv, **values)
    expected = together(cfg)
    runs = fold_runs(cfg)

    def narrow(trainer: Any, epoch: int) -> Any:
        return trainer.subset([1, 3]) if epoch == 5 else trainer

    batched._BatchedTrainer(cfg, runs, torch.device("cpu")).fit(narrow)
    assert min(len(expected[k].result.history) for k in (1, 3)) > 5  # moved while running
    assert_bit_identical([expected[1], expected[3]], [runs[1].fitted, runs[3].fitted])


@needs_fork
@pytest.mark.parametrize(("n_processes", "threads"), [(2, 1), (3, 1), (2, 2)])
def test_idle_fold_processes_take_over_folds_and_change_nothing(
    train_csv: str, n_processes: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a fold process finishes early, this process hands some of its running folds to
    new ones, from the epoch it has reached; every fold still ends bit-identical. Not with
    several threads per process: forking after OpenMP has run its threads is unsafe."""
    cfg = make_cfg(train_csv, epochs=40, lr=1e-2, patience=6, dropout=0.2, hidden=[64])
    expected = together(dataclasses.replace(cfg, fold_processes=1))
    here = os.getpid()
    epoch = batched._BatchedTrainer._epoch

    def slow_here(self: Any, *args: Any) -> None:
        if os.getpid() == here:  # the first group lags, so the others finish first
            time.sleep(0.02)
        epoch(self, *args)

    handed: list[tuple[list[int], int]] = []
    start = batched._ForkedGroups.start

    def spy(self: Any, runs: list[Any], trainer: Any, first_epoch: int) -> None:
        handed.append(([run.number for run in runs], first_epoch))
        start(self, runs, trainer, first_epoch)

    monkeypatch.setattr(batched._BatchedTrainer, "_epoch", slow_here)
    monkeypatch.setattr(batched._ForkedGroups, "start", spy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = together(dataclasses.replace(cfg, fold_processes=n_processes))
    first_group = np.array_split(np.arange(1, N_FOLDS + 1), n_processes)[0].tolist()
    taken_over = [(folds, first) for folds, first in handed if first > 1]
    if threads == 1:
        assert taken_over, handed
        assert all(set(folds) < set(first_group) for folds, _ in taken_over)
    else:
        assert not taken_over, handed
    assert_bit_identical(expected, got)


@needs_fork
def test_a_layer_with_one_unit_keeps_every_fold_in_one_process(train_csv: str) -> None:
    """Its products would round differently in a stack of one fold, so no split at all."""
    cfg = make_cfg(train_csv, epochs=15, hidden=[64, 1], activation="tanh", fold_processes=3)
    expected = together(dataclasses.replace(cfg, fold_processes=1))
    assert_bit_identical(expected, together(cfg))


@pytest.mark.parametrize(
    ("overrides", "free"),
    [
        ({"hidden": [64, 1]}, False),
        ({"hidden": [1]}, False),
        ({"features": ["tested_positive_d2"]}, False),
        ({"hidden": [2]}, True),
        ({"hidden": [64, 16], "features": ["all"]}, True),
    ],
)
def test_stacks_of_any_size_agree_without_one_wide_layers(
    hw01_files: dict[str, Path], overrides: dict[str, Any], free: bool
) -> None:
    cfg = make_cfg(str(hw01_files["train"]), **overrides)
    data = load_data(cfg, with_test=False)
    assert batched.stack_size_free(build_model(cfg, data.feature_names)) is free


def test_folds_are_handed_over_only_to_idle_cores(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=10)
    runs = fold_runs(cfg)
    trainer = batched._BatchedTrainer(cfg, runs[:3], torch.device("cpu"))
    others = batched._ForkedGroups(cfg, [], torch.device("cpu"))
    assert others.share(trainer, 4, n_processes=1) is trainer  # no other core
    assert others.share(trainer, cfg.epochs, n_processes=2) is trainer  # the last epoch
    for run in runs[1:3]:
        run.running = False
    assert others.share(trainer, 4, n_processes=3) is trainer  # one running fold
    assert others.groups == []


@needs_fork
def test_fold_processes_fire_the_callbacks_in_fold_order(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=30, lr=1e-2, patience=3)
    data, folds, _ = setup(cfg)
    logs = []
    for n_processes in (1, 2):
        log: list[tuple[Any, ...]] = []
        events = _recording_events(log)
        events.on_epoch_mean = None  # a per-epoch mean keeps every fold in one process
        run_cfg = dataclasses.replace(cfg, fold_processes=n_processes)
        fitted = cross_validate(run_cfg, data, folds, events, together=True)
        assert [f.result.best_epoch for f in fitted] == [e[2] for e in log if e[0] == "fitted"]
        logs.append(log)
    assert logs[0] == logs[1]
    assert [e[0] for e in logs[1][:2]] == ["start", "epoch"]


@needs_fork
def test_an_error_in_a_fold_process_is_raised_here(train_csv: str) -> None:
    cfg = make_cfg(
        train_csv, optimizer="sgd", lr=10.0, momentum=0.0, normalize=False, target="level"
    )
    with pytest.raises(CovidRegError, match="diverged at epoch 1") as expected:
        together(cfg)
    runs = fold_runs(cfg)
    with (
        batched._ForkedGroups(cfg, [runs[3:]], torch.device("cpu")) as others,
        pytest.raises(CovidRegError) as got,
    ):
        others.wait()
    assert str(got.value) == str(expected.value)


@needs_fork
def test_a_crash_in_a_fold_process_carries_its_traceback(
    train_csv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fit(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ValueError("broken on purpose")

    monkeypatch.setattr(batched._BatchedTrainer, "fit", broken_fit)  # the child is a fork
    cfg = make_cfg(train_csv)
    runs = fold_runs(cfg)
    with (
        batched._ForkedGroups(cfg, [runs[2:]], torch.device("cpu")) as others,
        pytest.raises(RuntimeError, match="cv folds 3, 4, 5 failed") as got,
    ):
        others.wait()
    assert "ValueError: broken on purpose" in str(got.value)


@needs_fork
def test_a_fold_process_that_dies_is_reported(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=100_000)
    runs = fold_runs(cfg)
    with batched._ForkedGroups(cfg, [runs[3:]], torch.device("cpu")) as others:
        (group,) = others.groups
        os.kill(group.process.pid, signal.SIGKILL)
        with pytest.raises(CovidRegError, match="cv folds 4, 5 ended without its results") as got:
            others.wait()
    assert "exit code -9" in str(got.value)
    assert "--fold-processes 1" in str(got.value)
    assert not group.process.is_alive()


@needs_fork
def test_leaving_early_ends_the_fold_processes(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=100_000)
    runs = fold_runs(cfg)
    with (
        pytest.raises(KeyboardInterrupt),
        batched._ForkedGroups(cfg, [runs[2:3], runs[3:]], torch.device("cpu")) as others,
    ):
        raise KeyboardInterrupt
    assert [g.process.is_alive() for g in others.groups] == [False, False]
    assert [g.process.exitcode for g in others.groups] == [-signal.SIGTERM] * 2


PARENT_SCRIPT = """
import sys, time, torch
from covidreg import batched
from covidreg.config import Config
from covidreg.cv import fold_seed, make_folds
from covidreg.experiment import load_data

cfg = Config(train_csv=sys.argv[1], test_csv="", epochs=100_000, batch_size=16, patience=0,
             hidden=[16, 8], checkpoint_every=0)
data = load_data(cfg, with_test=False)
folds = make_folds(cfg, data, 5)
runs = batched._build_folds(cfg, data, folds, [fold_seed(cfg.seed, k) for k in range(1, 6)])
groups = batched._ForkedGroups(cfg, [runs[3:]], torch.device("cpu"))
print(groups.groups[0].process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


@needs_fork
def test_a_fold_process_ends_when_its_parent_is_killed(train_csv: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, train_csv], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()  # SIGKILL: no Python clean-up runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
