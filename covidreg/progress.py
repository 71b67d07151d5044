"""Terminal output with rich: epoch progress bars, summary tables, result lines.

Progress and tables go to stderr; the one result line goes to stdout, so scripts can capture it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


class EpochDisplay:
    """A progress bar over epochs with the latest train/valid loss and the best so far."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress = progress
        self.total = total
        self.task: Any = None
        self._last_update = 0.0
        self._last: tuple[Any, float, int] | None = None

    def on_start(self, run_dir: Path, first_epoch: int) -> None:
        if self.progress is None:
            return
        err_console.print(f"run directory: [bold]{run_dir}[/bold]")
        self.task = self.progress.add_task(
            "train", total=self.total, completed=first_epoch, train="-", valid="-", best="-"
        )

    def on_start_resume(self, run_dir: Path, first_epoch: int) -> None:
        if self.progress is not None:
            err_console.print(f"resuming after epoch {first_epoch}")
        self.on_start(run_dir, first_epoch)

    def on_epoch(self, record: Any, stopper: Any) -> None:
        if self.progress is None or self.task is None:
            return
        self._last = (record, stopper.best, stopper.best_epoch)
        # An epoch takes about a millisecond: redrawing every epoch would cost more than the
        # training itself, so update at most ten times a second (``finish`` shows the last).
        now = time.perf_counter()
        if now - self._last_update >= 0.1:
            self._last_update = now
            self._show()

    def _show(self) -> None:
        record, best, best_epoch = self._last
        self.progress.update(
            self.task,
            completed=record.epoch,
            train=f"{record.train_loss:.4f}",
            valid=f"{record.valid_loss:.4f}",
            best=f"{best:.4f}@{best_epoch}",
        )

    def finish(self) -> None:
        if self.progress is not None and self.task is not None and self._last is not None:
            self._show()


@contextmanager
def epoch_display(quiet: bool, total: int | None = None) -> Iterator[EpochDisplay]:
    if quiet:
        yield EpochDisplay(None, total)
        return
    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "train {task.fields[train]}  valid {task.fields[valid]}  best {task.fields[best]}"
        ),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        refresh_per_second=8,
    )
    with progress:
        display = EpochDisplay(progress, total)
        yield display
        display.finish()


def train_summary(result: Any, quiet: bool) -> None:
    """A summary table (unless quiet) and the result line."""
    m = result.metrics
    if result.message:
        warn(result.message)
    if not quiet:
        table = Table(title="covidreg train", show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("")
        rows = [
            ("split", f"{m['split']} ({m['train_rows']} train / {m['valid_rows']} valid rows)"),
            ("features / parameters", f"{m['n_features']} / {m['n_parameters']}"),
            ("epochs run", f"{m['epochs_run']} ({m['stop_reason'].replace('_', ' ')})"),
            ("best epoch", str(m["best_epoch"])),
            ("valid MSE", f"{m['valid_mse']:.5f}"),
            ("valid RMSE", f"{m['valid_rmse']:.5f}"),
            ("persistence RMSE", f"{m['persistence_valid_rmse']:.5f} (day 3 = day 2)"),
            ("seconds", f"{m['seconds']:.2f}"),
            ("outputs", str(result.run_dir)),
        ]
        for key, value in rows:
            table.add_row(key, value)
        err_console.print(table)
    out_console.print(
        f"valid_rmse={m['valid_rmse']:.5f} best_epoch={m['best_epoch']} run_dir={result.run_dir}"
    )
