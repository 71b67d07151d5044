"""The layout read from a header: the three editions, custom layouts, pandas' names, presets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidreg.errors import CovidRegError
from covidreg.layout import (
    EDITIONS,
    HeaderError,
    Layout,
    layout_of_features,
    parse_header,
)
from covidreg.schema import frame_layout, read_hw01_csv
from tests.conftest import synthetic_rows, write_hw01_csv


@pytest.mark.parametrize("year", ["2021", "2022", "2023"])
def test_each_edition_is_read_from_its_header_and_named(year: str) -> None:
    layout = EDITIONS[year]
    header = list(layout.train_header)
    assert parse_header(header) == (layout, True)
    assert parse_header(header[:-1]) == (layout, False)
    assert layout.edition == year
    shapes = {"2021": (40, 3, 18), "2022": (37, 5, 16), "2023": (34, 3, 18)}[year]
    assert (len(layout.states), layout.n_days, len(layout.daily)) == shapes
    assert (
        layout.describe() == f"{year} layout ({shapes[0]} states, {shapes[1]} days x {shapes[2]})"
    )
    assert layout.target == f"tested_positive_d{shapes[1]}"
    assert layout.last_known == f"tested_positive_d{shapes[1] - 1}"
    assert len(layout.feature_names) == len(header) - 2


def test_the_2022_features_are_named_by_day() -> None:
    layout = EDITIONS["2022"]
    assert layout.feature_names[37:39] == ("cli_d1", "ili_d1")
    assert layout.feature_names[-1] == "worried_finances_d5"
    assert "tested_positive_d4" in layout.feature_names
    assert "tested_positive_d5" not in layout.feature_names


def test_any_header_of_the_shape_is_a_custom_layout() -> None:
    header = ["id", "north", "south", "cli", "rain", "tested_positive"] + [
        "cli", "rain", "tested_positive"
    ] * 3  # fmt: skip
    layout, has_target = parse_header(header)
    assert has_target and layout == Layout(
        ("north", "south"), ("cli", "rain", "tested_positive"), 4
    )
    assert layout.edition == "custom"
    assert layout.describe() == "custom layout (2 states, 4 days x 3)"
    assert layout.preset("target_only") == (
        "north", "south", "tested_positive_d1", "tested_positive_d2", "tested_positive_d3"
    )  # fmt: skip


def test_pandas_renamed_duplicates_are_the_same_layout() -> None:
    for layout in EDITIONS.values():
        assert parse_header(list(layout.pandas_header)) == (layout, True)
        assert frame_layout(layout.pandas_header[1:-1]) == (layout, False)
        assert frame_layout(layout.feature_names) == (layout, False)
        assert frame_layout([*layout.feature_names, layout.target]) == (layout, True)
        assert layout_of_features(layout.feature_names) == layout


def test_other_columns_are_no_layout() -> None:
    assert frame_layout(["x0", "x1"]) is None
    assert frame_layout(["cli_d3", "tested_positive_d1", "tested_positive_d2"]) is None
    assert layout_of_features(["AL", "cli_d1", "tested_positive_d1", "cli_d2"]) is not None
    assert layout_of_features(["AL", "cli_d1", "tested_positive_d1", "ili_d2"]) is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["ID", "AL", "cli", "tested_positive", "cli"], "column 1 is 'ID', expected 'id'"),
        (["id", "AL", "cli", "cli"], "no 'tested_positive' column"),
        (["id", "AL", "cli", "tested_positive"], "needs at least two days"),
        (["id", "cli", "tested_positive", "cli"], "no state columns"),
        (
            ["id", "AL", "cli", "ili", "tested_positive", "cli", "xli", "tested_positive"],
            "column 7 is 'xli', expected 'ili'",
        ),
        (
            ["id", "AL", "cli", "tested_positive", "ili", "tested_positive"],
            "column 5 is 'ili', which the first day's columns lack",
        ),
    ],
)
def test_a_broken_header_names_the_first_column_that_breaks_it(
    header: list[str], message: str
) -> None:
    with pytest.raises(HeaderError, match=message):
        parse_header(header)


def test_a_preset_needing_a_missing_column_is_one_clear_line() -> None:
    layout = Layout(("A", "B"), ("rain", "tested_positive"), 3)
    with pytest.raises(CovidRegError, match="preset 'strong' needs the daily column 'cli'"):
        layout.resolve_features(["strong"])
    assert layout.resolve_features(["all"]) == list(layout.feature_names)


@pytest.mark.parametrize("year", ["2022", "2023"])
def test_a_synthetic_file_of_each_edition_reads_back(year: str, tmp_path: Path) -> None:
    layout = EDITIONS[year]
    rows = synthetic_rows(3, 12, seed=4, layout=layout)
    path = write_hw01_csv(tmp_path / "train.csv", rows, layout=layout)
    table = read_hw01_csv(path, require_target=True)
    assert table.layout == layout and len(table) == 36
    np.testing.assert_allclose(table.target, rows[:, -1], rtol=1e-6)
    # pandas reads the same file under its own names: the same layout
    assert frame_layout(pd.read_csv(path).columns) == (layout, True)
    with open(path) as handle:
        assert next(csv.reader(handle)) == list(layout.train_header)


def test_a_checkpoint_layout_round_trips_as_plain_types() -> None:
    layout = EDITIONS["2022"]
    plain = layout.to_dict()
    assert all(isinstance(v, (list, int)) for v in plain.values())
    assert Layout.from_dict(plain) == layout
