"""Train/valid splits of the HW01 training rows: k folds or one holdout, of three kinds.

Each row of the HW01 files is a 3-day window of one state. Within a state, consecutive training
rows are consecutive windows sharing two of their three days, so row i's target (day-3
tested_positive) is row i+1's ``tested_positive_d2`` feature. A random or every-k-th-row split
therefore leaks validation answers into training; ``blocked`` holds out whole stretches of days
and purges the neighbouring windows.

Each kind is one rule choosing the validation rows: a stretch of every state's days (blocked), a
stretch of one seeded shuffle of the rows (random), every k-th row (interleaved). The k-fold
splitters apply it once per fold, ``holdout_split`` once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from covidreg.errors import CovidRegError


def within_state_position(states: np.ndarray) -> np.ndarray:
    """Rank of each row within its state in file order (the HW01 files list days in order)."""
    position = np.empty(len(states), dtype=np.int64)
    for state in np.unique(states):
        rows = np.flatnonzero(states == state)
        position[rows] = np.arange(len(rows))
    return position


def _check_n_splits(n_splits: int) -> int:
    if not isinstance(n_splits, int) or isinstance(n_splits, bool) or n_splits < 2:
        raise CovidRegError(f"number of folds must be an integer >= 2, got {n_splits!r}")
    return n_splits


def _check_enough_rows(n_splits: int, n_rows: int) -> None:
    if n_splits > n_rows:
        raise CovidRegError(
            f"number of folds ({n_splits}) exceeds the number of rows ({n_rows}); use at most "
            f"{n_rows} folds"
        )


# --- blocked ------------------------------------------------------------------------------------


def _blocked_fold(
    position: np.ndarray, start: np.ndarray, end: np.ndarray | None, purge: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows when each state's windows at positions [start, end) are held out.

    ``start`` and ``end`` are per row (their state's bounds); ``end`` None runs the block to the
    state's last day, so nothing after it is purged. Training loses the ``purge`` windows on each
    side of the block.
    """
    valid = position >= start
    near = position >= start - purge
    if end is not None:
        valid &= position < end
        near &= position < end + purge
    return np.flatnonzero(~near), np.flatnonzero(valid)


class BlockedKFold:
    """Fold k holds the k-th contiguous block of days of every state.

    The ``purge`` windows on each side of a state's block are left out of training: windows at
    most two rows apart share a day, so without purging the validation days leak into training.
    """

    def __init__(self, n_splits: int = 5, purge: int = 2) -> None:
        if purge < 0:
            raise CovidRegError(f"purge must be >= 0, got {purge}")
        self.n_splits = _check_n_splits(n_splits)
        self.purge = purge

    def split(self, states: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(states))
        smallest = np.bincount(states)[np.unique(states)].min()
        if self.n_splits > smallest:
            raise CovidRegError(
                f"blocked split with {self.n_splits} folds needs at least {self.n_splits} rows per "
                f"state, but a state has {smallest}; use fewer folds"
            )
        position = within_state_position(states)
        n_per_state = np.bincount(states)[states]
        size, extra = n_per_state // self.n_splits, n_per_state % self.n_splits
        for k in range(self.n_splits):
            # block k of a state with m windows spans [start, end): np.array_split's cut of m
            start = k * size + np.minimum(k, extra)
            end = start + size + (k < extra)
            train, valid = _blocked_fold(position, start, end, self.purge)
            if len(train) == 0:
                raise CovidRegError(
                    f"blocked split: fold {k + 1} of {self.n_splits} leaves no training rows "
                    f"after purging {self.purge} windows on each side; use fewer folds, a "
                    "smaller purge or more rows per state"
                )
            yield train, valid


# --- random -------------------------------------------------------------------------------------


def _shuffled_rows(n_rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_rows)


def _random_fold(n_rows: int, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows, each sorted, when the shuffled rows ``held_out`` are held out."""
    valid = np.zeros(n_rows, dtype=bool)
    valid[held_out] = True
    return np.flatnonzero(~valid), np.flatnonzero(valid)


class RandomKFold:
    """Rows shuffled with a seed and cut into folds (leaks across neighbouring windows)."""

    def __init__(self, n_splits: int = 5, seed: int = 0) -> None:
        self.n_splits = _check_n_splits(n_splits)
        self.seed = seed

    def split(self, states: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(states))
        order = _shuffled_rows(len(states), self.seed)
        for held_out in np.array_split(order, self.n_splits):
            yield _random_fold(len(states), held_out)


# --- interleaved --------------------------------------------------------------------------------


def _interleaved_fold(n_rows: int, every: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows when rows k, k + every, k + 2 * every... are held out."""
    is_valid = np.arange(n_rows) % every == k
    return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


class InterleavedKFold:
    """Row i goes to fold i mod K, as the course sample code's dev split (leaks)."""

    def __init__(self, n_splits: int = 5) -> None:
        self.n_splits = _check_n_splits(n_splits)

    def split(self, states: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(states))
        for k in range(self.n_splits):
            yield _interleaved_fold(len(states), self.n_splits, k)


# --- by name ------------------------------------------------------------------------------------


def _unknown_split(method: str) -> CovidRegError:
    return CovidRegError(f"unknown split '{method}'; use blocked, random or interleaved")


def make_kfold(
    method: str, n_splits: int, seed: int = 0, purge: int = 2
) -> BlockedKFold | RandomKFold | InterleavedKFold:
    if method == "blocked":
        return BlockedKFold(n_splits, purge)
    if method == "random":
        return RandomKFold(n_splits, seed)
    if method == "interleaved":
        return InterleavedKFold(n_splits)
    raise _unknown_split(method)


def holdout_split(
    states: np.ndarray, method: str, valid_ratio: float, seed: int = 0, purge: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One train/valid split holding out ``valid_ratio`` of the rows, by the k-fold rules.

    blocked: the last ``valid_ratio`` of each state's days (train on earlier days, validate on
    later ones), with ``purge`` windows before them dropped. random: a seeded shuffle.
    interleaved: every k-th row with k = round(1 / valid_ratio), rows 0, k, 2k... as in the
    course sample code.
    """
    n = len(states)
    if not 0 < valid_ratio < 1:
        raise CovidRegError(f"valid_ratio must be between 0 and 1, got {valid_ratio}")
    if method == "blocked":
        position = within_state_position(states)
        n_per_state = np.bincount(states)[states]
        n_valid = np.maximum(1, np.round(n_per_state * valid_ratio).astype(np.int64))
        train_idx, valid_idx = _blocked_fold(position, n_per_state - n_valid, None, purge)
    elif method == "random":
        n_valid = max(1, round(n * valid_ratio))
        train_idx, valid_idx = _random_fold(n, _shuffled_rows(n, seed)[:n_valid])
    elif method == "interleaved":
        # capped: a tiny ratio would overflow, and any k >= n already holds out only row 0
        every = max(2, round(min(1 / valid_ratio, n + 1)))
        train_idx, valid_idx = _interleaved_fold(n, every, 0)
    else:
        raise _unknown_split(method)
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise CovidRegError(
            f"the {method} split of {n} rows with valid_ratio={valid_ratio} leaves "
            f"{len(train_idx)} training and {len(valid_idx)} validation rows; use more data "
            "or another valid_ratio"
        )
    return train_idx, valid_idx


def stopping_split(
    states: np.ndarray, train_idx: np.ndarray, valid_ratio: float, purge: int
) -> tuple[np.ndarray, np.ndarray]:
    """``stop_on = "train_tail"``: the training rows the model fits and those it early-stops
    on, the last ``valid_ratio`` of each state's training days with ``purge`` windows before
    them dropped (the blocked holdout of the training rows), as row indices."""
    fit, stop = holdout_split(states[train_idx], "blocked", valid_ratio, 0, purge)
    return train_idx[fit], train_idx[stop]
