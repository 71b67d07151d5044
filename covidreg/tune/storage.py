"""Where a study lives (a journal file or a database) and how workers claim its trials."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from covidreg import artifacts
from covidreg.errors import CovidRegError

JOURNAL_FILE = "study.journal"
# study user attributes: a resumed study must keep the objective it was started with
ATTR_FOLDS, ATTR_STRIDE, ATTR_GRID = "covidreg_n_folds", "covidreg_step_stride", "covidreg_grid"
_HOST = socket.gethostname()


def study_run_dir(study_name: str, out: str | Path | None, runs_dir: str | Path) -> Path:
    """The study's outputs and default journal: ``out``, or ``runs_dir/tune-<study>``."""
    if out is not None:
        artifacts.check_output_target(out)
        return artifacts.ensure_writable_dir(out)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name)
    return artifacts.ensure_writable_dir(Path(runs_dir) / f"tune-{safe}")


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
