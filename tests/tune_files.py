"""For the covidreg tune tests: a small search space, the command's arguments, its outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna

from covidreg.tune.storage import open_storage

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
