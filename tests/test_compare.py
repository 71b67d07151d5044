"""covidreg compare: the grid of variants, each equal to its `covidreg train`, and its outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.compare import MAX_VARIANTS, make_variants, parse_values
from covidreg.crossval import mean_std
from covidreg.errors import CovidRegError
from covidreg.model import init_warning
from tests.conftest import synthetic_rows, write_hw01_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("compare_data")
    return {
        "train": write_hw01_csv(base / "train.csv", synthetic_rows(4, 30, seed=0)),
        "test": write_hw01_csv(base / "test.csv", synthetic_rows(4, 6, seed=1), with_target=False),
    }


def common(data: dict[str, Path]) -> list[str]:
    return ["--train-csv", str(data["train"]), "--test-csv", str(data["test"]), "--epochs", "12"]


def compare_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["compare", *common(data), "--batch-size", "16", "--out", str(out), *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def grid_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare_runs") / "grid"
    result = runner.invoke(app, compare_args(data, out, "--lr", "1e-3,1e-2", "--hidden", "16;32,8"))
    assert result.exit_code == 0, result.stderr
    return out


# --- the variants -------------------------------------------------------------------------------


def test_an_empty_text_value_is_one_value_as_in_train() -> None:
    assert parse_values("test_csv", "") == [""]
    with pytest.raises(CovidRegError, match="has an empty value"):
        parse_values("lr", "1e-3,")


def test_list_keys_take_semicolons_and_scalars_commas() -> None:
    assert parse_values("hidden", "16; 32,8") == [[16], [32, 8]]
    assert parse_values("lr", "1e-3,1e-2") == [1e-3, 1e-2]
    assert parse_values("deterministic", "true,false") == [True, False]


def test_the_grid_is_every_combination_with_configs_validated() -> None:
    variants, keys, warnings = make_variants(
        None, {"lr": "1e-3,1e-2,0.1", "optimizer": "sgd,adam", "seed": "7"}
    )
    assert keys == ["lr", "optimizer"]
    assert [(v.cfg.lr, v.cfg.optimizer, v.cfg.seed) for v in variants] == [
        (lr, opt, 7) for lr in (1e-3, 1e-2, 0.1) for opt in ("sgd", "adam")
    ]
    assert variants[1].name == "lr=0.001/optimizer=adam"
    assert (
        len(warnings) == 1 and "--seed: one value each, nothing is compared along it" in warnings[0]
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"bogus": "1,2"}, "unknown config key 'bogus'"),
        ({"lr": "1e-3,-1"}, "config key 'lr' must be a positive number"),
        ({"lr": "1e-3,,1e-2"}, "has an empty value"),
        ({"lr": "1e-3,0.001"}, "repeats the value 0.001"),
        ({}, "at least one key"),
        (
            {"lr": ",".join(f"{k}e-4" for k in range(1, 10)), "hidden": "1;2;3;4;5;6;7;8"},
            f"9 x 8 = 72 variants is too many to compare (at most {MAX_VARIANTS})",
        ),
    ],
)
def test_bad_variants_are_refused_by_name(options: dict[str, str], expected: str) -> None:
    with pytest.raises(CovidRegError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        make_variants(None, options)


# --- the runs -----------------------------------------------------------------------------------


def test_compare_csv_has_one_row_per_variant(grid_run: Path) -> None:
    rows = read_csv(grid_run / "compare.csv")
    assert list(rows[0]) == [
        "hidden",
        "lr",
        "epochs_run",
        "best_epoch",
        "valid_rmse",
        "train_loss",
        "stop_reason",
    ]
    assert [(r["hidden"], r["lr"]) for r in rows] == [
        ("16", "0.001"),
        ("16", "0.01"),
        ("32,8", "0.001"),
        ("32,8", "0.01"),
    ]
    assert all(r["epochs_run"] == "12" and r["stop_reason"] == "max_epochs" for r in rows)
    assert (grid_run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_a_variant_equals_covidreg_train_bit_for_bit(
    grid_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    train = [*common(data), "--batch-size", "16", "--lr", "1e-2", "--hidden", "32,8", "-q"]
    result = runner.invoke(app, ["train", *train, "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.stderr
    history = read_csv(tmp_path / "t" / "history.csv")
    compared = [
        {k: v for k, v in row.items() if k != "variant"}
        for row in read_csv(grid_run / "histories.csv")
        if row["variant"] == "hidden=32,8/lr=0.01"
    ]
    assert compared == history  # the repr of every loss: the same bits
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    row = read_csv(grid_run / "compare.csv")[3]
    assert float(row["valid_rmse"]) == metrics["valid_rmse"]
    assert int(row["best_epoch"]) == metrics["best_epoch"]


def test_the_result_line_names_the_best_variant(
    data: dict[str, Path], grid_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "q"
    result = runner.invoke(app, compare_args(data, out, "--lr", "1e-3,1e-2", "-q"))
    assert result.exit_code == 0, result.stderr
    rows = read_csv(out / "compare.csv")
    best = min(rows, key=lambda r: float(r["valid_rmse"]))
    assert result.stdout == (
        f"best=lr={best['lr']} valid_rmse={float(best['valid_rmse']):.5f} run_dir={out}\n"
    )
    assert result.stderr == ""


def test_a_single_value_is_run_with_a_warning(data: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, compare_args(data, tmp_path / "one", "--lr", "1e-2"))
    assert result.exit_code == 0, result.stderr
    warning = result.stderr.replace("\n", " ")
    assert "--lr, --epochs, --batch-size: one value each, nothing is compared" in warning
    assert [r["lr"] for r in read_csv(tmp_path / "one" / "compare.csv")] == ["0.01"]


def test_folds_x_seeds_are_cvs_numbers(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = compare_args(data, out, "--lr", "1e-3,1e-2", "--folds", "3", "--seeds", "2", "-q")
    assert runner.invoke(app, args).exit_code == 0
    rows = read_csv(out / "compare.csv")
    assert "valid_rmse_std" in rows[0]
    assert (out / "spread.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "curves.png").exists()
    cv = [*common(data), "--batch-size", "16", "--lr", "1e-2", "--folds", "3", "--seeds", "2"]
    result = runner.invoke(app, ["cv", *cv, "--out", str(tmp_path / "cv"), "-q"])
    assert result.exit_code == 0, result.stderr
    rmses = [
        float(fold["valid_rmse"])
        for seed in (42, 43)
        for fold in read_csv(tmp_path / "cv" / f"seed_{seed}" / "cv.csv")
    ]
    expected = mean_std(rmses)
    assert float(rows[1]["valid_rmse"]) == expected["mean"]
    assert float(rows[1]["valid_rmse_std"]) == expected["std"]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "compare needs at least one key"),
        (["--lr", ",".join(str(k) for k in range(1, 66))], "65 = 65 variants is too many"),
        (["--lr", "1e-3,x"], "'lr' in command-line flags must be a number or auto, got 'x'"),
        (["--lr", "1e-3,1e-2", "--seeds", "2"], "--seeds on compare needs --folds"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    extra: list[str], expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", "--out", str(out), *extra])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert not out.exists()


def test_an_unknown_key_is_a_one_line_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "covidreg",
            "compare",
            "--bogus",
            "1,2",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "No such option: --bogus" in done.stderr
    assert not (tmp_path / "r").exists()


def test_processes_change_only_the_time(
    grid_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    extra = ("--lr", "1e-3,1e-2", "--hidden", "16;32,8", "--fold-processes", "1", "-q")
    result = runner.invoke(app, compare_args(data, tmp_path / "one", *extra))
    assert result.exit_code == 0, result.stderr
    for name in ("compare.csv", "histories.csv"):
        assert (tmp_path / "one" / name).read_text() == (grid_run / name).read_text()


def test_a_variant_diverging_at_once_is_a_row_not_a_failure(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """`covidreg train` with such a rate is an error; a comparison reports it and goes on."""
    out = tmp_path / "far"
    args = compare_args(data, out, "--optimizer", "sgd", "--lr", "1e-3,1e3", "-q")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    fine, diverged = read_csv(out / "compare.csv")
    assert fine["stop_reason"] == "max_epochs" and result.stdout.startswith("best=lr=0.001 ")
    assert (diverged["epochs_run"], diverged["valid_rmse"], diverged["stop_reason"]) == (
        "0",
        "inf",
        "diverged",
    )
    assert (out / "curves.png").exists()


def test_a_fold_diverging_at_once_fails_leaving_nothing(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "far"
    args = compare_args(data, out, "--optimizer", "sgd", "--lr", "1e-3,1e3", "--folds", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("error: fold 1: training diverged at epoch 1")
    assert not out.exists()


def test_a_symmetric_init_variant_is_warned_about() -> None:
    variants, _, warnings = make_variants(None, {"init": "zeros,default"})
    assert len(variants) == 2
    assert warnings == [f"init=zeros: {init_warning(variants[0].cfg)}"]
