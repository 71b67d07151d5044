"""Run directories and the files in them, every one written atomically.

A file is written to a temporary name in its own directory and then ``os.replace``d onto its
final name, so an interrupted run leaves either the previous file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from covidreg import __version__
from covidreg.errors import CovidRegError

CHECKPOINT_FORMAT = "covidreg-checkpoint"
CHECKPOINT_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    ``durable`` also flushes the data to disk before the rename (survives a power loss, not
    only a killed process); the periodic training state skips it, it is rewritten often.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_predictions(path: str | Path, ids: Sequence[int], values: Sequence[float]) -> None:
    """Kaggle submission format: ``id,tested_positive``."""
    write_csv(
        path,
        ["id", "tested_positive"],
        [(int(i), repr(float(v))) for i, v in zip(ids, values, strict=True)],
    )


# --- run directories -----------------------------------------------------------------------------


def ensure_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CovidRegError(f"{what} {path} is a file; pass a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CovidRegError(f"cannot create {what} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CovidRegError(f"{what} {path} is not writable; choose another with --out")
    return path


# What covidreg writes at the top of a run directory (train, --seeds, cv, compare, lr-find,
# tune): a directory holding only these holds a covidreg run, which --overwrite may replace.
# Anything else (a file of the user's) is never deleted.
RUN_ENTRIES = re.compile(
    r"model\.pt|config\.toml|history\.csv|metrics\.json|learning_curves?\.png"
    r"|valid_pred\.png|pred\.csv|training_state(\.stack_\d+)?\.pt|seeds\.json|seed_\d+"
    r"|cv\.csv|summary\.json|fold_\d+|compare\.csv|histories\.csv|curves\.png|spread\.png"
    r"|lr_find\.(csv|json|png)|rank\.(csv|json|png)|study\.journal.*|best\.toml|trials\.csv|history\.png|tensorboard"
    r"|\..+\.tmp"
)
# what a tune study writes: the same command resumes the study in that directory
TUNE_ENTRIES = re.compile(r"study\.journal.*|best\.toml|trials\.csv|history\.png|tensorboard")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_output_target(out: str | Path | None, what: str = "output directory") -> None:
    """Fail before any work if ``out`` could not be created or written."""
    if out is None:
        return
    path = Path(out)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CovidRegError(f"{what} {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CovidRegError(f"{what} {path} is not writable ({probe}); choose another with --out")


def check_run_target(
    out: str | Path | None,
    overwrite: bool = False,
    resumable: bool = False,
    reusable: re.Pattern[str] | None = None,
) -> None:
    """``check_output_target``, and fail if the run directory ``out`` holds another run
    (``overwrite``: one that covidreg wrote may be replaced). ``resumable``: the command
    continues an interrupted run with --resume; ``reusable``: entries the command itself
    reuses (a tune study's), which are no other run's."""
    check_output_target(out)
    if out is None or not Path(out).is_dir():
        return
    path = Path(out)
    names = sorted(p.name for p in path.iterdir())
    if reusable is not None and all(reusable.fullmatch(n) for n in names):
        return
    foreign = [n for n in names if not RUN_ENTRIES.fullmatch(n)]
    if foreign:
        raise CovidRegError(
            f"output directory {path} holds files that are not a covidreg run's "
            f"({_listed(foreign)}); choose another --out"
        )
    if names and not overwrite:
        held = held_run(path, names)
        if resumable and held == INTERRUPTED_TRAIN:
            resume = f"'covidreg train --resume {shlex.quote(str(path))}'"
            how = f"continue it with {resume}, replace it with --overwrite, or choose another --out"
        else:
            how = "choose another --out, or replace it with --overwrite"
        raise CovidRegError(
            f"output directory {path} already holds {held} ({_listed(names)}); {how}"
        )


INTERRUPTED_TRAIN = "an interrupted train run"


def held_run(path: Path, names: list[str]) -> str:
    """What kind of covidreg run the entries ``names`` of the directory ``path`` are."""
    if "training_state.pt" in names:  # train and train --seeds save it until they finish
        return INTERRUPTED_TRAIN
    if "seeds.json" in names:
        command = "cv" if any(path.glob("seed_*/cv.csv")) else "train"
        return f"a finished {command} --seeds run"
    for start, kind in _RUN_KINDS:
        if any(name.startswith(start) for name in names):
            return kind
    return "a run"


# the entries that tell runs apart (by how their names start), in the order they decide
_RUN_KINDS = (
    ("model.pt", "a finished train run"),
    ("cv.csv", "a cv run"),
    ("compare.csv", "a compare run"),
    ("lr_find.csv", "an lr-find run"),
    ("rank.csv", "a features --rank run"),
    ("study.journal", "a tune study's outputs"),
    ("best.toml", "a tune study's outputs"),
    ("trials.csv", "a tune study's outputs"),
    ("fold_", "a cv run"),
    ("seed_", "an unfinished --seeds run"),
)


def clear_run_dir(path: Path) -> None:
    """Remove the run in ``path`` (``check_run_target`` found only covidreg's entries)."""
    import shutil

    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def new_run_dir(base: str | Path, name: str) -> Path:
    """A fresh ``base/<timestamp>-<name>`` directory (suffixed if that exists already)."""
    base = ensure_writable_dir(base, "runs directory")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt}"
        path = base / f"{stamp}-{name}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CovidRegError(f"could not create a new run directory under {base}")  # pragma: no cover


def claim_run_dir(
    out: str | Path | None,
    runs_dir: str | Path,
    name: str,
    overwrite: bool = False,
    resumable: bool = False,
    reusable: re.Pattern[str] | None = None,
) -> Path:
    """``out`` (checked, emptied of an earlier run with ``overwrite``, and created) or a new
    ``runs_dir/<time>-name``. Called once the inputs are checked: a run that --overwrite
    replaces is removed only when the new one is about to start."""
    if out is None:
        return new_run_dir(runs_dir, name)
    check_run_target(out, overwrite, resumable, reusable)
    path = Path(out)
    if overwrite and path.is_dir():
        clear_run_dir(path)
    return ensure_writable_dir(path)


@contextlib.contextmanager
def run_dir_for(
    out: str | Path | None,
    runs_dir: str | Path,
    name: str,
    overwrite: bool = False,
    resumable: bool = False,
) -> Iterator[Path]:
    """``claim_run_dir``; a run that fails before its first file (it diverged at once, it was
    interrupted) leaves no empty directory behind, and one holding files (a training state for
    --resume) is kept."""
    created = out is None or not Path(out).exists()
    run_dir = claim_run_dir(out, runs_dir, name, overwrite, resumable)
    try:
        yield run_dir
    except BaseException:
        if created or overwrite:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds while the directory is empty
        raise


# --- provenance ----------------------------------------------------------------------------------


def git_commit() -> str | None:
    """The commit of the covidreg source tree, when it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info(device: str, seed: int, deterministic: bool) -> dict[str, Any]:
    import numpy
    import torch

    return {
        "covidreg": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "platform": platform.platform(),
        "device": device,
        "seed": seed,
        "deterministic": deterministic,
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any], durable: bool = True) -> None:
    """Save tensors and plain Python types only, atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}, buffer
    )
    write_bytes(path, buffer.getvalue(), durable)


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load with ``weights_only=True``; anything else than a covidreg checkpoint is refused."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if path.is_dir():
        raise CovidRegError(f"{what} {path} is a directory; pass the model.pt file inside it")
    if not path.exists():
        raise CovidRegError(f"{what} {path} does not exist; pass a model.pt written by covidreg")
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickle protocols before refusing them: the refusal below
            # is the one line the user needs.
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CovidRegError(_refusal(path, what, str(exc))) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        # torch's own reasons ("[Errno 22] Invalid argument", zip internals) do not help here
        raise CovidRegError(
            f"{what} {path} cannot be read (truncated or damaged PyTorch file); "
            "retrain or copy the file again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CovidRegError(f"{what} {path} is not a covidreg checkpoint (no covidreg header)")
    if data.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CovidRegError(
            f"{what} {path} was written by a newer covidreg (format {data['format_version']}); "
            "upgrade covidreg"
        )
    return data


def _refusal(path: Path, what: str, torch_message: str) -> str:
    """Why weights_only loading refused ``path``, without torch's advice to load it unsafely."""
    import zipfile

    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if found:
        content = f"it references the Python object {found.group(1)}"
    elif not zipfile.is_zipfile(path):  # torch.save writes zip archives; this is something else
        return (
            f"{what} {path} cannot be read (not a PyTorch checkpoint file; nothing in it was "
            "run); pass a model.pt written by covidreg"
        )
    else:
        content = "it holds Python objects other than tensors and plain types"
    return (
        f"{what} {path} was refused: {content}, which weights_only loading does not allow "
        "(nothing in it was run); only load checkpoints written by covidreg"
    )


# --- plots ---------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by the Agg canvas, without pyplot (its import and figure
    manager cost a third of a second, for files only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # fixed margins: tight_layout measured every label's extent, as long as the drawing itself
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
    return fig


def _save_figure(fig: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    write_bytes(path, buffer.getvalue())


def plot_learning_curve(
    path: str | Path,
    curves: Sequence[tuple[str, Sequence[int], Sequence[float], Sequence[float]]],
    best_epochs: Sequence[int] = (),
    title: str = "Learning curve",
) -> None:
    """Train and valid MSE per epoch (log scale) for one or more runs: (label, epochs, tr, va).

    One colour per run; with one best epoch per run, each run's best valid loss is marked in
    its colour as well."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    marked = len(best_epochs) == len(curves) > 1
    for i, (label, epochs, train, valid) in enumerate(curves):
        color = f"C{i % 10}"
        prefix = f"{label} " if label else ""
        ax.plot(epochs, train, color=color, alpha=0.45, lw=1, label=f"{prefix}train")
        ax.plot(epochs, valid, color=color, lw=1.4, label=f"{prefix}valid")
        if marked and best_epochs[i] in epochs:
            at = list(epochs).index(best_epochs[i])
            ax.plot([epochs[at]], [valid[at]], "o", color=color, ms=5, mec="black", mew=0.6)
    for best in best_epochs:
        if best > 0:  # 0: a run without a finite epoch
            ax.axvline(best, color="grey", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_title(title + (" (dotted: best epoch)" if best_epochs else ""))
    ax.legend(fontsize=7, ncol=2 if len(curves) > 2 else 1)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_spread(
    path: str | Path, labels: Sequence[str], values: Sequence[Sequence[float]], what: str
) -> None:
    """Each variant's validation RMSEs (its folds x seeds) as a box with every value drawn."""
    fig = _figure(max(5.0, 1.0 + 0.9 * len(labels)), 4.2)
    ax = fig.add_subplot()
    positions = list(range(1, len(labels) + 1))
    ax.boxplot(list(values), positions=positions, widths=0.5, showfliers=False)
    for i, (pos, points) in enumerate(zip(positions, values, strict=True)):
        ax.plot([pos] * len(points), points, "o", color=f"C{i % 10}", alpha=0.7, ms=4)
        ax.plot([pos], [sum(points) / len(points)], "D", color="black", ms=4)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right", fontsize=7)
    ax.set_ylabel("valid RMSE")
    ax.set_title(f"Valid RMSE over {what} (diamond: mean)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _save_figure(fig, path)


def plot_predictions(
    path: str | Path, truth: Sequence[float], pred: Sequence[float], rmse: float
) -> None:
    """Predicted vs true tested_positive on the validation rows."""
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.scatter(truth, pred, s=8, alpha=0.6)
    lo = min(min(truth), min(pred))
    hi = max(max(truth), max(pred))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("true tested_positive")
    ax.set_ylabel("predicted tested_positive")
    ax.set_title(f"Validation predictions (RMSE {rmse:.4f})")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_lr_find(
    path: str | Path,
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: Any,
) -> None:
    """The range test: training loss against the learning rate (log-log), the suggestion
    marked by a line and its reference points by marks, named as lr_find.json names them."""
    import math

    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    finite = [i for i, v in enumerate(losses) if math.isfinite(v) and v > 0]
    ax.plot(
        [lrs[i] for i in finite],
        [losses[i] for i in finite],
        color="C0",
        alpha=0.3,
        lw=1,
        label="batch loss",
    )
    ax.plot(lrs, smoothed, color="C0", lw=1.6, label="smoothed loss")
    at = lrs.index(suggestion.suggested)
    ax.axvline(suggestion.suggested, color="C3", lw=1.4, zorder=1)
    ax.plot(
        [suggestion.suggested],
        [smoothed[at]],
        "s",
        color="C3",
        ms=8,
        label=f"suggested_lr (valley): {suggestion.suggested:.3g}",
    )
    at = lrs.index(suggestion.steepest)
    ax.plot(
        [suggestion.steepest],
        [smoothed[at]],
        "o",
        color="grey",
        ms=6,
        label=f"steepest_lr: {suggestion.steepest:.3g}",
    )
    if suggestion.min_loss_div10 is None:
        ax.plot([], [], " ", label="min_loss_lr_div10: below the range tested")
    else:
        ax.axvline(
            suggestion.min_loss_div10,
            color="grey",
            ls=":",
            lw=1,
            label=f"min_loss_lr_div10: {suggestion.min_loss_div10:.3g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training MSE")
    ax.set_title("Learning-rate range test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_rank(
    path: str | Path,
    labels: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    highlighted: Sequence[bool],
    title: str,
) -> None:
    """Horizontal bars of each group's mean RMSE increase (the first at the top) with its std
    as an error bar; the ``highlighted`` groups (the strong preset's) in colour."""
    height = max(3.0, 1.4 + 0.28 * len(labels))
    fig = _figure(7, height)
    # room for the longest name at the left, for two title lines and the x label
    left = 0.05 + 0.0095 * max((len(label) for label in labels), default=0)
    fig.subplots_adjust(left=left, right=0.97, bottom=0.6 / height, top=1 - 0.55 / height)
    ax = fig.add_subplot()
    rows = list(range(len(labels)))
    colors = ["C0" if h else "0.65" for h in highlighted]
    ax.barh(rows, means, xerr=stds, color=colors, error_kw={"lw": 0.9, "capsize": 2})
    ax.set_yticks(rows)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("validation RMSE increase when the column's days are permuted (mean ± std)")
    ax.set_title(title, fontsize=9)
    if any(highlighted):
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color="C0", label="in the strong preset"), Patch(color="0.65")],
            labels=["in the strong preset", "not in it"],
            fontsize=8,
            loc="lower right",
        )
    ax.grid(alpha=0.3, axis="x")
    _save_figure(fig, path)


PLOTS = {
    "learning_curve": plot_learning_curve,
    "predictions": plot_predictions,
    "spread": plot_spread,
    "rank": plot_rank,
}


def _draw_plots(jobs: Any, parents_end: Any) -> None:
    """A plot process's work: load matplotlib at once, then draw each job it is sent (None
    ends), and answer with how many it drew. It ends when its parent does, however the parent
    ends: with the parent's end of the pipe closed here, a parent that dies leaves the pipe
    with no writer, and ``recv`` raises EOFError."""
    drawn = 0
    try:
        parents_end.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401

        while (job := jobs.recv()) is not None:
            name, args = job
            PLOTS[name](*args)
            drawn += 1
    finally:
        with contextlib.suppress(BaseException):
            jobs.send(drawn)
        os._exit(0)


class Plots:
    """Draws a run's plots in a forked process started before training, so matplotlib's import
    and the drawing overlap the training on another core (they took about half a second of a
    default ``covidreg train``). ``draw`` queues a plot, ``finish`` waits for them; whatever
    the process did not draw (it failed, or no process could be forked) is drawn here. Leaving
    the ``with`` block ends the process."""

    def __init__(self, background: bool = True) -> None:
        self.pending: list[tuple[str, tuple[Any, ...]]] = []
        self.jobs: Any = None
        self.process: Any = None
        if background and sys.platform == "linux" and len(os.sched_getaffinity(0)) > 1:
            import multiprocessing

            context = multiprocessing.get_context("fork")
            self.jobs, theirs = context.Pipe()
            self.process = context.Process(
                target=_draw_plots, args=(theirs, self.jobs), daemon=True
            )
            self.process.start()
            theirs.close()

    def draw(self, name: str, *args: Any) -> None:
        self.pending.append((name, args))
        if self.jobs is not None:
            with contextlib.suppress(OSError):
                self.jobs.send((name, args))

    def finish(self) -> None:
        drawn = 0
        if self.jobs is not None:
            with contextlib.suppress(OSError, EOFError):
                self.jobs.send(None)
                drawn = self.jobs.recv()
            self._close()
        for name, args in self.pending[drawn:]:
            PLOTS[name](*args)
        self.pending = []

    def _close(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join()
            self.jobs.close()
            self.process, self.jobs = None, None

    def __enter__(self) -> Plots:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
        self._close()
