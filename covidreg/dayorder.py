"""The day order of HW01 rows, recovered from the data rather than from the file's row order.

Each row is a window of D consecutive days of one state. Within a state, row b follows row a
when a's days 2..D are b's days 1..D-1. A day is compared by its daily values without
``tested_positive`` (a test file lacks the last day's), together with its state: two windows
that hold the same day of a state hold the same values for it. Following these links gives
chains of consecutive windows; a chain breaks where a window is missing (a test window taken
out, a gap in the data), and each chain is a stretch of days of its own. The 2021 files list
each state's days in order; the 2022 and 2023 files are shuffled, and the order recovered here
is the same for the rows in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DayOrder:
    """Where each row's window lies: its stretch (chain of consecutive windows), its rank in
    that stretch, and the ids of its D days (equal ids: the same day of the same state)."""

    stretch: np.ndarray  # int64 [n]
    position: np.ndarray  # int64 [n], 0.. in day order within the stretch
    days: np.ndarray  # int64 [n, D]
    source: str  # "data": chained by shared days; "file": no window shares a day, file order

    def __len__(self) -> int:
        return len(self.stretch)

    @property
    def n_days(self) -> int:
        return self.days.shape[1]

    @property
    def n_stretches(self) -> int:
        return len(np.unique(self.stretch))

    def sorted(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` in day order: by stretch, then position. The same rows in any file order
        come out as the same windows in the same order, so what is computed on them (a sum, a
        batch order) does not depend on how the file was sorted."""
        return rows[np.lexsort((self.position[rows], self.stretch[rows]))]

    def take(self, rows: np.ndarray) -> DayOrder:
        """The order of a subset of rows: each stretch's rows ranked again, 0.. in day order."""
        stretch, position = self.stretch[rows], self.position[rows]
        order = np.lexsort((position, stretch))
        rank = np.empty(len(rows), dtype=np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(stretch[order])) + 1]
        counts = np.diff(np.r_[starts, len(rows)])
        rank[order] = np.arange(len(rows)) - np.repeat(starts, counts)
        return DayOrder(stretch, rank, self.days[rows], self.source)

    def sharing_days(self, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Of ``rows``, those whose window shares a day with a window of ``others``."""
        if len(rows) == 0 or len(others) == 0:
            return rows[:0]
        shared = np.isin(self.days[rows], self.days[others]).any(axis=1)
        return rows[shared]


def day_ids(blocks: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Ids [n, D] of each window's days for several sets of windows at once (a training and a
    test file), numbered alike: ``blocks`` are (states [n], daily values [n, D, k] without
    tested_positive) pairs."""
    keys = [
        np.concatenate([np.repeat(s[:, None, None], d.shape[1], axis=1), d], axis=2).reshape(
            -1, d.shape[2] + 1
        )
        for s, d in blocks
    ]
    _, inverse = np.unique(np.concatenate(keys), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out, at = [], 0
    for s, d in blocks:
        size = len(s) * d.shape[1]
        out.append(inverse[at : at + size].reshape(len(s), d.shape[1]).astype(np.int64))
        at += size
    return out


def recover_order(states: np.ndarray, days: np.ndarray) -> DayOrder:
    """Chain the windows by their shared days (``days``: ids [n, D] from ``day_ids``).

    Without any link (a file whose windows share no day), the rows of a state in file order
    are its one stretch, as a file sorted by day lists them.
    """
    n = len(states)
    head = {}  # days 1..D-1 of a window -> the window
    for row in range(n):
        head.setdefault(days[row, :-1].tobytes(), row)
    successor = np.full(n, -1, dtype=np.int64)
    has_predecessor = np.zeros(n, dtype=bool)
    for row in range(n):
        nxt = head.get(days[row, 1:].tobytes(), -1)
        if nxt >= 0 and nxt != row and not has_predecessor[nxt]:
            successor[row] = nxt
            has_predecessor[nxt] = True
    if not has_predecessor.any():
        return DayOrder(np.asarray(states, dtype=np.int64), _file_rank(states), days, source="file")
    chain = np.full(n, -1, dtype=np.int64)
    position = np.zeros(n, dtype=np.int64)
    # chains start at windows nothing precedes; any rows left over sit on a cycle (identical
    # windows), broken at their first row
    starts = [*np.flatnonzero(~has_predecessor)]
    first_rows = []
    for start in [*starts, *range(n)]:
        if chain[start] >= 0:
            continue
        row, rank = start, 0
        while row >= 0 and chain[row] < 0:
            chain[row], position[row] = len(first_rows), rank
            row, rank = successor[row], rank + 1
        first_rows.append(start)
    # stretches numbered by what they hold (state, then first day), not by where the file has
    # them: a shuffled file numbers them alike
    first_rows = np.array(first_rows)
    rank = np.empty(len(first_rows), dtype=np.int64)
    rank[np.lexsort((days[first_rows, 0], states[first_rows]))] = np.arange(len(first_rows))
    return DayOrder(rank[chain], position, days, source="data")


def _file_rank(states: np.ndarray) -> np.ndarray:
    position = np.empty(len(states), dtype=np.int64)
    for state in np.unique(states):
        rows = np.flatnonzero(states == state)
        position[rows] = np.arange(len(rows))
    return position
