"""Terminal output: summary tables whose numbers stay whole in an 80-column terminal."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from covidreg import progress
from covidreg.config import Config
from covidreg.crossval import FoldResult, summarize


def rendered(table: object, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.file.getvalue()


def fold(k: int, scale: float) -> FoldResult:
    return FoldResult(
        fold=k,
        seed=1000 + k,
        train_rows=2160 + k,
        valid_rows=540,
        epochs_run=3000,
        best_epoch=2999 - k,
        valid_mse=1234.5678 * scale,
        valid_rmse=35.1364 * scale,
        network_rmse=36.0021 * scale,
        persistence_rmse=41.2345 * scale,
        ridge_rmse=33.3333 * scale,
        lr=0.000123,
        seconds=1234.5,
    )


def cv_result(**changes: object) -> SimpleNamespace:
    cfg = Config(**changes)  # type: ignore[arg-type]
    folds = [fold(k, 1 + k / 10) for k in range(1, 6)]
    summary = {
        **summarize(cfg, "blocked", folds),
        "data": {"layout": "2021 layout (40 states, 3 days x 18)"},
    }
    return SimpleNamespace(
        summary=summary, folds=folds, n_folds=5, split="blocked", run_dir=Path("runs/x")
    )


@pytest.mark.parametrize("width", [80, 60, 200])
@pytest.mark.parametrize("changes", [{}, {"lr": "auto"}, {"ridge_blend": 0.0}], ids=str)
def test_cv_table_keeps_every_number_whole(width: int, changes: dict[str, object]) -> None:
    result = cv_result(**changes)
    text = rendered(progress.cv_table(result, width), width)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text
    s = result.summary
    for key in ("valid_rmse", "ridge_rmse"):  # the columns that always stay
        for stat in ("mean", "std", "min", "max"):
            assert f"{s[key][stat]:.4f}" in text, (key, stat, text)
    for f in result.folds:
        assert f"{f.valid_rmse:.4f}" in text and f"{f.ridge_rmse:.4f}" in text
        assert str(f.best_epoch) in text
    if width >= 200:
        assert "not shown" not in text  # wide enough for every column
        assert f"{result.folds[0].valid_mse:.4f}" in text
    else:
        assert "not shown at this width:" in text and "cv.csv" in text


def test_a_one_fold_protocol_shows_its_fold_without_summary_rows() -> None:
    result = cv_result()
    result.folds = result.folds[:1]
    result.summary = {
        **summarize(Config(), "future", result.folds),
        "protocol": "future hold-out (each state's last 14 windows)",
        "data": result.summary["data"],
    }
    text = rendered(progress.cv_table(result, 200), 200)
    assert "covidreg cv: future hold-out (each state's last 14 windows), 2021 layout" in text
    assert f"{result.folds[0].valid_rmse:.4f}" in text
    assert "mean" not in text and "std" not in text and "max" not in text


def test_compare_table_keeps_every_number_whole() -> None:
    def variant(lr: float, hidden: str) -> SimpleNamespace:
        return SimpleNamespace(
            variant=SimpleNamespace(values={"lr": lr, "hidden": hidden}),
            epochs_run=3000.0,
            best_epoch=2871.5,
            valid_rmse=1.0123456 * lr * 1e4,
            valid_rmse_std=0.0123456,
            train_loss=0.98765,
            stop_reason="early_stopping",
        )

    rows = [variant(lr, h) for lr in (1e-4, 3e-4) for h in ("64,32,16", "8")]
    result = SimpleNamespace(results=rows, keys=["lr", "hidden"], n_folds=5, n_seeds=3)
    result.best = rows[0]
    text = rendered(progress.compare_table(result, 80), 80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for r in rows:
        assert f"{r.valid_rmse:.5f}" in text and r.variant.values["hidden"] in text


def test_a_resumed_bar_starts_at_the_resumed_epoch_of_its_total() -> None:
    from rich.progress import Progress

    bar = Progress(console=Console(file=io.StringIO()))
    display = progress.EpochDisplay(bar, 3000)
    display.on_start_resume(Path("runs/x"), 2000)
    (task,) = bar.tasks
    assert (task.completed, task.total) == (2000, 3000)
    display.finish()
