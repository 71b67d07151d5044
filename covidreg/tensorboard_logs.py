"""TensorBoard event files: each model's epochs as scalars, and a tune trial's hyperparameters.

Written with torch's own ``SummaryWriter`` into ``<run dir>/tensorboard/``, one folder (a
TensorBoard "run") per model, so ``tensorboard --logdir runs/`` overlays the folds, seeds or
trials. Per epoch (step = the epoch number of history.csv): ``loss/train``, ``loss/valid`` and
``lr``, stored as float32, as TensorBoard stores every scalar.

A folder is started afresh each time it is written (its old event files are removed first), so a
rerun into the same ``--out``, or a resumed run, never mixes two runs' curves in one folder.

torch.utils.tensorboard and the tensorboard package are imported here only when a log is
written: without ``--tensorboard``, no command loads them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidreg.errors import CovidRegError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from covidreg.config import Config
    from covidreg.engine import EpochRecord

LOG_DIR = "tensorboard"
INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install 'covidreg[tensorboard]'"
# the writer's thread flushes this often: a TensorBoard watching a run sees it within seconds
FLUSH_SECS = 5
OBJECTIVE_TAG = "valid_rmse"


def require() -> None:
    """Fail with the install hint when the tensorboard package cannot be imported."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise CovidRegError(INSTALL_HINT) from None


def check(cfg: Config) -> None:
    """The check every command runs before it writes anything."""
    if cfg.tensorboard:
        require()


def open_writer(log_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    """A writer into ``log_dir`` with its old event files removed."""
    require()
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    return SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=FLUSH_SECS)


def add_epoch(writer: SummaryWriter, record: EpochRecord, prefix: str = "") -> None:
    writer.add_scalar(f"{prefix}loss/train", record.train_loss, record.epoch)
    writer.add_scalar(f"{prefix}loss/valid", record.valid_loss, record.epoch)
    writer.add_scalar(f"{prefix}lr", record.lr, record.epoch)


def write_history(log_dir: Path, history: Sequence[EpochRecord]) -> None:
    """A finished model's epochs (a cv fold, a --seeds run), written from its history."""
    with open_writer(log_dir) as writer:
        for record in history:
            add_epoch(writer, record)


EpochLog = Callable[["EpochRecord"], None]


@contextlib.contextmanager
def live_log(
    cfg: Config, log_dir: Path, earlier: Sequence[EpochRecord] = ()
) -> Iterator[EpochLog | None]:
    """``covidreg train``'s log, written as the epochs come; None without ``cfg.tensorboard``.

    ``earlier``: the epochs a resumed run already has (its training state's history). They are
    written again into a fresh folder, so the resumed log holds each epoch once, whatever the
    interrupted process had flushed. The writer is opened at the first epoch: a run that fails
    before one (it diverged at once) leaves no log behind.
    """
    if not cfg.tensorboard:
        yield None
        return
    writers: list[SummaryWriter] = []

    def start() -> SummaryWriter:
        if not writers:
            # a START event at step 1: a TensorBoard already showing this folder drops the
            # steps it had read from the removed files
            writers.append(open_writer(log_dir, purge_step=1 if earlier else None))
            for done in earlier:
                add_epoch(writers[0], done)
        return writers[0]

    try:
        yield lambda record: add_epoch(start(), record)
    finally:
        if earlier:  # resumed after its last epoch: no epoch came, the log is still due
            start()
        for writer in writers:
            writer.close()


def hparam_value(value: Any) -> float | int | str:
    """A config value as the HParams tab shows it: numbers as numbers, the rest as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def write_trial(
    log_dir: Path,
    number: int,
    values: dict[str, Any],
    folds: dict[int, Sequence[EpochRecord]],
    objective: float | None,
) -> None:
    """One tune trial as one TensorBoard run: each fold's epochs under ``fold_<k>/``, its
    searched values as hyperparameters, and its objective (mean valid RMSE over the folds) as
    the ``valid_rmse`` metric, so the HParams tab lists it. A pruned trial (``objective``
    None) has the epochs it trained and no metric value."""
    from torch.utils.tensorboard.summary import hparams

    hparam_dict = {key: hparam_value(value) for key, value in values.items()}
    # the metric's name only: the Experiment lists it, its value is the scalar below
    experiment, start, end = hparams(hparam_dict, {OBJECTIVE_TAG: math.nan})
    with open_writer(log_dir) as writer:
        for k, history in sorted(folds.items()):
            for record in history:
                add_epoch(writer, record, f"fold_{k}/")
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        if objective is not None:
            # step = the trial's number: the scalar chart of every trial is the study's history
            writer.add_scalar(OBJECTIVE_TAG, objective, number)


def trial_dir(log_dir: str | Path, number: int) -> Path:
    return Path(log_dir) / f"trial_{number:04d}"
