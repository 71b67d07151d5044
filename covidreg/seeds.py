"""Repeat a run over several seeds: how much of a result is luck."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidreg import artifacts, tensorboard_logs
from covidreg.config import Config
from covidreg.crossval import FoldEvents, mean_std
from covidreg.engine import FittedModel
from covidreg.experiment import LoadedData


@dataclass
class SeedRun:
    seed: int
    run_dir: Path
    valid_rmse: float
    result: Any


@dataclass
class SeedsResult:
    run_dir: Path
    runs: list[SeedRun]
    summary: dict[str, Any]


def seed_list(first: int, n_seeds: int) -> list[int]:
    """Seeds first, first+1, ...: the first run is the same run as without --seeds."""
    return [first + i for i in range(n_seeds)]


def repeat_over_seeds(
    cfg: Config,
    n_seeds: int,
    out: str | Path | None,
    runs_dir: str | Path,
    name: str,
    run_one: Callable[[Config, Path, LoadedData], tuple[float, Any]],
    check: Callable[[Config], LoadedData],
) -> SeedsResult:
    """Run ``run_one(cfg with seed s, out/seed_<s>, data)`` for each seed; summarise its RMSE
    (``covidreg cv --seeds``: each seed's cv stacks its own folds).

    ``check`` reads and validates the inputs first (once for every seed), so bad input fails
    before anything is written.
    """
    data = check(cfg)
    run_dir = _new_run_dir(out, runs_dir, name)
    runs = []
    for seed in seed_list(cfg.seed, n_seeds):
        seed_dir = run_dir / f"seed_{seed}"
        rmse, result = run_one(dataclasses.replace(cfg, seed=seed), seed_dir, data)
        runs.append(SeedRun(seed, seed_dir, rmse, result))
    return _summarize(cfg, run_dir, runs, data)


def train_seeds(
    cfg: Config,
    n_seeds: int,
    out: str | Path | None,
    runs_dir: str | Path,
    events: FoldEvents,
    data: LoadedData,
    on_start: Callable[[Path], None] | None = None,
) -> SeedsResult:
    """``covidreg train --seeds``: one model per seed on the same holdout, trained as stacks of
    seeds (``engine.stack_groups``), each written as the train run ``out/seed_<s>``.

    A seed's model is the bits of its stack: rerunning the same ``--seeds`` command repeats
    them; ``covidreg train --seed s`` trains the same model alone, equal to float rounding.
    """
    from covidreg.crossval import cross_validate
    from covidreg.experiment import RunResult, run_metrics, write_run
    from covidreg.splits import holdout_split

    tensorboard_logs.check(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    run_dir = _new_run_dir(out, runs_dir, "train")
    if on_start is not None:
        on_start(run_dir)
    seeds = seed_list(cfg.seed, n_seeds)
    runs: list[SeedRun] = []

    def on_fold_fitted(k: int, fitted: FittedModel) -> None:
        seed_cfg = dataclasses.replace(cfg, seed=seeds[k - 1])
        seed_dir = run_dir / f"seed_{seed_cfg.seed}"
        seed_dir.mkdir()
        metrics = run_metrics(seed_cfg, data, train_idx, valid_idx, fitted)
        write_run(seed_dir, seed_cfg, data, valid_idx, fitted, metrics, plots)
        if cfg.tensorboard:  # one folder per seed under one log, so TensorBoard overlays them
            log_dir = run_dir / tensorboard_logs.LOG_DIR / f"seed_{seed_cfg.seed}"
            tensorboard_logs.write_history(log_dir, fitted.result.history)
        result = RunResult(seed_dir, metrics, fitted.result, fitted.result.message)
        runs.append(SeedRun(seed_cfg.seed, seed_dir, metrics["valid_rmse"], result))
        if events.on_fold_fitted is not None:
            events.on_fold_fitted(k, fitted)

    holdouts = [(train_idx, valid_idx)] * n_seeds
    shown = dataclasses.replace(events, on_fold_fitted=on_fold_fitted)
    with artifacts.Plots() as plots:
        cross_validate(cfg, data, holdouts, shown, seeds=seeds, holdouts=True)
        plots.finish()
    return _summarize(cfg, run_dir, runs, data)


def _new_run_dir(out: str | Path | None, runs_dir: str | Path, name: str) -> Path:
    artifacts.check_output_target(out)
    return artifacts.ensure_writable_dir(out) if out else artifacts.new_run_dir(runs_dir, name)


def _summarize(cfg: Config, run_dir: Path, runs: list[SeedRun], data: LoadedData) -> SeedsResult:
    """seeds.json and the seed ensemble's pred.csv."""
    summary = {
        "n_seeds": len(runs),
        "seeds": [r.seed for r in runs],
        "valid_rmse": mean_std([r.valid_rmse for r in runs]),
        "runs": [{"seed": r.seed, "valid_rmse": r.valid_rmse, "dir": r.run_dir.name} for r in runs],
    }
    artifacts.write_json(run_dir / "seeds.json", summary)
    test = data.test
    if test is None and cfg.test_csv:  # cv without --predict read no test CSV
        from covidreg.schema import read_hw01_csv

        test = read_hw01_csv(cfg.test_csv, require_target=False, what="test CSV")
    if test is not None:
        # the seed models' (or seed x fold models') average: an ensemble is steadier than a run
        from covidreg.inference import ensemble_predict, load_models

        pred = ensemble_predict(load_models(run_dir), test)
        artifacts.write_predictions(run_dir / "pred.csv", test.ids, pred)
    return SeedsResult(run_dir, runs, summary)
