"""For the covidreg tune tests: a small search space, the command's arguments, its outputs."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import optuna

from covidreg.layout import EDITIONS
from covidreg.tune.storage import open_storage
from tests.conftest import synthetic_rows, write_hw01_csv

SMALL_SPACE = """
[fixed]
epochs = 8
patience = 0
batch_size = 16

[space.lr]
type = "float"
low = 1e-3
high = 3e-2
log = true
values = [3e-3, 3e-2]

[space.hidden]
choices = ["16", [32, 8]]

[space.weight_decay]
type = "float"
low = 1e-7
high = 1e-2
log = true
zero_below = 1e-6
values = [0.0]
"""


def write_space(tmp_path: Path, text: str = SMALL_SPACE, name: str = "search.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tune_args(
    files: dict[str, Path], space: Path, out: Path, *extra: str, folds: int = 1
) -> list[str]:
    return [
        "tune",
        "--train-csv",
        str(files["train"]),
        "--search",
        str(space),
        "--out",
        str(out),
        "--folds",
        str(folds),
        *extra,
    ]


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def read_trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def load_study(out: Path, name: str = "covidreg") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(out / "study.journal")))


def other_train_csv(files: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    """A training file that is not ``files["train"]``: of another edition's layout, the same
    layout with other rows, or ``files["train"]`` itself with a row changed ("changed")."""
    if kind == "changed":
        lines = files["train"].read_text().splitlines(keepends=True)
        files["train"].write_text("".join(lines[:-1]))  # one row fewer
        return files["train"]
    folder = tmp_path / kind
    folder.mkdir()
    if kind in EDITIONS:
        layout = EDITIONS[kind]
        rows = synthetic_rows(4, 30, seed=0, layout=layout)
        return write_hw01_csv(folder / "covid.train.csv", rows, layout=layout)
    assert kind == "other rows"
    return write_hw01_csv(folder / "covid.train.csv", synthetic_rows(4, 30, seed=7))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
