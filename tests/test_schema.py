"""HW01 CSV validation, feature selection, standardisation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covidreg import schema as schema_module
from covidreg.errors import CovidRegError
from covidreg.layout import EDITIONS
from covidreg.schema import describe_files, fit_standardization, read_hw01_csv, select
from tests.conftest import (
    DAILY,
    FEATURE_NAMES,
    LAYOUT,
    PRESETS,
    STATES,
    TRAIN_HEADER,
    synthetic_rows,
    write_hw01_csv,
)

resolve_features = LAYOUT.resolve_features
feature_columns = LAYOUT.columns

Cells = list[list[str]]


def column_name(col: int) -> str:
    """Unique name of raw CSV column ``col`` (0 = id), written out independently of schema.py."""
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
        # day 1 lacks a column: day 2, which repeats day 1's names, breaks the shape
        [r"column 63 is 'wearing_mask', expected 'travel_outside_state'"],
        id="missing-column",
    ),
    pytest.param(
        edited(keep_columns(60)),
        None,
        [r"the header stops at column 60: day 2 lacks 'ili'"],
        id="truncated-columns",
    ),
    pytest.param(
        edited(append_column("extra", "0")),
        None,
        [r"column 96 is 'extra', expected 'cli'"],
        id="extra-column",
    ),
    pytest.param(
        edited(set_cell(1, 41, "cli_d1")),
        None,
        [r"column 60 is 'cli', which the first day's columns lack"],
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
    for name in ("covid.train.csv", "covid.test.csv", "covid_train.csv", "covid_test.csv"):
        with pytest.raises(CovidRegError, match="does not exist; pass the files with") as info:
            read_hw01_csv(tmp_path / "data" / name)
        assert "'covidreg fetch [--edition" in str(info.value) and "--from DIR" in str(info.value)


# --- what `covidreg features` says of a file ----------------------------------------------------

LAYOUT_2023 = EDITIONS["2023"]


def rows_2023(n_states: int, cut: dict[int, int]) -> np.ndarray:
    """20 windows of each state, state s broken into ``cut[s]`` + 1 stretches (two windows taken
    out per break: 3-day windows one apart still share a day)."""
    rows = synthetic_rows(n_states, 20, 0, LAYOUT_2023)
    gone = [s * 20 + 5 * (k + 1) + i for s, n in cut.items() for k in range(n) for i in (0, 1)]
    return np.delete(rows, gone, axis=0)


@pytest.mark.parametrize(
    ("n_states", "cut", "counts", "detail"),
    [
        (34, {}, ("34 stretches", "34 states"), " (each state one stretch)"),
        (1, {}, ("1 stretch", "1 state"), ""),
        (1, {0: 2}, ("3 stretches", "1 state"), ""),
        (2, {0: 1, 1: 1}, ("4 stretches", "2 states"), " (each state broken into 2)"),
        (3, {1: 1}, ("4 stretches", "3 states"), " (2 states one stretch, 1 broken into 2)"),
        (4, {0: 1, 2: 2, 3: 1}, ("8 stretches", "4 states"),
         " (1 state one stretch, 3 broken into 2 or 3)"),
    ],
    ids=["none-broken", "one-state", "one-state-broken", "all-broken", "one-broken", "mixed"],
)  # fmt: skip
def test_the_day_order_line_reads_for_every_count(
    n_states: int, cut: dict[int, int], counts: tuple[str, str], detail: str, tmp_path: Path
) -> None:
    rows = rows_2023(n_states, cut)
    path = write_hw01_csv(tmp_path / "covid_train.csv", rows, layout=LAYOUT_2023)
    table = read_hw01_csv(path)
    assert table.layout.edition == "2023"
    stretches, states = counts
    assert describe_files(table, None)[1] == (
        f"day order: recovered from the rows' shared days, {stretches} of consecutive windows "
        f"for {states}{detail}"
    )


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
    # a corrupted header can still be a well-formed one of another shape (a state column
    # dropped: a custom layout of 39 states); what was read is whole for the layout it names
    layout = table.layout
    assert table.features.shape == (len(table.ids), len(layout.feature_names))
    assert layout.n_days * len(layout.daily) - 1 + len(layout.states) == len(layout.feature_names)
    assert np.isfinite(table.features).all()
    assert len(np.unique(table.ids)) == len(table.ids)
    assert (table.features[:, : len(layout.states)].sum(axis=1) == 1).all()
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
    with mock.patch.object(schema_module, "_read_numbers", return_value=None):
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
    numbers = schema_module._read_numbers(write_cells(path, cells), len(TRAIN_HEADER))
    assert numbers is not None and numbers.shape == (10, len(TRAIN_HEADER))
    cells[3][7] = "x"
    assert schema_module._read_numbers(write_cells(path, cells), len(TRAIN_HEADER)) is None


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


# --- standardisation -----------------------------------------------------------------------------


def test_standardization_uses_only_the_given_rows(hw01_files: dict[str, Path]) -> None:
    table = read_hw01_csv(hw01_files["train"])
    names = resolve_features(["strong_states"])
    columns = feature_columns(names)
    train_rows = np.flatnonzero(table.states < 2)  # states 0 and 1 only
    x_train = select(table, columns, train_rows).x
    mean, std = fit_standardization(x_train, names, LAYOUT)
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
    mean, std = fit_standardization(x, ["cli_d1", "ili_d1"], LAYOUT)
    assert std[0] == 1.0
    np.testing.assert_allclose(mean[0], np.float64(dtype(value)), rtol=1e-12)
    np.testing.assert_allclose(std[1], x[:, 1].astype(np.float64).std(), rtol=1e-12)
