"""covidreg lr-find: the range test's rates, smoothing, suggestion and outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.config import resolve_config
from covidreg.lr_find import holdout_range_test
from covidreg.lr_range import SKIP_BEGIN, SKIP_END, smooth, suggest, valley
from tests.conftest import files_config, train_args

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


def table_text(text: str) -> str:
    """A rich table's words in reading order, its borders and cell wrapping undone."""
    return " ".join(w for w in text.split() if w.strip("│┌┐└┘─┬┴┼├┤"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_smoothing_is_the_bias_corrected_moving_average() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    # (0.02 * 1 * 0.98 + 0.02 * 3) / (1 - 0.98**2)
    assert smooth([1.0, 3.0])[1] == pytest.approx((0.0196 + 0.06) / (1 - 0.98**2))


def test_the_suggestion_is_the_valley_beside_the_steepest_descent_and_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    losses = [1 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]  # steepest at 1e-3
    losses[-1] = 5.0  # diverged at the end: the minimum is the step before
    found = suggest(lrs, losses)
    # the window's 50 steps all fall: fastai puts the run's start at end - length = -1 and
    # takes start + int(50/3) + int(50/3/2), the window's step 23
    assert found.suggested == lrs[SKIP_BEGIN + 23]
    assert found.steepest == pytest.approx(1e-3)
    assert found.min_loss == lrs[-2] and found.min_loss_div10 == pytest.approx(lrs[-2] / 10)
    assert found.as_dict() == {
        "suggested_lr": found.suggested,
        "rule": "valley",
        "steepest_lr": found.steepest,
        "min_loss_lr": found.min_loss,
        "min_loss_lr_div10": found.min_loss_div10,
    }


def test_no_point_lies_outside_the_rates_tested() -> None:
    # a loss that only rises: its minimum is the first step the points are taken from, and
    # that rate / 10 lies below the first rate tested, so it is left out rather than shown
    lrs = list(np.logspace(-7, 1, 100))
    losses = [1.0 + 0.01 * i for i in range(100)]
    found = suggest(lrs, smooth(losses))
    assert found.min_loss == lrs[SKIP_BEGIN]
    assert found.min_loss_div10 is None, "lrs[10] / 10 is below lrs[0]"
    for lr in (found.suggested, found.steepest, found.min_loss):
        assert lr in lrs[SKIP_BEGIN : len(lrs) - SKIP_END]
    # a minimum / 10 that is a tested rate or above stays
    losses = [1.0 - 0.01 * i for i in range(60)] + [2.0 + i for i in range(40)]
    found = suggest(lrs, smooth(losses))
    assert found.min_loss_div10 == pytest.approx(found.min_loss / 10)
    assert lrs[0] <= found.min_loss_div10 <= lrs[-1]


def test_the_valley_is_a_little_past_a_third_down_the_longest_fall() -> None:
    # flat (noisy) for 10 steps, then falling for 30, then up: the longest decreasing
    # subsequence is 1.01, 1.0 and the 30 falling values, 32 long, ending at step 39; fastai
    # puts its start at end - length = 7 and takes start + int(32/3) + int(32/3/2)
    flat = [1.0 + 0.01 * (i % 2) for i in range(10)]
    fall = [0.99 - 0.01 * i for i in range(30)]
    losses = np.array([*flat, *fall, 0.8, 0.9, 1.5])
    assert valley(losses) == 7 + 10 + 5


def test_on_a_flat_curve_the_valley_is_not_the_noise_of_the_steepest_descent() -> None:
    # the delta target's curve: flat at the noise floor until it diverges; a single dip at
    # the start is the steepest descent, the valley lies in the long slow fall before the end
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-7, 0, 90))
    losses = [1.0 + 0.05 * rng.standard_normal() - 0.001 * i for i in range(85)]
    losses += [2.0, 5.0, 20.0, 100.0, 900.0]
    losses[12] = 0.2
    found = suggest(lrs, smooth(losses))
    assert found.steepest < 1e-5
    assert found.suggested > 1e-4


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
    found = suggest(lrs, smoothed)
    div10 = "none" if found.min_loss_div10 is None else f"{found.min_loss_div10:.3g}"
    assert result.stdout == (
        f"suggested_lr={found.suggested:.3g} steepest_lr={found.steepest:.3g} "
        f"min_loss_lr_div10={div10} run_dir={out}\n"
    )
    record = json.loads((out / "lr_find.json").read_text())
    assert record == {
        **found.as_dict(),
        "start_lr": 1e-5,
        "end_lr": 1e-1,
        "steps": 40,
        "steps_run": 40,
        "last_lr": lrs[-1],
        "diverged": False,
    }
    # the csv's point column names each point's step, by the same names
    points = {name: float(r["lr"]) for r in rows for name in r["point"].split(";") if name}
    assert points == {k: record[k] for k in ("suggested_lr", "steepest_lr", "min_loss_lr")}
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")


def test_the_summary_leads_with_the_suggestion_and_says_a_point_is_left_out(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "lr"
    # a range narrower than 10x: every minimum / 10 lies below its first rate
    args = lr_find_args(hw01_files, out, "--start-lr", "1e-3", "--end-lr", "5e-3", "--steps", "20")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    record = json.loads((out / "lr_find.json").read_text())
    table = table_text(result.stderr)
    assert (
        f"suggested_lr {record['suggested_lr']:.3g} (the valley, as --lr auto chooses; --lr auto "
        "tests 1e-07 to 10 in 100 steps) steepest_lr"
    ) in table, "not its bounds: the summary says so"
    assert f"steepest_lr {record['steepest_lr']:.3g} (the steepest descent; for reference)" in table
    assert result.stdout.startswith(f"suggested_lr={record['suggested_lr']:.3g} ")
    assert record["min_loss_lr_div10"] is None and 1e-3 < record["min_loss_lr"] < 5e-3
    assert "min_loss_lr_div10=none " in result.stdout
    assert (
        f"min_loss_lr_div10 none (the lowest smoothed loss is at {record['min_loss_lr']:.3g}, and "
        "/ 10 lies below the range tested: lower --start-lr to see it)"
    ) in table


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
    test = holdout_range_test(cfg, 1e-4, 1e4, 200)
    lrs, losses = test.lrs, test.losses
    assert test.diverged and len(lrs) < 200
    finite = smooth(losses[:-1])
    assert not math.isfinite(losses[-1]) or smooth(losses)[-1] > 4 * min(finite)
    assert lrs[0] <= test.suggestion.suggested <= lrs[-1]


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


# --- lr = auto ------------------------------------------------------------------------------


def test_lr_auto_trains_as_the_found_rate_given_as_a_number(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    auto = runner.invoke(app, [*train_args(hw01_files, tmp_path / "auto", "--lr", "auto"), "-q"])
    assert auto.exit_code == 0, auto.stderr
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert metrics["lr_source"] == "lr-find" and metrics["lr_finder"]["rule"] == "valley"
    found = metrics["lr_finder"]["lr"]
    # the suggestion of covidreg lr-find with its default bounds, and its whole record
    suggested = runner.invoke(app, [*lr_find_args(hw01_files, tmp_path / "lr"), "-q"])
    assert suggested.exit_code == 0, suggested.stderr
    record = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert found == record["suggested_lr"]
    assert metrics["lr_finder"] == {"lr": found, **record}
    assert suggested.stdout.startswith(f"suggested_lr={found:.3g} ")
    # config.toml and the checkpoint record the number, so a rerun needs no range test
    assert f"lr = {found!r}" in (tmp_path / "auto" / "config.toml").read_text().splitlines()
    checkpoint = torch.load(tmp_path / "auto" / "model.pt", weights_only=True)
    assert checkpoint["config"]["lr"] == found
    number = runner.invoke(
        app, [*train_args(hw01_files, tmp_path / "number", "--lr", repr(found)), "-q"]
    )
    assert number.exit_code == 0, number.stderr
    for name in ("history.csv", "pred.csv"):
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "number" / name).read_bytes()
    assert json.loads((tmp_path / "number" / "metrics.json").read_text())["lr_source"] == "config"


def test_lr_find_suggests_the_rate_of_lr_auto_on_the_rows_train_fits(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """With --stop-on train_tail train fits its split less the tail, and so does lr-find."""
    tail = ("--stop-on", "train_tail")
    trained = runner.invoke(
        app, [*train_args(hw01_files, tmp_path / "t", "--lr", "auto", *tail), "-q"]
    )
    assert trained.exit_code == 0, trained.stderr
    found = json.loads((tmp_path / "t" / "metrics.json").read_text())["lr_finder"]
    suggested = runner.invoke(app, [*lr_find_args(hw01_files, tmp_path / "lr", *tail), "-q"])
    assert suggested.exit_code == 0, suggested.stderr
    record = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert found == {"lr": record["suggested_lr"], **record}
    # not the whole split's rows, which the default stop_on fits
    whole_split = holdout_range_test(files_config(hw01_files), 1e-7, 10.0, 100)
    losses = [float(r["loss"]) for r in read_rows(tmp_path / "lr" / "lr_find.csv")]
    assert whole_split.losses != losses


def test_cv_lr_auto_finds_each_folds_rate_on_its_own_training_rows(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    from covidreg.crossval import fold_seed, make_folds
    from covidreg.experiment import load_data
    from covidreg.lr_range import find_rate
    from covidreg.schema import select
    from covidreg.splits import stopping_split

    out = tmp_path / "cv"
    args = ["cv", "--folds", "3", "--train-csv", str(hw01_files["train"]), "--test-csv", ""]
    result = runner.invoke(
        app, [*args, "--epochs", "12", "--batch-size", "16", "--lr", "auto", "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    cfg = files_config(hw01_files, lr="auto")
    data = load_data(cfg)
    columns = data.train.columns(data.feature_names)
    expected = []
    for k, (train_idx, _) in enumerate(make_folds(cfg, data, 3), start=1):
        # a fold's model fits its training rows but their blocked tail, and stops on that tail
        fit_idx, stop_idx = stopping_split(data.train.order, train_idx, 0.2, 2)
        found = find_rate(
            cfg,
            data.layout,
            data.feature_names,
            select(data.train, columns, fit_idx),
            select(data.train, columns, stop_idx),
            fold_seed(cfg.seed, k),
        )
        expected.append(found["lr"])
    assert [float(r["lr"]) for r in read_rows(out / "cv.csv")] == expected
    assert json.loads((out / "summary.json").read_text())["lr_source"] == "lr-find"
    fold = torch.load(out / "fold_2" / "model.pt", weights_only=True)
    assert fold["config"]["lr"] == expected[1]
    assert fold["metrics"]["lr_finder"]["lr"] == expected[1]


def test_compare_lr_auto_is_a_variant_with_its_found_rate(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    trained = runner.invoke(app, [*train_args(hw01_files, tmp_path / "t", "--lr", "auto"), "-q"])
    assert trained.exit_code == 0, trained.stderr
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    args = train_args(hw01_files, tmp_path / "c", "--lr", "auto,0.01")
    compared = runner.invoke(app, ["compare", *args[1:], "-q"])
    assert compared.exit_code == 0, compared.stderr
    auto, fixed = read_rows(tmp_path / "c" / "compare.csv")
    assert auto["lr"] == "auto" and float(auto["found_lr"]) == metrics["lr_finder"]["lr"]
    assert float(auto["valid_rmse"]) == metrics["valid_rmse"]
    assert fixed["lr"] == "0.01" and fixed["found_lr"] == ""


def test_lr_auto_with_a_separate_output_rate_is_refused_before_writing(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "t"
    result = runner.invoke(app, train_args(hw01_files, out, "--lr", "auto", "--output-lr", "0.1"))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "leave output_lr at 0" in result.stderr
    assert not out.exists()


@pytest.mark.realdata
@pytest.mark.parametrize("files", ["real_data_dir", "real_2022_dir"])
def test_on_the_real_files_lr_find_suggests_lr_autos_rate_within_the_range(
    request: pytest.FixtureRequest, files: str, tmp_path: Path
) -> None:
    train_csv = str(request.getfixturevalue(files) / "covid.train.csv")
    data = ["--train-csv", train_csv, "--test-csv", ""]
    suggested = runner.invoke(app, ["lr-find", *data, "--out", str(tmp_path / "lr")])
    assert suggested.exit_code == 0, suggested.stderr
    record = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert suggested.stdout.startswith(f"suggested_lr={record['suggested_lr']:.3g} steepest_lr=")
    rate = f"suggested_lr {record['suggested_lr']:.3g} (the valley: the rate --lr auto takes)"
    assert rate in table_text(suggested.stderr)
    last = record["last_lr"]
    for key in ("suggested_lr", "steepest_lr", "min_loss_lr", "min_loss_lr_div10"):
        assert record[key] is None or 1e-7 <= record[key] <= last, (key, record[key])
    # one epoch is enough: lr = auto runs its range test before the model trains
    trained = runner.invoke(
        app, ["train", *data, "--lr", "auto", "--epochs", "1", "--out", str(tmp_path / "t"), "-q"]
    )
    assert trained.exit_code == 0, trained.stderr
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["lr_finder"] == {"lr": record["suggested_lr"], **record}
