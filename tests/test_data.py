"""HW01 CSV validation, feature selection, honest splits, standardisation, batches."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covidreg import data as data_module
from covidreg.data import (
    DAILY,
    FEATURE_NAMES,
    PRESETS,
    STATES,
    TRAIN_HEADER,
    BlockedKFold,
    HW01Dataset,
    InterleavedKFold,
    RandomKFold,
    ShuffledBatches,
    feature_columns,
    fit_standardization,
    holdout_split,
    make_kfold,
    make_loader,
    read_hw01_csv,
    resolve_features,
    select,
    within_state_position,
)
from covidreg.errors import CovidRegError
from tests.conftest import synthetic_rows

Cells = list[list[str]]


def column_name(col: int) -> str:
    """Unique name of raw CSV column ``col`` (0 = id), written out independently of data.py."""
    if col == 0:
        return "id"
    if col <= len(STATES):
        return STATES[col - 1]
    day, offset = divmod(col - 1 - len(STATES), len(DAILY))
    return f"{DAILY[offset]}_d{day + 1}"


def read_cells(path: Path) -> Cells:
    return [line.split(",") for line in path.read_text().splitlines()]


def write_cells(path: Path, cells: Cells) -> Path:
    path.write_text("\n".join(",".join(row) for row in cells) + "\n")
    return path


def overlap_days(states: np.ndarray, a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    """(state, day) pairs covered by both row sets; the row at position p covers days p..p+2."""
    position = within_state_position(states)

    def days(rows: np.ndarray) -> set[tuple[int, int]]:
        return {(int(states[r]), int(position[r]) + d) for r in rows for d in range(3)}

    return days(a) & days(b)


def grouped_states(counts: list[int]) -> np.ndarray:
    """A state vector as in the HW01 files: each state's windows together, in day order."""
    return np.repeat(np.arange(len(counts)), counts)


# --- reading a valid file ------------------------------------------------------------------------


def test_read_training_file(hw01_files: dict[str, Path]) -> None:
    rows = synthetic_rows(4, 30, seed=0)
    table = read_hw01_csv(hw01_files["train"], require_target=True)
    assert table.features.shape == (120, 93)
    assert table.features.dtype == np.float64
    np.testing.assert_array_equal(table.ids, np.arange(120))
    np.testing.assert_allclose(table.features, rows[:, :93], rtol=1e-6)
    assert table.target is not None
    np.testing.assert_allclose(table.target, rows[:, 93], rtol=1e-6)
    np.testing.assert_array_equal(table.states, np.repeat(np.arange(4), 30))
    assert len(table) == 120
    assert table.path == str(hw01_files["train"])


def test_read_test_file_has_no_target(hw01_files: dict[str, Path]) -> None:
    table = read_hw01_csv(hw01_files["test"], require_target=False)
    assert table.features.shape == (24, 93)
    assert table.target is None
    np.testing.assert_array_equal(table.ids, np.arange(24))
    np.testing.assert_allclose(table.features, synthetic_rows(4, 6, seed=1)[:, :93], rtol=1e-6)


def test_either_layout_is_accepted_without_require_target(hw01_files: dict[str, Path]) -> None:
    assert read_hw01_csv(hw01_files["train"]).target is not None
    assert read_hw01_csv(hw01_files["test"]).target is None


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda text: "\ufeff" + text, id="byte-order-mark"),
        pytest.param(lambda text: text.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda text: text.replace(",", " , "), id="spaces-around-cells"),
        pytest.param(lambda text: text + "\n\n", id="trailing-blank-lines"),
    ],
)
def test_harmless_formatting_is_accepted(
    hw01_files: dict[str, Path], tmp_path: Path, transform: Callable[[str], str]
) -> None:
    original = read_hw01_csv(hw01_files["train"])
    path = tmp_path / "variant.csv"
    path.write_bytes(transform(hw01_files["train"].read_text()).encode("utf-8"))
    table = read_hw01_csv(path, require_target=True)
    np.testing.assert_array_equal(table.features, original.features)
    np.testing.assert_array_equal(table.target, original.target)


def test_tested_positive_d2_is_the_previous_windows_target(hw01_files: dict[str, Path]) -> None:
    """Column mapping check: consecutive windows of a state share days in the named columns."""
    table = read_hw01_csv(hw01_files["train"])
    d2, cli_d2, cli_d3 = (
        table.features[:, feature_columns([name])[0]]
        for name in ("tested_positive_d2", "cli_d2", "cli_d3")
    )
    for state in range(4):
        rows = np.flatnonzero(table.states == state)
        np.testing.assert_array_equal(d2[rows[1:]], table.target[rows[:-1]])
        np.testing.assert_array_equal(cli_d2[rows[1:]], cli_d3[rows[:-1]])


# --- every kind of bad file ----------------------------------------------------------------------


def edited(edit: Callable[[Cells], None]) -> Callable[[dict[str, Path]], Path]:
    """A case builder: a copy of the synthetic training file with ``edit`` applied to its cells."""

    def build(files: dict[str, Path]) -> Path:
        cells = read_cells(files["train"])
        edit(cells)
        return write_cells(files["dir"] / "bad.csv", cells)

    return build


def set_cell(line: int, col: int, value: str) -> Callable[[Cells], None]:
    def edit(cells: Cells) -> None:
        cells[line - 1][col] = value

    return edit


def drop_column(col: int) -> Callable[[Cells], None]:
    def edit(cells: Cells) -> None:
        for row in cells:
            del row[col]

    return edit


def keep_columns(n: int) -> Callable[[Cells], None]:
    def edit(cells: Cells) -> None:
        cells[:] = [row[:n] for row in cells]

    return edit


def append_column(header: str, value: str) -> Callable[[Cells], None]:
    def edit(cells: Cells) -> None:
        cells[0].append(header)
        for row in cells[1:]:
            row.append(value)

    return edit


def edit_row(line: int, change: Callable[[list[str]], list[str]]) -> Callable[[Cells], None]:
    def edit(cells: Cells) -> None:
        cells[line - 1] = change(cells[line - 1])

    return edit


def raw_file(content: bytes) -> Callable[[dict[str, Path]], Path]:
    def build(files: dict[str, Path]) -> Path:
        path = files["dir"] / "raw.csv"
        path.write_bytes(content)
        return path

    return build


def header_only(suffix: str) -> Callable[[dict[str, Path]], Path]:
    return raw_file((",".join(TRAIN_HEADER) + suffix).encode())


def train_text_plus(tail: bytes) -> Callable[[dict[str, Path]], Path]:
    def build(files: dict[str, Path]) -> Path:
        path = files["dir"] / "tail.csv"
        path.write_bytes(files["train"].read_bytes() + tail)
        return path

    return build


BAD_FILES = [
    # (builder, require_target, patterns the message must contain besides the path)
    pytest.param(
        edited(drop_column(45)),
        None,
        [r"column 46 is 'travel_outside_state', expected 'wearing_mask'"],
        id="missing-column",
    ),
    pytest.param(
        edited(keep_columns(60)),
        None,
        [r"has 60 columns", r"first missing column is 'ili' \(column 61\)"],
        id="truncated-columns",
    ),
    pytest.param(
        edited(append_column("extra", "0")),
        None,
        [r"has 96 columns", r"extra column 96 is 'extra'"],
        id="extra-column",
    ),
    pytest.param(
        edited(set_cell(1, 1, "Alabama")),
        None,
        [r"column 2 is 'Alabama', expected 'AL'"],
        id="renamed-column",
    ),
    pytest.param(
        edited(set_cell(1, 94, "tested_positive_d3")),
        None,
        [r"column 95 is 'tested_positive_d3', expected 'tested_positive'"],
        id="renamed-target-column",
    ),
    pytest.param(
        edited(set_cell(4, 50, "abc")),
        True,
        [r"\bline 4\b", rf"'{column_name(50)}' \(column 51\)", r"'abc'"],
        id="non-numeric-cell",
    ),
    pytest.param(
        edited(set_cell(7, 94, "")),
        True,
        [r"\bline 7\b", r"'tested_positive_d3' \(column 95\)", r"empty cell"],
        id="empty-target-cell",
    ),
    pytest.param(
        edited(set_cell(3, 60, "   ")),
        True,
        [r"\bline 3\b", rf"'{column_name(60)}' \(column 61\)", r"empty cell"],
        id="blank-cell",
    ),
    pytest.param(
        edited(set_cell(9, 0, "")),
        True,
        [r"\bline 9\b", r"column id", r"empty cell"],
        id="empty-id",
    ),
    pytest.param(
        edited(set_cell(3, 70, "NaN")),
        True,
        [r"\bline 3\b", rf"'{column_name(70)}' \(column 71\)", r"'NaN', not a finite"],
        id="nan",
    ),
    pytest.param(
        edited(set_cell(5, 41, "inf")),
        True,
        [r"\bline 5\b", r"'cli_d1' \(column 42\)", r"'inf', not a finite"],
        id="inf",
    ),
    pytest.param(
        edited(set_cell(5, 76, "-inf")),
        True,
        [r"\bline 5\b", r"'tested_positive_d2' \(column 77\)", r"'-inf'"],
        id="minus-inf",
    ),
    pytest.param(
        edited(set_cell(6, 80, "1e999")),
        True,
        [r"\bline 6\b", rf"'{column_name(80)}' \(column 81\)", r"'1e999'"],
        id="overflowing-number",
    ),
    pytest.param(raw_file(b""), None, [r"is empty"], id="empty-file"),
    pytest.param(header_only("\n"), None, [r"header but no data rows"], id="header-only"),
    pytest.param(header_only(""), None, [r"header but no data rows"], id="header-no-newline"),
    pytest.param(
        header_only("\n\n  \n"), None, [r"header but no data rows"], id="header-blank-lines"
    ),
    pytest.param(
        edited(set_cell(5, 2, "1")),  # row 5 is state AL: now AL and AK
        True,
        [r"\bline 5\b", r"2 ones"],
        id="state-two-ones",
    ),
    pytest.param(
        edited(set_cell(5, 1, "0")), True, [r"\bline 5\b", r"0 ones"], id="state-zero-ones"
    ),
    pytest.param(
        edited(set_cell(8, 1, "0.5")),
        True,
        [r"\bline 8\b", r"column 'AL'", r"got 0\.5"],
        id="state-half",
    ),
    pytest.param(
        edited(set_cell(10, 3, "-1")),
        True,
        [r"\bline 10\b", r"column 'AZ'", r"got -1"],
        id="state-negative",
    ),
    pytest.param(
        edited(set_cell(6, 0, "1")),  # line 3 holds id 1
        True,
        [r"id 1 appears twice", r"\bline 3\b", r"\bline 6\b"],
        id="duplicate-id",
    ),
    pytest.param(
        edited(set_cell(4, 0, "2.5")),
        True,
        [r"\bline 4\b", r"column 'id'", r"not an integer"],
        id="non-integer-id",
    ),
    pytest.param(
        edited(set_cell(4, 0, "1e30")),
        True,
        [r"\bline 4\b", r"column 'id'", r"not an integer"],
        id="id-out-of-range",
    ),
    pytest.param(
        lambda files: files["test"],
        True,
        [r"no target column", r"looks like a test file"],
        id="test-file-as-training",
    ),
    pytest.param(
        lambda files: files["train"],
        False,
        [r"has the target column", r"looks like a training file"],
        id="training-file-as-test",
    ),
    pytest.param(
        edited(edit_row(5, lambda row: [*row, "1"])),
        True,
        [r"\bline 5\b", r"96"],
        id="row-too-many-fields",
    ),
    pytest.param(
        edited(edit_row(2, lambda row: [*row, "1", "2"])),
        True,
        [r"\bline 2\b", r"97 fields"],
        id="first-row-too-many-fields",
    ),
    pytest.param(
        edited(edit_row(5, lambda row: row[:-1])),
        True,
        [r"\bline 5\b", r"'tested_positive_d3' \(column 95\)", r"empty cell"],
        id="row-too-few-fields",
    ),
    pytest.param(edited(set_cell(4, 20, '"1')), True, [r"malformed CSV"], id="unclosed-quote"),
    pytest.param(
        train_text_plus(b"120," + b"\xff\xfe" * 3 + b"\n"),
        True,
        [r"not a UTF-8"],
        id="non-utf8-after-the-first-block",
    ),
    pytest.param(raw_file(bytes(range(256)) * 4), None, [r"not a UTF-8"], id="binary-file"),
    pytest.param(
        raw_file(b"x" * 200_000 + b"\n1\n"), None, [r"malformed header"], id="huge-header-field"
    ),
]


@pytest.mark.parametrize(("build", "require_target", "patterns"), BAD_FILES)
def test_bad_file_is_named_with_row_and_column(
    hw01_files: dict[str, Path],
    build: Callable[[dict[str, Path]], Path],
    require_target: bool | None,
    patterns: list[str],
) -> None:
    path = build(hw01_files)
    with pytest.raises(CovidRegError) as info:
        read_hw01_csv(path, require_target=require_target, what="training CSV")
    message = str(info.value)
    assert message.startswith(f"training CSV {path}")
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_directory_as_file(tmp_path: Path) -> None:
    with pytest.raises(CovidRegError, match=rf"{re.escape(str(tmp_path))} is a directory"):
        read_hw01_csv(tmp_path)


def test_nonexistent_file_hints_at_fetch_for_the_hw01_names(tmp_path: Path) -> None:
    other = tmp_path / "mine.csv"
    with pytest.raises(CovidRegError, match="does not exist; check the path") as info:
        read_hw01_csv(other)
    assert str(other) in str(info.value)
    for name in ("covid.train.csv", "covid.test.csv"):
        with pytest.raises(CovidRegError, match="does not exist; get the HW01 files") as info:
            read_hw01_csv(tmp_path / "data" / name)
        assert "'covidreg fetch'" in str(info.value) and "--from DIR" in str(info.value)


# --- property: the loader fails only with CovidRegError ------------------------------------------

GARBAGE_CELLS = st.one_of(
    st.sampled_from(["", " ", "0", "1", "-1", "0.5", "2", "nan", "inf", "1e999", "1e30", '"', "x"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
)


@st.composite
def corrupted_csv(draw: st.DrawFn) -> bytes:
    """A small valid HW01 file (train or test layout) with a few random corruptions."""
    n_rows = draw(st.integers(1, 4))
    with_target = draw(st.booleans())
    rows = synthetic_rows(1, n_rows, seed=draw(st.integers(0, 3)))
    header = list(TRAIN_HEADER if with_target else TRAIN_HEADER[:-1])
    body = rows if with_target else rows[:, :-1]
    cells = [header] + [[str(i), *(f"{v:.7g}" for v in row)] for i, row in enumerate(body)]
    for _ in range(draw(st.integers(0, 3))):
        on_header = len(cells) == 1 or draw(st.integers(0, 3)) == 0
        line = 0 if on_header else draw(st.integers(1, len(cells) - 1))
        kind = draw(st.sampled_from(["cell", "add", "drop", "remove-line", "duplicate-line"]))
        col = draw(st.integers(0, max(0, len(cells[line]) - 1)))
        if kind == "cell" and cells[line]:
            cells[line][col] = draw(GARBAGE_CELLS)
        elif kind == "add":
            cells[line].insert(col, draw(GARBAGE_CELLS))
        elif kind == "drop" and cells[line]:
            del cells[line][col]
        elif kind == "remove-line" and len(cells) > 1:
            del cells[line]
        elif kind == "duplicate-line":
            cells.insert(line, list(cells[line]))
    text = "\n".join(",".join(row) for row in cells) + draw(st.sampled_from(["\n", "", "\n\n"]))
    data = text.encode("utf-8")
    if draw(st.integers(0, 4)) == 0:  # now and then, bytes that need not be UTF-8
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=4)) + data[cut:]
    return data


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=corrupted_csv(), require_target=st.sampled_from([None, True, False]))
def test_loader_raises_only_covidreg_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, require_target: bool | None
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.csv"
    path.write_bytes(data)
    try:
        table = read_hw01_csv(path, require_target=require_target)
    except CovidRegError as exc:
        assert str(path) in str(exc)
        return
    assert table.features.shape == (len(table.ids), 93)
    assert np.isfinite(table.features).all()
    assert len(np.unique(table.ids)) == len(table.ids)
    assert (table.features[:, : len(STATES)].sum(axis=1) == 1).all()
    if require_target is not None:
        assert (table.target is not None) == require_target


def read_outcome(path: Path, require_target: bool | None) -> tuple[str, Any]:
    try:
        table = read_hw01_csv(path, require_target=require_target)
    except CovidRegError as exc:
        return "error", str(exc)
    return "table", (table.ids, table.features, table.target)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    data=corrupted_csv(),
    require_target=st.sampled_from([None, True, False]),
    padding=st.sampled_from(["", " ", "\t"]),
)
def test_the_fast_number_reader_changes_no_outcome(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    require_target: bool | None,
    padding: str,
) -> None:
    """pandas' C number parser reads clean files; the cell-by-cell path, which names the first
    bad cell, must give the same table or the same error for any file."""
    path = tmp_path_factory.getbasetemp() / "fast.csv"
    path.write_bytes(data.replace(b",", f"{padding},{padding}".encode()))
    fast = read_outcome(path, require_target)
    with mock.patch.object(data_module, "_read_numbers", return_value=None):
        cell_by_cell = read_outcome(path, require_target)
    assert fast[0] == cell_by_cell[0]
    if fast[0] == "error":
        assert fast[1] == cell_by_cell[1]
    else:
        for got, want in zip(fast[1], cell_by_cell[1], strict=True):
            assert (got is None and want is None) or np.array_equal(got, want)


def test_a_clean_file_takes_the_fast_number_reader(tmp_path: Path) -> None:
    path = tmp_path / "clean.csv"
    rows = synthetic_rows(2, 5)
    cells = [list(TRAIN_HEADER)] + [[str(i), *(f"{v:.7g}" for v in r)] for i, r in enumerate(rows)]
    numbers = data_module._read_numbers(write_cells(path, cells), len(TRAIN_HEADER))
    assert numbers is not None and numbers.shape == (10, len(TRAIN_HEADER))
    cells[3][7] = "x"
    assert data_module._read_numbers(write_cells(path, cells), len(TRAIN_HEADER)) is None


# --- features ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "size"),
    [("all", 93), ("target_only", 42), ("strong", 14), ("strong_states", 54)],
)
def test_feature_presets(preset: str, size: int) -> None:
    names = resolve_features([preset])
    assert len(names) == size
    assert len(set(names)) == size
    assert set(names) <= set(FEATURE_NAMES)
    assert "tested_positive_d3" not in names  # the target is never a feature


def test_feature_preset_contents() -> None:
    assert resolve_features(["all"]) == list(FEATURE_NAMES)
    target_only = resolve_features(["target_only"])
    assert target_only == [*STATES, "tested_positive_d1", "tested_positive_d2"]
    strong = set(resolve_features(["strong"]))
    family = {
        f"{n}_d{d}" for n in ("cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli") for d in (1, 2, 3)
    }
    assert strong == family | {"tested_positive_d1", "tested_positive_d2"}
    assert set(resolve_features(["strong_states"])) == strong | set(STATES)
    assert set(PRESETS) == {"all", "target_only", "strong", "strong_states"}


def test_explicit_features_keep_their_order() -> None:
    names = ["tested_positive_d2", "cli_d1", "WI", "AL"]
    assert resolve_features(names) == names
    np.testing.assert_array_equal(feature_columns(names), [75, 40, 39, 0])


def test_unknown_feature_suggests_close_matches() -> None:
    with pytest.raises(CovidRegError, match="unknown feature 'tested_positve_d2'") as info:
        resolve_features(["cli_d1", "tested_positve_d2"])
    assert "did you mean tested_positive_d2" in str(info.value)
    with pytest.raises(CovidRegError, match=r"unknown feature 'zzzz'.*covidreg features"):
        resolve_features(["zzzz"])


def test_preset_mixed_with_names_is_an_error() -> None:
    with pytest.raises(CovidRegError, match="preset 'strong' cannot be mixed"):
        resolve_features(["cli_d1", "strong"])


def test_duplicate_feature_is_an_error() -> None:
    with pytest.raises(CovidRegError, match="feature 'cli_d1' is listed twice"):
        resolve_features(["cli_d1", "ili_d1", "cli_d1"])


def test_no_features_is_an_error() -> None:
    with pytest.raises(CovidRegError, match="no features given"):
        resolve_features([])


# --- k-fold splitters ----------------------------------------------------------------------------

UNEVEN = grouped_states([17, 23, 30, 12])


def assert_partition(folds: list[tuple[np.ndarray, np.ndarray]], n_rows: int) -> None:
    """Every row is in exactly one validation fold; train and valid never share a row."""
    valid_all = np.concatenate([valid for _, valid in folds])
    np.testing.assert_array_equal(np.sort(valid_all), np.arange(n_rows))
    for train, valid in folds:
        assert len(np.intersect1d(train, valid)) == 0
        assert len(train) > 0 and len(valid) > 0
        assert len(np.unique(train)) == len(train)


SPLITTERS = [
    pytest.param(lambda k: BlockedKFold(k, purge=2), id="blocked"),
    pytest.param(lambda k: RandomKFold(k, seed=3), id="random"),
    pytest.param(InterleavedKFold, id="interleaved"),
]


@pytest.mark.parametrize("n_splits", [2, 3, 5, 7])
@pytest.mark.parametrize("make", SPLITTERS)
def test_kfold_partitions_rows(make: Callable[[int], BlockedKFold], n_splits: int) -> None:
    folds = list(make(n_splits).split(UNEVEN))
    assert len(folds) == n_splits
    assert_partition(folds, len(UNEVEN))


@pytest.mark.parametrize("n_splits", [2, 3, 5, 7])
def test_blocked_kfold_shares_no_day_between_train_and_valid(n_splits: int) -> None:
    folds = list(BlockedKFold(n_splits, purge=2).split(UNEVEN))
    position = within_state_position(UNEVEN)
    for train, valid in folds:
        assert overlap_days(UNEVEN, train, valid) == set()
        # nothing more is dropped than needed: each purged row does share a day with valid
        purged = np.setdiff1d(np.arange(len(UNEVEN)), np.union1d(train, valid))
        for row in purged:
            assert overlap_days(UNEVEN, np.array([row]), valid)
        for state in range(4):
            held = np.sort(position[valid][UNEVEN[valid] == state])
            assert len(held) > 0
            np.testing.assert_array_equal(held, np.arange(held[0], held[0] + len(held)))


def test_blocked_kfold_block_sizes_follow_array_split() -> None:
    folds = list(BlockedKFold(5, purge=2).split(UNEVEN))
    for state, count in enumerate([17, 23, 30, 12]):
        sizes = [int(np.sum(UNEVEN[valid] == state)) for _, valid in folds]
        assert sizes == [len(part) for part in np.array_split(np.arange(count), 5)]


def test_blocked_kfold_without_purge_shares_days() -> None:
    """purge=0 leaks days across the block edges: this is what the purge prevents."""
    folds = list(BlockedKFold(4, purge=0).split(UNEVEN))
    assert_partition(folds, len(UNEVEN))
    assert all(overlap_days(UNEVEN, train, valid) for train, valid in folds)
    for train, valid in folds:  # without purge, train is everything else
        np.testing.assert_array_equal(np.sort(np.union1d(train, valid)), np.arange(len(UNEVEN)))


def test_blocked_kfold_purge_one_still_leaks() -> None:
    folds = list(BlockedKFold(3, purge=1).split(UNEVEN))
    assert any(overlap_days(UNEVEN, train, valid) for train, valid in folds)


@pytest.mark.parametrize("n_splits", [2, 4, 9])
def test_interleaved_kfold_is_row_mod_k(n_splits: int) -> None:
    for k, (train, valid) in enumerate(InterleavedKFold(n_splits).split(UNEVEN)):
        rows = np.arange(len(UNEVEN))
        np.testing.assert_array_equal(valid, rows[rows % n_splits == k])
        np.testing.assert_array_equal(train, rows[rows % n_splits != k])


def test_random_kfold_is_seed_deterministic_and_balanced() -> None:
    first = list(RandomKFold(4, seed=7).split(UNEVEN))
    again = list(RandomKFold(4, seed=7).split(UNEVEN))
    other = list(RandomKFold(4, seed=8).split(UNEVEN))
    for (t1, v1), (t2, v2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(v1, v2)
    assert any(not np.array_equal(v1, v2) for (_, v1), (_, v2) in zip(first, other, strict=True))
    sizes = [len(valid) for _, valid in first]
    assert max(sizes) - min(sizes) <= 1
    # shuffled, not contiguous
    assert any(np.any(np.diff(valid) > 1) for _, valid in first)


@pytest.mark.parametrize("make", SPLITTERS)
@pytest.mark.parametrize("n_splits", [1, 0, -3], ids=lambda k: f"k={k}")
def test_kfold_needs_two_folds(make: Callable[[int], BlockedKFold], n_splits: int) -> None:
    with pytest.raises(CovidRegError, match=rf"integer >= 2, got {n_splits}"):
        list(make(n_splits).split(UNEVEN))


@pytest.mark.parametrize("make", SPLITTERS)
def test_kfold_more_folds_than_rows(make: Callable[[int], BlockedKFold]) -> None:
    states = grouped_states([3, 3])
    with pytest.raises(CovidRegError, match=r"number of folds \(7\) exceeds the number of rows"):
        list(make(7).split(states))


def test_blocked_kfold_needs_enough_rows_per_state() -> None:
    with pytest.raises(CovidRegError, match="a state has 12; use fewer folds"):
        list(BlockedKFold(13, purge=0).split(UNEVEN))


def test_blocked_kfold_fold_without_training_rows() -> None:
    with pytest.raises(CovidRegError, match="leaves no training rows"):
        list(BlockedKFold(2, purge=2).split(grouped_states([4, 4])))


def test_blocked_kfold_negative_purge() -> None:
    with pytest.raises(CovidRegError, match="purge must be >= 0, got -1"):
        BlockedKFold(3, purge=-1)


def test_make_kfold_by_name() -> None:
    assert isinstance(make_kfold("blocked", 3, purge=1), BlockedKFold)
    assert make_kfold("blocked", 3, purge=1).purge == 1
    assert isinstance(make_kfold("random", 3, seed=5), RandomKFold)
    assert make_kfold("random", 3, seed=5).seed == 5
    assert isinstance(make_kfold("interleaved", 3), InterleavedKFold)
    with pytest.raises(CovidRegError, match="unknown split 'stratified'"):
        make_kfold("stratified", 3)


# --- holdout split -------------------------------------------------------------------------------


def test_blocked_holdout_keeps_the_last_days_of_each_state() -> None:
    train, valid = holdout_split(UNEVEN, "blocked", valid_ratio=0.2, purge=2)
    position = within_state_position(UNEVEN)
    for state, count in enumerate([17, 23, 30, 12]):
        n_valid = round(count * 0.2)
        held = position[valid][UNEVEN[valid] == state]
        kept = position[train][UNEVEN[train] == state]
        np.testing.assert_array_equal(np.sort(held), np.arange(count - n_valid, count))
        np.testing.assert_array_equal(np.sort(kept), np.arange(count - n_valid - 2))
    assert overlap_days(UNEVEN, train, valid) == set()
    assert len(np.intersect1d(train, valid)) == 0


def test_blocked_holdout_without_purge_shares_days() -> None:
    train, valid = holdout_split(UNEVEN, "blocked", valid_ratio=0.2, purge=0)
    assert overlap_days(UNEVEN, train, valid)
    assert len(train) + len(valid) == len(UNEVEN)


def test_interleaved_holdout_is_every_tenth_row() -> None:
    n = len(UNEVEN)
    train, valid = holdout_split(UNEVEN, "interleaved", valid_ratio=0.1)
    np.testing.assert_array_equal(valid, np.arange(0, n, 10))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.arange(n))
    _, valid_fifth = holdout_split(UNEVEN, "interleaved", valid_ratio=0.2)
    np.testing.assert_array_equal(valid_fifth, np.arange(0, n, 5))


def test_random_holdout_is_seeded() -> None:
    n = len(UNEVEN)
    train, valid = holdout_split(UNEVEN, "random", valid_ratio=0.25, seed=1)
    assert len(valid) == round(n * 0.25)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.arange(n))
    again_train, again_valid = holdout_split(UNEVEN, "random", valid_ratio=0.25, seed=1)
    np.testing.assert_array_equal(valid, again_valid)
    np.testing.assert_array_equal(train, again_train)
    _, other_valid = holdout_split(UNEVEN, "random", valid_ratio=0.25, seed=2)
    assert not np.array_equal(valid, other_valid)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_holdout_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(CovidRegError, match="valid_ratio must be between 0 and 1"):
        holdout_split(UNEVEN, "random", valid_ratio=ratio)


def test_holdout_unknown_method_and_too_few_rows() -> None:
    with pytest.raises(CovidRegError, match="unknown split 'kfold'"):
        holdout_split(UNEVEN, "kfold", valid_ratio=0.2)
    with pytest.raises(CovidRegError, match="leaves 0 training and 1 validation rows"):
        holdout_split(np.array([0]), "random", valid_ratio=0.5)
    with pytest.raises(CovidRegError, match="leaves 0 training"):
        holdout_split(grouped_states([3, 3]), "blocked", valid_ratio=0.3, purge=2)


# --- property: the splitters fail only with CovidRegError ----------------------------------------

STATE_VECTORS = st.lists(st.integers(0, 5), max_size=40).map(lambda s: np.array(s, dtype=np.int64))


def split_once(method: str, states: np.ndarray, n_splits: int, purge: int) -> Iterator:
    return make_kfold(method, n_splits, seed=0, purge=purge).split(states)


@settings(max_examples=150, deadline=None, database=None)
@given(
    states=STATE_VECTORS,
    grouped=st.booleans(),
    method=st.sampled_from(["blocked", "random", "interleaved"]),
    n_splits=st.integers(-1, 12),
    purge=st.integers(0, 4),
)
def test_kfold_property(
    states: np.ndarray, grouped: bool, method: str, n_splits: int, purge: int
) -> None:
    if grouped:
        states = np.sort(states)
    try:
        folds = list(split_once(method, states, n_splits, purge))
    except CovidRegError:
        return
    assert len(folds) == n_splits
    assert_partition(folds, len(states))
    if method == "blocked" and purge >= 2:
        for train, valid in folds:
            assert overlap_days(states, train, valid) == set()
    if method != "blocked":
        for train, valid in folds:
            assert len(train) + len(valid) == len(states)


@settings(max_examples=150, deadline=None, database=None)
@given(
    states=STATE_VECTORS,
    method=st.sampled_from(["blocked", "random", "interleaved"]),
    valid_ratio=st.floats(-0.5, 1.5, allow_nan=False),
    purge=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_holdout_property(
    states: np.ndarray, method: str, valid_ratio: float, purge: int, seed: int
) -> None:
    try:
        train, valid = holdout_split(states, method, valid_ratio, seed=seed, purge=purge)
    except CovidRegError:
        return
    assert 0 < valid_ratio < 1
    assert len(train) > 0 and len(valid) > 0
    assert len(np.intersect1d(train, valid)) == 0
    assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
    assert train.max() < len(states) and valid.max() < len(states)
    if method == "blocked" and purge >= 2:
        assert overlap_days(states, train, valid) == set()


# --- standardisation -----------------------------------------------------------------------------


def test_standardization_uses_only_the_given_rows(hw01_files: dict[str, Path]) -> None:
    table = read_hw01_csv(hw01_files["train"])
    names = resolve_features(["strong_states"])
    columns = feature_columns(names)
    train_rows = np.flatnonzero(table.states < 2)  # states 0 and 1 only
    x_train = select(table, columns, train_rows).x
    mean, std = fit_standardization(x_train, names)
    continuous = np.array([name not in STATES for name in names])
    expected = x_train.astype(np.float64)
    np.testing.assert_allclose(mean[continuous], expected.mean(axis=0)[continuous], rtol=1e-12)
    np.testing.assert_allclose(std[continuous], expected.std(axis=0)[continuous], rtol=1e-12)
    full = select(table, columns).x.astype(np.float64)
    assert not np.allclose(mean[continuous], full.mean(axis=0)[continuous], rtol=1e-3)
    np.testing.assert_array_equal(mean[~continuous], 0.0)
    np.testing.assert_array_equal(std[~continuous], 1.0)
    z = (x_train - mean) / std
    np.testing.assert_allclose(z[:, continuous].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, continuous].std(axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("value", [0.3, 37.123, -1e5, 0.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_column_gets_std_one(value: float, dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = np.stack([np.full(2700, value), rng.normal(3, 2, 2700)], axis=1).astype(dtype)
    mean, std = fit_standardization(x, ["cli_d1", "ili_d1"])
    assert std[0] == 1.0
    np.testing.assert_allclose(mean[0], np.float64(dtype(value)), rtol=1e-12)
    np.testing.assert_allclose(std[1], x[:, 1].astype(np.float64).std(), rtol=1e-12)


# --- Dataset, sampler, loader --------------------------------------------------------------------


def test_dataset_indexing_with_a_tensor_returns_a_batch() -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10, dtype=np.float64) * 10
    dataset = HW01Dataset(x, y)
    assert len(dataset) == 10
    xb, yb = dataset[torch.tensor([7, 2, 2])]
    assert xb.dtype == torch.float32 and yb.dtype == torch.float32
    torch.testing.assert_close(xb, torch.tensor([[14.0, 15.0], [4.0, 5.0], [4.0, 5.0]]))
    torch.testing.assert_close(yb, torch.tensor([70.0, 20.0, 20.0]))
    x_only, empty = HW01Dataset(x)[torch.tensor([1])]
    torch.testing.assert_close(x_only, torch.tensor([[2.0, 3.0]]))
    assert empty.numel() == 0


def epochs_of(sampler: ShuffledBatches, n_epochs: int) -> list[list[torch.Tensor]]:
    return [list(sampler) for _ in range(n_epochs)]


def test_shuffled_batches_cover_every_row_once_per_epoch() -> None:
    sampler = ShuffledBatches(23, 5, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 5
    for batches in epochs_of(sampler, 3):
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(23))


def test_shuffled_batches_are_reproducible_and_change_each_epoch() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        sampler = ShuffledBatches(40, 8, True, torch.Generator().manual_seed(seed))
        return [torch.cat(batches) for batches in epochs_of(sampler, 3)]

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[1], first[2])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize(("n_rows", "batch_size"), [(23, 5), (40, 8), (7, 7), (3, 10)])
def test_epoch_order_is_what_iterating_gives(n_rows: int, batch_size: int) -> None:
    def sampler() -> ShuffledBatches:
        return ShuffledBatches(n_rows, batch_size, True, torch.Generator().manual_seed(3))

    iterated, ordered = sampler(), sampler()
    for _ in range(3):  # the generator moves on alike, epoch after epoch
        batches = list(iterated)
        order, sizes = ordered.epoch_order()
        assert sizes == [len(b) for b in batches]
        assert torch.equal(order, torch.cat(batches))


def test_unshuffled_batches_are_in_order() -> None:
    batches = list(ShuffledBatches(10, 4, shuffle=False, generator=None))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loader_with_workers_yields_the_same_batches() -> None:
    rng = np.random.default_rng(0)
    dataset = HW01Dataset(rng.normal(size=(37, 3)), rng.normal(size=37))

    def epochs(num_workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = make_loader(dataset, batch_size=8, shuffle=True, seed=5, num_workers=num_workers)
        return [batch for _ in range(2) for batch in loader]

    in_process, workers = epochs(0), epochs(2)
    assert len(in_process) == len(workers) == 10
    for (x0, y0), (x2, y2) in zip(in_process, workers, strict=True):
        assert torch.equal(x0, x2)
        assert torch.equal(y0, y2)
    first_epoch = torch.cat([y for _, y in in_process[:5]])
    assert torch.equal(first_epoch.sort().values, dataset.y.sort().values)
    assert not torch.equal(first_epoch, dataset.y)  # shuffled
