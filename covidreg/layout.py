"""The layout of an HW01 file, read from its header: states, daily columns, days per window.

Every edition of the homework has the same shape: an ``id``, a run of one-hot state columns,
then a block of daily columns that ends at ``tested_positive`` and repeats once per day of the
window. The target is the last day's ``tested_positive``; a test file lacks it. What differs
between editions (which states, which daily columns, how many days) is a value of this module's
``Layout``, read from each file and carried by the table, the model and the checkpoint, never a
constant of one year's file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidreg.errors import CovidRegError, did_you_mean

TESTED = "tested_positive"
# the cli/ili family: the survey columns that track tested_positive best in every edition
_CLI_FAMILY = ("cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli")
#: The feature presets, each a rule over a layout's columns (``Layout.presets``).
PRESET_HELP: dict[str, str] = {
    "all": "every input column",
    "target_only": "the states and tested_positive of the known days",
    "strong": "the cli/ili family of every day and tested_positive of the known days",
    "strong_states": "the states and the strong features",
}


@dataclass(frozen=True)
class Layout:
    """States, daily column names and days per window of an HW01 file."""

    states: tuple[str, ...]
    daily: tuple[str, ...]  # one day's columns, ending with tested_positive
    n_days: int

    # --- names ---

    @property
    def edition(self) -> str:
        """'2021', '2022' or '2023' for the course's files, else 'custom'."""
        for year, layout in EDITIONS.items():
            if layout == self:
                return year
        return "custom"

    def describe(self) -> str:
        """e.g. '2021 layout (40 states, 3 days x 18)'."""
        return (
            f"{self.edition} layout ({len(self.states)} states, {self.n_days} days x "
            f"{len(self.daily)})"
        )

    @property
    def daily_features(self) -> tuple[str, ...]:
        """Every daily column named by day (``cli_d1`` ...), the target last."""
        return tuple(f"{name}_d{day}" for day in range(1, self.n_days + 1) for name in self.daily)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The input features of a test file, named uniquely by day (the CSV repeats names)."""
        return self.states + self.daily_features[:-1]

    @property
    def target(self) -> str:
        """The last day's tested_positive, e.g. ``tested_positive_d3``."""
        return f"{TESTED}_d{self.n_days}"

    @property
    def last_known(self) -> str:
        """The day before the target's tested_positive: persistence's answer, delta's base."""
        return f"{TESTED}_d{self.n_days - 1}"

    @property
    def train_header(self) -> tuple[str, ...]:
        """The CSV header of a training file (a test file lacks the last column)."""
        return ("id", *self.states, *(self.daily * self.n_days))

    @property
    def pandas_header(self) -> tuple[str, ...]:
        """The column names ``pandas.read_csv`` gives a training file (cli, cli.1...)."""
        return tuple(_pandas_names(self.train_header))

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """Positions of the named features among ``feature_names`` (a table's columns)."""
        index = {name: i for i, name in enumerate(self.feature_names)}
        return np.array([index[name] for name in names], dtype=np.int64)

    # --- presets ---

    def preset(self, name: str) -> tuple[str, ...]:
        """The features of a preset; one that needs a column this layout lacks is an error."""
        known = tuple(f"{TESTED}_d{day}" for day in range(1, self.n_days))
        if name == "all":
            return self.feature_names
        if name == "target_only":
            return (*self.states, *known)
        if name not in ("strong", "strong_states"):
            raise CovidRegError(f"unknown feature preset '{name}'; use {', '.join(PRESET_HELP)}")
        missing = [c for c in _CLI_FAMILY if c not in self.daily]
        if missing:
            raise CovidRegError(
                f"feature preset '{name}' needs the daily column '{missing[0]}', which the "
                f"{self.describe()} lacks; use the preset all or target_only, or name features"
            )
        strong = (
            *(f"{c}_d{day}" for day in range(1, self.n_days + 1) for c in _CLI_FAMILY),
            *known,
        )
        return (*self.states, *strong) if name == "strong_states" else strong

    def resolve_features(self, spec: Sequence[str]) -> list[str]:
        """Feature names from a preset name or an explicit list of names (in the given order)."""
        if len(spec) == 0:
            raise CovidRegError(
                f"no features given; use a preset ({', '.join(PRESET_HELP)}) or names"
            )
        if len(spec) == 1 and spec[0] in PRESET_HELP:
            return list(self.preset(spec[0]))
        names: list[str] = []
        for name in spec:
            if name in PRESET_HELP:
                raise CovidRegError(
                    f"feature preset '{name}' cannot be mixed with feature names; use it alone"
                )
            if name not in self.feature_names:
                hint = did_you_mean(name, self.feature_names) or "see 'covidreg features'"
                raise CovidRegError(
                    f"unknown feature '{name}' for the {self.describe()}; presets: "
                    f"{', '.join(PRESET_HELP)}; {hint}"
                )
            if name in names:
                raise CovidRegError(f"feature '{name}' is listed twice")
            names.append(name)
        return names

    # --- plain types, for checkpoints ---

    def to_dict(self) -> dict[str, Any]:
        return {"states": list(self.states), "daily": list(self.daily), "n_days": self.n_days}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Layout:
        return cls(
            tuple(str(s) for s in values["states"]),
            tuple(str(d) for d in values["daily"]),
            int(values["n_days"]),
        )


def _pandas_names(header: Sequence[str]) -> list[str]:
    """The names ``pandas.read_csv`` gives a header with repeated names (cli, cli.1...)."""
    seen: dict[str, int] = {}
    names = []
    for name in header:
        count = seen.get(name, 0)
        names.append(name if count == 0 else f"{name}.{count}")
        seen[name] = count + 1
    return names


_PANDAS_SUFFIX = re.compile(r"\.\d+$")
_DAY_FEATURE = re.compile(r".+_d\d+")


class HeaderError(CovidRegError):
    """A header that is not of the HW01 shape; the message names the first column that breaks
    it (1-based ``column``, for callers that add the file's name)."""


def _shape_error(pos: int, got: str, want: str, why: str) -> HeaderError:
    return HeaderError(f"column {pos + 1} is '{got}', expected '{want}' ({why})")


def parse_header(header: Sequence[str], has_target: bool | None = None) -> tuple[Layout, bool]:
    """The layout of an HW01 header, and whether it has the target column.

    ``id``, the state columns, then a daily block ending at the first ``tested_positive`` and
    repeated once per day; a training file has every day whole, a test file lacks the last
    column. ``has_target`` decides a header that fits both (one daily column); None: training.
    pandas' renamed duplicates (``cli.1``) are read as the names they repeat.
    """
    names = [_PANDAS_SUFFIX.sub("", str(n)) if "." in str(n) else str(n) for n in header]
    if not names or names[0] != "id":
        raise _shape_error(0, names[0] if names else "", "id", "an HW01 file starts with its ids")
    if TESTED not in names:
        raise HeaderError(
            f"no '{TESTED}' column; an HW01 header is id, the states, then the daily columns "
            f"ending with {TESTED}, once per day"
        )
    end = names.index(TESTED)  # the first day's block ends here
    if end + 1 >= len(names):
        raise HeaderError(
            f"the header ends at the first '{TESTED}' (column {end + 1}): a window needs at "
            "least two days of the daily columns"
        )
    first = names[end + 1]  # the second day's first column starts the block again
    if first not in names[1:end]:
        raise HeaderError(
            f"column {end + 2} is '{header[end + 1]}', which the first day's columns lack "
            f"(after '{TESTED}' in column {end + 1} the second day repeats the first day's names)"
        )
    start = names.index(first, 1)
    states, daily = tuple(names[1:start]), tuple(names[start : end + 1])
    if not states:
        raise HeaderError("no state columns between 'id' and the daily columns")
    rest = len(names) - start
    whole, partial = rest % len(daily) == 0, (rest + 1) % len(daily) == 0
    target = whole if has_target is None or not (whole and partial) else has_target
    if not (whole or partial):
        target = True
    n_days = -(-rest // len(daily))
    expected = ("id", *states, *(daily * n_days))[: len(names) if not target else None]
    for pos, (got, want) in enumerate(zip(names, expected, strict=False)):
        if got != want:
            raise _shape_error(pos, header[pos], want, "each day repeats the daily columns")
    if len(names) < len(expected):
        pos = len(names)
        raise HeaderError(
            f"the header stops at column {pos}: day {n_days} lacks '{expected[pos]}' and what "
            "follows it"
        )
    return Layout(states, daily, n_days), target


def layout_of_features(names: Sequence[str]) -> Layout | None:
    """The layout whose features (``cli_d1`` ..., the target optional) are ``names``, or None."""
    names = [str(n) for n in names]
    first = next((i for i, n in enumerate(names) if n.endswith("_d1")), None)
    if first is None or f"{TESTED}_d1" not in names[first:]:
        return None
    end = names.index(f"{TESTED}_d1", first)
    daily = tuple(n[: -len("_d1")] for n in names[first : end + 1])
    states = tuple(names[:first])
    last_day = re.fullmatch(r".*_d(\d+)", names[-1])
    if last_day is None or not states or any(_DAY_FEATURE.fullmatch(s) for s in states):
        return None
    # the last name is the target (day N) or day N's last input column (a test file's)
    for n_days in (int(last_day.group(1)), int(last_day.group(1)) + 1):
        layout = Layout(states, daily, n_days)
        if n_days >= 2 and names in (
            list(layout.feature_names),
            [*layout.feature_names, layout.target],
        ):
            return layout
    return None


_STATES_2021 = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "FL", "GA", "ID", "IL", "IN", "IA", "KS",
    "KY", "LA", "MD", "MA", "MI", "MN", "MS", "MO", "NE", "NV", "NJ", "NM", "NY", "NC",
    "OH", "OK", "OR", "PA", "RI", "SC", "TX", "UT", "VA", "WA", "WV", "WI",
)  # fmt: skip
_SURVEY_2021 = (
    "cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli", "wearing_mask", "travel_outside_state",
    "work_outside_home", "shop", "restaurant", "spent_time", "large_event", "public_transit",
    "anxious", "depressed", "felt_isolated", "worried_become_ill", "worried_finances",
)  # fmt: skip
_STATES_2022 = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "FL", "GA", "ID", "IL", "IN", "IA", "KS",
    "KY", "LA", "MD", "MA", "MI", "MN", "MS", "MO", "NE", "NV", "NJ", "NM", "NY", "NC",
    "OH", "OK", "OR", "RI", "SC", "TX", "UT", "VA", "WA",
)  # fmt: skip
_SURVEY_2022 = (
    "cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli", "wearing_mask", "travel_outside_state",
    "work_outside_home", "shop", "restaurant", "spent_time", "large_event", "public_transit",
    "anxious", "depressed", "worried_finances",
)  # fmt: skip
_STATES_2023 = (
    "AL", "AZ", "CA", "CO", "CT", "FL", "GA", "IL", "IN", "IA", "KS", "KY", "LA", "ME",
    "MD", "MA", "MI", "MN", "MO", "NJ", "NM", "NY", "NC", "OH", "OK", "OR", "PA", "SC",
    "TN", "TX", "VA", "WA", "WV", "WI",
)  # fmt: skip
_SURVEY_2023 = (
    "cli", "ili", "wnohh_cmnty_cli", "wbelief_masking_effective",
    "wbelief_distancing_effective", "wcovid_vaccinated_friends", "wlarge_event_indoors",
    "wothers_masked_public", "wothers_distanced_public", "wshop_indoors", "wrestaurant_indoors",
    "wworried_catch_covid", "hh_cmnty_cli", "nohh_cmnty_cli", "wearing_mask_7d",
    "public_transit", "worried_finances",
)  # fmt: skip

#: The course's three editions, to name a file's layout and for ``covidreg fetch --edition``;
#: nothing reads one of them as the layout of a file.
EDITIONS: dict[str, Layout] = {
    "2021": Layout(_STATES_2021, (*_SURVEY_2021, TESTED), 3),
    "2022": Layout(_STATES_2022, (*_SURVEY_2022, TESTED), 5),
    "2023": Layout(_STATES_2023, (*_SURVEY_2023, TESTED), 3),
}
#: What a checkpoint saved before layouts were recorded was trained on.
EARLIER_LAYOUT = "2021"
