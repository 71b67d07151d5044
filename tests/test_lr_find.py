"""covidreg lr-find: the range test's rates, smoothing, suggestion and outputs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.config import resolve_config
from covidreg.lr_find import range_test, smooth, suggestions
from tests.conftest import train_args

runner = CliRunner()


def lr_find_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "lr-find",
        "--train-csv",
        str(files["train"]),
        "--test-csv",
        str(files["test"]),
        "--batch-size",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_smoothing_is_the_bias_corrected_moving_average() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    # (0.02 * 1 * 0.98 + 0.02 * 3) / (1 - 0.98**2)
    assert smooth([1.0, 3.0])[1] == pytest.approx((0.0196 + 0.06) / (1 - 0.98**2))


def test_the_suggestion_is_the_steepest_descent_and_the_minimum_over_ten() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    losses = [1 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]  # steepest at 1e-3
    losses[-1] = 5.0  # diverged at the end: the minimum is the step before
    suggested, minimum = suggestions(lrs, losses)
    assert suggested == pytest.approx(1e-3)
    assert minimum == pytest.approx(lrs[-2] / 10)


def test_lr_find_writes_the_rates_losses_and_plot(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "lr"
    args = lr_find_args(hw01_files, out, "--start-lr", "1e-5", "--end-lr", "1e-1", "--steps", "40")
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, result.stderr
    rows = read_rows(out / "lr_find.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert len(rows) == 40 and lrs[0] == 1e-5 and lrs[-1] == pytest.approx(1e-1)
    assert np.allclose(np.diff(np.log(lrs)), math.log(1e4) / 39)  # exponential growth
    smoothed = smooth([float(r["loss"]) for r in rows])
    assert [float(r["smoothed_loss"]) for r in rows] == smoothed
    suggested, minimum = suggestions(lrs, smoothed)
    assert result.stdout == (
        f"suggested_lr={suggested:.3g} min_lr_div10={minimum:.3g} run_dir={out}\n"
    )
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")


def test_the_test_stops_when_the_loss_diverges(hw01_files: dict[str, Path]) -> None:
    cfg = resolve_config(
        None,
        {
            "train_csv": str(hw01_files["train"]),
            "test_csv": "",
            "batch_size": "16",
            "optimizer": "sgd",
        },
    )
    lrs, losses, diverged = range_test(cfg, 1e-4, 1e4, 200)
    assert diverged and len(lrs) < 200
    finite = smooth(losses[:-1])
    assert not math.isfinite(losses[-1]) or smooth(losses)[-1] > 4 * min(finite)


def test_it_leaves_nothing_that_changes_a_later_train(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    first = runner.invoke(app, [*train_args(hw01_files, tmp_path / "a"), "-q"])
    assert first.exit_code == 0, first.stderr
    rng = torch.get_rng_state()
    found = runner.invoke(app, [*lr_find_args(hw01_files, tmp_path / "lr", "--steps", "30"), "-q"])
    assert found.exit_code == 0, found.stderr
    assert torch.equal(torch.get_rng_state(), rng)
    second = runner.invoke(app, [*train_args(hw01_files, tmp_path / "b"), "-q"])
    assert second.exit_code == 0, second.stderr
    history = "history.csv"
    assert (tmp_path / "a" / history).read_text() == (tmp_path / "b" / history).read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--start-lr", "1", "--end-lr", "1e-3"], "--end-lr (0.001) must be higher than"),
        (["--start-lr", "0"], "--start-lr must be a positive number"),
        (["--steps", "5"], "--steps must be 13 or more"),
    ],
)
def test_bad_bounds_are_one_line_errors_and_write_nothing(
    hw01_files: dict[str, Path], tmp_path: Path, extra: list[str], expected: str
) -> None:
    out = tmp_path / "lr"
    result = runner.invoke(app, lr_find_args(hw01_files, out, *extra))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert not out.exists()
