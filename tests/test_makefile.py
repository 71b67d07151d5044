"""make train / make cv: they train on the edition the data directory holds and fetch only when
it holds none (the commands make would run, run here on synthetic files)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.layout import EDITIONS
from tests.conftest import synthetic_rows, write_hw01_csv

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_commands(target: str, **variables: str) -> list[list[str]]:
    """The covidreg command lines ``make TARGET`` runs (the install step taken as done)."""
    assigns = [f"{k}={v}" for k, v in {"COVIDREG": "covidreg", **variables}.items()]
    dry = subprocess.run(
        ["make", "-s", "-n", "-o", "install", "-C", str(ROOT), target, *assigns],
        capture_output=True,
        text=True,
        check=True,
    )
    return [shlex.split(line)[1:] for line in dry.stdout.splitlines() if line.strip()]


def edition_files(folder: Path, edition: str) -> dict[str, bytes]:
    layout = EDITIONS[edition]
    names = (
        ("covid_train.csv", "covid_test.csv")
        if edition == "2023"
        else ("covid.train.csv", "covid.test.csv")
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_hw01_csv(folder / names[0], synthetic_rows(3, 40, seed=0, layout=layout), layout=layout)
    rows = synthetic_rows(3, 4, seed=1, layout=layout)
    write_hw01_csv(folder / names[1], rows, with_target=False, layout=layout)
    return {name: (folder / name).read_bytes() for name in names}


def test_make_train_names_the_edition_and_fetches_only_if_missing() -> None:
    assert make_commands("train") == [
        ["fetch", "--if-missing", "--edition", "auto"],
        ["train", "--edition", "auto"],
    ]
    assert make_commands("cv", EDITION="2023") == [
        ["fetch", "--if-missing", "--edition", "2023"],
        ["cv", "--folds", "5", "--edition", "2023"],
    ]


@pytest.mark.parametrize(("edition", "make_edition"), [("2022", "auto"), ("2023", "2023")])
def test_make_train_trains_on_a_students_files_of_any_edition(
    edition: str, make_edition: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    before = edition_files(data, edition)  # synthetic: not the published files
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COVIDREG_DATA_DIR", str(data))
    fetch_args, train_args = make_commands("train", EDITION=make_edition)
    result = runner.invoke(app, fetch_args)
    assert result.exit_code == 0, result.stderr
    assert "already present, sha256 differs from the published file, kept as it is" in (
        result.stdout
    )
    result = runner.invoke(app, [*train_args, "--epochs", "4", "--out", "run", "-q"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "run" / "pred.csv").read_text().count("\n") == 13
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before, "nothing fetched over"
