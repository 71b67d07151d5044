"""A study from start to end: ``plan_tune`` checks everything and opens the study, ``run_tune``
runs its workers to the target and writes the outputs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from covidreg import tensorboard_logs
from covidreg.config import Config, from_dict, to_dict
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, load_data
from covidreg.fetch import file_sha256
from covidreg.tune.reports import TuneResult, data_label, show_study
from covidreg.tune.space import SearchSpace
from covidreg.tune.storage import (
    ATTR_DATA,
    ATTR_FOLDS,
    ATTR_GRID,
    ATTR_STRIDE,
    JOURNAL_FILE,
    check_study_dir,
    counts,
    is_url,
    open_storage,
    setup_lock,
    storage_label,
    study_dir_path,
    study_run_dir,
)
from covidreg.tune.workers import (
    PRUNERS,
    SAMPLERS,
    TuneJob,
    fold_splits,
    run_worker,
    run_worker_processes,
    with_features,
)

REPORTS_PER_FOLD = 100


@dataclass
class TuneProgress:
    done: int
    target: int
    running: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_number: int | None


@dataclass
class TunePlan:
    job: TuneJob
    run_dir: Path
    workers: int
    progress: TuneProgress  # the study when it was opened, earlier runs' trials included
    data: dict[str, Any]  # the data set the study runs on (``data_record``)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_done(self) -> int:
        return self.progress.done

    @property
    def storage_label(self) -> str:
        return storage_label(self.job.storage)


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


def _check_resumed(study: optuna.Study, n_folds: int, grid: bool, stride: int) -> int:
    """Record a new study's objective, or check a resumed one's; returns the step stride."""
    attrs = study.user_attrs
    if ATTR_FOLDS not in attrs:
        study.set_user_attr(ATTR_FOLDS, n_folds)
        study.set_user_attr(ATTR_GRID, grid)
        study.set_user_attr(ATTR_STRIDE, stride)
        return stride
    if attrs[ATTR_FOLDS] != n_folds:
        raise CovidRegError(
            f"study '{study.study_name}' was run with --folds {attrs[ATTR_FOLDS]}; use that "
            "or a new --study (values over other folds are not comparable)"
        )
    if bool(attrs.get(ATTR_GRID)) != grid:
        was = "grid" if attrs.get(ATTR_GRID) else "tpe or random"
        raise CovidRegError(
            f"study '{study.study_name}' was run with --sampler {was}; the grid sampler cannot "
            "share a study with the others: use a new --study"
        )
    if attrs[ATTR_STRIDE] < stride:
        raise CovidRegError(
            f"study '{study.study_name}' allowed at most {attrs[ATTR_STRIDE]} epochs; this "
            f"search space allows {stride}: use a new --study"
        )
    return int(attrs[ATTR_STRIDE])


def data_record(data: LoadedData) -> dict[str, Any]:
    """The data set a study records when it is created: the training file, its sha256 and its
    layout. A study is one data set: values over other rows are not comparable, and its
    best.toml would name another file than its best trial ran on."""
    path = Path(data.train.path).resolve()
    return {
        "train_csv": str(path),
        "sha256": file_sha256(path),
        "rows": len(data.train),
        "edition": data.layout.edition,
        "layout": data.layout.describe(),
        "columns": data.layout.to_dict(),
    }


def check_same_data(
    study_name: str, recorded: dict[str, Any] | None, record: dict[str, Any], how_new: str
) -> None:
    """Refuse a training file of other bytes than the study's (a copy elsewhere is the same
    data set); ``how_new`` says how to start a new study instead."""
    if recorded is None or recorded["sha256"] == record["sha256"]:
        return
    if recorded["train_csv"] == record["train_csv"]:
        now = f"which has changed since (sha256 {record['sha256'][:12]} now)"
    else:
        now = f"not on {data_label(record)}"
    raise CovidRegError(
        f"study '{study_name}' was run on {data_label(recorded)}, {now}: a study is one data "
        f"set; start a new one with {how_new}"
    )


def _recorded_data(storage: str, study_name: str) -> dict[str, Any] | None:
    """The data set an existing study recorded, read before anything is created or claimed
    (a journal file that is not there is not created)."""
    if not is_url(storage) and not Path(storage).is_file():
        return None
    backend = open_storage(storage)
    try:
        attrs = backend.get_study_user_attrs(backend.get_study_id_from_name(study_name))
    except KeyError:
        return None
    return attrs.get(ATTR_DATA)


def _record_data(
    study: optuna.Study, record: dict[str, Any], how_new: str, warnings: list[str]
) -> None:
    """Record a new study's data set, or check a resumed one's; a study begun before studies
    recorded their data is given this one."""
    recorded = study.user_attrs.get(ATTR_DATA)
    check_same_data(study.study_name, recorded, record, how_new)
    if recorded is not None:
        return
    n_trials = len(study.get_trials(deepcopy=False))
    if n_trials:
        warnings.append(
            f"study '{study.study_name}' has no record of its data set (it began before "
            f"covidreg recorded one): it now records {data_label(record)}, and its "
            f"{n_trials} earlier trial(s) are taken to have run on it"
        )
    study.set_user_attr(ATTR_DATA, record)


def _check_options(
    sampler: str, pruner: str, n_trials: int, n_folds: int, workers: int | None, study_name: str
) -> None:
    if sampler not in SAMPLERS:
        raise CovidRegError(f"unknown sampler '{sampler}'; use {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise CovidRegError(f"unknown pruner '{pruner}'; use {', '.join(PRUNERS)}")
    for name, value in (("--trials", n_trials), ("--folds", n_folds), ("--workers", workers)):
        if value is not None and value < 1:
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


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(n_left: int, storage: str) -> int:
    """One worker per available core, at most one per trial left to run; one on SQLite.

    SQLite is not safe for several writers (locking errors, lost updates), so several workers
    on it have to be asked for with --workers.
    """
    if is_url(storage) and storage.startswith("sqlite"):
        return 1
    return max(1, min(available_cpus(), n_left))


def plan_tune(
    cfg: Config,
    space: SearchSpace,
    *,
    study_name: str = "covidreg",
    n_trials: int = 50,
    n_folds: int = 5,
    sampler: str = "tpe",
    pruner: str = "median",
    workers: int | None = None,
    storage: str | None = None,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    overwrite: bool = False,
) -> TunePlan:
    """Check everything, then create (or open) the study; nothing is trained yet.

    ``workers=None`` is ``default_workers``: one process per available core, at most one per
    trial left to run. The outputs' directory may hold this study (it is resumed); another
    run there is refused, or with ``overwrite`` replaced by a new study.
    """
    _check_options(sampler, pruner, n_trials, n_folds, workers, study_name)
    check_study_dir(study_dir_path(study_name, out, runs_dir), overwrite)
    tensorboard_logs.check(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings: list[str] = []
    if sampler == "grid":
        n_trials = _grid_trials(space, n_trials, warnings)
    data = load_data(cfg, with_test=False)
    check_space(cfg, space, data, n_folds)
    record = data_record(data)
    how_new = f"--study NAME or another {'--out' if storage is None else '--storage'}"
    journal = str(study_dir_path(study_name, out, runs_dir) / JOURNAL_FILE)
    if storage is not None or not overwrite:  # --overwrite starts a new default journal
        check_same_data(study_name, _recorded_data(storage or journal, study_name), record, how_new)
    run_dir = study_run_dir(study_name, out, runs_dir, claim=True, overwrite=overwrite)
    if storage is None:
        storage = journal
    elif storage.startswith("sqlite"):
        warnings.append(
            "SQLite is not safe for several workers (locking errors, lost updates); use the "
            "default journal file on one machine or a server database for several"
        )
    backend = open_storage(storage)
    with setup_lock(storage, study_name):
        study = optuna.create_study(
            storage=backend, study_name=study_name, direction="minimize", load_if_exists=True
        )
        stride = _check_resumed(study, n_folds, sampler == "grid", space.max_epochs(cfg))
        # checked again under the lock: another machine may have begun the study since
        _record_data(study, record, how_new, warnings)
    progress = study_progress(study, n_trials)
    if workers is None:
        workers = default_workers(n_trials - progress.done, storage)
    if workers > 1:
        cfg = replace(cfg, threads=1)  # several processes: one thread each is fastest
    job = TuneJob(
        cfg=cfg,
        space=space,
        study_name=study_name,
        storage=storage,
        target=n_trials,
        n_folds=n_folds,
        sampler=sampler,
        pruner=pruner,
        stride=stride,
        report_every=0 if pruner == "none" else max(1, stride // REPORTS_PER_FOLD),
        log_dir=str(run_dir / tensorboard_logs.LOG_DIR) if cfg.tensorboard else "",
    )
    return TunePlan(job, run_dir, workers, progress, record, warnings)


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

    def on_study(study: optuna.Study) -> None:
        report(study_progress(study, job.target))

    try:
        if plan.workers == 1:
            run_worker(job, 0, on_study)
        else:
            run_worker_processes(job, plan.workers, on_study)
    except KeyboardInterrupt:
        study = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage))
        raise TuneInterrupted(plan, study_progress(study, job.target)) from None
    return show_study(job.study_name, job.storage, run_dir=plan.run_dir, target=job.target)
