"""``covidreg lr-find``: the learning-rate range test (``covidreg.lr_range``) on the rows that
``covidreg train --lr auto`` runs it on, written as lr_find.csv, lr_find.json and lr_find.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidreg import artifacts
from covidreg.config import AUTO_END, AUTO_START, AUTO_STEPS, Config
from covidreg.experiment import check_train_inputs, member_rows
from covidreg.lr_range import (
    RangeTest,
    check_bounds,
    run_range_test,
)
from covidreg.splits import holdout_split


@dataclass
class LrFindResult:
    run_dir: Path
    test: RangeTest


def holdout_range_test(cfg: Config, start_lr: float, end_lr: float, n_steps: int) -> RangeTest:
    """The range test on the rows ``covidreg train`` with this config fits (and stops on): with
    the default bounds its suggestion is the rate ``train --lr auto`` takes."""
    data = check_train_inputs(cfg, with_test=False)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    fit, stop, _ = member_rows(cfg, data, train_idx, valid_idx)
    return run_range_test(
        cfg, data.layout, data.feature_names, fit, stop, cfg.seed, start_lr, end_lr, n_steps
    )


def step_points(test: RangeTest) -> list[str]:
    """lr_find.csv's point column: the names of the suggestion's points at each step."""
    found = test.suggestion.as_dict()
    names = ("suggested_lr", "steepest_lr", "min_loss_lr")
    return [";".join(name for name in names if found[name] == lr) for lr in test.lrs]


def run_lr_find(
    cfg: Config,
    start_lr: float = AUTO_START,
    end_lr: float = AUTO_END,
    n_steps: int = AUTO_STEPS,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    overwrite: bool = False,
) -> LrFindResult:
    """``covidreg lr-find``: the range test, then lr_find.csv, lr_find.json and lr_find.png
    (``overwrite``: replacing the run an ``out`` holds; else that is refused)."""
    check_bounds(start_lr, end_lr, n_steps)
    artifacts.check_run_target(out, overwrite)
    test = holdout_range_test(cfg, start_lr, end_lr, n_steps)
    run_dir = artifacts.claim_run_dir(out, runs_dir, "lr-find", overwrite)
    rows: list[tuple[Any, ...]] = [
        (i + 1, repr(lr), repr(loss), repr(s), point)
        for i, (lr, loss, s, point) in enumerate(
            zip(test.lrs, test.losses, test.smoothed, step_points(test), strict=True)
        )
    ]
    artifacts.write_csv(
        run_dir / "lr_find.csv", ["step", "lr", "loss", "smoothed_loss", "point"], rows
    )
    artifacts.write_json(run_dir / "lr_find.json", test.record())
    artifacts.plot_lr_find(
        run_dir / "lr_find.png", test.lrs, test.losses, test.smoothed, test.suggestion
    )
    return LrFindResult(run_dir, test)
