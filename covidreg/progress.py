"""Terminal output with rich: epoch progress bars, summary tables, result lines.

Progress and tables go to stderr; the one result line goes to stdout, so scripts can capture it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
        # Started only now, after the inputs were validated: an input error prints one line.
        self.progress.start()
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
        if self.progress is not None and self.task is not None:
            if self._last is not None:
                self._show()
            self.progress.stop()


@contextmanager
def epoch_display(quiet: bool, total: int | None = None) -> Iterator[EpochDisplay]:
    display = EpochDisplay(None if quiet else _epoch_progress(), total)
    try:
        yield display
    finally:
        display.finish()


class NotebookProgress(Progress):
    """Progress bars in Jupyter: rich's live display draws there only through ipywidgets, so
    this one shows its table in one IPython output, replaced in place (a display id) at each
    update; every notebook front end renders that, and an executed notebook keeps the last."""

    _started = False
    _handle: Any = None

    def start(self) -> None:
        self._started = not self.disable

    def refresh(self) -> None:
        # shown with its first task, below what was printed since start (as in a terminal)
        if not self._started or not self.tasks:
            return
        if self._handle is None:
            from IPython.display import display

            self._handle = display(self, display_id=True)
        else:
            self._handle.update(self)

    def stop(self) -> None:
        self.refresh()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.refresh()

    def advance(self, *args: Any, **kwargs: Any) -> None:
        super().advance(*args, **kwargs)
        self.refresh()


def _bar(*fields: str, **options: Any) -> Progress:
    """A progress bar: the task's name, the bar, done/total, ``fields`` (text templates over
    the task's fields) and the time elapsed, on stderr (in Jupyter, in the cell's output)."""
    progress = NotebookProgress if err_console.is_jupyter else Progress
    return progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text) for text in fields),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        **options,
    )


def _epoch_progress() -> Progress:
    return _bar(
        "train {task.fields[train]}  valid {task.fields[valid]}  best {task.fields[best]}",
        refresh_per_second=8,
    )


def blend_note(weight: float) -> str:
    """How a ridge_blend model predicts, after its RMSE."""
    if not weight:
        return ""
    return f" ({1 - weight:g} x network + {weight:g} x ridge)"


def train_summary(result: Any, quiet: bool) -> None:
    """A summary table (unless quiet) and the result line."""
    m = result.metrics
    blend = m["ridge_blend"]
    if result.message:
        warn(result.message)
    if not quiet:
        table = Table(title="covidreg train", show_header=False, title_justify="left")
        days = m["data"]["days"]
        table.add_column("", style="bold")
        table.add_column("")
        rows = [
            ("data", m["data"]["layout"]),
            ("split", f"{m['split']} ({m['train_rows']} train / {m['valid_rows']} valid rows)"),
            ("features / parameters", f"{m['n_features']} / {m['n_parameters']}"),
            ("epochs run", f"{m['epochs_run']} ({m['stop_reason'].replace('_', ' ')})"),
            ("best epoch", str(m["best_epoch"])),
            *(
                [
                    (
                        "learning rate",
                        f"{m['lr_finder']['lr']:.3g} (--lr auto: the range test's valley)",
                    )
                ]
                if m.get("lr_source") == "lr-find"
                else []
            ),
            ("valid MSE", f"{m['valid_mse']:.5f}"),
            ("valid RMSE", f"{m['valid_rmse']:.5f}" + blend_note(blend)),
            *([("network alone RMSE", f"{m['network_valid_rmse']:.5f}")] if blend else []),
            (
                "persistence RMSE",
                f"{m['persistence_valid_rmse']:.5f} (day {days} = day {days - 1})",
            ),
            ("seconds", f"{m['seconds']:.2f}"),
            ("outputs", str(result.run_dir)),
        ]
        for key, value in rows:
            table.add_row(key, value)
        err_console.print(table)
    out_console.print(
        f"valid_rmse={m['valid_rmse']:.5f} best_epoch={m['best_epoch']} run_dir={result.run_dir}"
    )


class FoldDisplay(EpochDisplay):
    """One progress bar per fold (or seed: ``label``), updated as soon as it trains."""

    label = "fold"

    def on_start(self, run_dir: Path, first_epoch: int = 0) -> None:  # type: ignore[override]
        if self.progress is None:
            return
        self.progress.start()
        err_console.print(f"run directory: [bold]{run_dir}[/bold]")

    def on_fold_start(self, fold: int, n_folds: int) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self._show()
        self._last = None
        self.task = self.progress.add_task(
            f"{self.label} {fold}/{n_folds}", total=self.total, train="-", valid="-", best="-"
        )

    def on_fold_end(self, fold: Any) -> None:
        if self.progress is not None and self._last is not None:
            self._show()


@contextmanager
def fold_display(quiet: bool, total: int, label: str = "fold") -> Iterator[FoldDisplay]:
    display = FoldDisplay(None if quiet else _epoch_progress(), total)
    display.label = label
    try:
        yield display
    finally:
        display.finish()


@dataclass
class Column:
    """One column of a summary table: its header, its cells (text), and when it may go."""

    header: str
    cells: list[str]
    justify: Literal["left", "right"] = "right"
    # 0: always shown; when the terminal is too narrow for every column, the highest goes first
    drop: int = 0

    def min_width(self) -> int:
        """The narrowest it can be with its cells whole (a header wraps at its spaces)."""
        words = [len(w) for w in self.header.split()] or [0]
        return max(max(words), *(len(c) for c in self.cells), 1)

    def natural_width(self) -> int:
        return max(len(self.header), self.min_width())


def fitting_table(
    title: str,
    columns: list[Column],
    width: int,
    section_at: int | None = None,
    row_styles: list[str | None] | None = None,
    full_file: str = "",
) -> Table:
    """A table whose cells are never cut at ``width`` columns: the columns that may go are
    dropped (highest ``drop`` first) until the rest fit, and a caption names them
    (``full_file`` holds every column). ``section_at``: a rule before that row."""
    kept = list(columns)

    def needed(cols: list[Column]) -> int:
        return sum(c.min_width() + 3 for c in cols) + 1  # 1 padding each side, 1 border

    for column in sorted((c for c in columns if c.drop), key=lambda c: -c.drop):
        if needed(kept) <= width:
            break
        kept.remove(column)
    dropped = [c.header for c in columns if c not in kept]
    caption = None
    if dropped:
        caption = f"not shown at this width: {', '.join(dropped)}" + (
            f" (see {full_file})" if full_file else ""
        )
    # rich narrows a table too wide for the terminal by cutting cells; give each column its
    # width instead: its cells' whole, then what is left towards its header's one line
    widths = [c.min_width() for c in kept]
    spare = width - needed(kept)
    for i, c in enumerate(kept):
        extra = max(0, min(spare, c.natural_width() - widths[i]))
        widths[i], spare = widths[i] + extra, spare - extra
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c, w in zip(kept, widths, strict=True):
        table.add_column(c.header, justify=c.justify, width=w, overflow="fold")
    n_rows = len(columns[0].cells) if columns else 0
    for i in range(n_rows):
        if i == section_at:
            table.add_section()
        style = row_styles[i] if row_styles else None
        table.add_row(*(c.cells[i] for c in kept), style=style)
    return table


def cv_table(result: Any, width: int) -> Table:
    """The per-fold table with mean, std, min and max, fitted to ``width`` columns."""
    s, folds = result.summary, result.folds
    # one fold (a temporal hold-out) is its own mean: no summary rows
    stats = ("mean", "std", "min", "max") if len(folds) > 1 else ()
    blank = [""] * len(stats)

    def with_stats(key: str, cells: list[str], spec: str = ".4f") -> list[str]:
        return cells + [format(s[key][stat], spec) for stat in stats]

    columns = [
        Column("fold", [str(f.fold) for f in folds] + list(stats)),
        Column("train rows", [str(f.train_rows) for f in folds] + blank, drop=3),
        Column("valid rows", [str(f.valid_rows) for f in folds] + blank, drop=4),
        Column("epochs", [str(f.epochs_run) for f in folds] + blank, drop=2),
        Column("best epoch", [str(f.best_epoch) for f in folds] + blank),
    ]
    if s.get("lr_source") == "lr-find":  # --lr auto: each fold's own rate
        columns.append(Column("lr (auto)", [f"{f.lr:.3g}" for f in folds] + blank))
    columns += [
        Column("valid MSE", [f"{f.valid_mse:.4f}" for f in folds] + blank, drop=5),
        Column("valid RMSE", with_stats("valid_rmse", [f"{f.valid_rmse:.4f}" for f in folds])),
    ]
    if s.get("ridge_blend"):  # and the network alone beside the blend
        cells = [f"{f.network_rmse:.4f}" for f in folds]
        columns.append(Column("network", with_stats("network_rmse", cells)))
    columns += [
        Column(
            "persistence",
            with_stats("persistence_rmse", [f"{f.persistence_rmse:.4f}" for f in folds]),
            drop=1,
        ),
        Column("ridge", with_stats("ridge_rmse", [f"{f.ridge_rmse:.4f}" for f in folds])),
        Column(
            "seconds",
            with_stats("fold_seconds", [f"{f.seconds:.1f}" for f in folds], ".1f"),
            drop=6,
        ),
    ]
    protocol = s.get("protocol", f"{result.n_folds} {result.split} folds")
    title = f"covidreg cv: {protocol}, {s['data']['layout']}"
    return fitting_table(title, columns, width, len(folds), full_file="cv.csv")


def cv_summary(result: Any, quiet: bool, result_line: bool = True) -> None:
    """The per-fold table, mean ± std and the baselines; the result line on stdout (on stderr
    without ``result_line``: one seed of ``cv --seeds``, whose result line is the seeds')."""
    s = result.summary
    if not quiet:
        err_console.print(cv_table(result, err_console.width))
        err_console.print(f"outputs: {result.run_dir}")
        if result.pred_path is not None:
            err_console.print(f"fold-ensemble predictions: {result.pred_path}")
    v, p, r = s["valid_rmse"], s["persistence_rmse"], s["ridge_rmse"]
    (out_console if result_line else err_console).print(
        f"cv_rmse={v['mean']:.5f}±{v['std']:.5f} persistence_rmse={p['mean']:.5f}±{p['std']:.5f} "
        f"ridge_rmse={r['mean']:.5f}±{r['std']:.5f} run_dir={result.run_dir}",
        soft_wrap=True,
    )


def predict_summary(result: Any, quiet: bool) -> None:
    if not quiet:
        n = result.n_models
        what = "model" if n == 1 else f"ensemble of {n} {result.members}"
        source = "" if result.csv is None else f" of {result.csv}"
        err_console.print(
            f"predicted {result.n_rows} rows{source} with the {what}", markup=False, soft_wrap=True
        )
        for row in result.per_model:
            err_console.print(f"  {row['model']}: RMSE {row['rmse']:.5f}  MAE {row['mae']:.5f}")
    line = f"wrote {result.out} ({result.n_rows} rows)"
    if result.scores is not None:
        line += f" rmse={result.scores['rmse']:.5f} mae={result.scores['mae']:.5f}"
    out_console.print(line)


def seeds_summary(result: Any, quiet: bool) -> None:
    """Per-seed RMSE and their mean ± std: how much of a result is luck."""
    s = result.summary
    if not quiet:
        table = Table(title=f"{s['n_seeds']} seeds", title_justify="left")
        table.add_column("seed", justify="right")
        table.add_column("valid RMSE", justify="right")
        table.add_column("run", justify="left")
        for run in s["runs"]:
            table.add_row(str(run["seed"]), f"{run['valid_rmse']:.5f}", run["dir"])
        v = s["valid_rmse"]
        table.add_section()
        table.add_row("mean ± std", f"{v['mean']:.5f} ± {v['std']:.5f}", "")
        err_console.print(table)
    v = s["valid_rmse"]
    out_console.print(
        f"seeds_rmse={v['mean']:.5f}±{v['std']:.5f} n_seeds={s['n_seeds']} run_dir={result.run_dir}"
    )


# --- covidreg tune -------------------------------------------------------------------------------


class TrialDisplay:
    """A progress bar over a study's trials (all workers'), with the best value so far."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task: Any = None

    def on_start(self, plan: Any) -> None:
        if self.progress is None:
            return
        from covidreg.tune.reports import data_label

        job = plan.job
        workers = f"{plan.workers} worker{'s' if plan.workers > 1 else ''}"
        err_console.print(
            f"study [bold]{job.study_name}[/bold] in {plan.storage_label}: {plan.n_done} of "
            f"{job.target} trials done; {workers}, sampler {job.sampler}, pruner {job.pruner}, "
            f"{job.n_folds} fold{'s' if job.n_folds > 1 else ''}"
        )
        err_console.print(f"data: {data_label(plan.data)}", soft_wrap=True)
        self.progress.start()
        # a resumed study starts from its earlier trials: their count, best, pruned and failed
        self.task = self.progress.add_task("trials", total=job.target, **_fields(plan.progress))

    def on_progress(self, state: Any) -> None:
        if self.progress is None or self.task is None:
            return
        self.progress.update(self.task, **_fields(state))

    def finish(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()


def _fields(state: Any) -> dict[str, Any]:
    """The trial bar's fields for a study's progress (``tune.study.TuneProgress``)."""
    best = "-" if state.best_value is None else f"{state.best_value:.5f} (#{state.best_number})"
    return {
        "completed": state.done,
        "best": best,
        "pruned": state.n_pruned,
        "failed": state.n_failed,
    }


@contextmanager
def trial_display(quiet: bool) -> Iterator[TrialDisplay]:
    progress = None
    if not quiet:
        progress = _bar(
            "best {task.fields[best]}  pruned {task.fields[pruned]}  failed {task.fields[failed]}"
        )
    display = TrialDisplay(progress)
    try:
        yield display
    finally:
        display.finish()


def _param_text(params: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return str(value)

    return " ".join(f"{key}={short(value)}" for key, value in params.items())


def tune_summary(result: Any, quiet: bool) -> None:
    """The best trials of the study, its data set, the output files, and the result line on
    stdout."""
    from covidreg.tune.reports import data_label, objective_name

    objective = objective_name(result.n_folds)
    if not quiet:
        counts = ", ".join(
            f"{result.count(state)} {state}"
            for state in ("complete", "pruned", "fail", "running", "waiting")
            if result.count(state)
        )
        table = Table(
            title=f"study {result.study_name}: {len(result.trials)} trials ({counts or 'none'}); "
            f"top {len(result.top)} by {objective}",
            title_justify="left",
        )
        for name, justify in (("#", "right"), ("RMSE", "right"), ("± folds", "right")):
            table.add_column(name, justify=justify)
        table.add_column("params", overflow="fold")
        table.add_column("seconds", justify="right")
        for row in result.top:
            table.add_row(
                str(row.number),
                f"{row.value:.5f}",
                "" if row.fold_std is None else f"{row.fold_std:.4f}",
                _param_text(row.params),
                "" if row.seconds is None else f"{row.seconds:.1f}",
            )
        err_console.print(table)
        failed = [row for row in result.trials if row.error]
        if failed:
            warn(f"{len(failed)} trial(s) failed; #{failed[-1].number}: {failed[-1].error}")
        err_console.print(f"data: {data_label(result.data)}", soft_wrap=True)
        err_console.print(f"storage: {result.storage}")
        err_console.print(f"outputs: {result.run_dir} (best.toml, trials.csv, history.png)")
    if result.best is None:
        out_console.print(
            f"no completed trial yet study={result.study_name} run_dir={result.run_dir}"
        )
        return
    out_console.print(
        f"best_rmse={result.best.value:.5f} trial={result.best.number} best_toml={result.best_toml}"
    )


def tune_interrupted(exc: Any) -> None:
    """Ctrl-C: what was kept and how to go on."""
    plan, state = exc.plan, exc.progress
    err_console.print(
        f"interrupted: {state.done} of {state.target} trials of study '{plan.job.study_name}' "
        f"are kept in {plan.storage_label}; the interrupted trial is queued again. Run the same "
        "command to resume, or add --show to see the best trials so far.",
        soft_wrap=True,
    )


# --- covidreg compare ----------------------------------------------------------------------------


class VariantDisplay:
    """A progress bar over the compared variants, advanced as each one finishes."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task: Any = None

    def on_start(self, run_dir: Path, n_variants: int) -> None:
        if self.progress is None:
            return
        self.progress.start()
        err_console.print(f"run directory: [bold]{run_dir}[/bold]")
        self.task = self.progress.add_task("variants", total=n_variants)

    def on_done(self, index: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def finish(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()


@contextmanager
def variant_display(quiet: bool) -> Iterator[VariantDisplay]:
    progress = None
    if not quiet:
        progress = _bar()
    display = VariantDisplay(progress)
    try:
        yield display
    finally:
        display.finish()


def compare_table(result: Any, width: int) -> Table:
    """One row per variant, the best in bold green, fitted to ``width`` columns."""
    from covidreg.config import show_value

    rows, folds = result.results, result.n_folds
    columns = [Column(k, [show_value(r.variant.values[k]) for r in rows]) for k in result.keys]
    columns += [
        Column("epochs", [f"{r.epochs_run:g}" for r in rows], drop=3),
        Column("best epoch", [f"{r.best_epoch:g}" for r in rows], drop=4),
        Column("valid RMSE", [f"{r.valid_rmse:.5f}" for r in rows]),
        *([Column("± std", [f"{r.valid_rmse_std:.5f}" for r in rows])] if folds else []),
        Column("train loss", [f"{r.train_loss:.4f}" for r in rows], drop=2),
        Column("stop", [r.stop_reason for r in rows], drop=1),
    ]
    seeds = f"{result.n_seeds} seed{'s' if result.n_seeds > 1 else ''}"
    how = "holdout" if folds is None else f"{folds} folds x {seeds}"
    title = f"covidreg compare: {len(rows)} variants ({how})"
    styles = ["bold green" if r is result.best else None for r in rows]
    return fitting_table(title, columns, width, row_styles=styles, full_file="compare.csv")


def compare_summary(result: Any, quiet: bool) -> None:
    """One row per variant, the best marked; the result line on stdout."""
    best = result.best
    if not quiet:
        err_console.print(compare_table(result, err_console.width))
        plot = "curves.png" if result.n_folds is None else "spread.png"
        err_console.print(f"outputs: {result.run_dir} (compare.csv, {plot})")
    out_console.print(
        f"best={best.variant.name} valid_rmse={best.valid_rmse:.5f} run_dir={result.run_dir}"
    )


def lr_find_summary(result: Any, quiet: bool) -> None:
    """The suggestion and its reference points in a table; the result line on stdout."""
    from covidreg.config import AUTO_END, AUTO_START, AUTO_STEPS

    test, found = result.test, result.test.suggestion
    div10 = "none" if found.min_loss_div10 is None else f"{found.min_loss_div10:.3g}"
    if not quiet:
        end = "diverged" if test.diverged else "reached --end-lr"
        how = "the valley: the rate --lr auto takes"
        if not test.auto_bounds:
            how = (
                f"the valley, as --lr auto chooses; --lr auto tests {AUTO_START:g} to "
                f"{AUTO_END:g} in {AUTO_STEPS} steps"
            )
        where = f"the lowest smoothed loss is at {found.min_loss:.3g}"
        if found.min_loss_div10 is None:
            where += ", and / 10 lies below the range tested: lower --start-lr to see it"
        rows = (
            (
                "range tested",
                f"{len(test.lrs)} steps, {test.lrs[0]:.3g} to {test.lrs[-1]:.3g} ({end})",
            ),
            ("suggested_lr", f"[bold green]{found.suggested:.3g}[/bold green] ({how})"),
            ("steepest_lr", f"{found.steepest:.3g} (the steepest descent; for reference)"),
            ("min_loss_lr_div10", f"{div10} ({where})"),
            ("outputs", f"{result.run_dir} (lr_find.csv, lr_find.json, lr_find.png)"),
        )
        table = Table(title="covidreg lr-find", show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("", overflow="fold")
        for key, value in rows:
            table.add_row(key, value)
        err_console.print(table)
    out_console.print(
        f"suggested_lr={found.suggested:.3g} steepest_lr={found.steepest:.3g} "
        f"min_loss_lr_div10={div10} run_dir={result.run_dir}"
    )


# --- covidreg features --rank --------------------------------------------------------------------


def _days(features: tuple[str, ...]) -> str:
    """A group's days as the table shows them: d1-d3, d1-d2 (tested_positive), or a count."""
    days = [name.rsplit("_d", 1)[-1] for name in features]
    if all(day.isdigit() for day in days) and len(days) > 1:
        return f"d{days[0]}-d{days[-1]}"
    return f"d{days[0]}" if len(days) == 1 else f"{len(days)} columns"


def rank_table(result: Any, width: int) -> Table:
    """One row per group, most important first, fitted to ``width`` columns."""
    ranking = result.ranking
    groups, base = ranking.groups, ranking.cv_rmse()["mean"]
    strong = ranking.in_preset()
    columns = [
        Column("rank", [str(i) for i in range(1, len(groups) + 1)]),
        Column("column", [g.group.name for g in groups], justify="left"),
        Column("days", [_days(g.group.features) for g in groups], drop=3),
        Column("RMSE increase", [f"{g.mean:+.4f}" for g in groups]),
        Column("± std", [f"{g.std:.4f}" for g in groups]),
        Column("% of RMSE", [f"{100 * g.mean / base:+.1f}" for g in groups], drop=2),
    ]
    if strong:
        marks = ["yes" if g.group.name in strong else "" for g in groups]
        columns.append(Column("in strong", marks, justify="left", drop=1))
    for k, fold in enumerate(ranking.folds):
        cells = [f"{g.fold_means()[k]:+.4f}" for g in groups]
        columns.append(Column(f"fold {fold.fold}", cells, drop=5 + k))
    title = (
        f"covidreg features --rank: permutation importance, {ranking.protocol} x "
        f"{ranking.n_repeats} repeats, {ranking.layout.describe()}"
    )
    styles = ["bold" if g.group.name in strong else None for g in groups]
    return fitting_table(title, columns, width, row_styles=styles, full_file="rank.csv")


def rank_summary(result: Any, quiet: bool) -> None:
    """The groups by importance, the ranking model's own cv RMSE; the result line on stdout."""
    from covidreg.layout import TESTED

    ranking = result.ranking
    cv, persistence = ranking.cv_rmse(), ranking.persistence_rmse()
    if not quiet:
        err_console.print(rank_table(result, err_console.width))
        err_console.print(
            f"ranking model: {len(ranking.cfg.features)} inputs (every day of each column), "
            f"blocked cv RMSE {cv['mean']:.4f} ± {cv['std']:.4f}, persistence "
            f"{persistence['mean']:.4f}; ± std: over {len(ranking.folds)} folds x "
            f"{ranking.n_repeats} repeats"
        )
        if ranking.delta_base_kept:
            err_console.print(
                f"{TESTED}: its known days permuted in the inputs only; the delta target's base "
                f"({ranking.layout.last_known}) stays each row's own"
            )
        err_console.print(f"outputs: {result.run_dir} (rank.csv, rank.json, rank.png)")
    order = ",".join(g.group.name for g in ranking.groups)
    out_console.print(
        f"rank={order} cv_rmse={cv['mean']:.5f}±{cv['std']:.5f} run_dir={result.run_dir}"
    )
