"""Shared fixtures: small synthetic CSVs in the HW01 schema, and the real files when provided.

The synthetic data keep the real files' structure: rows grouped by state in day order, each row
a 3-day window, consecutive windows of a state sharing two days (row i's day-3 values are row
i+1's day-2 values), and a target that depends on the cli family and the previous days.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covidreg.dayorder import DayOrder
from covidreg.layout import EDITIONS, Layout

REAL_DATA_ENV = "COVIDREG_DATA_DIR"
REAL_DATA_2022_ENV = "COVIDREG_DATA_DIR_2022"

#: The synthetic files have the 2021 layout, unless a test writes another one.
LAYOUT = EDITIONS["2021"]
STATES = LAYOUT.states
DAILY = LAYOUT.daily
TRAIN_HEADER = LAYOUT.train_header
FEATURE_NAMES = LAYOUT.feature_names
TARGET = LAYOUT.target
PRESETS = {name: LAYOUT.preset(name) for name in ("all", "target_only", "strong", "strong_states")}


def windows_order(states: np.ndarray, n_days: int = 3) -> DayOrder:
    """The day order of windows listed by state in day order (as the 2021 files list them):
    a state's row at position p covers its days p..p+D-1."""
    states = np.asarray(states, dtype=np.int64)
    position = np.zeros(len(states), dtype=np.int64)
    for state in np.unique(states):
        rows = np.flatnonzero(states == state)
        position[rows] = np.arange(len(rows))
    days = (states * 100_000 + position)[:, None] + np.arange(n_days)
    return DayOrder(states, position, days, source="data")


def synthetic_days(n_states: int, n_windows: int, seed: int, layout: Layout = LAYOUT) -> np.ndarray:
    """Daily values [state, day, daily columns] for the days of n_windows windows of each
    state."""
    rng = np.random.default_rng(seed)
    n_days = n_windows + layout.n_days - 1
    days = np.empty((n_states, n_days, len(layout.daily)))
    base = rng.uniform(5, 60, size=(n_states, len(layout.daily)))
    walk = np.cumsum(rng.normal(0, 0.6, size=(n_states, n_days, len(layout.daily))), axis=1)
    days[:] = base[:, None, :] + walk
    family = [layout.daily.index(c) for c in ("cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli")]
    days[..., family] = np.abs(days[..., family]) / 20 + 0.3
    cli = days[..., family[0]] + days[..., family[2]] / 2
    tested = np.empty((n_states, n_days))
    tested[:, 0] = rng.uniform(5, 30, n_states)
    for d in range(1, n_days):
        tested[:, d] = 0.8 * tested[:, d - 1] + 3.0 * cli[:, d] + rng.normal(0, 0.3, n_states)
    days[..., -1] = tested
    return days


def synthetic_rows(
    n_states: int = 4, n_windows: int = 30, seed: int = 0, layout: Layout = LAYOUT
) -> np.ndarray:
    """Rows of a training file (without id): states one-hot + D days of the daily columns,
    grouped by state in day order."""
    days = synthetic_days(n_states, n_windows, seed, layout)
    rows = []
    for s in range(n_states):
        onehot = np.zeros(len(layout.states))
        onehot[s] = 1.0
        for w in range(n_windows):
            rows.append(np.concatenate([onehot, days[s, w : w + layout.n_days].reshape(-1)]))
    return np.array(rows)


def write_hw01_csv(
    path: Path,
    rows: np.ndarray,
    with_target: bool = True,
    first_id: int = 0,
    layout: Layout = LAYOUT,
) -> Path:
    header = list(layout.train_header if with_target else layout.train_header[:-1])
    body = rows if with_target else rows[:, :-1]
    lines = [",".join(header)]
    for i, row in enumerate(body):
        lines.append(",".join([str(first_id + i), *(f"{v:.7g}" for v in row)]))
    path.write_text("\n".join(lines) + "\n")
    return path


#: What every finished `covidreg train` run directory holds.
RUN_FILES = {
    "model.pt",
    "config.toml",
    "history.csv",
    "metrics.json",
    "learning_curve.png",
    "valid_pred.png",
    "pred.csv",
}


def train_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """A quick `covidreg train` on the synthetic files: 12 epochs, batches of 16."""
    return [
        "train",
        "--train-csv",
        str(files["train"]),
        "--test-csv",
        str(files["test"]),
        "--epochs",
        "12",
        "--batch-size",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def files_config(files: dict[str, Path], **changes: Any) -> Any:
    """The config of a quick run on the synthetic files (batches of 16), with ``changes`` given
    as flag text."""
    from covidreg.config import resolve_config

    values = {"train_csv": str(files["train"]), "test_csv": str(files["test"]), "batch_size": "16"}
    return resolve_config(None, {**values, **changes})


def interrupted_run_dir(files: dict[str, Path], out: Path, stop_at: int = 6) -> Path:
    """A run stopped (KeyboardInterrupt) in epoch ``stop_at``: it holds only the training state
    saved after epoch 5."""
    from covidreg.engine import EarlyStopping, EpochRecord
    from covidreg.experiment import STATE_FILE, run_train

    cfg = files_config(files, epochs="20", checkpoint_every="5")

    def interrupt(record: EpochRecord, stopper: EarlyStopping) -> None:
        if record.epoch == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, out, on_epoch=interrupt)
    assert [p.name for p in out.iterdir()] == [STATE_FILE]
    return out


@pytest.fixture
def hw01_files(tmp_path: Path) -> dict[str, Path]:
    """A synthetic training CSV (4 states x 30 windows) and test CSV (4 states x 6 windows)."""
    train = write_hw01_csv(tmp_path / "covid.train.csv", synthetic_rows(4, 30, seed=0))
    test = write_hw01_csv(
        tmp_path / "covid.test.csv", synthetic_rows(4, 6, seed=1), with_target=False
    )
    return {"train": train, "test": test, "dir": tmp_path}


def _edition_in(folder: Path, year: str) -> str | None:
    """Why ``folder`` does not hold the published ``year`` files, or None when it does."""
    from covidreg.datadir import FILE_NAMES
    from covidreg.fetch import EDITION_FILES, file_sha256

    for name, file in zip(FILE_NAMES[year], EDITION_FILES[year], strict=True):
        path = folder / name
        if not path.is_file():
            return f"{folder} holds no {name}"
        if file_sha256(path) not in file.sha256:
            return f"{path} is not the published {year} {name} (its sha256 differs)"
    return None


@functools.cache
def _folder_holding(year: str, folders: tuple[Path, ...]) -> tuple[Path | None, str]:
    """The first of ``folders`` holding the published ``year`` files; or None and why not."""
    reasons = []
    for folder in folders:
        reason = _edition_in(folder, year)
        if reason is None:
            return folder, ""
        reasons.append(reason)
    return None, "; ".join(reasons)


def real_files(variable: str, year: str) -> Path:
    """The real files of ``year``, or a skip that says why they are not there.

    CI (CI=true) sets the variables to the shared copies, so a real-data test never passes by
    being skipped there: inside CI an absent or other file fails.
    """
    # the edition's own variable, else the data directory when it holds that edition
    values = [os.environ.get(variable), os.environ.get(REAL_DATA_ENV)]
    folders = tuple(dict.fromkeys(Path(value) for value in values if value))
    folder, reason = _folder_holding(year, folders) if folders else (None, f"{variable} is not set")
    if folder is not None:
        return folder
    if os.environ.get("CI"):
        pytest.fail(f"the real-data tests must run in CI: {reason}")
    edition = "" if year == "2021" else f" --edition {year}"
    pytest.skip(
        f"no {year} HW01 files ({reason}): run 'covidreg fetch{edition} --dest DIR' and set "
        f"{variable}=DIR"
    )


@pytest.fixture
def real_data_dir() -> Path:
    """The real 2021 HW01 files, from COVIDREG_DATA_DIR."""
    return real_files(REAL_DATA_ENV, "2021")


@pytest.fixture
def real_2022_dir() -> Path:
    """The real 2022 HW01 files, from COVIDREG_DATA_DIR_2022 (or COVIDREG_DATA_DIR when it
    holds them)."""
    return real_files(REAL_DATA_2022_ENV, "2022")
