"""What a worker process does: claim a trial, draw its config, evaluate it, tell the study.

``evaluate`` is the objective: the one place where tune trains.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from covidreg import tensorboard_logs
from covidreg.config import Config, to_dict
from covidreg.crossval import FoldEvents, cross_validate, fold_seed, make_folds
from covidreg.engine import EpochRecord, FittedModel, Member, stack_groups
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, load_data, preflight
from covidreg.splits import holdout_split
from covidreg.tune.space import SearchSpace, SpaceMismatch, suggest_config
from covidreg.tune.storage import (
    abandon,
    claim,
    heartbeat,
    open_storage,
    wait_for_running_trials,
)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


# --- the objective -----------------------------------------------------------------------------


def fold_splits(
    cfg: Config, data: LoadedData, n_folds: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(train rows, valid rows, seed) per fold: cv's folds and seeds, or train's holdout."""
    if n_folds == 1:
        train_idx, valid_idx = holdout_split(
            data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
        )
        preflight(cfg, data, len(train_idx))
        return [(train_idx, valid_idx, cfg.seed)]
    folds = make_folds(cfg, data, n_folds)
    return [(tr, va, fold_seed(cfg.seed, k)) for k, (tr, va) in enumerate(folds, start=1)]


def with_features(data: LoadedData, cfg: Config) -> LoadedData:
    """The loaded tables with ``cfg``'s features: a study reads the CSV once for all trials."""
    return replace(data, feature_names=data.layout.resolve_features(cfg.features))


def evaluate(
    cfg: Config,
    data: LoadedData,
    n_folds: int,
    stride: int,
    report: Callable[[int, float], None],
    on_history: Callable[[int, list[EpochRecord]], None] | None = None,
) -> list[float]:
    """Each fold's best validation RMSE for ``cfg``; the trial's objective is their mean.

    The folds train as ``covidreg cv`` trains them, in stacks of consecutive folds (the same
    stacks, so a trial's folds are the bits of ``covidreg cv`` with its config), one stack after
    another in this worker: the trials are what runs in parallel. ``report(step, running_rmse)``
    is called after every epoch of a stack (step ``(stack - 1) * stride + epoch``; the RMSE is
    the mean over the folds so far, each at its best) and may raise ``optuna.TrialPruned``.
    ``on_history(k, epochs)`` receives fold k's epochs (from 1) when it ends, and a pruned
    stack's unfinished folds' epochs so far.
    """
    data = with_features(data, cfg)
    splits = fold_splits(cfg, data, n_folds)
    groups = stack_groups(cfg, len(splits))
    done: list[float] = []

    def on_fold_fitted(k: int, fitted: FittedModel) -> None:
        done.append(math.sqrt(fitted.result.best_valid_mse))
        if on_history is not None:
            on_history(k, fitted.result.history)

    def after_epoch(stack: int, epoch: int, members: list[Member]) -> None:
        current = [math.sqrt(m.stopper.best) for m in members if m.fitted is None]
        try:
            report(stack * stride + epoch, (sum(done) + sum(current)) / (len(done) + len(current)))
        except optuna.TrialPruned:
            for index, member in zip(groups[stack], members, strict=True):
                if on_history is not None and member.fitted is None:
                    on_history(index + 1, list(member.history))
            raise

    fitted = cross_validate(
        cfg,
        data,
        [(tr, va) for tr, va, _ in splits],
        FoldEvents(on_fold_fitted=on_fold_fitted, after_epoch=after_epoch),
        processes=False,
        seeds=[seed for _, _, seed in splits],
        holdouts=n_folds == 1,
    )
    return [math.sqrt(f.result.best_valid_mse) for f in fitted]


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


# --- sampler, pruner ---------------------------------------------------------------------------


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


# --- the worker loop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs (picklable, for spawned workers)."""

    cfg: Config
    space: SearchSpace
    study_name: str
    storage: str  # a journal file or a database URL; its lock serialises claims
    target: int
    n_folds: int
    sampler: str
    pruner: str
    stride: int
    report_every: int
    log_dir: str = ""  # where each trial's TensorBoard folder goes; "" for none


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
    histories: dict[int, list[EpochRecord]] = {}
    try:
        cfg = suggest_config(trial, job.cfg, job.space, job.sampler == "grid")
        values = {key: getattr(cfg, key) for key in job.space.params}
        trial.set_user_attr("values", values)
        fold_rmse = evaluate(
            cfg,
            data,
            job.n_folds,
            job.stride,
            PruningReporter(trial, job.report_every),
            histories.__setitem__,
        )
    except optuna.TrialPruned:
        _log_trial(job, trial.number, values, histories, None)
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
    _log_trial(job, trial.number, values, histories, float(np.mean(fold_rmse)))
    study.tell(trial, float(np.mean(fold_rmse)))


def _log_trial(
    job: TuneJob,
    number: int,
    values: dict[str, Any],
    histories: dict[int, list[EpochRecord]],
    objective: float | None,
) -> None:
    """The trial's TensorBoard folder (``--tensorboard``), written by the worker that ran it."""
    if not job.log_dir:
        return
    log_dir = tensorboard_logs.trial_dir(job.log_dir, number)
    tensorboard_logs.write_trial(log_dir, number, values, histories, objective)


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
                    trial = claim(study, job.target, job.storage)
                if trial is None:
                    # outside held(): Ctrl-C stops the wait at once
                    if wait_for_running_trials(study):
                        continue
                    return
                with heartbeat(study, trial):
                    run_trial(study, trial, job, data)
            except BaseException as exc:
                if trial is not None:
                    with interrupts.held():
                        requeue = isinstance(exc, KeyboardInterrupt)
                        abandon(study, trial.number, dict(trial.params), requeue, _why(exc))
                raise
            if on_trial is not None:
                on_trial(study)


def _why(exc: BaseException) -> str:
    """Why a trial was abandoned, for its error column."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C); its parameters were queued again"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"its worker stopped: {type(exc).__name__}" + (f": {reason}" if reason else "")


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


def run_worker_processes(
    job: TuneJob, n_workers: int, on_poll: Callable[[optuna.Study], None]
) -> None:
    """Spawn ``n_workers`` workers and wait for them; ``on_poll(study)`` runs twice a second."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_process, args=(job, i), name=f"covidreg-tune-{i}")
        for i in range(n_workers)
    ]
    for process in processes:
        process.start()
    monitor = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage))
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            on_poll(monitor)
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
