"""Honest splits: the k folds and the holdout of each kind, their leaks and their errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covidreg.dayorder import DayOrder
from covidreg.errors import CovidRegError
from covidreg.splits import SPLITTERS as REGISTRY
from covidreg.splits import (
    BlockedKFold,
    InterleavedKFold,
    RandomKFold,
    TemporalHoldout,
    holdout_split,
    make_splitter,
    temporal_holdout,
)
from tests.conftest import windows_order


def overlap_days(order: DayOrder, a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    """(stretch, day) pairs covered by both row sets; the row at position p covers days
    p..p+D-1."""
    states, position = order.stretch, order.position

    def days(rows: np.ndarray) -> set[tuple[int, int]]:
        return {(int(states[r]), int(position[r]) + d) for r in rows for d in range(order.n_days)}

    return days(a) & days(b)


def grouped_states(counts: list[int], n_days: int = 3) -> DayOrder:
    """Windows as in the 2021 files: each state's together, in day order."""
    return windows_order(np.repeat(np.arange(len(counts)), counts), n_days)


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
    position = UNEVEN.position
    for train, valid in folds:
        assert overlap_days(UNEVEN, train, valid) == set()
        # nothing more is dropped than needed: each purged row does share a day with valid
        purged = np.setdiff1d(np.arange(len(UNEVEN)), np.union1d(train, valid))
        for row in purged:
            assert overlap_days(UNEVEN, np.array([row]), valid)
        for state in range(4):
            held = np.sort(position[valid][UNEVEN.stretch[valid] == state])
            assert len(held) > 0
            np.testing.assert_array_equal(held, np.arange(held[0], held[0] + len(held)))


def test_blocked_kfold_block_sizes_follow_array_split() -> None:
    folds = list(BlockedKFold(5, purge=2).split(UNEVEN))
    for state, count in enumerate([17, 23, 30, 12]):
        sizes = [int(np.sum(UNEVEN.stretch[valid] == state)) for _, valid in folds]
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


def test_blocked_kfold_needs_a_stretch_as_long_as_the_folds() -> None:
    with pytest.raises(CovidRegError, match="the longest has 30; use fewer folds"):
        list(BlockedKFold(31, purge=0).split(UNEVEN))
    # a stretch shorter than the folds validates in fewer of them: rows of 13 folds, not 12
    folds = list(BlockedKFold(13, purge=0).split(UNEVEN))
    assert_partition(folds, len(UNEVEN))


def test_blocked_kfold_fold_without_training_rows() -> None:
    with pytest.raises(CovidRegError, match="leaves no training rows"):
        list(BlockedKFold(2, purge=2).split(grouped_states([4, 4])))


def test_blocked_kfold_negative_purge() -> None:
    with pytest.raises(CovidRegError, match="purge must be auto or an integer >= 0, got -1"):
        BlockedKFold(3, purge=-1)


def test_make_kfold_by_name() -> None:
    assert isinstance(make_splitter("blocked", 3, purge=1), BlockedKFold)
    assert make_splitter("blocked", 3, purge=1).purge == 1
    assert isinstance(make_splitter("random", 3, seed=5), RandomKFold)
    assert make_splitter("random", 3, seed=5).seed == 5
    assert isinstance(make_splitter("interleaved", 3), InterleavedKFold)
    with pytest.raises(CovidRegError, match="unknown split or protocol 'stratified'"):
        make_splitter("stratified", 3)
    assert list(REGISTRY) == ["blocked", "random", "interleaved", "future", "past"]
    future = make_splitter("future", 3, purge=1)
    assert isinstance(future, TemporalHoldout)
    assert (future.side, future.n_windows, future.purge, future.n_splits) == ("future", 14, 1, 1)
    assert make_splitter("past").describe() == "past hold-out (each state's first 14 windows)"
    assert make_splitter("blocked", 4).describe() == "4 blocked folds"


@pytest.mark.parametrize("side", ["future", "past"])
def test_temporal_holdout_splitter_is_the_one_split_of_temporal_holdout(side: str) -> None:
    order, states = UNEVEN, UNEVEN.stretch
    (train, valid), *rest = TemporalHoldout(side, 5).split(order, states)
    assert rest == []
    expected_train, expected_valid = temporal_holdout(order, states, 5, side)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(valid, expected_valid)
    with pytest.raises(CovidRegError, match="needs each row's state"):
        next(TemporalHoldout(side).split(order))
    with pytest.raises(CovidRegError, match="side must be future or past"):
        TemporalHoldout("later")


# --- holdout split -------------------------------------------------------------------------------


def test_blocked_holdout_keeps_the_last_days_of_each_state() -> None:
    train, valid = holdout_split(UNEVEN, "blocked", valid_ratio=0.2, purge=2)
    position = UNEVEN.position
    for state, count in enumerate([17, 23, 30, 12]):
        n_valid = round(count * 0.2)
        held = position[valid][UNEVEN.stretch[valid] == state]
        kept = position[train][UNEVEN.stretch[train] == state]
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
        holdout_split(windows_order(np.array([0])), "random", valid_ratio=0.5)
    with pytest.raises(CovidRegError, match="leaves 0 training"):
        holdout_split(grouped_states([3, 3]), "blocked", valid_ratio=0.3, purge=2)


# --- property: the splitters fail only with CovidRegError ----------------------------------------

STATE_VECTORS = st.lists(st.integers(0, 5), max_size=40).map(lambda s: np.array(s, dtype=np.int64))


def split_once(method: str, order: DayOrder, n_splits: int, purge: int) -> Iterator:
    return make_splitter(method, n_splits, seed=0, purge=purge).split(order)


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
    order = windows_order(states)
    try:
        folds = list(split_once(method, order, n_splits, purge))
    except CovidRegError:
        return
    assert len(folds) == n_splits
    assert_partition(folds, len(states))
    if method == "blocked" and purge >= 2:
        for train, valid in folds:
            assert overlap_days(order, train, valid) == set()
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
    order = windows_order(states)
    try:
        train, valid = holdout_split(order, method, valid_ratio, seed=seed, purge=purge)
    except CovidRegError:
        return
    assert 0 < valid_ratio < 1
    assert len(train) > 0 and len(valid) > 0
    assert len(np.intersect1d(train, valid)) == 0
    if method == "blocked":  # each in day order: by stretch, then position
        for rows in (train, valid):
            key = order.stretch[rows] * (len(states) + 1) + order.position[rows]
            assert np.all(np.diff(key) > 0)
    else:
        assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
    assert train.max() < len(states) and valid.max() < len(states)
    if method == "blocked" and purge >= 2:
        assert overlap_days(order, train, valid) == set()


def test_the_stopping_split_is_the_blocked_tail_of_the_training_rows() -> None:
    from covidreg.splits import stopping_split

    states = np.repeat(np.arange(3), 20)
    order = windows_order(states)
    train_idx, valid_idx = holdout_split(order, "blocked", 0.25, purge=2)
    fit_idx, stop_idx = stopping_split(order, train_idx, 0.25, 2)
    assert not set(fit_idx) & set(stop_idx) and not (set(fit_idx) | set(stop_idx)) & set(valid_idx)
    assert set(fit_idx) | set(stop_idx) <= set(train_idx)
    position = order.position
    for state in range(3):
        fit = position[fit_idx[states[fit_idx] == state]]
        stop = position[stop_idx[states[stop_idx] == state]]
        # 13 training days: the last 3 (round(13 x 0.25)) stop, 2 purged before them
        assert list(stop) == [10, 11, 12] and list(fit) == list(range(8))


# --- temporal holdout ----------------------------------------------------------------------------


def two_stretch_state() -> tuple[DayOrder, np.ndarray]:
    """State 0 in one stretch of 30 windows; state 1 broken into stretches of 20 and 10
    windows whose relative order no shared day tells (as in the 2022 files)."""
    sizes, states = [30, 20, 10], np.array([0, 1, 1])
    stretch = np.repeat(np.arange(3), sizes)
    position = np.concatenate([np.arange(n) for n in sizes])
    days = (stretch * 100_000 + position)[:, None] + np.arange(3)
    return DayOrder(stretch, position, days, source="data"), states[stretch]


@pytest.mark.parametrize("side", ["future", "past"])
def test_temporal_holdout_holds_each_states_end_and_purges_its_neighbours(side: str) -> None:
    order = grouped_states([17, 23, 30])
    train, valid = temporal_holdout(order, order.stretch, 5, side)
    sizes = np.array([17, 23, 30])[order.stretch]
    from_end = sizes - 1 - order.position if side == "future" else order.position
    np.testing.assert_array_equal(np.sort(valid), np.flatnonzero(from_end < 5))
    # the D - 1 = 2 windows next to the block share a day with it: out of training
    np.testing.assert_array_equal(np.sort(train), np.flatnonzero(from_end >= 7))
    assert overlap_days(order, train, valid) == set()


def test_temporal_holdout_shares_a_states_windows_over_its_stretches() -> None:
    order, states = two_stretch_state()
    _, valid = temporal_holdout(order, states, 14, "future", purge=2)
    held = np.bincount(order.stretch[valid], minlength=3)
    # state 1's 14: 14 * 20/30 = 9.3 and 14 * 10/30 = 4.7, by largest remainder 9 and 5
    np.testing.assert_array_equal(held, [14, 9, 5])
    sizes = np.array([30, 20, 10])[order.stretch[valid]]
    assert np.all(order.position[valid] >= sizes - held[order.stretch[valid]])


def test_temporal_holdout_is_the_same_windows_for_shuffled_rows() -> None:
    order, states = two_stretch_state()
    perm = np.random.default_rng(0).permutation(len(order))
    shuffled = DayOrder(order.stretch[perm], order.position[perm], order.days[perm], "data")
    for side in ("future", "past"):
        train, valid = temporal_holdout(order, states, 14, side)
        train_s, valid_s = temporal_holdout(shuffled, states[perm], 14, side)
        np.testing.assert_array_equal(perm[train_s], train)  # and in day order
        np.testing.assert_array_equal(perm[valid_s], valid)


def test_temporal_holdout_purges_any_window_sharing_a_day() -> None:
    order = grouped_states([12, 12])
    days = order.days.copy()
    days[0] = days[23]  # state 0's first window holds state 1's last days (a stretch broke)
    order = DayOrder(order.stretch, order.position, days, "data")
    train, valid = temporal_holdout(order, order.stretch, 3, "future")
    assert 23 in valid and 0 not in train
    train, _ = temporal_holdout(order, order.stretch, 3, "future", purge=2)
    assert 0 in train  # a number of windows is only that number


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"side": "later"}, "side must be future or past"),
        ({"n_windows": 0}, "n_windows >= 1"),
        ({"n_windows": 11}, "leaves no training rows"),
    ],
)
def test_temporal_holdout_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    order = grouped_states([10, 10])
    with pytest.raises(CovidRegError, match=message):
        temporal_holdout(order, order.stretch, **kwargs)
