"""covidreg tune's outputs: best.toml that trains to the best value, --show."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.config import resolve_config, to_dict
from tests.tune_files import flat, load_study, tune_args, write_space

runner = CliRunner()


def test_best_toml_trains_to_the_best_value(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = runner.invoke(app, tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3"))
    assert result.exit_code == 0, result.stderr
    best_value = float(result.stdout.split()[0].split("=")[1])
    # each trial keeps its whole config: best.toml means the same run even if defaults change
    best = load_study(out).best_trial
    assert to_dict(resolve_config(out / "best.toml")) == best.user_attrs["config"]
    trained = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(out / "best.toml"),
            "--test-csv",
            "",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert trained.exit_code == 0, trained.stderr
    # --folds 1 is train's own holdout split and seed: the same run, the same RMSE
    assert f"valid_rmse={best_value:.5f}" in trained.stdout


def test_show_prints_the_best_trials(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3", "--study", "hw01")
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    (out / "best.toml").unlink()
    shown = runner.invoke(app, ["tune", "--show", "--study", "hw01", "--out", str(out)])
    assert shown.exit_code == 0, shown.stderr
    text = flat(shown.stderr)
    assert "study hw01: 3 trials (3 complete); top 3 by holdout valid RMSE" in text
    assert "lr=" in text and "hidden=" in text
    assert shown.stdout.startswith("best_rmse=")
    assert (out / "best.toml").is_file()
    missing = runner.invoke(app, ["tune", "--show", "--study", "nope", "--out", str(out)])
    assert missing.exit_code == 1
    assert "no study 'nope'" in missing.stderr and "hw01" in missing.stderr
