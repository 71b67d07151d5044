"""K-fold cross-validation: every fold trained from scratch, compared with the simple answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidreg import artifacts, batched
from covidreg.baselines import persistence_predict, ridge_fit_predict, rmse
from covidreg.config import Config, to_toml
from covidreg.data import feature_columns, make_kfold, select
from covidreg.experiment import (
    FittedModel,
    LoadedData,
    OnEpoch,
    checkpoint_payload,
    fit_model,
    load_data,
    preflight,
)
from covidreg.train import EpochRecord, predict

FOLD_COLUMNS = (
    "fold",
    "seed",
    "train_rows",
    "valid_rows",
    "epochs_run",
    "best_epoch",
    "valid_mse",
    "valid_rmse",
    "persistence_rmse",
    "ridge_rmse",
    "seconds",
)


def fold_seed(seed: int, fold: int) -> int:
    """A seed for fold ``fold`` derived from the run seed: fixed, and distinct across folds."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


@dataclass
class FoldResult:
    fold: int
    seed: int
    train_rows: int
    valid_rows: int
    epochs_run: int
    best_epoch: int
    valid_mse: float
    valid_rmse: float
    persistence_rmse: float
    ridge_rmse: float
    seconds: float
    history: list[EpochRecord] = field(default_factory=list, repr=False)

    def row(self) -> list[Any]:
        return [getattr(self, name) for name in FOLD_COLUMNS]


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1), min and max of per-fold values."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "min": float(arr.min()), "max": float(arr.max())}


@dataclass
class CvResult:
    run_dir: Path
    n_folds: int
    split: str
    folds: list[FoldResult]
    summary: dict[str, Any]
    pred_path: Path | None


def make_folds(cfg: Config, data: LoadedData, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = make_kfold(cfg.split, n_folds, cfg.seed, cfg.purge)
    folds = list(splitter.split(data.train.states))
    for train_idx, _ in folds:
        preflight(cfg, data, len(train_idx))
    return folds


def check_cv_inputs(cfg: Config, n_folds: int, with_test: bool) -> LoadedData:
    """Validate data, config and folds together before anything is written."""
    data = load_data(cfg, with_test=with_test)
    make_folds(cfg, data, n_folds)
    return data


def _fold_result(
    k: int,
    seed: int,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    fitted: FittedModel,
) -> FoldResult:
    target = data.train.target[valid_idx]
    ridge = ridge_fit_predict(data.train, data.feature_names, train_idx, valid_idx)
    result = fitted.result
    return FoldResult(
        fold=k,
        seed=seed,
        train_rows=len(train_idx),
        valid_rows=len(valid_idx),
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        valid_mse=result.best_valid_mse,
        valid_rmse=math.sqrt(result.best_valid_mse),
        persistence_rmse=rmse(persistence_predict(data.train, valid_idx), target),
        ridge_rmse=rmse(ridge, target),
        seconds=round(result.seconds, 3),
        history=result.history,
    )


def summarize(cfg: Config, n_folds: int, folds: list[FoldResult]) -> dict[str, Any]:
    return {
        "n_folds": n_folds,
        "split": cfg.split,
        "seed": cfg.seed,
        "valid_rmse": mean_std([f.valid_rmse for f in folds]),
        "persistence_rmse": mean_std([f.persistence_rmse for f in folds]),
        "ridge_rmse": mean_std([f.ridge_rmse for f in folds]),
        "epochs_run": mean_std([f.epochs_run for f in folds]),
        "seconds": round(sum(f.seconds for f in folds), 3),
        "folds": [{k: v for k, v in asdict(f).items() if k != "history"} for f in folds],
    }


def cross_validate(
    cfg: Config,
    data: LoadedData,
    folds: list[tuple[np.ndarray, np.ndarray]],
    events: batched.FoldEvents | None = None,
    together: bool | None = None,
) -> list[FittedModel]:
    """Train one model per fold (fold k seeded with ``fold_seed(cfg.seed, k)``), in fold order.

    The folds train together as one batched model (``covidreg.batched``) when the config allows
    it, else one after another (``together=False`` forces that: the reference path). Both give
    the same models to float rounding and fire ``events`` in the same order; one after another,
    ``on_epoch_mean`` can only run once every fold has finished.
    """
    events = events or batched.FoldEvents()
    seeds = [fold_seed(cfg.seed, k) for k in range(1, len(folds) + 1)]
    if together is None:
        together = batched.supports(cfg)
    if together:
        return batched.fit_folds(cfg, data, folds, seeds, events)
    fitted_folds: list[FittedModel] = []
    for k, ((train_idx, valid_idx), seed) in enumerate(zip(folds, seeds, strict=True), start=1):
        if events.on_fold_start is not None:
            events.on_fold_start(k, len(folds))
        fitted = fit_model(cfg, data, train_idx, valid_idx, seed, events.on_epoch)
        fitted_folds.append(fitted)
        if events.on_fold_fitted is not None:
            events.on_fold_fitted(k, fitted)
    if events.on_epoch_mean is not None:
        for epoch, mse in epoch_means([f.result.history for f in fitted_folds]):
            events.on_epoch_mean(epoch, mse)
    return fitted_folds


def epoch_means(histories: list[list[EpochRecord]]) -> list[tuple[int, float]]:
    """(epoch, mean validation MSE of the folds that ran that epoch) for every epoch."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            by_epoch.setdefault(record.epoch, []).append(record.valid_loss)
    return [(epoch, sum(v) / len(v)) for epoch, v in sorted(by_epoch.items())]


def run_cv(
    cfg: Config,
    n_folds: int,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    write_predictions: bool = False,
    on_start: Callable[[Path], None] | None = None,
    on_fold_start: Callable[[int, int], None] | None = None,
    on_epoch: OnEpoch | None = None,
    on_fold_end: Callable[[FoldResult], None] | None = None,
    on_epoch_mean: Callable[[int, float], None] | None = None,
) -> CvResult:
    """``covidreg cv``: train one model per fold and write the cv run directory.

    ``on_epoch_mean(epoch, mse)``: the mean validation MSE of the folds still training, after
    every epoch (see ``cross_validate``); an exception raised there stops the run.
    """
    data = load_data(cfg, with_test=write_predictions)
    folds = make_folds(cfg, data, n_folds)
    artifacts.check_output_target(out)
    run_dir = artifacts.ensure_writable_dir(out) if out else artifacts.new_run_dir(runs_dir, "cv")
    if on_start is not None:
        on_start(run_dir)
    results: list[FoldResult] = []
    models: list[torch.nn.Module] = []

    def on_fold_fitted(k: int, fitted: FittedModel) -> None:
        train_idx, valid_idx = folds[k - 1]
        fold = _fold_result(k, fold_seed(cfg.seed, k), data, train_idx, valid_idx, fitted)
        _write_fold(run_dir / f"fold_{k}", cfg, data, fitted, fold)
        results.append(fold)
        models.append(fitted.model)
        if on_fold_end is not None:
            on_fold_end(fold)

    events = batched.FoldEvents(on_fold_start, on_epoch, on_fold_fitted, on_epoch_mean)
    cross_validate(cfg, data, folds, events)
    summary = summarize(cfg, n_folds, results)
    pred_path = _write_cv_outputs(run_dir, cfg, data, results, models, summary, write_predictions)
    return CvResult(run_dir, n_folds, cfg.split, results, summary, pred_path)


def _write_fold(
    fold_dir: Path, cfg: Config, data: LoadedData, fitted: FittedModel, fold: FoldResult
) -> None:
    fold_dir.mkdir(exist_ok=True)
    metrics = {k: v for k, v in asdict(fold).items() if k != "history"}
    payload = checkpoint_payload(cfg, data.feature_names, fitted, metrics)
    artifacts.save_checkpoint(fold_dir / "model.pt", payload)
    artifacts.write_csv(
        fold_dir / "history.csv",
        ["epoch", "train_loss", "valid_loss", "lr"],
        [(r.epoch, repr(r.train_loss), repr(r.valid_loss), repr(r.lr)) for r in fold.history],
    )


def _write_cv_outputs(
    run_dir: Path,
    cfg: Config,
    data: LoadedData,
    folds: list[FoldResult],
    models: list[torch.nn.Module],
    summary: dict[str, Any],
    write_predictions: bool,
) -> Path | None:
    artifacts.write_text(run_dir / "config.toml", to_toml(cfg))
    artifacts.write_csv(run_dir / "cv.csv", list(FOLD_COLUMNS), [f.row() for f in folds])
    summary = {
        **summary,
        "environment": artifacts.environment_info(cfg.device, cfg.seed, cfg.deterministic),
    }
    artifacts.write_json(run_dir / "summary.json", summary)
    curves = [
        (
            f"fold {f.fold}",
            [r.epoch for r in f.history],
            [r.train_loss for r in f.history],
            [r.valid_loss for r in f.history],
        )
        for f in folds
    ]
    artifacts.plot_learning_curve(
        run_dir / "learning_curves.png", curves, [f.best_epoch for f in folds]
    )
    if not write_predictions or data.test is None:
        return None
    x = torch.from_numpy(select(data.test, feature_columns(data.feature_names)).x)
    pred = np.mean([predict(m, x.to(next(m.parameters()).device)) for m in models], axis=0)
    path = run_dir / "pred.csv"
    artifacts.write_predictions(path, data.test.ids, pred)
    return path
