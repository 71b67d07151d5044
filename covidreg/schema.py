"""HW01 files: validated reading, the table of one file, feature arrays and normalisation.

A file's layout (states, daily columns, days per window) is read from its header
(``covidreg.layout``) and carried by its ``HW01Table``; the CSV repeats the daily names each
day, so features are named by day (``cli_d1`` ... ``tested_positive_d2`` in 2021). Which
features pass through unscaled (the one-hot states) is a fact of the layout, so normalisation
statistics live here too.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from covidreg.datadir import FILE_NAMES
from covidreg.dayorder import DayOrder, day_ids, recover_order
from covidreg.errors import CovidRegError
from covidreg.layout import TESTED, HeaderError, Layout, layout_of_features, parse_header


@dataclass
class HW01Table:
    """A validated HW01 file: its layout, ids, the input features by position (in
    ``layout.feature_names`` order) and the target if present."""

    path: str
    layout: Layout
    ids: np.ndarray  # int64 [n]
    features: np.ndarray  # float64 [n, n_features]
    target: np.ndarray | None  # float64 [n], the last day's tested_positive; None for a test file

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def states(self) -> np.ndarray:
        """Index of each row's state in ``layout.states``, from the one-hot columns."""
        return self.features[:, : len(self.layout.states)].argmax(axis=1)

    def daily_values(self) -> np.ndarray:
        """Each window's daily values without tested_positive, [n, days, daily columns - 1]."""
        layout = self.layout
        days = self.features[:, len(layout.states) :]
        days = np.concatenate([days, np.zeros((len(self), 1))], axis=1)  # the target's place
        return days.reshape(len(self), layout.n_days, len(layout.daily))[:, :, :-1]

    @cached_property
    def order(self) -> DayOrder:
        """The rows' day order, recovered from their shared days (``covidreg.dayorder``)."""
        (days,) = day_ids([(self.states, self.daily_values())])
        return recover_order(self.states, days)

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """Positions of the named features in ``features``."""
        return self.layout.columns(names)


def shared_day_rows(table: HW01Table, other: HW01Table) -> np.ndarray:
    """The rows of ``other`` whose window shares a day with a window of ``table``."""
    if table.layout != other.layout:
        return np.zeros(0, dtype=np.int64)
    here, there = day_ids(
        [(table.states, table.daily_values()), (other.states, other.daily_values())]
    )
    return np.flatnonzero(np.isin(there, here).any(axis=1))


def _check_path(path: Path, what: str) -> None:
    if path.is_dir():
        raise CovidRegError(f"{what} {path} is a directory; pass the path of a CSV file")
    if not path.exists():
        from covidreg.fetch import DATA_HELP

        # the HW01 files under their own names: the user most likely has not fetched them yet
        hw01_names = {name for names in FILE_NAMES.values() for name in names}
        hint = DATA_HELP if path.name in hw01_names else "check the path"
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


def _read_layout(
    header: list[str], path: Path, what: str, require_target: bool | None
) -> tuple[Layout, bool]:
    """The file's layout from its header, and whether it has the target column."""
    try:
        layout, has_target = parse_header(header, require_target)
    except HeaderError as exc:
        raise CovidRegError(
            f"{what} {path}: {exc}; an HW01 header is id, the state columns, then the daily "
            f"columns ending with {TESTED}, once per day"
        ) from None
    n_train = len(layout.train_header)
    if require_target is True and not has_target:
        raise CovidRegError(
            f"{what} {path} has no target column (the last {TESTED}); it looks like a test "
            f"file of the {layout.describe()}: pass a training-format CSV with all {n_train} "
            "columns"
        )
    if require_target is False and has_target:
        raise CovidRegError(
            f"{what} {path} has the target column ({n_train} columns, last = {TESTED}); it "
            f"looks like a training file of the {layout.describe()}: pass the test CSV with "
            f"{n_train - 1} columns, or drop the last column"
        )
    return layout, has_target


def _row_label(row: int) -> str:
    """Where data row ``row`` (0-based) is: its line in the file and its 1-based row number."""
    return f"line {row + 2} (data row {row + 1})"


def _column_label(pos: int, layout: Layout, has_target: bool) -> str:
    """Human name of raw CSV column ``pos`` (0 = id), unique by day."""
    if pos == 0:
        return "id"
    names = (*layout.feature_names, layout.target) if has_target else layout.feature_names
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


def _parse_cells(
    path: Path, what: str, n_cols: int, layout: Layout, has_target: bool
) -> np.ndarray:
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
            f"{_column_label(col, layout, has_target)}: {kind}; fix or remove the row"
        )
    return array


def _check_rows(
    array: np.ndarray,
    layout: Layout,
    where: str,
    row_label: Callable[[int], str] = _row_label,
) -> None:
    """ids integer and unique, the state one-hot one-hot; ``where`` names the file or frame."""
    ids = array[:, 0]
    not_int = (ids != np.round(ids)) | (np.abs(ids) >= 2.0**63)
    if not_int.any():
        row = int(np.argmax(not_int))
        raise CovidRegError(f"{where}, {row_label(row)}, column 'id': not an integer id")
    states = layout.states
    onehot = array[:, 1 : 1 + len(states)]
    not_binary = ~np.isin(onehot, (0.0, 1.0))
    if not_binary.any():
        row, col = map(int, np.argwhere(not_binary)[0])
        raise CovidRegError(
            f"{where}, {row_label(row)}, column '{states[col]}': state columns must be 0 "
            f"or 1, got {onehot[row, col]:g}"
        )
    sums = onehot.sum(axis=1)
    if np.any(sums != 1):
        row = int(np.argmax(sums != 1))
        raise CovidRegError(
            f"{where}, {row_label(row)}, columns {states[0]}..{states[-1]}: the state one-hot "
            f"has {int(sums[row])} ones, expected exactly 1"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        repeated = unique[counts > 1][0]
        first, second = np.flatnonzero(ids == repeated)[:2]
        raise CovidRegError(
            f"{where}: id {int(repeated)} appears twice, at {row_label(int(first))} and "
            f"{row_label(int(second))}"
        )


def _table(where: str, layout: Layout, array: np.ndarray, has_target: bool) -> HW01Table:
    n_features = len(layout.feature_names)
    return HW01Table(
        path=where,
        layout=layout,
        ids=array[:, 0].astype(np.int64),
        features=np.ascontiguousarray(array[:, 1 : 1 + n_features]),
        target=array[:, 1 + n_features].copy() if has_target else None,
    )


def read_hw01_csv(
    path: str | Path, require_target: bool | None = None, what: str = "CSV file"
) -> HW01Table:
    """Read and validate one HW01 file of any layout; every problem is a CovidRegError naming
    row and column.

    ``require_target``: True for training files, False for test files, None to accept both.
    """
    path = Path(path)
    _check_path(path, what)
    header = _read_header(path, what)
    layout, has_target = _read_layout(header, path, what, require_target)
    array = _parse_cells(path, what, len(header), layout, has_target)
    _check_rows(array, layout, f"{what} {path}")
    return _table(str(path), layout, array, has_target)


def check_same_layout(expected: Layout, table: HW01Table, whose: str) -> None:
    """A file meets a model (or a test file a training file): both must have one layout.
    ``whose`` says what has ``expected``, e.g. 'model runs/x/model.pt was trained on'."""
    if table.layout != expected:
        raise CovidRegError(
            f"{whose} the {expected.describe()}; {table.path} has the "
            f"{table.layout.describe()}: pass a file of the same edition"
        )


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


def fit_standardization(
    x_train: np.ndarray, names: Sequence[str], layout: Layout
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature over the training rows only; one-hot states pass through.

    Fitting on the training split only matters: the course sample code normalised each set with
    its own statistics, which shifts valid/test inputs relative to what the model learned.
    """
    # float64: float32 sums drift, giving a constant column a tiny std instead of zero
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    is_state = np.array([name in layout.states for name in names], dtype=bool)
    mean[is_state] = 0.0
    std[is_state] = 1.0
    constant = np.all(x == x[:1], axis=0) | (std < 1e-12)
    std[constant] = 1.0  # a constant feature: centre it, do not divide by zero
    return mean, std


# --- pandas frames ------------------------------------------------------------------------------


def hw01_frame(table: HW01Table) -> Any:
    """A validated file as a DataFrame indexed by id: the feature names, then the target."""
    import pandas as pd

    frame = pd.DataFrame(table.features, columns=list(table.layout.feature_names))
    if table.target is not None:
        frame[table.layout.target] = table.target
    frame.index = pd.Index(table.ids, name="id")
    return frame


def frame_layout(columns: Sequence[Any]) -> tuple[Layout, bool] | None:
    """The layout of a frame's columns, and whether they hold the target: named by feature
    (``hw01_frame``), or as ``pandas.read_csv`` names an HW01 file's (``cli.1``...), the id
    column optional; None for any other columns."""
    names = [str(c) for c in columns if str(c) != "id"]
    layout = layout_of_features(names)
    if layout is not None:
        return layout, names[-1] == layout.target
    try:
        return parse_header(["id", *names])
    except HeaderError:
        return None


def _frame_parts(frame: Any, what: str) -> tuple[Layout, Any, Any, Any]:
    """The layout, ids (or None), the feature columns and the target column (or None) of a
    frame named by feature or by the raw header."""
    columns = [str(c) for c in frame.columns]
    found = frame_layout(columns)
    if found is None:
        raise CovidRegError(
            f"{what} does not have the columns of an HW01 file (id, the states, then the daily "
            f"columns ending with {TESTED} once per day, or the features cli_d1 ...); pass "
            "covidreg.read_hw01(path), or pandas.read_csv of an HW01 file"
        )
    layout, has_target = found
    ids = frame["id"] if "id" in columns else None
    start = 1 if columns and columns[0] == "id" else 0
    features = frame.iloc[:, start : start + len(layout.feature_names)]
    target = frame.iloc[:, start + len(layout.feature_names)] if has_target else None
    return layout, ids, features, target


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
    """A DataFrame of an HW01 file (any layout, with or without the target) as a validated
    table.

    Columns by feature name (``hw01_frame``, ``covidreg.read_hw01``) or as ``pandas.read_csv``
    names an HW01 file's; the ids come from an ``id`` column or index, else 0, 1, 2...
    """
    import pandas as pd

    layout, ids, features, target = _frame_parts(frame, what)
    if len(frame) == 0:
        raise CovidRegError(f"{what} has no rows")
    if ids is None:
        ids = frame.index if frame.index.name == "id" else np.arange(len(frame))
    ids = pd.DataFrame({"id": np.asarray(ids)}, index=frame.index)
    names = layout.feature_names
    parts = [_frame_numbers(ids, ["id"], what), _frame_numbers(features, names, what)]
    if target is not None:
        parts.append(_frame_numbers(target.to_frame(), [layout.target], what))
    array = np.hstack(parts)
    label = lambda row: f"row {row} (index {_plain(frame.index[row])!r})"  # noqa: E731
    _check_rows(array, layout, what, label)
    return _table(what, layout, array, target is not None)


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _stretches(per_state: np.ndarray) -> str:
    """How the states' rows chain into stretches, given each state's number of stretches."""
    n_states, broken = len(per_state), per_state[per_state > 1]
    text = (
        f"{_counted(int(per_state.sum()), 'stretch', 'stretches')} of consecutive windows for "
        f"{_counted(n_states, 'state', 'states')}"
    )
    if n_states == 1:  # the counts say it all
        return text
    if len(broken) == 0:
        return f"{text} (each state one stretch)"
    sizes = [str(n) for n in sorted(set(broken.tolist()))]
    into = sizes[0] if len(sizes) == 1 else f"{', '.join(sizes[:-1])} or {sizes[-1]}"
    if len(broken) == n_states:
        return f"{text} (each state broken into {into})"
    whole = _counted(n_states - len(broken), "state", "states")
    return f"{text} ({whole} one stretch, {len(broken)} broken into {into})"


def describe_files(train: HW01Table, test: HW01Table | None) -> list[str]:
    """What was found in a training file (and its test file): layout, rows, day order."""
    layout, order = train.layout, train.order
    per_state = np.bincount(
        np.unique(np.c_[train.states, order.stretch], axis=0)[:, 0], minlength=len(layout.states)
    )
    lines = [f"training CSV {train.path}: {layout.describe()}, {len(train)} rows"]
    if order.source == "data":
        chains = _stretches(per_state[per_state > 0])
        lines.append(f"day order: recovered from the rows' shared days, {chains}")
    else:
        lines.append("day order: no two windows share a day; each state's rows in file order")
    if test is not None:
        shared = shared_day_rows(train, test)
        lines.append(
            f"test CSV {test.path}: {test.layout.describe()}, {len(test)} rows, {len(shared)} "
            "of them share a day with a training row"
        )
    return lines
