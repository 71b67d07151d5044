"""Hyperparameter search with Optuna: a TOML search space, cv RMSE as the objective, pruning.

Design, in the order a trial lives it:

* **Search space.** ``configs/search.toml`` holds one ``[space.<config key>]`` table per searched
  key (float / int / categorical; ``values = [...]`` is the grid for ``--sampler grid``) and a
  ``[fixed]`` table of config keys applied to every trial. Precedence: defaults -> ``--config``
  -> ``[fixed]`` -> CLI flags -> the sampled values.
* **Objective.** The mean of the per-fold best validation RMSE over ``n_folds`` folds of the
  config's split (blocked by default), with ``covidreg cv``'s folds and fold seeds, so the best
  value is what ``covidreg cv --config best.toml`` reports (to float rounding: cv may train the
  folds together). ``n_folds = 1`` is ``covidreg train``'s holdout split and seed.
* **Pruning steps.** The folds are laid end to end: epoch ``e`` of fold ``k`` is step
  ``(k - 1) * E + e``, ``E`` being the most epochs the search space allows, so a step means the
  same fold and epoch in every trial. The reported value is the running cv RMSE (finished folds'
  RMSE and the current fold's best so far, averaged), so the last value equals the objective.
  Reports are thinned to about 100 per fold: each one is a write to the shared storage.
* **Trial count.** ``n_trials`` is a target for the whole study, not "this many more": a worker
  claims a trial only while the study holds fewer counted trials (complete, pruned, failed on its
  own config, or running in a live worker). Claims are serialised by a lock on the journal file,
  so ``--workers 4 --trials 200`` ends with exactly 200, and the same command run again after
  Ctrl-C finishes the remaining ones (numbering continues). A trial stopped by Ctrl-C or by its
  worker dying is marked failed, does not count, and is queued again with the same parameters.
* **Storage.** By default an Optuna journal file in the run directory (safe for several processes
  on one machine); ``--storage URL`` is any SQLAlchemy URL for several machines. Samplers are
  seeded from the config seed, the worker number and the study's size when the worker starts:
  a sequential search is reproducible, a parallel one is not (which worker claims which trial
  depends on timing).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from covidreg import artifacts
from covidreg.config import (
    FIELDS,
    Config,
    coerce_value,
    field_kind,
    from_dict,
    is_list,
    resolve_config,
    to_dict,
    to_toml,
)
from covidreg.cv import fold_seed, make_folds
from covidreg.data import holdout_split, resolve_features
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, fit_model, load_data, preflight

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
JOURNAL_FILE = "study.journal"
REPORTS_PER_FOLD = 100
TOP_TRIALS = 10
_PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "zero_below", "values"),
    "int": ("type", "low", "high", "log", "step", "values"),
    "categorical": ("type", "choices", "values"),
}
# study user attributes: a resumed study must keep the objective it was started with
_ATTR_FOLDS, _ATTR_STRIDE, _ATTR_GRID = "covidreg_n_folds", "covidreg_step_stride", "covidreg_grid"
_HOST = socket.gethostname()


# --- search space ----------------------------------------------------------------------------


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


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space TOML file; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise CovidRegError(
            f"search space file {path} does not exist; pass --search FILE (see configs/search.toml)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
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
    return SearchSpace(params, fixed, str(path))


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


def check_space(cfg: Config, space: SearchSpace, data: LoadedData, n_folds: int) -> None:
    """Try every choice and bound of every key before a study starts, one key at a time."""
    base = to_dict(cfg)
    for key, spec in space.params.items():
        for value in spec.candidates():
            try:
                candidate = from_dict({**base, key: value}, "search space")
                fold_splits(candidate, with_features(data, candidate), n_folds)
            except CovidRegError as exc:
                raise CovidRegError(
                    f"search space {space.source}: [space.{key}] value {value!r} cannot be "
                    f"used: {exc}"
                ) from None


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


# --- the objective -----------------------------------------------------------------------------


def fold_splits(
    cfg: Config, data: LoadedData, n_folds: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(train rows, valid rows, seed) per fold: cv's folds and seeds, or train's holdout."""
    if n_folds == 1:
        train_idx, valid_idx = holdout_split(
            data.train.states, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
        )
        preflight(cfg, data, len(train_idx))
        return [(train_idx, valid_idx, cfg.seed)]
    folds = make_folds(cfg, data, n_folds)
    return [(tr, va, fold_seed(cfg.seed, k)) for k, (tr, va) in enumerate(folds, start=1)]


def with_features(data: LoadedData, cfg: Config) -> LoadedData:
    """The loaded tables with ``cfg``'s features: a study reads the CSV once for all trials."""
    return replace(data, feature_names=resolve_features(cfg.features))


def evaluate(
    cfg: Config,
    data: LoadedData,
    n_folds: int,
    stride: int,
    report: Callable[[int, float], None],
) -> list[float]:
    """Each fold's best validation RMSE for ``cfg``; the trial's objective is their mean.

    ``report(step, running_rmse)`` is called every epoch (step ``(fold - 1) * stride + epoch``)
    and may raise ``optuna.TrialPruned``. This is the one place where tune trains, fold after
    fold with ``fit_model``; to train the folds together, call ``cv.cross_validate`` here with
    ``FoldEvents(on_epoch_mean=...)`` reporting ``sqrt(mse)`` at step ``epoch`` (its sequential
    fallback fires that hook only after the last fold, too late to prune).
    """
    data = with_features(data, cfg)
    fold_rmse: list[float] = []
    for k, (train_idx, valid_idx, seed) in enumerate(fold_splits(cfg, data, n_folds)):

        def on_epoch(record: Any, stopper: Any, k: int = k) -> None:
            running = (sum(fold_rmse) + math.sqrt(stopper.best)) / (k + 1)
            report(k * stride + record.epoch, running)

        fitted = fit_model(cfg, data, train_idx, valid_idx, seed, on_epoch)
        fold_rmse.append(math.sqrt(fitted.result.best_valid_mse))
    return fold_rmse


class PruningReporter:
    """Sends every ``every``-th step to the study and raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial, every: int) -> None:
        self.trial = trial
        self.every = every

    def __call__(self, step: int, value: float) -> None:
        if self.every <= 0 or step % self.every:
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (running RMSE {value:.5f})")


# --- study, sampler, pruner, storage -----------------------------------------------------------


class ExhaustiveGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its own stop: the trial target decides when a worker ends.

    GridSampler calls ``study.stop()`` when the grid is done, which only works inside
    ``study.optimize``; tune's workers use ask/tell and stop at min(--trials, grid size).
    """

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if name == "grid":
        return ExhaustiveGridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar (on by default): trials running in other workers count as likely poor, so
    # parallel workers do not all propose the same point
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def make_pruner(name: str, stride: int, n_folds: int) -> optuna.pruners.BasePruner:
    warmup = max(1, stride // 10)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=warmup, max_resource=n_folds * stride, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def is_url(storage: str) -> bool:
    return "://" in storage


def storage_label(storage: str) -> str:
    """The storage for messages, with any database password hidden."""
    if not is_url(storage):
        return storage
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported when it is opened
        return re.sub(r":[^:@/]*@", ":***@", storage)


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """A journal file (a path) or a database (an SQLAlchemy URL)."""
    if not is_url(storage):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage)
        if path.is_dir() or not path.parent.is_dir():
            why = "is a directory" if path.is_dir() else f"has no folder {path.parent}"
            raise CovidRegError(f"journal file {storage} {why}; pass a file path to --storage")
        return JournalStorage(JournalFileBackend(storage))
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(storage)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CovidRegError(f"cannot open storage {storage_label(storage)}: {reason}") from None


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the target: it has a result or a live worker."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


@contextlib.contextmanager
def claim_lock(journal: str | None) -> Iterator[None]:
    """Serialise trial claims of the processes sharing a journal file (flock; POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: claims are not serialised
        fcntl = None  # type: ignore[assignment]
    if journal is None or fcntl is None:
        yield
        return
    with open(journal, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandon(study: optuna.Study, trial_number: int, params: dict[str, Any], requeue: bool) -> None:
    """Mark an unfinished trial failed (it does not count) and queue its parameters again."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    if trial.state != TrialState.RUNNING:
        return  # it ended before the interruption: its result stands
    study.tell(trial_number, state=TrialState.FAIL, skip_if_finished=True)
    if requeue:
        study.enqueue_trial(params, user_attrs={"requeued_from": trial_number})


def requeue_dead_workers(study: optuna.Study) -> None:
    """Trials left running by a process of this machine that no longer exists (kill -9)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == _HOST and not _pid_alive(int(worker.get("pid", 0)) or -1):
            abandon(study, trial.number, dict(trial.params), requeue=True)


def claim(study: optuna.Study, target: int, journal: str | None) -> optuna.Trial | None:
    """A new trial, or None once the study holds ``target`` counted trials."""
    with claim_lock(journal):
        requeue_dead_workers(study)
        if sum(counts(t) for t in study.get_trials(deepcopy=False)) >= target:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", {"host": _HOST, "pid": os.getpid()})
        return trial


class Interrupts:
    """Ctrl-C handling of a worker: one KeyboardInterrupt, held back while a claim is made.

    A second Ctrl-C (the terminal and the parent both signal a worker) is ignored, so it
    cannot cut short the bookkeeping that follows the first.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending = False
        self.fired = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.fired:
            return
        if self.holding:
            self.pending = True
            return
        self.fired = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending and not self.fired:
                self.fired = True
                raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


# --- running a study ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs (picklable, for spawned workers)."""

    cfg: Config
    space: SearchSpace
    study_name: str
    storage: str
    journal: str | None  # the journal file whose lock serialises claims
    target: int
    n_folds: int
    sampler: str
    pruner: str
    stride: int
    report_every: int


@dataclass
class TunePlan:
    job: TuneJob
    run_dir: Path
    workers: int
    n_done: int
    warnings: list[str] = field(default_factory=list)

    @property
    def storage_label(self) -> str:
        return storage_label(self.job.storage)


@dataclass
class TuneProgress:
    done: int
    target: int
    running: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_number: int | None


def study_progress(study: optuna.Study, target: int) -> TuneProgress:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    return TuneProgress(
        done=sum(counts(t) and t.state != TrialState.RUNNING for t in trials),
        target=target,
        running=sum(t.state == TrialState.RUNNING for t in trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
        best_value=None if best is None else best.value,
        best_number=None if best is None else best.number,
    )


def _run_dir(study_name: str, out: str | Path | None, runs_dir: str | Path) -> Path:
    if out is not None:
        artifacts.check_output_target(out)
        return artifacts.ensure_writable_dir(out)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name)
    return artifacts.ensure_writable_dir(Path(runs_dir) / f"tune-{safe}")


def _check_resumed(study: optuna.Study, n_folds: int, grid: bool, stride: int) -> int:
    """Record a new study's objective, or check a resumed one's; returns the step stride."""
    attrs = study.user_attrs
    if _ATTR_FOLDS not in attrs:
        study.set_user_attr(_ATTR_FOLDS, n_folds)
        study.set_user_attr(_ATTR_GRID, grid)
        study.set_user_attr(_ATTR_STRIDE, stride)
        return stride
    if attrs[_ATTR_FOLDS] != n_folds:
        raise CovidRegError(
            f"study '{study.study_name}' was run with --folds {attrs[_ATTR_FOLDS]}; use that "
            "or a new --study (values over other folds are not comparable)"
        )
    if bool(attrs.get(_ATTR_GRID)) != grid:
        was = "grid" if attrs.get(_ATTR_GRID) else "tpe or random"
        raise CovidRegError(
            f"study '{study.study_name}' was run with --sampler {was}; the grid sampler cannot "
            "share a study with the others: use a new --study"
        )
    if attrs[_ATTR_STRIDE] < stride:
        raise CovidRegError(
            f"study '{study.study_name}' allowed at most {attrs[_ATTR_STRIDE]} epochs; this "
            f"search space allows {stride}: use a new --study"
        )
    return int(attrs[_ATTR_STRIDE])


def _check_options(
    sampler: str, pruner: str, n_trials: int, n_folds: int, workers: int, study_name: str
) -> None:
    if sampler not in SAMPLERS:
        raise CovidRegError(f"unknown sampler '{sampler}'; use {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise CovidRegError(f"unknown pruner '{pruner}'; use {', '.join(PRUNERS)}")
    for name, value in (("--trials", n_trials), ("--folds", n_folds), ("--workers", workers)):
        if value < 1:
            raise CovidRegError(f"{name} must be a positive integer, got {value}")
    if not study_name.strip():
        raise CovidRegError("--study must not be empty")


def _grid_trials(space: SearchSpace, n_trials: int, warnings: list[str]) -> int:
    """The grid sampler's target: every point once, or --trials of them if that is fewer."""
    missing = [key for key, spec in space.params.items() if not spec.values]
    if missing:
        raise CovidRegError(
            f"search space {space.source}: [space.{missing[0]}] needs values = [...] "
            "for --sampler grid"
        )
    if n_trials > space.grid_size():
        warnings.append(f"the grid has {space.grid_size()} points: running that many trials")
    return min(n_trials, space.grid_size())


def plan_tune(
    cfg: Config,
    space: SearchSpace,
    *,
    study_name: str = "covidreg",
    n_trials: int = 50,
    n_folds: int = 5,
    sampler: str = "tpe",
    pruner: str = "median",
    workers: int = 1,
    storage: str | None = None,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
) -> TunePlan:
    """Check everything, then create (or open) the study; nothing is trained yet."""
    _check_options(sampler, pruner, n_trials, n_folds, workers, study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings: list[str] = []
    if sampler == "grid":
        n_trials = _grid_trials(space, n_trials, warnings)
    if workers > 1:
        cfg = replace(cfg, threads=1)  # several processes: one thread each is fastest
    check_space(cfg, space, load_data(cfg, with_test=False), n_folds)
    run_dir = _run_dir(study_name, out, runs_dir)
    if storage is None:
        storage = str(run_dir / JOURNAL_FILE)
    elif storage.startswith("sqlite"):
        warnings.append(
            "SQLite is not safe for several workers (locking errors, lost updates); use the "
            "default journal file on one machine or a server database for several"
        )
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
    )
    stride = _check_resumed(study, n_folds, sampler == "grid", space.max_epochs(cfg))
    job = TuneJob(
        cfg=cfg,
        space=space,
        study_name=study_name,
        storage=storage,
        journal=None if is_url(storage) else storage,
        target=n_trials,
        n_folds=n_folds,
        sampler=sampler,
        pruner=pruner,
        stride=stride,
        report_every=0 if pruner == "none" else max(1, stride // REPORTS_PER_FOLD),
    )
    return TunePlan(job, run_dir, workers, study_progress(study, n_trials).done, warnings)


def _open_study(job: TuneJob, worker: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(job.storage)
    n_before = len(storage.get_all_trials(storage.get_study_id_from_name(job.study_name)))
    # seeded by worker and study size: workers draw different points, and a resumed study does
    # not replay the draws of its first run
    seed = int(np.random.SeedSequence([job.cfg.seed, worker, n_before]).generate_state(1)[0])
    sampler = make_sampler(job.sampler, job.space, job.cfg.seed if job.sampler == "grid" else seed)
    pruner = make_pruner(job.pruner, job.stride, job.n_folds)
    return optuna.load_study(
        study_name=job.study_name, storage=storage, sampler=sampler, pruner=pruner
    )


def run_trial(study: optuna.Study, trial: optuna.Trial, job: TuneJob, data: LoadedData) -> None:
    """Evaluate one claimed trial and tell the study how it ended.

    Pruned trials and trials whose own config fails (a CovidRegError) are results; anything
    else propagates, and the worker loop marks the trial abandoned.
    """
    try:
        cfg = suggest_config(trial, job.cfg, job.space, job.sampler == "grid")
        trial.set_user_attr("values", {key: getattr(cfg, key) for key in job.space.params})
        fold_rmse = evaluate(
            cfg, data, job.n_folds, job.stride, PruningReporter(trial, job.report_every)
        )
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return
    except SpaceMismatch:
        raise
    except CovidRegError as exc:
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return
    # the whole config, not its difference from the defaults: those may change between versions
    trial.set_user_attr("config", to_dict(cfg))
    trial.set_user_attr("fold_rmse", fold_rmse)
    study.tell(trial, float(np.mean(fold_rmse)))


def run_worker(
    job: TuneJob,
    worker: int = 0,
    on_trial: Callable[[optuna.Study], None] | None = None,
    interrupts: Interrupts | None = None,
) -> None:
    """Claim and run trials until the study reaches its target (one process)."""
    study = _open_study(job, worker)
    data = load_data(job.cfg, with_test=False)
    with (interrupts or Interrupts()).installed() as interrupts:
        while True:
            trial = None
            try:
                with interrupts.held():
                    trial = claim(study, job.target, job.journal)
                if trial is None:
                    return
                run_trial(study, trial, job, data)
            except BaseException as exc:
                if trial is not None:
                    with interrupts.held():
                        requeue = isinstance(exc, KeyboardInterrupt)
                        abandon(study, trial.number, dict(trial.params), requeue)
                raise
            if on_trial is not None:
                on_trial(study)


def _worker_process(job: TuneJob, worker: int) -> None:
    """Entry point of a spawned worker: errors become an exit code and one line."""
    # for the whole life of the process: Ctrl-C reaches a worker from the terminal and again
    # from the parent; the second must not interrupt the first one's bookkeeping or exit
    interrupts = Interrupts()
    signal.signal(signal.SIGINT, interrupts.handle)
    try:
        run_worker(job, worker, interrupts=interrupts)
    except KeyboardInterrupt:
        sys.exit(130)
    except CovidRegError as exc:
        print(f"error: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(1)


def _run_processes(plan: TunePlan, on_progress: Callable[[TuneProgress], None]) -> None:
    job = plan.job
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_process, args=(job, i), name=f"covidreg-tune-{i}")
        for i in range(plan.workers)
    ]
    for process in processes:
        process.start()
    monitor = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage))
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            on_progress(study_progress(monitor, job.target))
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        worker, code = failed[0]
        raise CovidRegError(f"tune worker {worker} stopped with exit code {code} (see above)")


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study: finished trials are kept in the storage."""

    def __init__(self, plan: TunePlan, progress: TuneProgress) -> None:
        super().__init__()
        self.plan = plan
        self.progress = progress


def run_tune(
    plan: TunePlan,
    on_start: Callable[[TunePlan], None] | None = None,
    on_progress: Callable[[TuneProgress], None] | None = None,
) -> TuneResult:
    """``covidreg tune``: run the study to its target, then write its outputs."""
    job = plan.job
    if on_start is not None:
        on_start(plan)
    report = on_progress or (lambda progress: None)
    try:
        if plan.workers == 1:
            run_worker(job, 0, lambda study: report(study_progress(study, job.target)))
        else:
            _run_processes(plan, report)
    except KeyboardInterrupt:
        study = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage))
        raise TuneInterrupted(plan, study_progress(study, job.target)) from None
    return show_study(job.study_name, job.storage, plan=plan)


# --- results -----------------------------------------------------------------------------------


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    fold_std: float | None
    params: dict[str, Any]
    seconds: float | None
    error: str

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRow:
        folds = trial.user_attrs.get("fold_rmse")
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),
            value=trial.value if trial.values else None,
            fold_std=float(np.std(folds, ddof=1)) if folds and len(folds) > 1 else None,
            params=dict(trial.user_attrs.get("values") or trial.params),
            seconds=seconds,
            error=str(trial.user_attrs.get("error", "")),
        )


@dataclass
class TuneResult:
    run_dir: Path
    study_name: str
    storage: str
    n_folds: int
    trials: list[TrialRow]
    best: TrialRow | None
    best_toml: Path | None
    plot: Path | None
    trials_csv: Path
    target: int | None = None

    @property
    def top(self) -> list[TrialRow]:
        ranked = sorted((t for t in self.trials if t.state == "complete"), key=lambda t: t.value)
        return ranked[:TOP_TRIALS]

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def _load_existing(study_name: str, storage: str) -> optuna.Study:
    if not is_url(storage) and not Path(storage).is_file():
        raise CovidRegError(
            f"no study storage at {storage}; run covidreg tune first, or pass --storage / --out"
        )
    backend = open_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        there = ", ".join(names) if names else "none"
        raise CovidRegError(
            f"no study '{study_name}' in {storage_label(storage)} (studies there: {there})"
        ) from None


def show_study(
    study_name: str,
    storage: str | None = None,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    plan: TunePlan | None = None,
) -> TuneResult:
    """``covidreg tune --show``: read a study and (re)write best.toml, trials.csv, history.png."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = plan.run_dir if plan is not None else _run_dir(study_name, out, runs_dir)
    storage = storage or str(run_dir / JOURNAL_FILE)
    study = _load_existing(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    n_folds = int(study.user_attrs.get(_ATTR_FOLDS, 0))
    rows = [TrialRow.of(t) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    best_toml = None
    if best is not None:
        best_toml = run_dir / "best.toml"
        artifacts.write_text(best_toml, best_config_toml(best, study_name, n_folds))
    trials_csv = run_dir / "trials.csv"
    write_trials_csv(trials_csv, rows)
    plot = run_dir / "history.png" if trials else None
    if plot is not None:
        plot_history(plot, trials, f"study {study_name}: {objective_name(n_folds)}")
    return TuneResult(
        run_dir=run_dir,
        study_name=study_name,
        storage=storage_label(storage),
        n_folds=n_folds,
        trials=rows,
        best=None if best is None else TrialRow.of(best),
        best_toml=best_toml,
        plot=plot,
        trials_csv=trials_csv,
        target=None if plan is None else plan.job.target,
    )


def objective_name(n_folds: int) -> str:
    if n_folds == 1:
        return "holdout valid RMSE"
    return f"cv RMSE ({n_folds} folds)" if n_folds else "valid RMSE"


def best_config_toml(best: FrozenTrial, study_name: str, n_folds: int) -> str:
    """The best trial's config as a TOML file that ``covidreg train --config`` reads."""
    cfg = from_dict(best.user_attrs.get("config", {}), f"trial {best.number}")
    header = (
        f"# covidreg tune, study '{study_name}': best trial #{best.number}, "
        f"{objective_name(n_folds)} {best.value:.5f}\n"
        "# Only the keys that differ from the defaults; use: covidreg train --config best.toml\n"
    )
    return header + to_toml(cfg, only_changed=True)


def write_trials_csv(path: Path, rows: list[TrialRow]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row.params))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "fold_std", *keys, "seconds", "error"])
    for row in rows:
        params = [_plain(row.params.get(k, "")) for k in keys]
        seconds = "" if row.seconds is None else round(row.seconds, 3)
        value, fold_std = _plain(row.value), _plain(row.fold_std)
        writer.writerow([row.number, row.state, value, fold_std, *params, seconds, row.error])
    artifacts.write_text(path, buffer.getvalue())


def _plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else value


def plot_history(path: Path, trials: list[FrozenTrial], title: str) -> None:
    """Value per complete trial and the best so far; pruned and failed trials as marks.

    A pruned trial's last value is the RMSE of the folds it had seen, not comparable with the
    objective, so it is shown only as a tick on the trial axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    complete = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        numbers, values = zip(*complete, strict=True)
        ax.scatter(numbers, values, s=16, color="C0", label="complete", zorder=3)
        ax.step(numbers, np.minimum.accumulate(values), where="post", color="C3", label="best")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    along_axis = ax.get_xaxis_transform()  # x in trials, y in axes fraction
    for state, y, marker, color in (
        (TrialState.PRUNED, 0.03, "|", "grey"),
        (TrialState.FAIL, 0.97, "x", "C3"),
    ):
        numbers = [t.number for t in trials if t.state == state]
        if numbers:
            label = state.name.lower().replace("fail", "failed")
            ax.scatter(
                numbers,
                [y] * len(numbers),
                transform=along_axis,
                marker=marker,
                s=30,
                color=color,
                label=label,
            )
    if trials:
        ax.legend(fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    artifacts.write_bytes(path, buffer.getvalue())
