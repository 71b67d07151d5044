"""The HW01 CSV schema: columns, feature names and presets, validated reading, feature arrays.

A training file has an id, 40 one-hot state columns and 3 days x 18 daily columns, the last of
them (day-3 tested_positive) the target; a test file lacks that last column. The CSV repeats the
daily names each day, so features are named here by day (``cli_d1`` ... ``tested_positive_d2``).
Normalisation statistics live here too: which features pass through unscaled (the one-hot
states) is a fact of the schema.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidreg.errors import CovidRegError

STATES: tuple[str, ...] = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "FL", "GA", "ID", "IL", "IN", "IA", "KS",
    "KY", "LA", "MD", "MA", "MI", "MN", "MS", "MO", "NE", "NV", "NJ", "NM", "NY", "NC",
    "OH", "OK", "OR", "PA", "RI", "SC", "TX", "UT", "VA", "WA", "WV", "WI",
)  # fmt: skip
DAILY: tuple[str, ...] = (
    "cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli", "wearing_mask", "travel_outside_state",
    "work_outside_home", "shop", "restaurant", "spent_time", "large_event", "public_transit",
    "anxious", "depressed", "felt_isolated", "worried_become_ill", "worried_finances",
    "tested_positive",
)  # fmt: skip
N_DAYS = 3
TARGET = "tested_positive_d3"
#: The 93 input features of the test file, named uniquely by day (the CSV repeats names).
FEATURE_NAMES: tuple[str, ...] = (
    STATES + tuple(f"{name}_d{day}" for day in range(1, N_DAYS + 1) for name in DAILY)[:-1]
)
#: Raw CSV header of a training file (the test file lacks the last column).
TRAIN_HEADER: tuple[str, ...] = ("id", *STATES, *(DAILY * N_DAYS))

_CLI_FAMILY = ("cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli")
_STRONG = (
    *(f"{n}_d{d}" for d in (1, 2, 3) for n in _CLI_FAMILY),
    "tested_positive_d1",
    "tested_positive_d2",
)
PRESETS: dict[str, tuple[str, ...]] = {
    "all": FEATURE_NAMES,
    # the course's medium-baseline hint: states + the two known days of tested_positive
    "target_only": (*STATES, "tested_positive_d1", "tested_positive_d2"),
    # the cli/ili family of all three days + tested_positive of days 1-2 (strong public solutions)
    "strong": _STRONG,
    "strong_states": (*STATES, *_STRONG),
}


@dataclass
class HW01Table:
    """A validated HW01 file: ids, the 93 features by position, and the target if present."""

    path: str
    ids: np.ndarray  # int64 [n]
    features: np.ndarray  # float64 [n, 93], columns in FEATURE_NAMES order
    target: np.ndarray | None  # float64 [n], day-3 tested_positive; None for a test file

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def states(self) -> np.ndarray:
        """Index (0..39) of each row's state, from the one-hot columns."""
        return self.features[:, : len(STATES)].argmax(axis=1)


def _check_path(path: Path, what: str) -> None:
    if path.is_dir():
        raise CovidRegError(f"{what} {path} is a directory; pass the path of a CSV file")
    if not path.exists():
        from covidreg.fetch import DATA_HELP

        # the HW01 files under their own names: the user most likely has not fetched them yet
        hint = DATA_HELP if path.name in ("covid.train.csv", "covid.test.csv") else "check the path"
        raise CovidRegError(f"{what} {path} does not exist; {hint}")
    if path.stat().st_size == 0:
        raise CovidRegError(f"{what} {path} is empty; expected the HW01 CSV with a header row")


def _read_header(path: Path, what: str) -> list[str]:
    try:
        # utf-8-sig: spreadsheet programs often save a byte-order mark before the header
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except UnicodeDecodeError:
        raise CovidRegError(f"{what} {path} is not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise CovidRegError(f"{what} {path}: malformed header row ({exc})") from None
    return [name.strip() for name in header]


def _check_header(header: list[str], path: Path, what: str, require_target: bool | None) -> bool:
    """Compare the header with the HW01 schema by position; return whether it has the target."""
    n_train, n_test = len(TRAIN_HEADER), len(TRAIN_HEADER) - 1
    if require_target is True and len(header) == n_test and header == list(TRAIN_HEADER[:-1]):
        raise CovidRegError(
            f"{what} {path} has no target column (the last tested_positive); it looks like a "
            "test file: pass a training-format CSV with all 95 columns"
        )
    if require_target is False and len(header) == n_train and header == list(TRAIN_HEADER):
        raise CovidRegError(
            f"{what} {path} has the target column (95 columns, last = tested_positive); it looks "
            "like a training file: pass the test CSV with 94 columns, or drop the last column"
        )
    expected = list(TRAIN_HEADER) if len(header) >= n_train else list(TRAIN_HEADER[:-1])
    for pos, (got, want) in enumerate(zip(header, expected, strict=False)):
        if got != want:
            raise CovidRegError(
                f"{what} {path}: column {pos + 1} is '{got}', expected '{want}' "
                "(HW01 schema: id, 40 states, 3 days x 18 daily columns)"
            )
    if len(header) > n_train:
        raise CovidRegError(
            f"{what} {path} has {len(header)} columns, expected {n_train} (training) or "
            f"{n_test} (test); extra column {n_train + 1} is '{header[n_train]}'"
        )
    if len(header) < n_test:
        missing = expected[len(header)]
        raise CovidRegError(
            f"{what} {path} has {len(header)} columns, expected {n_train} (training) or "
            f"{n_test} (test); first missing column is '{missing}' (column {len(header) + 1})"
        )
    return len(header) == n_train


def _row_label(row: int) -> str:
    """Where data row ``row`` (0-based) is: its line in the file and its 1-based row number."""
    return f"line {row + 2} (data row {row + 1})"


def _column_label(pos: int, has_target: bool) -> str:
    """Human name of raw CSV column ``pos`` (0 = id), unique by day."""
    if pos == 0:
        return "id"
    names = (*FEATURE_NAMES, TARGET) if has_target else FEATURE_NAMES
    return f"'{names[pos - 1]}' (column {pos + 1})"


# pd.read_csv options for a file's data rows, every cell kept as written (no NA guessing)
_CSV_BODY: dict[str, Any] = {
    "header": None,
    "skiprows": 1,
    "keep_default_na": False,
    "skip_blank_lines": True,
    "encoding": "utf-8-sig",
}


def _read_numbers(path: Path, n_cols: int) -> np.ndarray | None:
    """The cells as float64 through pandas' C number parser, or None unless every cell is a
    finite number in a row of ``n_cols`` fields: the common case, in a tenth of the time of
    the cell-by-cell path, which then runs only to find and name the problem."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=np.float64, **_CSV_BODY)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    array = frame.to_numpy(dtype=np.float64)
    if len(array) == 0 or array.shape[1] != n_cols or not np.isfinite(array).all():
        return None
    return array


def _parse_cells(path: Path, what: str, n_cols: int, has_target: bool) -> np.ndarray:
    import pandas as pd

    numbers = _read_numbers(path, n_cols)
    if numbers is not None:
        return numbers
    try:
        frame = pd.read_csv(path, dtype=str, **_CSV_BODY)
    except pd.errors.EmptyDataError:  # nothing but blank lines after the header
        frame = pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise CovidRegError(f"{what} {path}: malformed CSV ({exc}); fix the row") from None
    except UnicodeDecodeError:
        raise CovidRegError(f"{what} {path} is not a UTF-8 text CSV file") from None
    if len(frame) == 0:
        raise CovidRegError(f"{what} {path} has a header but no data rows")
    if frame.shape[1] != n_cols:
        # the parser takes the width from the first data row and rejects later, longer rows
        raise CovidRegError(
            f"{what} {path}, {_row_label(0)}: {frame.shape[1]} fields, expected {n_cols} as in "
            "the header; fix the row"
        )
    values = frame.apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        cell = frame.iat[row, col]
        kind = "an empty cell" if cell.strip() == "" else f"'{cell}', not a finite number"
        raise CovidRegError(
            f"{what} {path}, {_row_label(row)}, column "
            f"{_column_label(col, has_target)}: {kind}; fix or remove the row"
        )
    return array


def _check_rows(
    array: np.ndarray, where: str, row_label: Callable[[int], str] = _row_label
) -> None:
    """ids integer and unique, the state one-hot one-hot; ``where`` names the file or frame."""
    ids = array[:, 0]
    not_int = (ids != np.round(ids)) | (np.abs(ids) >= 2.0**63)
    if not_int.any():
        row = int(np.argmax(not_int))
        raise CovidRegError(f"{where}, {row_label(row)}, column 'id': not an integer id")
    onehot = array[:, 1 : 1 + len(STATES)]
    not_binary = ~np.isin(onehot, (0.0, 1.0))
    if not_binary.any():
        row, col = map(int, np.argwhere(not_binary)[0])
        raise CovidRegError(
            f"{where}, {row_label(row)}, column '{STATES[col]}': state columns must be 0 "
            "or 1, "
            f"got {onehot[row, col]:g}"
        )
    sums = onehot.sum(axis=1)
    if np.any(sums != 1):
        row = int(np.argmax(sums != 1))
        raise CovidRegError(
            f"{where}, {row_label(row)}, columns AL..WI: the state one-hot has "
            f"{int(sums[row])} ones, expected exactly 1"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        repeated = unique[counts > 1][0]
        first, second = np.flatnonzero(ids == repeated)[:2]
        raise CovidRegError(
            f"{where}: id {int(repeated)} appears twice, at {row_label(int(first))} and "
            f"{row_label(int(second))}"
        )


def read_hw01_csv(
    path: str | Path, require_target: bool | None = None, what: str = "CSV file"
) -> HW01Table:
    """Read and validate one HW01 file; every problem is a CovidRegError naming row and column.

    ``require_target``: True for training files, False for test files, None to accept both.
    """
    path = Path(path)
    _check_path(path, what)
    header = _read_header(path, what)
    has_target = _check_header(header, path, what, require_target)
    array = _parse_cells(path, what, len(header), has_target)
    _check_rows(array, f"{what} {path}")
    n_features = len(FEATURE_NAMES)
    return HW01Table(
        path=str(path),
        ids=array[:, 0].astype(np.int64),
        features=np.ascontiguousarray(array[:, 1 : 1 + n_features]),
        target=array[:, 1 + n_features].copy() if has_target else None,
    )


def resolve_features(spec: Sequence[str]) -> list[str]:
    """Feature names from a preset name or an explicit list of names (in the given order)."""
    if len(spec) == 0:
        raise CovidRegError(f"no features given; use a preset ({', '.join(PRESETS)}) or names")
    if len(spec) == 1 and spec[0] in PRESETS:
        return list(PRESETS[spec[0]])
    names: list[str] = []
    for name in spec:
        if name in PRESETS:
            raise CovidRegError(
                f"feature preset '{name}' cannot be mixed with feature names; use it alone"
            )
        if name not in FEATURE_NAMES:
            close = difflib.get_close_matches(name, FEATURE_NAMES, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see 'covidreg features'"
            raise CovidRegError(f"unknown feature '{name}'; presets: {', '.join(PRESETS)}; {hint}")
        if name in names:
            raise CovidRegError(f"feature '{name}' is listed twice")
        names.append(name)
    return names


def feature_columns(names: Sequence[str]) -> np.ndarray:
    """Positions of the named features in ``HW01Table.features``."""
    return np.array([FEATURE_NAMES.index(name) for name in names], dtype=np.int64)


# --- features of a subset of rows ---------------------------------------------------------------


@dataclass
class Arrays:
    """Selected features (raw, un-normalised) and targets of one subset of rows."""

    x: np.ndarray  # float32 [n, n_features]
    y: np.ndarray | None  # float32 [n]

    def __len__(self) -> int:
        return len(self.x)


def select(table: HW01Table, columns: np.ndarray, rows: np.ndarray | None = None) -> Arrays:
    """The feature ``columns`` and the targets of ``rows`` (every row if None), as float32."""
    rows = np.arange(len(table)) if rows is None else rows
    x = table.features[np.ix_(rows, columns)].astype(np.float32)
    y = None if table.target is None else table.target[rows].astype(np.float32)
    return Arrays(x=x, y=y)


# --- normalisation ------------------------------------------------------------------------------


def fit_standardization(x_train: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature over the training rows only; one-hot states pass through.

    Fitting on the training split only matters: the course sample code normalised each set with
    its own statistics, which shifts valid/test inputs relative to what the model learned.
    """
    # float64: float32 sums drift, giving a constant column a tiny std instead of zero
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    is_state = np.array([name in STATES for name in names], dtype=bool)
    mean[is_state] = 0.0
    std[is_state] = 1.0
    constant = np.all(x == x[:1], axis=0) | (std < 1e-12)
    std[constant] = 1.0  # a constant feature: centre it, do not divide by zero
    return mean, std


# --- pandas frames ------------------------------------------------------------------------------


def _pandas_names(header: Sequence[str]) -> list[str]:
    """The column names ``pandas.read_csv`` gives a header with repeated names (cli, cli.1...)."""
    seen: dict[str, int] = {}
    names = []
    for name in header:
        count = seen.get(name, 0)
        names.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return names


#: ``pandas.read_csv`` of a training file: id, the states, cli ... tested_positive.2.
PANDAS_HEADER: tuple[str, ...] = tuple(_pandas_names(TRAIN_HEADER))


def hw01_frame(table: HW01Table) -> Any:
    """A validated file as a DataFrame indexed by id: the feature names, then the target."""
    import pandas as pd

    frame = pd.DataFrame(table.features, columns=list(FEATURE_NAMES))
    if table.target is not None:
        frame[TARGET] = table.target
    frame.index = pd.Index(table.ids, name="id")
    return frame


def _frame_parts(frame: Any, what: str) -> tuple[Any, Any, Any]:
    """ids (or None), the 93 feature columns and the target column (or None) of a frame named
    by feature (``hw01_frame``) or by the raw header (``pandas.read_csv`` of an HW01 file)."""
    columns = [str(c) for c in frame.columns]
    ids = frame["id"] if "id" in columns else None
    if all(name in columns for name in FEATURE_NAMES):
        target = frame[TARGET] if TARGET in columns else None
        return ids, frame[list(FEATURE_NAMES)], target
    raw = columns if "id" in columns else ["id", *columns]
    if raw in (list(PANDAS_HEADER), list(PANDAS_HEADER[:-1])):
        start = 1 if "id" in columns else 0
        features = frame.iloc[:, start : start + len(FEATURE_NAMES)]
        target = frame.iloc[:, -1] if len(raw) == len(PANDAS_HEADER) else None
        return ids, features, target
    missing = [name for name in FEATURE_NAMES if name not in columns]
    raise CovidRegError(
        f"{what} lacks the HW01 feature column '{missing[0]}' ({len(missing)} of "
        f"{len(FEATURE_NAMES)} missing); pass covidreg.read_hw01(path), or pandas.read_csv of an "
        "HW01 file"
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _frame_numbers(part: Any, names: Sequence[str], what: str) -> np.ndarray:
    """The cells as float64; a cell that is not a finite number is an error naming it."""
    import pandas as pd

    values = part.apply(lambda col: pd.to_numeric(col, errors="coerce"))
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise CovidRegError(
            f"{what}, row {row} (index {_plain(part.index[row])!r}), column '{names[col]}': "
            f"{_plain(part.iat[row, col])!r} is not a finite number; fix or drop the row"
        )
    return array.reshape(len(part), -1)


def table_from_frame(frame: Any, what: str = "DataFrame") -> HW01Table:
    """A DataFrame in the HW01 schema (with or without the target) as a validated table.

    Columns by feature name (``hw01_frame``, ``covidreg.read_hw01``) or as ``pandas.read_csv``
    names an HW01 file's; the ids come from an ``id`` column or index, else 0, 1, 2...
    """
    import pandas as pd

    ids, features, target = _frame_parts(frame, what)
    if len(frame) == 0:
        raise CovidRegError(f"{what} has no rows")
    if ids is None:
        ids = frame.index if frame.index.name == "id" else np.arange(len(frame))
    ids = pd.DataFrame({"id": np.asarray(ids)}, index=frame.index)
    parts = [_frame_numbers(ids, ["id"], what), _frame_numbers(features, FEATURE_NAMES, what)]
    if target is not None:
        parts.append(_frame_numbers(target.to_frame(), [TARGET], what))
    array = np.hstack(parts)
    _check_rows(array, what, lambda row: f"row {row} (index {_plain(frame.index[row])!r})")
    n_features = len(FEATURE_NAMES)
    return HW01Table(
        path=what,
        ids=array[:, 0].astype(np.int64),
        features=np.ascontiguousarray(array[:, 1 : 1 + n_features]),
        target=array[:, 1 + n_features].copy() if target is not None else None,
    )
