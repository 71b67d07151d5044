"""Repeat a run over several seeds: how much of a result is luck."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidreg import artifacts
from covidreg.config import Config
from covidreg.cv import mean_std


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
    run_one: Callable[[Config, Path], tuple[float, Any]],
    check: Callable[[Config], None],
) -> SeedsResult:
    """Run ``run_one(cfg with seed s, out/seed_<s>)`` for each seed; summarise its RMSE.

    ``check`` validates the inputs first, so bad input fails before anything is written.
    """
    check(cfg)
    artifacts.check_output_target(out)
    run_dir = artifacts.ensure_writable_dir(out) if out else artifacts.new_run_dir(runs_dir, name)
    runs = []
    for seed in seed_list(cfg.seed, n_seeds):
        seed_cfg = dataclasses.replace(cfg, seed=seed)
        seed_dir = run_dir / f"seed_{seed}"
        rmse, result = run_one(seed_cfg, seed_dir)
        runs.append(SeedRun(seed, seed_dir, rmse, result))
    summary = {
        "n_seeds": n_seeds,
        "seeds": [r.seed for r in runs],
        "valid_rmse": mean_std([r.valid_rmse for r in runs]),
        "runs": [{"seed": r.seed, "valid_rmse": r.valid_rmse, "dir": r.run_dir.name} for r in runs],
    }
    artifacts.write_json(run_dir / "seeds.json", summary)
    if cfg.test_csv:
        # the seed models' (or seed x fold models') average: an ensemble is steadier than a run
        from covidreg.data import read_hw01_csv
        from covidreg.predict import ensemble_predict, load_models

        test = read_hw01_csv(cfg.test_csv, require_target=False, what="test CSV")
        pred = ensemble_predict(load_models(run_dir), test)
        artifacts.write_predictions(run_dir / "pred.csv", test.ids, pred)
    return SeedsResult(run_dir, runs, summary)
