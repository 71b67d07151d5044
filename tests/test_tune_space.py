"""covidreg tune's search-space files: one-line errors naming the key; values reach the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.errors import CovidRegError
from covidreg.tune.space import ParamSpec
from tests.tune_files import tune_args, write_space

runner = CliRunner()


BAD_SPACES = [
    ("[space.learning_rate]\ntype = 'float'\nlow = 0.1\nhigh = 1.0\n", "learning_rate"),
    ("[space.lr]\ntype = 'normal'\nlow = 0.1\nhigh = 1.0\n", "type must be float"),
    ("[space.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.01\n", "low (0.1) must be lower"),
    ("[space.lr]\ntype = 'float'\nlow = 0.0\nhigh = 0.1\nlog = true\n", "log = true needs low"),
    ("[space.lr]\ntype = 'float'\nlow = 1e-3\nhigh = 0.1\nmean = 1\n", "unknown field 'mean'"),
    ("[space.lr]\ntype = 'float'\nhigh = 0.1\n", "[space.lr] needs low"),
    ("[space.batch_size]\ntype = 'float'\nlow = 8\nhigh = 64\n", "integer key"),
    ("[space.optimizer]\ntype = 'float'\nlow = 1\nhigh = 2\n", 'use type = "categorical"'),
    ("[space.hidden]\nchoices = ['64', 'a,b']\n", "choice 'a,b' is not a valid int"),
    ("[space.optimizer]\nchoices = []\n", "[space.optimizer] needs choices"),
    ("[space.optimizer]\nchoices = ['adam', 'lbfgs']\n", "[space.optimizer] value 'lbfgs'"),
    ("[space.batch_size]\nchoices = [16, 100000]\n", "[space.batch_size] value 100000"),
    ("[fixed]\nlr = 0.1\n[space.lr]\nchoices = [0.1]\n", "'lr' is both in [fixed]"),
    ("[fixed]\nlearning_rate = 0.1\n[space.lr]\nchoices = [0.1]\n", "'learning_rate'"),
    ("[fixed]\nepochs = 5\n", "needs at least one [space"),
    ("[space.lr\n", "not valid TOML"),
    ("[spaces.lr]\nchoices = [0.1]\n", "unknown table or key 'spaces'"),
    ("[space.train_csv]\nchoices = ['a.csv']\n", "data files cannot be searched"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_bad_search_space_is_a_one_line_error(
    hw01_files: dict[str, Path], tmp_path: Path, text: str, message: str
) -> None:
    args = tune_args(hw01_files, write_space(tmp_path, text), tmp_path / "out", "--trials", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are valid"


def test_search_space_values_reach_the_config() -> None:
    spec = ParamSpec("weight_decay", "float", low=1e-7, high=1e-2, log=True, zero_below=1e-6)
    assert spec.config_value(5e-7) == 0.0 and spec.config_value(1e-4) == 1e-4
    hidden = ParamSpec("hidden", "categorical", choices=("64", "32,8"))
    assert hidden.candidates() == [[64], [32, 8]]
    with pytest.raises(CovidRegError, match="hidden"):
        ParamSpec("hidden", "categorical").config_value("a")


def test_the_default_search_space_ships_inside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """covidreg tune without --search works from any directory: its space is package data."""
    from importlib.resources import files

    from covidreg.tune.space import DEFAULT_SEARCH, default_search_text, load_search_space
    from tests.conftest import synthetic_rows, write_hw01_csv

    packaged = files("covidreg.tune").joinpath(DEFAULT_SEARCH)
    assert packaged.is_file() and packaged.read_text(encoding="utf-8") == default_search_text()
    space = load_search_space()
    assert space.params and space.source == "covidreg/tune/search.toml"
    repo = Path(__file__).resolve().parent.parent
    assert not (repo / "configs" / "search.toml").exists(), "one copy of the search space"
    monkeypatch.chdir(tmp_path)  # no configs/ here
    # rows enough for every batch size the default space draws
    train = write_hw01_csv(tmp_path / "train.csv", synthetic_rows(8, 100, seed=0))
    args = ["tune", "--train-csv", str(train), "--trials", "1", "--folds", "2"]
    args += ["--epochs", "2", "--workers", "1", "-q", "--out", "study"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("best_rmse=") and result.stdout.count("\n") == 1
