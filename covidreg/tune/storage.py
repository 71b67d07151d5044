"""Where a study lives (a journal file or a database) and how workers claim its trials.

On PostgreSQL, workers that share nothing but the URL are serialised by the database itself:
advisory locks around the creation of Optuna's tables and around every claim, and a heartbeat
per running trial, so that a trial whose worker died on any machine is failed and run again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from covidreg import artifacts
from covidreg.errors import CovidRegError

if TYPE_CHECKING:
    import sqlalchemy

JOURNAL_FILE = "study.journal"
# study user attributes: a resumed study must keep the objective it was started with
ATTR_FOLDS, ATTR_STRIDE, ATTR_GRID = "covidreg_n_folds", "covidreg_step_stride", "covidreg_grid"
# ... and its data set: the training file, its sha256 and layout (``study.data_record``)
ATTR_DATA = "covidreg_data"
_HOST = socket.gethostname()
# A running trial on a database records a heartbeat this often; one silent for GRACE_SECONDS is
# taken for dead (its worker was killed or lost its machine), failed and queued again.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
POSTGRES_EXTRA = "pip install 'covidreg[postgres]'"
# pg_advisory_xact_lock(key, subkey): the key is covidreg's, the subkey what is locked
_LOCK_KEY = zlib.crc32(b"covidreg") - 2**31
_TABLES = "optuna tables"


def study_dir_path(study_name: str, out: str | Path | None, runs_dir: str | Path) -> Path:
    """Where the study's outputs and default journal go: ``out``, or ``runs_dir/tune-<study>``."""
    if out is not None:
        return Path(out)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name)
    return Path(runs_dir) / f"tune-{safe}"


def check_study_dir(path: Path, overwrite: bool = False) -> None:
    """Refuse a directory holding another run than a study's (``overwrite``: replace it)."""
    artifacts.check_run_target(path, overwrite, reusable=artifacts.TUNE_ENTRIES)


def study_run_dir(
    study_name: str,
    out: str | Path | None,
    runs_dir: str | Path,
    claim: bool = False,
    overwrite: bool = False,
) -> Path:
    """The study's outputs and default journal, created; ``claim``: for a study about to run,
    which resumes a study there, and refuses (or with ``overwrite`` replaces) another run."""
    path = study_dir_path(study_name, out, runs_dir)
    if not claim:
        artifacts.check_output_target(path)
        return artifacts.ensure_writable_dir(path)
    return artifacts.claim_run_dir(
        path, runs_dir, "tune", overwrite, reusable=artifacts.TUNE_ENTRIES
    )


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


def is_postgres(storage: str) -> bool:
    return is_url(storage) and storage.split(":", 1)[0].split("+", 1)[0] in (
        "postgresql",
        "postgres",
    )


def import_driver(storage: str) -> None:
    """Import the database driver SQLAlchemy uses for ``storage``; ImportError if it is missing."""
    from sqlalchemy.engine import make_url

    make_url(storage).get_dialect().import_dbapi()


def check_driver(storage: str) -> None:
    """A missing driver as one line naming what to install (Optuna's message names nothing)."""
    import sqlalchemy.exc

    try:
        import_driver(storage)
    except ImportError as exc:
        name = getattr(exc, "name", None) or "a database driver"
        hint = POSTGRES_EXTRA if is_postgres(storage) else "the driver for this database"
        raise CovidRegError(
            f"cannot open storage {storage_label(storage)}: {name} is not installed; "
            f"install it with {hint}"
        ) from None
    except (ValueError, sqlalchemy.exc.SQLAlchemyError):
        return  # an unusable URL is reported when it is opened


@functools.lru_cache(maxsize=8)
def _lock_engine(storage: str) -> sqlalchemy.engine.Engine:
    import sqlalchemy
    import sqlalchemy.pool

    # no pool: a lock's connection is closed with it, never handed on
    return sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def database_lock(storage: str, what: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named ``what`` on ``storage``'s database.

    A transaction-level lock: released at the end of the block, and by the server when the
    holder's connection dies (kill -9), so a dead worker cannot keep it.
    """
    import sqlalchemy

    subkey = zlib.crc32(what.encode()) - 2**31
    with _lock_engine(storage).connect() as connection, connection.begin():
        connection.execute(
            sqlalchemy.text("SELECT pg_advisory_xact_lock(:key, :subkey)"),
            {"key": _LOCK_KEY, "subkey": subkey},
        )
        yield


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: queue a trial whose worker stopped beating again, as ``abandon`` does."""
    study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})


def _open_database(storage: str) -> optuna.storages.RDBStorage:
    check_driver(storage)
    # Optuna 4.9 renamed failed_trial_callback; the old name warns there
    callback = (
        "heartbeat_stale_trial_callback"
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
        else "failed_trial_callback"
    )
    beats: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT_SECONDS,
        "grace_period": GRACE_SECONDS,
        callback: requeue_stale,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not is_postgres(storage):
            return optuna.storages.RDBStorage(storage, **beats)
        # workers starting at once on a new database would all create the tables (and collide)
        with database_lock(storage, _TABLES):
            return optuna.storages.RDBStorage(storage, **beats)


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
        return _open_database(storage)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CovidRegError(f"cannot open storage {storage_label(storage)}: {reason}") from None


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the target: it has a result or a live worker."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


@contextlib.contextmanager
def journal_lock(journal: str) -> Iterator[None]:
    """Serialise trial claims of the processes sharing a journal file (flock; POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: claims are not serialised
        yield
        return
    with open(journal, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def claim_lock(storage: str, study_name: str) -> contextlib.AbstractContextManager[None]:
    """What serialises the claims of a study's workers: the journal file's lock on one machine,
    an advisory lock of the database on PostgreSQL (any machine); nothing on other databases."""
    if not is_url(storage):
        return journal_lock(storage)
    if is_postgres(storage):
        return database_lock(storage, f"claim {study_name}")
    return contextlib.nullcontext()


def setup_lock(storage: str, study_name: str) -> contextlib.AbstractContextManager[None]:
    """Serialise the creation and first settings of a study on PostgreSQL: workers starting at
    once on other machines then agree on (or are refused) its objective."""
    if is_postgres(storage):
        return database_lock(storage, f"setup {study_name}")
    return contextlib.nullcontext()


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


# user attribute of a trial failed by its worker's end, not its config: why (the trials.csv
# error column); unlike "error", it does not make the trial count towards the target
ABANDONED = "abandoned"


def abandon(
    study: optuna.Study,
    trial_number: int,
    params: dict[str, Any],
    requeue: bool,
    why: str = "",
) -> None:
    """Mark an unfinished trial failed (it does not count), saying ``why``, and queue its
    parameters again."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    if trial.state != TrialState.RUNNING:
        return  # it ended before the interruption: its result stands
    if why:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(ABANDONED, why)
    study.tell(trial_number, state=TrialState.FAIL, skip_if_finished=True)
    if requeue:
        study.enqueue_trial(params, user_attrs={"requeued_from": trial_number})


def requeue_dead_workers(study: optuna.Study) -> None:
    """Trials left running by a process of this machine that no longer exists (kill -9)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == _HOST and not _pid_alive(int(worker.get("pid", 0)) or -1):
            abandon(study, trial.number, dict(trial.params), requeue=True)


def _heartbeat_storage(study: optuna.Study) -> Any:
    """The study's storage if it records heartbeats (a database), else None.

    Optuna wraps an RDBStorage in a cache that passes the heartbeat methods on, so the storage
    is asked for its interval rather than checked for its class.
    """
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return storage if interval else None


def claim(study: optuna.Study, target: int, storage: str) -> optuna.Trial | None:
    """A new trial, or None once the study holds ``target`` counted trials.

    ``storage`` is the study's --storage (a journal file or a URL): it names the claim lock.
    """
    with claim_lock(storage, study.study_name), warnings.catch_warnings():
        # ask/tell with heartbeats is what Optuna's optimize loop does inside; it warns outside
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed", UserWarning)
        requeue_dead_workers(study)
        beating = _heartbeat_storage(study)
        if beating is not None:
            optuna.storages.fail_stale_trials(study)
        if sum(counts(t) for t in study.get_trials(deepcopy=False)) >= target:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", {"host": _HOST, "pid": os.getpid()})
        if beating is not None:  # a trial without any heartbeat is never taken for dead
            beating.record_heartbeat(trial._trial_id)
        return trial


def wait_for_running_trials(study: optuna.Study) -> bool:
    """For a worker with nothing left to claim: wait a second if trials are still running.

    On a database with heartbeats it waits (and returns True, to claim again): a running trial
    whose worker died elsewhere is failed after the grace period and queued again, and this
    worker runs it. A journal file's dead workers are found at the next claim on their own
    machine, so a worker there returns False at once and ends.
    """
    beating = _heartbeat_storage(study)
    if beating is None or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    time.sleep(min(1.0, beating.get_heartbeat_interval()))
    return True


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_SECONDS while the block runs (databases)."""
    beating = _heartbeat_storage(study)
    if beating is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(beating.get_heartbeat_interval()):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                beating.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name=f"covidreg-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
