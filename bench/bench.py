"""Benchmark covidreg against the course sample code's training loop; prints a markdown table.

    python bench/bench.py [--data-dir DIR] [--epochs-low N --epochs-high M] [--repeats R]

Every measurement is a separate child process, run one after another: whole-process wall time
and the child's own peak RSS (``os.wait4``). Per-epoch times are marginal,
(t_high - t_low) / (high - low), so start-up (imports, CSV parsing, output files) cancels.
Targets are reported, never enforced: the exit code is 0 unless the bench itself fails.
This script imports only the standard library; the children bring torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LOOP = Path(__file__).resolve().parent / "sample_loop.py"
DATA_ENV = "COVIDREG_DATA_DIR"
SAMPLE_CONFIG = REPO_ROOT / "configs" / "sample.toml"
CHILD_TIMEOUT_S = 900  # a hung child must not hang the bench

# Runs `covidreg --help` the way `python -m covidreg --help` does, then reports which heavy
# libraries the import of covidreg.cli and the whole --help path loaded.
_IMPORT_PROBE = """
import contextlib, io, json, runpy, sys
heavy = ("torch", "numpy", "pandas")
import covidreg.cli
after_import = [m for m in heavy if m in sys.modules]
sys.argv = ["covidreg", "--help"]
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    runpy.run_module("covidreg", run_name="__main__")
after_help = [m for m in heavy if m in sys.modules]
print(json.dumps({"after_import": after_import, "after_help": after_help}))
"""


_BOX_DRAWING = {code: " " for code in range(0x2500, 0x2580)}


@dataclass
class ChildRun:
    """One finished child process."""

    argv: list[str]
    wall_s: float
    max_rss_kib: int  # ru_maxrss of this child alone (Linux reports KiB)
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """A one-line reason for a failed run: the last non-empty line of its stderr."""
        # rich draws its error panels with box characters; keep only the words
        text = (self.stderr + self.stdout).translate(_BOX_DRAWING)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[-1] if lines else "no output"
        return f"n/a (command failed: exit {self.returncode}: {reason[:160]})"


class BenchFailure(Exception):
    """A measurement could not be taken; the message is what the table shows."""


def run_child(argv: Sequence[str], timeout_s: float = CHILD_TIMEOUT_S) -> ChildRun:
    """Run ``argv`` to completion; wall time and peak RSS of that process alone.

    ``os.wait4`` returns the rusage of the one child waited for, unlike
    ``getrusage(RUSAGE_CHILDREN)`` whose ``ru_maxrss`` is a maximum over all children so far.
    Output goes to files, not pipes, so a chatty child cannot block on a full pipe.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=REPO_ROOT, stdout=out, stderr=err)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen consistent
        out.seek(0)
        err.seek(0)
        return ChildRun(list(argv), wall, usage.ru_maxrss, proc.returncode, out.read(), err.read())


# --- the measured commands ----------------------------------------------------------------------


@dataclass
class DataFiles:
    train_csv: Path
    test_csv: Path


def covidreg_argv(command: str, epochs: int, out: Path, data: DataFiles) -> list[str]:
    argv = [sys.executable, "-m", "covidreg", command]
    if command == "cv":
        argv += ["--folds", "5"]
    argv += ["--config", str(SAMPLE_CONFIG), "--epochs", str(epochs), "--patience", "0"]
    if command == "train":
        argv += ["--checkpoint-every", "0"]
    argv += ["-q", "--out", str(out)]
    return [*argv, "--train-csv", str(data.train_csv), "--test-csv", str(data.test_csv)]


def run_covidreg(command: str, epochs: int, data: DataFiles) -> tuple[ChildRun, float | None]:
    """One covidreg run into a throw-away directory; also its own training-loop seconds.

    The loop seconds come from ``metrics.json`` (train only) and are checked against
    ``epochs_run``: with patience 0 every requested epoch must run.
    """
    with tempfile.TemporaryDirectory(prefix=f"covidreg-bench-{command}-") as tmp:
        out = Path(tmp) / "run"
        run = run_child(covidreg_argv(command, epochs, out, data))
        metrics_path = out / "metrics.json"
        if not run.ok or command != "train" or not metrics_path.is_file():
            return run, None
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if metrics.get("epochs_run", epochs) != epochs:
        raise BenchFailure(
            f"n/a (covidreg train ran {metrics['epochs_run']} epochs, asked for {epochs})"
        )
    seconds = metrics.get("seconds")
    return run, None if seconds is None else float(seconds)


def run_sample(epochs: int, data: DataFiles) -> tuple[ChildRun, float | None]:
    argv = [sys.executable, str(SAMPLE_LOOP), "--train-csv", str(data.train_csv)]
    run = run_child([*argv, "--epochs", str(epochs)])
    if not run.ok:
        return run, None
    return run, float(json.loads(run.stdout.strip().splitlines()[-1])["seconds"])


# --- marginal per-epoch cost --------------------------------------------------------------------


@dataclass
class EpochCost:
    """Marginal cost per epoch of one program, from whole-process runs at two epoch counts."""

    ms_per_epoch: float
    wall_high_s: float  # fastest whole-process wall time at the high count
    max_rss_mib: float  # peak RSS over all its runs
    loop_ms_per_epoch: float  # the program's own timing of its training loop, at the high count


Runner = Callable[[int, DataFiles], tuple[ChildRun, float | None]]


def measure_epoch_cost(
    runner: Runner, data: DataFiles, low: int, high: int, repeats: int
) -> EpochCost:
    """Alternate low and high runs (drift hits both alike) and keep the fastest of each."""
    walls: dict[int, list[float]] = {low: [], high: []}
    loop_s: list[float] = []
    rss_kib = 0
    for _ in range(repeats):
        for epochs in (low, high):
            run, own_seconds = runner(epochs, data)
            if not run.ok:
                raise BenchFailure(run.failure())
            walls[epochs].append(run.wall_s)
            rss_kib = max(rss_kib, run.max_rss_kib)
            if epochs == high and own_seconds is not None:
                loop_s.append(own_seconds)
    t_low, t_high = min(walls[low]), min(walls[high])
    return EpochCost(
        ms_per_epoch=1000 * (t_high - t_low) / (high - low),
        wall_high_s=t_high,
        max_rss_mib=rss_kib / 1024,
        loop_ms_per_epoch=1000 * min(loop_s) / high if loop_s else float("nan"),
    )


# --- start-up checks ----------------------------------------------------------------------------


def help_seconds(runs: int) -> float:
    """Median wall time of ``python -m covidreg --help`` after one unmeasured warm-up run."""
    argv = [sys.executable, "-m", "covidreg", "--help"]
    warm = run_child(argv)
    if not warm.ok:
        raise BenchFailure(warm.failure())
    return statistics.median(run_child(argv).wall_s for _ in range(runs))


def heavy_imports() -> dict[str, list[str]]:
    run = run_child([sys.executable, "-c", _IMPORT_PROBE])
    if not run.ok:
        raise BenchFailure(run.failure())
    return json.loads(run.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "covidreg")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} (covidreg/ modified)" if dirty else rev


def machine_lines(args: argparse.Namespace, data: DataFiles) -> list[str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {cores} cores ({usable} usable), {platform.system()} "
        f"{platform.release()}",
        f"- python {platform.python_version()}, torch {package_version('torch')}, "
        f"covidreg {package_version('covidreg')} at git {git_revision()}",
        f"- data: {data.train_csv}; epochs {args.epochs_low} and {args.epochs_high}, "
        f"fastest of {args.repeats} runs each",
    ]


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time covidreg against the course sample code's training loop."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data"),
        help="Folder with covid.train.csv and covid.test.csv "
        "(default: $COVIDREG_DATA_DIR, else data/ in the repository).",
    )
    parser.add_argument("--epochs-low", type=int, default=100, help="Lower epoch count.")
    parser.add_argument("--epochs-high", type=int, default=400, help="Higher epoch count.")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs per program and epoch count (fastest kept)."
    )
    parser.add_argument("--help-runs", type=int, default=5, help="Timed runs of --help.")
    args = parser.parse_args(argv)
    if not 0 < args.epochs_low < args.epochs_high:
        parser.error(
            f"need 0 < --epochs-low < --epochs-high, got {args.epochs_low}, {args.epochs_high}"
        )
    if args.repeats < 1 or args.help_runs < 1:
        parser.error("--repeats and --help-runs must be at least 1")
    for name in ("covid.train.csv", "covid.test.csv"):
        if not (args.data_dir / name).is_file():
            parser.error(f"{args.data_dir / name} not found; pass --data-dir or set {DATA_ENV}")
    return args


def attempt(label: str, measure: Callable[[], T]) -> T | str:
    """Run one measurement; a failure becomes the table cell, never a crash of the bench."""
    print(f"bench: {label} ...", file=sys.stderr, flush=True)
    try:
        return measure()
    except BenchFailure as exc:
        return str(exc)


@dataclass
class Measurements:
    """Every result, or the reason it could not be taken (shown in its table cell)."""

    low: int
    high: int
    sample: EpochCost | str
    train: EpochCost | str
    cv: ChildRun | str
    help_s: float | str
    imports: dict[str, list[str]] | str

    def speedup(self) -> float | str:
        if not isinstance(self.sample, EpochCost) or not isinstance(self.train, EpochCost):
            return "n/a"
        if self.train.ms_per_epoch <= 0:
            return "n/a (covidreg per-epoch time not above start-up noise; raise --epochs-high)"
        return self.sample.ms_per_epoch / self.train.ms_per_epoch

    def cv_ratio(self) -> float | str:
        if isinstance(self.cv, str):
            return self.cv
        if not self.cv.ok:
            return self.cv.failure()
        if not isinstance(self.train, EpochCost):
            return "n/a (no covidreg train time)"
        return self.cv.wall_s / self.train.wall_high_s

    def torch_imported(self) -> bool | str:
        if isinstance(self.imports, str):
            return self.imports
        return "torch" in self.imports["after_import"] + self.imports["after_help"]


def number(value: float | str, spec: str, unit: str = "") -> str:
    return value if isinstance(value, str) else f"{value:{spec}}{unit}"


def field_of(result: EpochCost | str, name: str) -> float | str:
    return getattr(result, name) if isinstance(result, EpochCost) else result


def check(value: float | str, passes: Callable[[float], bool]) -> str:
    if isinstance(value, str):
        return "n/a"
    return "yes" if passes(value) else "**no**"


Row = tuple[str, str, str, str]  # measure, value, target, met


def target_row(name: str, value: str, target: str, met: str) -> Row:
    return (name, value, target, met)


def info_row(name: str, value: str) -> Row:
    return (name, value, "", "")


def torch_cells(m: Measurements) -> tuple[str, str]:
    """The value and 'met' cells of the torch-import row."""
    torch_seen = m.torch_imported()
    if isinstance(torch_seen, str) or isinstance(m.imports, str):
        return str(torch_seen), "n/a"
    loaded = sorted(set(m.imports["after_import"] + m.imports["after_help"]))
    value = f"{'yes' if torch_seen else 'no'} (loaded: {', '.join(loaded) or 'none'})"
    return value, "**no**" if torch_seen else "yes"


def headline_rows(m: Measurements) -> list[Row]:
    """The rows the brief asks for, with their targets."""
    speedup, cv_ratio, rss = m.speedup(), m.cv_ratio(), field_of(m.train, "max_rss_mib")
    torch_value, torch_met = torch_cells(m)
    return [
        info_row("sample-loop ms/epoch", number(field_of(m.sample, "ms_per_epoch"), ".2f")),
        info_row("covidreg train ms/epoch", number(field_of(m.train, "ms_per_epoch"), ".2f")),
        target_row(
            "speed-up ratio (sample / covidreg)",
            number(speedup, ".1f", "x"),
            ">= 10x",
            check(speedup, lambda v: v >= 10),
        ),
        target_row(
            "covidreg train peak memory MB (RSS)",
            number(rss, ".0f"),
            "< 500",
            check(rss, lambda v: v < 500),
        ),
        target_row(
            f"cv-5 / train wall ratio ({m.high} epochs)",
            number(cv_ratio, ".2f", "x"),
            "<= 1.5x",
            check(cv_ratio, lambda v: v <= 1.5),
        ),
        target_row(
            "--help seconds (median)",
            number(m.help_s, ".3f"),
            "< 0.3",
            check(m.help_s, lambda v: v < 0.3),
        ),
        target_row("torch imported by --help", torch_value, "no", torch_met),
    ]


def detail_rows(m: Measurements) -> list[Row]:
    """Context for the headline numbers: absolute times, memory, the programs' own timers."""
    cv_ok = isinstance(m.cv, ChildRun) and m.cv.ok
    cv_wall = m.cv.wall_s if isinstance(m.cv, ChildRun) and cv_ok else "n/a"
    cv_rss = m.cv.max_rss_kib / 1024 if isinstance(m.cv, ChildRun) and cv_ok else "n/a"
    values = [
        (f"sample-loop wall s ({m.high} epochs)", field_of(m.sample, "wall_high_s"), ".2f"),
        (f"covidreg train wall s ({m.high} epochs)", field_of(m.train, "wall_high_s"), ".2f"),
        (f"cv-5 wall s ({m.high} epochs)", cv_wall, ".2f"),
        ("sample-loop peak memory MB (RSS)", field_of(m.sample, "max_rss_mib"), ".0f"),
        ("cv-5 peak memory MB (RSS, main process)", cv_rss, ".0f"),
        (
            "sample-loop in-loop ms/epoch (own timer)",
            field_of(m.sample, "loop_ms_per_epoch"),
            ".2f",
        ),
        (
            "covidreg train in-loop ms/epoch (metrics.json)",
            field_of(m.train, "loop_ms_per_epoch"),
            ".2f",
        ),
    ]
    return [info_row(name, number(value, spec)) for name, value, spec in values]


def render_table(m: Measurements) -> str:
    lines = ["| measure | value | target | met |", "| --- | --- | --- | --- |"]
    for cells in headline_rows(m) + detail_rows(m):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def measure_all(args: argparse.Namespace, data: DataFiles) -> Measurements:
    low, high, repeats = args.epochs_low, args.epochs_high, args.repeats

    def train_runner(epochs: int, files: DataFiles) -> tuple[ChildRun, float | None]:
        return run_covidreg("train", epochs, files)

    return Measurements(
        low=low,
        high=high,
        sample=attempt(
            "sample loop", lambda: measure_epoch_cost(run_sample, data, low, high, repeats)
        ),
        train=attempt(
            "covidreg train", lambda: measure_epoch_cost(train_runner, data, low, high, repeats)
        ),
        cv=attempt("covidreg cv --folds 5", lambda: run_covidreg("cv", high, data)[0]),
        help_s=attempt("covidreg --help", lambda: help_seconds(args.help_runs)),
        imports=attempt("import check", heavy_imports),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = DataFiles(args.data_dir / "covid.train.csv", args.data_dir / "covid.test.csv")
    started = time.perf_counter()
    measurements = measure_all(args, data)
    print("## covidreg benchmark\n")
    print("\n".join(machine_lines(args, data)) + "\n")
    print(render_table(measurements))
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
