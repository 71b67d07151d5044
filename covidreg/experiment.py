"""One training run end to end: load and split the data, fit, and write the run directory."""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidreg import artifacts, tensorboard_logs
from covidreg.baselines import persistence_predict, rmse
from covidreg.config import Config, from_dict, to_dict, to_toml
from covidreg.datadir import AUTO, resolve_paths
from covidreg.engine import (
    EarlyStopping,
    Engine,
    EpochRecord,
    FitResult,
    FittedModel,
    Member,
    check_batch_size,
    fit_members,
    history_records,
    predict,
)
from covidreg.errors import CovidRegError, RunInterrupted
from covidreg.layout import Layout
from covidreg.lr_range import member_at_rate
from covidreg.model import count_parameters, skip_index_for
from covidreg.reproducibility import resolve_device
from covidreg.schema import Arrays, HW01Table, check_same_layout, read_hw01_csv, select
from covidreg.splits import holdout_split, stopping_split

STATE_FILE = "training_state.pt"
OnEpoch = Callable[[EpochRecord, EarlyStopping], None]


@dataclass
class LoadedData:
    feature_names: list[str]
    train: HW01Table
    test: HW01Table | None

    @property
    def layout(self) -> Layout:
        return self.train.layout

    def record(self) -> dict[str, Any]:
        """The files read (``auto`` paths resolved) and their layout, for metrics.json."""
        return {
            "train_csv": self.train.path,
            "test_csv": "" if self.test is None else self.test.path,
            "layout": self.layout.describe(),
            "days": self.layout.n_days,
        }


def load_data(cfg: Config, with_test: bool = True) -> LoadedData:
    """Read and validate the CSVs named in ``cfg`` (the test file only ``with_test``: a command
    that predicts nothing never asks for it) and resolve the feature names in the training
    file's layout."""
    train_csv, _ = resolve_paths(cfg.train_csv, cfg.test_csv, cfg.edition)
    train = read_hw01_csv(train_csv, require_target=True, what="training CSV")
    if cfg.edition not in (AUTO, train.layout.edition):
        raise CovidRegError(
            f"training CSV {train_csv} has the {train.layout.describe()}, not the "
            f"{cfg.edition} edition's; pass the {cfg.edition} files or --edition auto"
        )
    feature_names = train.layout.resolve_features(cfg.features)
    test = read_test(cfg, train) if with_test else None
    return LoadedData(feature_names, train, test)


def read_test(cfg: Config, train: HW01Table) -> HW01Table | None:
    """The test CSV named in ``cfg`` (None for ''), which must have the training file's
    layout."""
    _, test_csv = resolve_paths(train.path, cfg.test_csv, cfg.edition)
    if not test_csv:
        return None
    test = read_hw01_csv(test_csv, require_target=False, what="test CSV")
    check_same_layout(train.layout, test, f"training CSV {train.path} has")
    return test


def preflight(cfg: Config, data: LoadedData, n_train: int) -> None:
    """Every check that needs both config and data, run before anything is written."""
    check_batch_size(cfg, n_train)
    skip_index_for(cfg, data.layout, data.feature_names)
    resolve_device(cfg.device)
    tensorboard_logs.check(cfg)


def stop_rows(cfg: Config, fold: bool) -> str:
    """What ``stop_on`` means for a holdout (``fold=False``: train, --seeds, compare, tune
    --folds 1) or a cv fold: ``auto`` is ``valid`` for the one and ``train_tail`` for the other.

    A holdout's validation rows are what train chooses its epoch on, as the course code does.
    A fold is there to estimate the error of that procedure on days it has not seen, so its
    model early-stops on a holdout of its own training rows, as train does on its training
    file, and the fold's rows are only scored."""
    if cfg.stop_on != "auto":
        return cfg.stop_on
    return "train_tail" if fold else "valid"


def member_rows(
    cfg: Config,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    fold: bool = False,
) -> tuple[Arrays, Arrays, Arrays | None]:
    """The rows a split's model fits, the rows it early-stops on, and the rows only scored
    (None: those it stops on): ``train_idx`` and ``valid_idx``, or (``stop_rows`` is
    ``train_tail``) ``train_idx`` less its blocked tail, that tail, and ``valid_idx``."""
    columns = data.train.columns(data.feature_names)

    def rows(idx: np.ndarray) -> Arrays:
        return select(data.train, columns, idx)

    if stop_rows(cfg, fold) == "train_tail":
        fit_idx, stop_idx = stopping_split(data.train.order, train_idx, cfg.valid_ratio, cfg.purge)
        return rows(fit_idx), rows(stop_idx), rows(valid_idx)
    return rows(train_idx), rows(valid_idx), None


def member_for(
    cfg: Config,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    seed: int,
    fold: bool = False,
) -> Member:
    """The engine's model for one split (a cv fold with ``fold``) on ``member_rows``: it fits
    ``train_idx`` and early-stops on ``valid_idx``, or (``stop_rows`` is ``train_tail``)
    early-stops on the blocked tail of ``train_idx`` and ``valid_idx`` is only scored."""
    fit, stop, scored = member_rows(cfg, data, train_idx, valid_idx, fold)
    return member_at_rate(cfg, data.layout, data.feature_names, fit, stop, seed, scored)


def fit_model(
    cfg: Config,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    seed: int,
    on_epoch: OnEpoch | None = None,
    on_checkpoint: Callable[[Engine], None] | None = None,
    resume_state: dict[str, Any] | None = None,
) -> FittedModel:
    """One model on these rows: the engine with a stack of one."""
    member = member_for(cfg, data, train_idx, valid_idx, seed)
    shown = None if on_epoch is None else (lambda _k, record, stopper: on_epoch(record, stopper))
    (fitted,) = fit_members(cfg, [member], shown, on_checkpoint, resume_state)
    return fitted


def checkpoint_payload(
    cfg: Config,
    layout: Layout,
    feature_names: list[str],
    fitted: FittedModel,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """What ``covidreg predict`` needs to rebuild the model, with nothing but plain types."""
    return {
        "kind": "model",
        "config": to_dict(cfg),
        "feature_names": list(feature_names),
        "target_name": layout.target,
        "layout": layout.to_dict(),
        # the statistics themselves are the model's input_mean/input_std buffers
        "normalization": {"fitted_on": "training split", "applied": cfg.normalize},
        "state_dict": {k: v.detach().cpu() for k, v in fitted.model.state_dict().items()},
        "metrics": metrics,
    }


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    result: FitResult
    message: str


def run_metrics(
    cfg: Config, data: LoadedData, train_idx: np.ndarray, valid_idx: np.ndarray, fitted: FittedModel
) -> dict[str, Any]:
    result = fitted.result
    return {
        **lr_record(fitted),
        "best_epoch": result.best_epoch,
        "valid_mse": result.best_valid_mse,
        "valid_rmse": math.sqrt(result.best_valid_mse),
        # ridge_blend: the network alone, with the same weights (equal to valid_rmse without)
        "ridge_blend": cfg.ridge_blend,
        "network_valid_rmse": math.sqrt(result.network_mse),
        "persistence_valid_rmse": rmse(
            persistence_predict(data.train, valid_idx), data.train.target[valid_idx]
        ),
        "epochs_run": len(result.history),
        "stop_reason": result.stop_reason,
        # train_tail: the best epoch was chosen on the training rows' tail, valid_rmse is honest
        "stop_on": stop_rows(cfg, fold=False),
        **({} if result.stop_mse is None else {"stop_rmse": math.sqrt(result.stop_mse)}),
        "seconds": round(result.seconds, 3),
        "split": cfg.split,
        "train_rows": len(train_idx),
        "valid_rows": len(valid_idx),
        "n_features": len(data.feature_names),
        "data": data.record(),
        "n_parameters": count_parameters(fitted.model),
        "environment": artifacts.environment_info(
            str(resolve_device(cfg.device)), cfg.seed, cfg.deterministic
        ),
    }


def lr_record(fitted: FittedModel) -> dict[str, Any]:
    """Where the model's learning rate came from: the config, or the range test (lr = auto)."""
    if fitted.lr_finder is None:
        return {"lr_source": "config"}
    return {"lr_source": "lr-find", "lr_finder": fitted.lr_finder}


def with_found_lr(cfg: Config, fitted: FittedModel) -> Config:
    """The config as the model trained: lr = auto replaced by the rate the test found."""
    if fitted.lr_finder is None:
        return cfg
    return dataclasses.replace(cfg, lr=fitted.lr_finder["lr"])


def write_run(
    run_dir: Path,
    cfg: Config,
    data: LoadedData,
    valid_idx: np.ndarray,
    fitted: FittedModel,
    metrics: dict[str, Any],
    plots: artifacts.Plots,
) -> None:
    """Write every output file of a finished run (each atomically); the plots are queued on
    ``plots``, whose ``finish`` the caller awaits."""
    cfg = with_found_lr(cfg, fitted)  # config.toml and model.pt record lr = auto's number
    model, history = fitted.model, fitted.result.history
    artifacts.save_checkpoint(
        run_dir / "model.pt",
        checkpoint_payload(cfg, data.layout, data.feature_names, fitted, metrics),
    )
    artifacts.write_text(run_dir / "config.toml", to_toml(cfg))
    artifacts.write_csv(
        run_dir / "history.csv",
        ["epoch", "train_loss", "valid_loss", "lr"],
        [(r.epoch, repr(r.train_loss), repr(r.valid_loss), repr(r.lr)) for r in history],
    )
    artifacts.write_json(run_dir / "metrics.json", metrics)
    plots.draw(
        "learning_curve",
        run_dir / "learning_curve.png",
        [
            (
                "",
                [r.epoch for r in history],
                [r.train_loss for r in history],
                [r.valid_loss for r in history],
            )
        ],
        [fitted.result.best_epoch],
    )
    columns = data.train.columns(data.feature_names)
    device = next(model.parameters()).device
    valid = select(data.train, columns, valid_idx)
    valid_pred = predict(model, torch.from_numpy(valid.x).to(device))
    plots.draw(
        "predictions", run_dir / "valid_pred.png", valid.y, valid_pred, metrics["valid_rmse"]
    )
    if data.test is not None:
        test_x = torch.from_numpy(select(data.test, columns).x).to(device)
        artifacts.write_predictions(run_dir / "pred.csv", data.test.ids, predict(model, test_x))


def check_train_inputs(cfg: Config, with_test: bool = True) -> LoadedData:
    """Validate data and config together (no output written): what run_train checks first."""
    data = load_data(cfg, with_test)
    train_idx, _ = holdout_split(data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge)
    preflight(cfg, data, len(train_idx))
    return data


def run_train(
    cfg: Config,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    run_name: str = "train",
    on_epoch: OnEpoch | None = None,
    on_start: Callable[[Path, int], None] | None = None,
    data: LoadedData | None = None,
    overwrite: bool = False,
) -> RunResult:
    """``covidreg train``: validate everything, then train and write the run directory.

    ``data``: the CSVs already read and checked (``check_train_inputs``), else read here.
    ``overwrite``: an ``out`` holding another run is replaced (else refused).
    """
    artifacts.check_run_target(out, overwrite, resumable=True)
    if data is None:
        data = check_train_inputs(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    with artifacts.run_dir_for(out, runs_dir, run_name, overwrite, resumable=True) as run_dir:
        return _train_into(cfg, data, train_idx, valid_idx, run_dir, on_epoch, on_start, None)


def _train_into(
    cfg: Config,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    run_dir: Path,
    on_epoch: OnEpoch | None,
    on_start: Callable[[Path, int], None] | None,
    resume_state: dict[str, Any] | None,
) -> RunResult:
    if on_start is not None:
        on_start(run_dir, 0 if resume_state is None else int(resume_state["epoch"]))

    saved_epoch = None if resume_state is None else int(resume_state["epoch"])

    def save_state(engine: Engine) -> None:
        nonlocal saved_epoch
        artifacts.save_checkpoint(
            run_dir / STATE_FILE,
            {"kind": TRAIN_STATE, "config": to_dict(cfg), **engine.state_dict()},
            durable=False,
        )
        saved_epoch = engine.epoch

    earlier = _resumed_history(resume_state) if cfg.tensorboard else []
    try:
        with (
            artifacts.Plots() as plots,  # matplotlib loads beside the training
            tensorboard_logs.live_log(cfg, run_dir / tensorboard_logs.LOG_DIR, earlier) as log,
        ):
            fitted = fit_model(
                cfg,
                data,
                train_idx,
                valid_idx,
                cfg.seed,
                _logged(on_epoch, log),
                save_state,
                resume_state,
            )
            metrics = run_metrics(cfg, data, train_idx, valid_idx, fitted)
            write_run(run_dir, cfg, data, valid_idx, fitted, metrics, plots)
            plots.finish()
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(cfg, run_dir, saved_epoch)) from None
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return RunResult(run_dir, metrics, fitted.result, fitted.result.message)


def resume_command(run_dir: Path) -> str:
    return f"covidreg train --resume {shlex.quote(str(run_dir))}"


def interrupted_message(cfg: Config, run_dir: Path, saved_epoch: int | None) -> str:
    """What an interrupted train run kept (the training state of ``saved_epoch``, if any), and
    how to go on."""
    if saved_epoch is not None:
        return (
            f"the training state of epoch {saved_epoch} is saved in {run_dir}; continue with "
            f"'{resume_command(run_dir)}'"
        )
    if (run_dir / "model.pt").exists():  # interrupted while it wrote its files
        return (
            f"training had finished: {run_dir / 'model.pt'} is saved, the run's other files "
            "may be missing; train again for the whole run"
        )
    if cfg.checkpoint_every == 0:
        why = "checkpoint_every = 0 saves no training state"
    else:
        why = (
            f"the run stopped before its first training state (one is saved every "
            f"{cfg.checkpoint_every} epochs: checkpoint_every)"
        )
    return f"nothing was saved to resume from: {why}"


def _resumed_history(state: dict[str, Any] | None) -> list[EpochRecord]:
    """The epochs a resumed run already has (a state without them fails in the engine)."""
    if state is None:
        return []
    try:
        return history_records(state["members"][0]["history"])
    except (KeyError, IndexError, TypeError, AttributeError):
        return []


def _logged(on_epoch: OnEpoch | None, log: tensorboard_logs.EpochLog | None) -> OnEpoch | None:
    """``on_epoch`` that also writes each epoch to the TensorBoard log, when there is one."""
    if log is None:
        return on_epoch

    def both(record: EpochRecord, stopper: EarlyStopping) -> None:
        log(record)
        if on_epoch is not None:
            on_epoch(record, stopper)

    return both


# the kinds of STATE_FILE: a train run's engine state, or what a --seeds run needs to go on
# (its stacks' engine states are files of their own beside it)
TRAIN_STATE, SEEDS_STATE = "training_state", "seeds_state"


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    """The training state of an interrupted ``covidreg train`` run (``--seeds`` too), checked."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if not run_dir.is_dir():
        raise CovidRegError(f"run directory {run_dir} does not exist; pass a runs/<run> directory")
    if not state_path.exists():
        if (run_dir / "model.pt").exists() or (run_dir / "seeds.json").exists():
            why = "the run finished"
        else:
            why = "it holds no interrupted covidreg train run"
        raise CovidRegError(f"nothing to resume in {run_dir}: {why} (no {STATE_FILE})")
    state = artifacts.load_checkpoint(state_path, "training state")
    if state.get("kind") not in (TRAIN_STATE, SEEDS_STATE) or "config" not in state:
        raise CovidRegError(f"{state_path} is not a covidreg training state")
    return state


def resume_train(
    run_dir: str | Path,
    on_epoch: OnEpoch | None = None,
    on_start: Callable[[Path, int], None] | None = None,
    state: dict[str, Any] | None = None,
) -> RunResult:
    """Continue an interrupted ``covidreg train`` run from its last saved training state
    (``state``: that state, already read by ``load_training_state``)."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if state is None:
        state = load_training_state(run_dir)
    if state["kind"] != TRAIN_STATE:
        raise CovidRegError(f"{state_path} is the state of a --seeds run; resume it as one")
    cfg = from_dict(state["config"], str(state_path))
    tensorboard_logs.check(cfg)
    data = load_data(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    return _train_into(cfg, data, train_idx, valid_idx, run_dir, on_epoch, on_start, state)
