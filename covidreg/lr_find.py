"""``covidreg lr-find``: the learning-rate range test (``covidreg.lr_range``) on the training
split of ``covidreg train``, written as lr_find.csv and lr_find.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidreg import artifacts
from covidreg.config import Config
from covidreg.experiment import check_train_inputs
from covidreg.lr_range import (
    AUTO_END,
    AUTO_START,
    AUTO_STEPS,
    Suggestion,
    check_bounds,
    range_test,
    smooth,
    suggest,
)
from covidreg.schema import select
from covidreg.splits import holdout_split


@dataclass
class LrFindResult:
    run_dir: Path
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: Suggestion
    diverged: bool


def holdout_range_test(
    cfg: Config, start_lr: float, end_lr: float, n_steps: int
) -> tuple[list[float], list[float], bool]:
    """The range test on the training split of ``covidreg train`` with this config."""
    data = check_train_inputs(cfg, with_test=False)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    columns = data.train.columns(data.feature_names)
    train = select(data.train, columns, train_idx)
    valid = select(data.train, columns, valid_idx)
    return range_test(
        cfg, data.layout, data.feature_names, train, valid, cfg.seed, start_lr, end_lr, n_steps
    )


def run_lr_find(
    cfg: Config,
    start_lr: float = AUTO_START,
    end_lr: float = AUTO_END,
    n_steps: int = AUTO_STEPS,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    overwrite: bool = False,
) -> LrFindResult:
    """``covidreg lr-find``: the range test, then lr_find.csv and lr_find.png (``overwrite``:
    replacing the run an ``out`` holds; else that is refused)."""
    check_bounds(start_lr, end_lr, n_steps)
    artifacts.check_run_target(out, overwrite)
    lrs, losses, diverged = holdout_range_test(cfg, start_lr, end_lr, n_steps)
    smoothed = smooth(losses)
    suggestion = suggest(lrs, smoothed)
    run_dir = artifacts.claim_run_dir(out, runs_dir, "lr-find", overwrite)
    artifacts.write_csv(
        run_dir / "lr_find.csv",
        ["step", "lr", "loss", "smoothed_loss"],
        [
            (i + 1, repr(lr), repr(loss), repr(s))
            for i, (lr, loss, s) in enumerate(zip(lrs, losses, smoothed, strict=True))
        ],
    )
    artifacts.plot_lr_find(run_dir / "lr_find.png", lrs, losses, smoothed, suggestion)
    return LrFindResult(run_dir, lrs, losses, smoothed, suggestion, diverged)
