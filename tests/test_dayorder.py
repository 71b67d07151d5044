"""Day order from the data: chains of windows that share days, whatever the file's row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidreg.layout import EDITIONS
from covidreg.schema import read_hw01_csv, shared_day_rows
from covidreg.splits import make_splitter
from tests.conftest import synthetic_rows, write_hw01_csv


@pytest.mark.parametrize("year", ["2021", "2022", "2023"])
def test_each_state_in_day_order_is_one_stretch(year: str, tmp_path: Path) -> None:
    layout = EDITIONS[year]
    path = write_hw01_csv(tmp_path / "t.csv", synthetic_rows(3, 15, 2, layout), layout=layout)
    order = read_hw01_csv(path).order
    assert order.source == "data" and order.n_stretches == 3 and order.n_days == layout.n_days
    np.testing.assert_array_equal(order.stretch, np.repeat(np.arange(3), 15))
    np.testing.assert_array_equal(order.position, np.tile(np.arange(15), 3))


@pytest.mark.parametrize("year", ["2021", "2022"])
def test_shuffled_rows_give_the_same_order_and_the_same_folds(year: str, tmp_path: Path) -> None:
    layout = EDITIONS[year]
    rows = synthetic_rows(4, 20, 3, layout)
    in_order = read_hw01_csv(write_hw01_csv(tmp_path / "a.csv", rows, layout=layout))
    perm = np.random.default_rng(5).permutation(len(rows))
    # ids follow the rows: a shuffled file keeps each row's id
    lines = (tmp_path / "a.csv").read_text().splitlines()
    (tmp_path / "b.csv").write_text("\n".join([lines[0], *(lines[1 + i] for i in perm)]) + "\n")
    shuffled = read_hw01_csv(tmp_path / "b.csv")
    np.testing.assert_array_equal(shuffled.order.position, in_order.order.position[perm])
    for n_folds in (3, 5):
        splitter = make_splitter("blocked", n_folds)
        for (_, v1), (_, v2) in zip(
            splitter.split(in_order.order), splitter.split(shuffled.order), strict=True
        ):
            assert set(in_order.ids[v1]) == set(shuffled.ids[v2])


def test_a_missing_window_breaks_a_chain_and_auto_purge_crosses_the_gap(tmp_path: Path) -> None:
    layout = EDITIONS["2022"]  # 5-day windows: windows two apart still share 3 days
    rows = synthetic_rows(1, 30, 1, layout)
    kept = np.delete(rows, [14], axis=0)  # window 14 taken out (as into a test file)
    table = read_hw01_csv(write_hw01_csv(tmp_path / "t.csv", kept, layout=layout))
    order = table.order
    assert order.n_stretches == 2
    assert sorted(np.bincount(order.stretch).tolist()) == [14, 15]
    # the windows just before and after the gap share days, though in two stretches
    assert len(order.sharing_days(np.array([13]), np.array([14]))) == 1
    for train, valid in make_splitter("blocked", 3).split(order):
        assert len(order.sharing_days(train, valid)) == 0
    # a number of windows is only that number
    leaks = [
        len(order.sharing_days(t, v)) for t, v in make_splitter("blocked", 3, purge=1).split(order)
    ]
    assert max(leaks) > 0


def test_windows_that_share_no_day_keep_the_file_order(tmp_path: Path) -> None:
    rows = synthetic_rows(2, 10, 0)[::3]  # every third window: no two share a day
    table = read_hw01_csv(write_hw01_csv(tmp_path / "t.csv", rows))
    assert table.order.source == "file"
    np.testing.assert_array_equal(table.order.stretch, table.states)


def test_test_rows_sharing_a_day_with_training_rows_are_counted(tmp_path: Path) -> None:
    rows = synthetic_rows(2, 20, 0)
    train = read_hw01_csv(write_hw01_csv(tmp_path / "tr.csv", np.delete(rows, [5, 30], axis=0)))
    test = read_hw01_csv(write_hw01_csv(tmp_path / "te.csv", rows[[5, 30]], with_target=False))
    np.testing.assert_array_equal(shared_day_rows(train, test), [0, 1])
    far = synthetic_rows(2, 20, 9)  # other values: other days
    other = read_hw01_csv(write_hw01_csv(tmp_path / "o.csv", far[:3], with_target=False))
    assert len(shared_day_rows(train, other)) == 0
