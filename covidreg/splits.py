"""Train/valid splits of the HW01 training rows: k folds or one holdout, of three kinds.

Each row of the HW01 files is a window of D consecutive days of one state (2021: 3, 2022: 5).
Consecutive windows share D - 1 days, so a window's target (day-D tested_positive) is the next
window's day D-1 ``tested_positive``. A random or every-k-th-row split therefore leaks validation
answers into training; ``blocked`` holds out whole stretches of days and purges the windows that
share a day with them.

The splitters take the rows' ``DayOrder`` (``covidreg.dayorder``): the stretches of consecutive
windows and each row's place in day order, recovered from the data, so a shuffled file gives
the same blocked folds as the same rows in day order. Each kind is one rule choosing the
validation rows: a block of every stretch's days (blocked), a stretch of one seeded shuffle of
the rows (random), every k-th row of the file (interleaved). The k-fold splitters apply it once
per fold, ``holdout_split`` once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from covidreg.config import AUTO_PURGE
from covidreg.dayorder import DayOrder
from covidreg.errors import CovidRegError


def _check_purge(purge: int | str) -> None:
    if purge != AUTO_PURGE and (isinstance(purge, bool) or not isinstance(purge, int) or purge < 0):
        raise CovidRegError(f"purge must be auto or an integer >= 0, got {purge!r}")


def resolve_purge(purge: int | str, order: DayOrder) -> int:
    """Windows dropped on each side of a validation block; auto: D - 1, those sharing a day."""
    _check_purge(purge)
    return order.n_days - 1 if purge == AUTO_PURGE else int(purge)


def _purged(
    order: DayOrder, purge: int | str, split: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``purge = auto`` also drops every other training window that shares a day with a
    validation window: where a stretch broke off a window or two before another one began.
    A number of windows is only that number (``purge = 0`` shows the leak)."""
    train, valid = split
    if purge != AUTO_PURGE:
        return train, valid
    return train[~np.isin(train, order.sharing_days(train, valid))], valid


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
    order: DayOrder, start: np.ndarray, end: np.ndarray | None, purge: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows (each in day order) when each stretch's windows at positions
    [start, end) are held out.

    ``start`` and ``end`` are per row (their stretch's bounds); ``end`` None runs the block to
    the stretch's last day, so nothing after it is purged. Training loses the ``purge`` windows
    on each side of the block.
    """
    position = order.position
    valid = position >= start
    near = position >= start - purge
    if end is not None:
        valid &= position < end
        near &= position < end + purge
    return order.sorted(np.flatnonzero(~near)), order.sorted(np.flatnonzero(valid))


def _stretch_sizes(order: DayOrder) -> np.ndarray:
    """Each row's stretch's number of rows."""
    _, inverse, counts = np.unique(order.stretch, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


class BlockedKFold:
    """Fold k holds the k-th contiguous block of days of every stretch (a state's chain of
    consecutive windows; one per state in the 2021 files).

    The ``purge`` windows on each side of a block are left out of training (auto: D - 1, the
    windows that share a day with it, and any other window sharing a day with the block):
    without purging the validation days leak into training.
    """

    def __init__(self, n_splits: int = 5, purge: int | str = AUTO_PURGE) -> None:
        _check_purge(purge)
        self.n_splits = _check_n_splits(n_splits)
        self.purge = purge

    def describe(self) -> str:
        return f"{self.n_splits} blocked folds"

    def holdout(self, order: DayOrder, valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """The last ``valid_ratio`` of each stretch's days (train on earlier days, validate on
        later ones), the ``purge`` windows before them dropped."""
        n_per_stretch = _stretch_sizes(order)
        n_valid = np.maximum(1, np.round(n_per_stretch * valid_ratio).astype(np.int64))
        windows = resolve_purge(self.purge, order)
        return _purged(
            order, self.purge, _blocked_fold(order, n_per_stretch - n_valid, None, windows)
        )

    def split(
        self, order: DayOrder, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(order))
        n_per_stretch = _stretch_sizes(order)
        if self.n_splits > n_per_stretch.max():
            raise CovidRegError(
                f"blocked split with {self.n_splits} folds needs a stretch of at least "
                f"{self.n_splits} consecutive windows, but the longest has "
                f"{n_per_stretch.max()}; use fewer folds"
            )
        windows = resolve_purge(self.purge, order)
        size, extra = n_per_stretch // self.n_splits, n_per_stretch % self.n_splits
        for k in range(self.n_splits):
            # block k of a stretch with m windows spans [start, end): np.array_split's cut of m
            start = k * size + np.minimum(k, extra)
            end = start + size + (k < extra)
            train, valid = _purged(order, self.purge, _blocked_fold(order, start, end, windows))
            if len(train) == 0:
                raise CovidRegError(
                    f"blocked split: fold {k + 1} of {self.n_splits} leaves no training rows "
                    f"after purging {windows} windows on each side; use fewer folds, a "
                    "smaller purge or more rows per stretch"
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

    def describe(self) -> str:
        return f"{self.n_splits} random folds"

    def holdout(self, order: DayOrder, valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """``valid_ratio`` of the rows of one seeded shuffle."""
        n = len(order)
        n_valid = max(1, round(n * valid_ratio))
        return _random_fold(n, _shuffled_rows(n, self.seed)[:n_valid])

    def split(
        self, order: DayOrder, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(order))
        shuffled = _shuffled_rows(len(order), self.seed)
        for held_out in np.array_split(shuffled, self.n_splits):
            yield _random_fold(len(order), held_out)


# --- interleaved --------------------------------------------------------------------------------


def _interleaved_fold(n_rows: int, every: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows when rows k, k + every, k + 2 * every... are held out."""
    is_valid = np.arange(n_rows) % every == k
    return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


class InterleavedKFold:
    """Row i goes to fold i mod K, as the course sample code's dev split (leaks)."""

    def __init__(self, n_splits: int = 5) -> None:
        self.n_splits = _check_n_splits(n_splits)

    def describe(self) -> str:
        return f"{self.n_splits} interleaved folds"

    def holdout(self, order: DayOrder, valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """Every k-th row with k = round(1 / valid_ratio), rows 0, k, 2k..., as the course
        sample code."""
        n = len(order)
        # capped: a tiny ratio would overflow, and any k >= n already holds out only row 0
        every = max(2, round(min(1 / valid_ratio, n + 1)))
        return _interleaved_fold(n, every, 0)

    def split(
        self, order: DayOrder, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _check_enough_rows(self.n_splits, len(order))
        for k in range(self.n_splits):
            yield _interleaved_fold(len(order), self.n_splits, k)


def holdout_split(
    order: DayOrder,
    method: str,
    valid_ratio: float,
    seed: int = 0,
    purge: int | str = AUTO_PURGE,
) -> tuple[np.ndarray, np.ndarray]:
    """One train/valid split holding out ``valid_ratio`` of the rows: the ``holdout`` of the
    k-fold splitter ``method`` names (blocked: each stretch's last days; random: a seeded
    shuffle; interleaved: every k-th row, as in the course sample code)."""
    n = len(order)
    if not 0 < valid_ratio < 1:
        raise CovidRegError(f"valid_ratio must be between 0 and 1, got {valid_ratio}")
    if method not in KFOLD_SPLITS:
        raise CovidRegError(f"unknown split '{method}'; use {', '.join(KFOLD_SPLITS)}")
    splitter = make_splitter(method, seed=seed, purge=purge)
    train_idx, valid_idx = splitter.holdout(order, valid_ratio)
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise CovidRegError(
            f"the {method} split of {n} rows with valid_ratio={valid_ratio} leaves "
            f"{len(train_idx)} training and {len(valid_idx)} validation rows; use more data "
            "or another valid_ratio"
        )
    return train_idx, valid_idx


def stopping_split(
    order: DayOrder, train_idx: np.ndarray, valid_ratio: float, purge: int | str
) -> tuple[np.ndarray, np.ndarray]:
    """``stop_on = "train_tail"``: the training rows the model fits and those it early-stops
    on, the last ``valid_ratio`` of each stretch's training days with ``purge`` windows before
    them dropped (the blocked holdout of the training rows), as row indices."""
    fit, stop = holdout_split(order.take(train_idx), "blocked", valid_ratio, 0, purge)
    return train_idx[fit], train_idx[stop]


# --- temporal holdout ---------------------------------------------------------------------------

SIDES = ("future", "past")
#: Windows per state a temporal holdout holds out: two weeks of days, as the Results page.
HOLDOUT_WINDOWS = 14


def _windows_per_stretch(
    order: DayOrder, states: np.ndarray, n_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's stretch's size and its share of its state's ``n_windows``: in proportion to
    the sizes of the state's stretches, by largest remainder (ties to the lower stretch)."""
    sizes = _stretch_sizes(order)
    share: dict[int, int] = {}
    for state in np.unique(states):
        mine = np.unique(order.stretch[states == state])
        size = np.array([np.sum(order.stretch == s) for s in mine], dtype=np.int64)
        total = min(n_windows, int(size.sum()))
        want = total * size / size.sum()
        count = np.floor(want).astype(np.int64)
        count[np.argsort(count - want, kind="stable")[: total - int(count.sum())]] += 1
        share.update(zip(mine.tolist(), count.tolist(), strict=True))
    return sizes, np.array([share[s] for s in order.stretch.tolist()], dtype=np.int64)


def temporal_holdout(
    order: DayOrder,
    states: np.ndarray,
    n_windows: int = HOLDOUT_WINDOWS,
    side: str = "future",
    purge: int | str = AUTO_PURGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Days no model has seen: per state, the last (``side = "future"``) or first (``"past"``)
    ``n_windows`` windows of its day order held out, the windows sharing a day with them
    purged (``purge``, as the blocked splits), the rest to train on; row indices in day order.

    A state whose rows break into several stretches (a 2022 file: the test windows taken out
    between them) has no known order of its stretches: neither its training rows nor the test
    windows link them. Each stretch is then a run of the state's days of its own, and gives the
    end (or start) of its run, its share of the ``n_windows`` in proportion to its length. With
    one stretch per state (the 2021 files) this is the state's last (first) ``n_windows``.
    """
    if side not in SIDES:
        raise CovidRegError(f"temporal holdout side must be future or past, got {side!r}")
    if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
        raise CovidRegError(f"temporal holdout needs n_windows >= 1, got {n_windows!r}")
    windows = resolve_purge(purge, order)
    sizes, held = _windows_per_stretch(order, np.asarray(states), n_windows)
    # measured from the held-out end: 0 at the stretch's last (future) or first (past) window
    from_end = sizes - 1 - order.position if side == "future" else order.position
    valid = from_end < held
    near = (from_end < held + windows) & (held > 0)
    train, valid_idx = _purged(
        order, purge, (order.sorted(np.flatnonzero(~near)), order.sorted(np.flatnonzero(valid)))
    )
    if len(train) == 0:
        raise CovidRegError(
            f"temporal holdout of {n_windows} windows per state leaves no training rows; "
            "hold out fewer windows"
        )
    return train, valid_idx


class TemporalHoldout:
    """One split of days no model has seen: per state (``groups``), the last (``side =
    "future"``) or first (``"past"``) ``n_windows`` windows held out, their neighbours purged
    (``temporal_holdout``); the Results page's hold-outs, which resemble the Kaggle test."""

    n_splits = 1

    def __init__(
        self, side: str = "future", n_windows: int = HOLDOUT_WINDOWS, purge: int | str = AUTO_PURGE
    ) -> None:
        if side not in SIDES:
            raise CovidRegError(f"temporal holdout side must be future or past, got {side!r}")
        if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
            raise CovidRegError(f"temporal holdout needs n_windows >= 1, got {n_windows!r}")
        _check_purge(purge)
        self.side, self.n_windows, self.purge = side, n_windows, purge

    def describe(self) -> str:
        end = "last" if self.side == "future" else "first"
        return f"{self.side} hold-out (each state's {end} {self.n_windows} windows)"

    def split(
        self, order: DayOrder, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if groups is None:
            raise CovidRegError("a temporal holdout needs each row's state (groups)")
        yield temporal_holdout(order, groups, self.n_windows, self.side, self.purge)


# --- by name ------------------------------------------------------------------------------------

Splitter = BlockedKFold | RandomKFold | InterleavedKFold | TemporalHoldout

#: Every splitter by name, built from (n_splits, seed, purge): the k-fold kinds, then the
#: temporal hold-outs (one split each, whatever n_splits).
SPLITTERS: dict[str, Callable[[int, int, int | str], Splitter]] = {
    "blocked": lambda n_splits, seed, purge: BlockedKFold(n_splits, purge),
    "random": lambda n_splits, seed, purge: RandomKFold(n_splits, seed),
    "interleaved": lambda n_splits, seed, purge: InterleavedKFold(n_splits),
    "future": lambda n_splits, seed, purge: TemporalHoldout("future", purge=purge),
    "past": lambda n_splits, seed, purge: TemporalHoldout("past", purge=purge),
}
#: The splits a training run validates on (the config's ``split``): the k-fold kinds.
KFOLD_SPLITS = ("blocked", "random", "interleaved")


def make_splitter(
    name: str, n_splits: int = 5, seed: int = 0, purge: int | str = AUTO_PURGE
) -> Splitter:
    """The splitter ``name`` names (``SPLITTERS``)."""
    if name not in SPLITTERS:
        raise CovidRegError(f"unknown split or protocol '{name}'; use {', '.join(SPLITTERS)}")
    return SPLITTERS[name](n_splits, seed, purge)
