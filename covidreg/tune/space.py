"""The search-space file: ``[space.<config key>]`` tables and ``[fixed]`` keys, checked, and
the config each trial draws from it."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from covidreg.config import (
    FIELDS,
    Config,
    coerce_value,
    field_kind,
    from_dict,
    is_list,
    resolve_config,
    to_dict,
)
from covidreg.errors import CovidRegError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "zero_below", "values"),
    "int": ("type", "low", "high", "log", "step", "values"),
    "categorical": ("type", "choices", "values"),
}


@dataclass(frozen=True)
class ParamSpec:
    """How one config key is searched. Categorical choices are kept as labels ("32,8")."""

    key: str
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    # a log-uniform range cannot hold 0: values drawn below this one are used as 0
    zero_below: float | None = None
    choices: tuple[Any, ...] = ()
    values: tuple[Any, ...] = ()  # the grid (--sampler grid)

    def config_value(self, label: Any) -> Any:
        value = coerce_value(self.key, label, "search space", parse_text=True)
        if self.zero_below is not None and value < self.zero_below:
            return 0.0
        return value

    def suggest(self, trial: optuna.Trial, grid: bool) -> Any:
        """Draw this key's value for ``trial``; the grid sampler picks among ``values``."""
        if grid or self.kind == "categorical":
            labels = list(self.values if grid else self.choices)
            return self.config_value(trial.suggest_categorical(self.key, labels))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=step
            )
        drawn = trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        return self.config_value(drawn)

    def candidates(self) -> list[Any]:
        """Config values worth checking before a study: every choice, value and bound."""
        labels = [*self.choices, *self.values]
        if self.kind != "categorical":
            labels += [self.low, self.high]
        return [self.config_value(label) for label in dict.fromkeys(labels)]


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, ParamSpec]
    fixed: dict[str, Any]
    source: str

    def grid(self) -> dict[str, list[Any]]:
        return {key: list(spec.values) for key, spec in self.params.items()}

    def grid_size(self) -> int:
        return math.prod(len(spec.values) for spec in self.params.values())

    def max_epochs(self, cfg: Config) -> int:
        spec = self.params.get("epochs")
        return int(max(spec.candidates())) if spec is not None else cfg.epochs


def _label(key: str, value: Any, bad: Callable[[str], CovidRegError]) -> Any:
    """One categorical choice as an Optuna-storable label: lists become "a,b" strings."""
    if is_list(key) and isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if isinstance(value, (list, dict)):
        raise bad(f"choice {value!r} must be a single value")
    try:
        coerce_value(key, value, "search space", parse_text=True)
    except CovidRegError:
        kind = field_kind(key).__name__
        raise bad(f"choice {value!r} is not a valid {kind}") from None
    return value


def _number(value: Any, name: str, integer: bool, bad: Callable[[str], CovidRegError]) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise bad(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def _parse_range(key: str, table: dict[str, Any], kind: str, bad: Any) -> dict[str, Any]:
    if field_kind(key) not in (int, float) or is_list(key):
        raise bad(f"'{key}' is a {field_kind(key).__name__} key: use type = \"categorical\"")
    if kind == "float" and field_kind(key) is int:
        raise bad(f"'{key}' is an integer key: use type = \"int\"")
    integer = kind == "int"
    for name in ("low", "high"):
        if name not in table:
            raise bad(f"needs {name} = <number>")
    low = _number(table["low"], "low", integer, bad)
    high = _number(table["high"], "high", integer, bad)
    log = table.get("log", False)
    step = table.get("step")
    zero_below = table.get("zero_below")
    if not isinstance(log, bool):
        raise bad(f"log must be true or false, got {log!r}")
    if not low < high:
        raise bad(f"low ({low!r}) must be lower than high ({high!r})")
    if log and low <= 0:
        raise bad(f"log = true needs low > 0, got {low!r} (use zero_below to allow 0)")
    if step is not None and (_number(step, "step", integer, bad) <= 0 or log):
        raise bad("step must be positive and cannot be combined with log = true")
    if zero_below is not None and not low < _number(zero_below, "zero_below", False, bad) <= high:
        raise bad(f"zero_below must lie in (low, high], got {zero_below!r}")
    values = table.get("values", [])
    if not isinstance(values, list):
        raise bad("values must be a list (the grid for --sampler grid)")
    checked = tuple(_number(v, "each of values", integer, bad) for v in values)
    return dict(low=low, high=high, log=log, step=step, zero_below=zero_below, values=checked)


def _parse_param(key: str, table: Any, source: str) -> ParamSpec:
    def bad(message: str) -> CovidRegError:
        return CovidRegError(f"search space {source}: [space.{key}] {message}")

    if key in ("train_csv", "test_csv"):
        raise bad("the data files cannot be searched; set them with --train-csv / [fixed]")
    if key not in FIELDS:
        raise CovidRegError(
            f"search space {source}: [space.{key}] is not a config key; valid keys: "
            + ", ".join(FIELDS)
        )
    if not isinstance(table, dict):
        raise bad('must be a table, e.g. {type = "float", low = 1e-4, high = 1e-1, log = true}')
    implied = "categorical" if "choices" in table or "values" in table else None
    kind = table.get("type", implied)
    if kind not in _PARAM_FIELDS:
        raise bad(f"type must be float, int or categorical, got {kind!r}")
    unknown = sorted(set(table) - set(_PARAM_FIELDS[kind]))
    if unknown:
        raise bad(
            f"has unknown field '{unknown[0]}'; a {kind} takes {', '.join(_PARAM_FIELDS[kind])}"
        )
    if kind != "categorical":
        return ParamSpec(key, kind, **_parse_range(key, table, kind, bad))
    choices = table.get("choices", table.get("values"))
    if not isinstance(choices, list) or not choices:
        raise bad("needs choices = [...], a non-empty list")
    values = table.get("values", choices)
    if not isinstance(values, list) or not values:
        raise bad("values must be a non-empty list")
    return ParamSpec(
        key,
        kind,
        choices=tuple(_label(key, v, bad) for v in choices),
        values=tuple(_label(key, v, bad) for v in values),
    )


# the search space covidreg tune uses without --search, shipped inside the package
DEFAULT_SEARCH = "search.toml"


def default_search_text() -> str:
    """The packaged default search space (``covidreg/tune/search.toml``)."""
    from importlib.resources import files

    return files("covidreg.tune").joinpath(DEFAULT_SEARCH).read_text(encoding="utf-8")


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and check a search-space TOML file (None: the packaged default); every error names
    the file and the key."""
    if path is None:
        return parse_search_space(default_search_text(), "covidreg/tune/search.toml")
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CovidRegError(
            f"search space file {path} {what}; pass the path of a search-space TOML file "
            "(or leave --search out for the default)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CovidRegError(f"search space {path} is not valid TOML: {exc}") from None
    return parse_search_space(text, str(path))


def parse_search_space(text: str, source: str) -> SearchSpace:
    """A search space from its TOML text; ``source`` names it in the errors."""
    path = source
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CovidRegError(f"search space {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"space", "fixed"})
    if unknown:
        raise CovidRegError(
            f"search space {path}: unknown table or key '{unknown[0]}'; "
            "use [space.<config key>] tables and a [fixed] table"
        )
    fixed_raw, space_raw = raw.get("fixed", {}), raw.get("space", {})
    if not isinstance(fixed_raw, dict) or not isinstance(space_raw, dict) or not space_raw:
        raise CovidRegError(f"search space {path}: needs at least one [space.<config key>] table")
    fixed = {k: coerce_value(k, v, f"[fixed] of {path}") for k, v in fixed_raw.items()}
    params = {key: _parse_param(key, table, str(path)) for key, table in space_raw.items()}
    both = sorted(fixed.keys() & params.keys())
    if both:
        raise CovidRegError(
            f"search space {path}: '{both[0]}' is both in [fixed] and [space.{both[0]}]; keep one"
        )
    return SearchSpace(params, fixed, path)


def base_config(
    config_path: str | Path | None, overrides: dict[str, Any], space: SearchSpace
) -> Config:
    """The config every trial starts from: defaults -> file -> [fixed] -> CLI flags."""
    given = {key: value for key, value in overrides.items() if value is not None}
    both = sorted(given.keys() & space.params.keys())
    if both:
        flag = "--" + both[0].replace("_", "-")
        raise CovidRegError(
            f"{flag} sets '{both[0]}', which {space.source} searches ([space.{both[0]}]); "
            "drop the flag or the table"
        )
    return resolve_config(config_path, {**space.fixed, **given})


def suggest_config(trial: optuna.Trial, base: Config, space: SearchSpace, grid: bool) -> Config:
    values = to_dict(base)
    for key, spec in space.params.items():
        try:
            values[key] = spec.suggest(trial, grid)
        except ValueError as exc:  # Optuna: a distribution unlike the study's earlier trials'
            raise SpaceMismatch(
                f"[space.{key}] of {space.source} does not match this study's earlier trials "
                f"({exc}); start a new --study"
            ) from None
    return from_dict(values, f"trial {trial.number}")


class SpaceMismatch(CovidRegError):
    """The search space cannot be used with this study: stops the study, not just one trial."""
