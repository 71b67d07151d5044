"""K-fold cross-validation: every fold trained from scratch, compared with the simple answers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidreg import artifacts, tensorboard_logs
from covidreg.baselines import persistence_predict, ridge_fit_predict, rmse
from covidreg.config import AUTO_LR, Config, to_toml
from covidreg.datadir import AUTO
from covidreg.engine import (
    DivergedAtOnce,
    EarlyStopping,
    Engine,
    EpochRecord,
    FittedModel,
    Member,
    fit_members,
    predict,
    stack_groups,
)
from covidreg.experiment import (
    LoadedData,
    OnEpoch,
    checkpoint_payload,
    load_data,
    lr_record,
    member_for,
    preflight,
    stop_rows,
    with_found_lr,
)
from covidreg.processes import StackProcesses, process_count
from covidreg.reproducibility import resolve_device
from covidreg.schema import select
from covidreg.splits import Splitter, make_splitter

FOLD_COLUMNS = (
    "fold",
    "seed",
    "train_rows",
    "valid_rows",
    "epochs_run",
    "best_epoch",
    "valid_mse",
    "valid_rmse",
    "network_rmse",
    "persistence_rmse",
    "ridge_rmse",
    "lr",
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
    network_rmse: float  # the network alone (valid_rmse without a ridge blend)
    persistence_rmse: float
    ridge_rmse: float
    lr: float  # the fold's learning rate: the config's, or its own range test's (lr = auto)
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


def cv_splitter(cfg: Config, n_folds: int, protocol: str = AUTO) -> Splitter:
    """``n_folds`` of the config's split, or the ``protocol`` named (``splits.SPLITTERS``: a
    k-fold kind, or a temporal hold-out, one fold whatever ``n_folds``)."""
    name = cfg.split if protocol == AUTO else protocol
    return make_splitter(name, n_folds, cfg.seed, cfg.purge)


def make_folds(
    cfg: Config, data: LoadedData, n_folds: int, protocol: str = AUTO
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, valid) rows of each fold of ``cv_splitter``."""
    splitter = cv_splitter(cfg, n_folds, protocol)
    folds = list(splitter.split(data.train.order, data.train.states))
    for train_idx, _ in folds:
        preflight(cfg, data, len(train_idx))
    return folds


def check_cv_inputs(cfg: Config, n_folds: int, with_test: bool, protocol: str = AUTO) -> LoadedData:
    """Validate data, config and folds together before anything is written."""
    data = load_data(cfg, with_test=with_test)
    make_folds(cfg, data, n_folds, protocol)
    return data


def _fold_result(
    cfg: Config,
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
        network_rmse=math.sqrt(result.network_mse),
        persistence_rmse=rmse(persistence_predict(data.train, valid_idx), target),
        ridge_rmse=rmse(ridge, target),
        lr=with_found_lr(cfg, fitted).lr,
        seconds=round(result.seconds, 3),
        history=result.history,
    )


def summarize(cfg: Config, split: str, folds: list[FoldResult]) -> dict[str, Any]:
    """``split``: the folds' splitter (the config's split, or the protocol named)."""
    return {
        "n_folds": len(folds),
        "split": split,
        "seed": cfg.seed,
        "valid_rmse": mean_std([f.valid_rmse for f in folds]),
        "network_rmse": mean_std([f.network_rmse for f in folds]),
        "ridge_blend": cfg.ridge_blend,
        "persistence_rmse": mean_std([f.persistence_rmse for f in folds]),
        "ridge_rmse": mean_std([f.ridge_rmse for f in folds]),
        # lr = auto: each fold's rate comes from the range test on its own training rows
        "lr_source": "lr-find" if cfg.lr == AUTO_LR else "config",
        # valid: the best epochs were chosen on the scored rows (optimistic); train_tail: not
        "stop_on": stop_rows(cfg, fold=True),
        "epochs_run": mean_std([f.epochs_run for f in folds]),
        "fold_seconds": mean_std([f.seconds for f in folds]),
        "folds": [{k: v for k, v in asdict(f).items() if k != "history"} for f in folds],
    }


@dataclass
class FoldEvents:
    """Callbacks of a cross-validation, fired in fold order: ``on_fold_start(k, n_folds)``,
    ``on_epoch(record, stopper)`` for each of fold k's epochs, then ``on_fold_fitted(k,
    fitted)``. ``after_epoch(stack, epoch, members)`` runs after every epoch of a stack trained
    in this process (``members``: the stack's; it may raise, to stop the run).
    ``on_checkpoint(stack, engine)`` runs every ``checkpoint_every`` epochs of each stack, in
    the process that trains it."""

    on_fold_start: Callable[[int, int], None] | None = None
    on_epoch: OnEpoch | None = None
    on_fold_fitted: Callable[[int, FittedModel], None] | None = None
    after_epoch: Callable[[int, int, list[Member]], None] | None = None
    on_checkpoint: Callable[[int, Engine], None] | None = None


def fold_members(
    cfg: Config,
    data: LoadedData,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seeds: list[int] | None = None,
    holdouts: bool = False,
) -> list[Member]:
    """One model per fold, fold k (from 1) seeded with ``fold_seed(cfg.seed, k)``, or with
    ``seeds[k - 1]``. ``holdouts``: the splits are train's holdout (for --seeds, tune --folds
    1), so ``stop_on = "auto"`` stops on their validation rows, as train does."""
    if seeds is None:
        seeds = [fold_seed(cfg.seed, k) for k in range(1, len(folds) + 1)]
    return [
        member_for(cfg, data, train_idx, valid_idx, seed, fold=not holdouts)
        for (train_idx, valid_idx), seed in zip(folds, seeds, strict=True)
    ]


def cross_validate(
    cfg: Config,
    data: LoadedData,
    folds: list[tuple[np.ndarray, np.ndarray]],
    events: FoldEvents | None = None,
    processes: bool = True,
    seeds: list[int] | None = None,
    holdouts: bool = False,
    resume_states: dict[int, dict[str, Any]] | None = None,
) -> list[FittedModel]:
    """Train one model per fold; returns their fitted models in fold order.

    The folds train in stacks of consecutive folds (``engine.stack_groups``: the config
    decides them), side by side in forked processes (``processes``: as many as
    ``processes.process_count`` gives; else one after another here). Either way each fold's
    result is the same bits. ``seeds`` and ``holdouts``: as in ``fold_members``;
    ``resume_states``: by stack, the training state its ``on_checkpoint`` saved, to go on from.
    """
    events = events or FoldEvents()
    members = fold_members(cfg, data, folds, seeds, holdouts)
    groups = stack_groups(cfg, len(members))
    stacks = [[members[k] for k in group] for group in groups]
    n_processes = process_count(cfg, len(stacks), resolve_device(cfg.device)) if processes else 1
    in_order = _InFoldOrder(events, cfg, members)
    in_order.advance()  # fold 1 starts now

    def train_stack(
        index: int, after_epoch: Callable[[int], None] | None = None
    ) -> list[FittedModel]:
        save = events.on_checkpoint
        on_checkpoint = None if save is None else (lambda engine: save(index, engine))
        state = (resume_states or {}).get(index)
        try:
            return fit_members(
                cfg,
                stacks[index],
                on_checkpoint=on_checkpoint,
                resume_state=state,
                after_epoch=after_epoch,
            )
        except DivergedAtOnce as exc:  # say which model of the stack it was
            k = next(k for k in groups[index] if _diverged_at_once(members[k]))
            name = f"seed {seeds[k]}" if holdouts and seeds else f"fold {k + 1}"
            raise DivergedAtOnce(f"{name}: {exc}") from None

    with StackProcesses(stacks, n_processes, train_stack) as others:
        for index in range(0, len(stacks), n_processes):

            def after_epoch(epoch: int, index: int = index) -> None:
                others.poll()
                in_order.advance()
                if events.after_epoch is not None:
                    events.after_epoch(index, epoch, stacks[index])

            train_stack(index, after_epoch)
            in_order.advance()
        others.wait()
    in_order.advance()
    return [m.fitted for m in members if m.fitted is not None]


def _diverged_at_once(member: Member) -> bool:
    return member.stop_reason == "diverged" and not member.history


class _InFoldOrder:
    """Fires the fold callbacks in fold order, whatever order the folds train in.

    The lowest unfinished fold is reported live, epoch by epoch; a later fold's epochs so far
    are replayed when its turn comes, through a fresh EarlyStopping stepped on the same losses,
    so each ``on_epoch`` sees the stopper state of that fold at that epoch.
    """

    def __init__(self, events: FoldEvents, cfg: Config, members: list[Member]) -> None:
        self.events = events
        self.cfg = cfg
        self.members = members
        self.current = 0
        self.shown = 0
        self.stopper: EarlyStopping | None = None

    def advance(self) -> None:
        events, n_folds = self.events, len(self.members)
        while self.current < n_folds:
            member = self.members[self.current]
            if self.stopper is None:
                self.stopper = EarlyStopping(self.cfg.patience, self.cfg.min_delta)
                if events.on_fold_start is not None:
                    events.on_fold_start(self.current + 1, n_folds)
            for record in member.history[self.shown :]:
                self.stopper.step(record.valid_loss, record.epoch)
                if events.on_epoch is not None:
                    events.on_epoch(record, self.stopper)
            self.shown = len(member.history)
            if member.fitted is None:
                return
            if events.on_fold_fitted is not None:
                events.on_fold_fitted(self.current + 1, member.fitted)
            self.current, self.shown, self.stopper = self.current + 1, 0, None


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
    data: LoadedData | None = None,
    overwrite: bool = False,
    protocol: str = AUTO,
) -> CvResult:
    """``covidreg cv``: train one model per fold and write the cv run directory.

    ``protocol``: the folds (``make_folds``): auto, ``n_folds`` of the config's split; or a
    splitter's name, such as the temporal hold-outs ``future`` and ``past`` (one fold each).
    ``data``: the CSVs already read and checked (``check_cv_inputs``), else they are read here.
    ``overwrite``: an ``out`` holding another run is replaced (else refused).
    """
    artifacts.check_run_target(out, overwrite)
    if data is None:
        data = load_data(cfg, with_test=write_predictions)
    splitter = cv_splitter(cfg, n_folds, protocol)
    folds = make_folds(cfg, data, n_folds, protocol)
    name = cfg.split if protocol == AUTO else protocol
    # a run that fails before its first file (a fold's range test, an interrupt) leaves nothing
    with artifacts.run_dir_for(out, runs_dir, "cv", overwrite) as run_dir:
        if on_start is not None:
            on_start(run_dir)
        results: list[FoldResult] = []
        models: list[torch.nn.Module] = []

        def on_fold_fitted(k: int, fitted: FittedModel) -> None:
            train_idx, valid_idx = folds[k - 1]
            fold = _fold_result(cfg, k, fold_seed(cfg.seed, k), data, train_idx, valid_idx, fitted)
            _write_fold(run_dir / f"fold_{k}", cfg, data, fitted, fold)
            if cfg.tensorboard:  # from the parent: folds may train in forked processes
                tensorboard_logs.write_history(
                    run_dir / tensorboard_logs.LOG_DIR / f"fold_{k}", fold.history
                )
            results.append(fold)
            models.append(fitted.model)
            if on_fold_end is not None:
                on_fold_end(fold)

        with artifacts.Plots() as plots:  # matplotlib loads beside the training
            start = time.perf_counter()
            cross_validate(cfg, data, folds, FoldEvents(on_fold_start, on_epoch, on_fold_fitted))
            summary = {**summarize(cfg, name, results), "data": data.record()}
            summary["protocol"] = splitter.describe()
            summary["seconds"] = round(time.perf_counter() - start, 3)  # the folds' wall time
            pred_path = _write_cv_outputs(
                run_dir, cfg, data, results, models, summary, write_predictions, plots
            )
            plots.finish()
        return CvResult(run_dir, len(folds), name, results, summary, pred_path)


def _write_fold(
    fold_dir: Path, cfg: Config, data: LoadedData, fitted: FittedModel, fold: FoldResult
) -> None:
    fold_dir.mkdir(exist_ok=True)
    metrics = {k: v for k, v in asdict(fold).items() if k != "history"}
    metrics.update(lr_record(fitted))
    payload = checkpoint_payload(
        with_found_lr(cfg, fitted), data.layout, data.feature_names, fitted, metrics
    )
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
    plots: artifacts.Plots,
) -> Path | None:
    artifacts.write_text(run_dir / "config.toml", to_toml(cfg))
    artifacts.write_csv(run_dir / "cv.csv", list(FOLD_COLUMNS), [f.row() for f in folds])
    summary = {
        **summary,
        "environment": artifacts.environment_info(
            str(resolve_device(cfg.device)), cfg.seed, cfg.deterministic
        ),
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
    plots.draw(
        "learning_curve", run_dir / "learning_curves.png", curves, [f.best_epoch for f in folds]
    )
    if not write_predictions or data.test is None:
        return None
    x = torch.from_numpy(select(data.test, data.test.columns(data.feature_names)).x)
    pred = np.mean([predict(m, x.to(next(m.parameters()).device)) for m in models], axis=0)
    path = run_dir / "pred.csv"
    artifacts.write_predictions(path, data.test.ids, pred)
    return path
