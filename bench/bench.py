"""Benchmark covidreg against the course sample code's training loop; prints a markdown table.

    python bench/bench.py [--data-dir DIR] [--epochs-low N --epochs-high M] [--repeats R]

Every measurement is a separate child process, run one after another: whole-process wall time
and the child's own peak RSS (``os.wait4``). Per-epoch times are marginal,
(t_high - t_low) / (high - low), so start-up (imports, CSV parsing, output files) cancels; the
sample loop (``sample_loop.py``) and ``covidreg train`` alternate round by round and the fastest
run of each is kept. Targets are reported, never enforced: the exit code is 0 unless the bench
itself fails. This script imports only the standard library; the children bring torch.
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
from dataclasses import dataclass, field
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
    cpu_s: float  # user + system CPU seconds of this child, all its threads
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
        cpu = usage.ru_utime + usage.ru_stime
        return ChildRun(
            list(argv), wall, cpu, usage.ru_maxrss, proc.returncode, out.read(), err.read()
        )


# --- the measured commands ----------------------------------------------------------------------


@dataclass
class DataFiles:
    train_csv: Path
    test_csv: Path


def covidreg_argv(
    command: str, epochs: int, out: Path, data: DataFiles, extra: Sequence[str] = ()
) -> list[str]:
    argv = [sys.executable, "-m", "covidreg", command, *extra]
    if command == "cv":
        argv += ["--folds", "5"]
    argv += ["--config", str(SAMPLE_CONFIG), "--epochs", str(epochs), "--patience", "0"]
    if command == "train":
        argv += ["--checkpoint-every", "0"]
    argv += ["-q", "--out", str(out)]
    return [*argv, "--train-csv", str(data.train_csv), "--test-csv", str(data.test_csv)]


def run_covidreg(
    command: str, epochs: int, data: DataFiles, extra: Sequence[str] = ()
) -> tuple[ChildRun, dict[str, float]]:
    """One covidreg run into a throw-away directory, and what its ``metrics.json`` reports.

    With patience 0 every requested epoch must run; ``epochs_run`` is checked when present.
    """
    with tempfile.TemporaryDirectory(prefix=f"covidreg-bench-{command}-") as tmp:
        out = Path(tmp) / "run"
        run = run_child(covidreg_argv(command, epochs, out, data, extra))
        metrics_path = out / "metrics.json"
        if not run.ok or command != "train" or not metrics_path.is_file():
            return run, {}
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if metrics.get("epochs_run", epochs) != epochs:
        raise BenchFailure(
            f"n/a (covidreg train ran {metrics['epochs_run']} epochs, asked for {epochs})"
        )
    return run, {"seconds": float(metrics["seconds"])} if "seconds" in metrics else {}


def run_sample(epochs: int, data: DataFiles, threads: int) -> tuple[ChildRun, dict[str, float]]:
    """One run of the sample loop; it reports its loop seconds and torch thread count."""
    argv = [sys.executable, str(SAMPLE_LOOP), "--train-csv", str(data.train_csv)]
    run = run_child([*argv, "--epochs", str(epochs), "--threads", str(threads)])
    if not run.ok:
        return run, {}
    return run, json.loads(run.stdout.strip().splitlines()[-1])


# --- marginal per-epoch cost --------------------------------------------------------------------

Runner = Callable[[int], tuple[ChildRun, dict[str, float]]]


@dataclass
class EpochCost:
    """Marginal cost per epoch of one program, from whole-process runs at two epoch counts."""

    ms_per_epoch: float
    cpu_ms_per_epoch: float  # the same from CPU time (all threads)
    wall_high_s: float  # fastest whole-process wall time at the high count
    max_rss_mib: float  # peak RSS over all its runs
    loop_ms_per_epoch: float  # the program's own timer around its training loop, high count
    threads: float | None  # torch threads, when the program reports them


@dataclass
class Series:
    """All runs of one program; after a failure it is not run again."""

    runner: Runner
    walls: dict[int, list[float]] = field(default_factory=dict)
    cpus: dict[int, list[float]] = field(default_factory=dict)
    reports: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    max_rss_kib: int = 0
    failure: str | None = None

    def run(self, epochs: int) -> None:
        if self.failure is not None:
            return
        try:
            run, report = self.runner(epochs)
        except BenchFailure as exc:
            self.failure = str(exc)
            return
        if not run.ok:
            self.failure = run.failure()
            return
        self.walls.setdefault(epochs, []).append(run.wall_s)
        self.cpus.setdefault(epochs, []).append(run.cpu_s)
        self.reports.setdefault(epochs, []).append(report)
        self.max_rss_kib = max(self.max_rss_kib, run.max_rss_kib)

    def cost(self, low: int, high: int) -> EpochCost | str:
        """Fastest run at each count: the least disturbed by whatever else the machine did."""
        if self.failure is not None:
            return self.failure
        loop_s = [r["seconds"] for r in self.reports[high] if "seconds" in r]
        return EpochCost(
            ms_per_epoch=1000 * (min(self.walls[high]) - min(self.walls[low])) / (high - low),
            cpu_ms_per_epoch=1000 * (min(self.cpus[high]) - min(self.cpus[low])) / (high - low),
            wall_high_s=min(self.walls[high]),
            max_rss_mib=self.max_rss_kib / 1024,
            loop_ms_per_epoch=1000 * min(loop_s) / high if loop_s else float("nan"),
            threads=self.reports[high][-1].get("threads"),
        )


def measure_epoch_costs(
    runners: Sequence[Runner], low: int, high: int, repeats: int
) -> list[EpochCost | str]:
    """Each round runs every program at both counts, so a burst of outside load hits all alike.

    The order of the two counts alternates from round to round: a run right after another
    program's long run can start slower, and that must not always fall on the same count.
    """
    series = [Series(runner) for runner in runners]
    for round_ in range(repeats):
        for one in series:
            for epochs in (low, high) if round_ % 2 == 0 else (high, low):
                one.run(epochs)
    return [one.cost(low, high) for one in series]


# --- start-up checks ----------------------------------------------------------------------------


@dataclass
class HelpTiming:
    median_s: float
    min_s: float


def time_help(runs: int) -> HelpTiming:
    """Wall time of ``python -m covidreg --help`` after one unmeasured warm-up run."""
    argv = [sys.executable, "-m", "covidreg", "--help"]
    warm = run_child(argv)
    if not warm.ok:
        raise BenchFailure(warm.failure())
    walls = [run_child(argv).wall_s for _ in range(runs)]
    return HelpTiming(statistics.median(walls), min(walls))


def heavy_imports() -> list[str]:
    """Which of torch, numpy, pandas ``import covidreg.cli`` and then ``--help`` loaded."""
    run = run_child([sys.executable, "-c", _IMPORT_PROBE])
    if not run.ok:
        raise BenchFailure(run.failure())
    found = json.loads(run.stdout.strip().splitlines()[-1])
    return sorted(set(found["after_import"] + found["after_help"]))


# --- outside load -------------------------------------------------------------------------------


@dataclass
class CpuClock:
    """CPU seconds so far: the whole machine's busy and stolen time, and this bench's own."""

    machine_busy_s: float
    machine_steal_s: float
    bench_s: float  # this process and every child it has reaped
    wall_s: float

    @classmethod
    def now(cls) -> CpuClock | None:
        try:
            fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        hz = os.sysconf("SC_CLK_TCK")
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        busy = (user + nice + system + irq + softirq) / hz
        return cls(busy, steal / hz, own, time.perf_counter())


def outside_load_lines(before: CpuClock | None, after: CpuClock | None) -> list[str]:
    """How much CPU other processes (and the hypervisor) took while the bench ran."""
    if before is None or after is None:
        return ["- outside load: unknown (no /proc/stat)"]
    wall = after.wall_s - before.wall_s
    others = max(
        0.0, (after.machine_busy_s - before.machine_busy_s) - (after.bench_s - before.bench_s)
    )
    steal = after.machine_steal_s - before.machine_steal_s
    share = (others + steal) / wall
    lines = [
        f"- outside load while the bench ran: other processes {others:.1f} CPU-s, hypervisor "
        f"steal {steal:.1f} s, over {wall:.0f} s ({100 * share:.0f}% of one core)"
    ]
    if share > 0.1:
        lines.append(
            "- **warning**: the machine was busy with other work, so the times are inflated; "
            "the sample loop's most (its torch threads wait for each other when a core is taken)"
        )
    return lines


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


@dataclass
class Measurements:
    """Every result, or the reason it could not be taken (shown in its table cell)."""

    low: int
    high: int
    samples: dict[int, EpochCost | str]  # by --sample-threads setting (0: torch's default)
    train: EpochCost | str
    cv: EpochCost | str
    cv_one: EpochCost | str  # cv --fold-processes 1: every fold in one process
    help: HelpTiming | str
    imports: list[str] | str

    @property
    def sample(self) -> EpochCost | str:
        """The sample loop at its fastest thread setting: the speed-up must not come from
        the baseline's threads fighting over cores."""
        costs = [c for c in self.samples.values() if isinstance(c, EpochCost)]
        valid = [c for c in costs if c.ms_per_epoch > 0]
        if valid:
            return min(valid, key=lambda c: c.ms_per_epoch)
        return costs[0] if costs else next(iter(self.samples.values()))

    def speedup(self) -> float | str:
        if not isinstance(self.sample, EpochCost) or not isinstance(self.train, EpochCost):
            return "n/a"
        if self.train.ms_per_epoch <= 0 or self.sample.ms_per_epoch <= 0:
            return "n/a (per-epoch time lost in start-up noise; raise --epochs-high)"
        return self.sample.ms_per_epoch / self.train.ms_per_epoch

    def loop_speedup(self) -> float | str:
        """The same ratio from the programs' own loop timers: free of start-up noise, but
        blind to per-run costs outside the loop."""
        if not isinstance(self.sample, EpochCost) or not isinstance(self.train, EpochCost):
            return "n/a"
        if not self.train.loop_ms_per_epoch > 0:  # also false for NaN (no timer reported)
            return "n/a"
        return self.sample.loop_ms_per_epoch / self.train.loop_ms_per_epoch

    def cv_ratio(self, cv: EpochCost | str | None = None) -> float | str:
        """Whole-process wall time of cv over train's, at the high epoch count."""
        cv = self.cv if cv is None else cv
        if isinstance(cv, str):
            return cv
        if not isinstance(self.train, EpochCost):
            return "n/a (no covidreg train time)"
        return cv.wall_high_s / self.train.wall_high_s

    def cv_epoch_ratio(self) -> float | str:
        """Marginal cost of a cv epoch (all 5 folds) over a train epoch: the ratio that more
        epochs tend to, as start-up weighs less."""
        if not isinstance(self.cv, EpochCost) or not isinstance(self.train, EpochCost):
            return "n/a"
        if self.cv.ms_per_epoch <= 0 or self.train.ms_per_epoch <= 0:
            return "n/a (per-epoch time lost in start-up noise; raise --epochs-high)"
        return self.cv.ms_per_epoch / self.train.ms_per_epoch


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 0


def machine_lines(args: argparse.Namespace, data: DataFiles, m: Measurements) -> list[str]:
    cores = os.cpu_count() or 0
    usable = usable_cpus()
    settings = ", ".join(thread_label(m, setting) for setting in m.samples)
    return [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {cores} cores ({usable} usable), {platform.system()} "
        f"{platform.release()}",
        f"- python {platform.python_version()}, torch {package_version('torch')}, "
        f"covidreg {package_version('covidreg')} at git {git_revision()}",
        f"- data: {data.train_csv}; epochs {args.epochs_low} and {args.epochs_high}, fastest of "
        f"{args.repeats} runs each; sample loop with torch threads: {settings} (the faster is "
        "the baseline)",
    ]


def thread_label(m: Measurements, setting: int) -> str:
    cost = m.samples[setting]
    used = cost.threads if isinstance(cost, EpochCost) else None
    if setting == 0:
        return "default" + ("" if used is None else f" ({used:.0f})")
    return str(setting)


def number(value: float | str, spec: str, unit: str = "") -> str:
    return value if isinstance(value, str) else f"{value:{spec}}{unit}"


def field_of(result: EpochCost | str, name: str) -> float | str:
    return getattr(result, name) if isinstance(result, EpochCost) else result


def check(value: float | str, passes: Callable[[float], bool]) -> str:
    if isinstance(value, str):
        return "n/a"
    return "yes" if passes(value) else "**no**"


Row = tuple[str, str, str, str]  # measure, value, target, met


def help_cells(m: Measurements) -> tuple[str, str]:
    if isinstance(m.help, str):
        return m.help, "n/a"
    value = f"{m.help.median_s:.3f} (min {m.help.min_s:.3f})"
    return value, check(m.help.median_s, lambda v: v < 0.3)


def torch_cells(m: Measurements) -> tuple[str, str]:
    if isinstance(m.imports, str):
        return m.imports, "n/a"
    seen = "torch" in m.imports
    value = f"{'yes' if seen else 'no'} (heavy modules loaded: {', '.join(m.imports) or 'none'})"
    return value, "**no**" if seen else "yes"


def headline_rows(m: Measurements) -> list[Row]:
    """The rows with targets, and the two per-epoch times the speed-up comes from."""
    speedup, cv_ratio, rss = m.speedup(), m.cv_ratio(), field_of(m.train, "max_rss_mib")
    help_value, help_met = help_cells(m)
    torch_value, torch_met = torch_cells(m)
    return [
        ("sample-loop ms/epoch", number(field_of(m.sample, "ms_per_epoch"), ".2f"), "", ""),
        ("covidreg train ms/epoch", number(field_of(m.train, "ms_per_epoch"), ".2f"), "", ""),
        (
            "speed-up ratio (sample / covidreg)",
            number(speedup, ".1f", "x"),
            ">= 10x",
            check(speedup, lambda v: v >= 10),
        ),
        (
            "covidreg train peak memory MB (RSS)",
            number(rss, ".0f"),
            "< 500",
            check(rss, lambda v: v < 500),
        ),
        (
            f"cv-5 / train wall ratio ({m.high} epochs; {min(5, usable_cpus())} fold processes)",
            number(cv_ratio, ".2f", "x"),
            "<= 1.5x",
            check(cv_ratio, lambda v: v <= 1.5),
        ),
        ("--help seconds (median of runs)", help_value, "< 0.3", help_met),
        ("torch imported by --help", torch_value, "no", torch_met),
    ]


def detail_rows(m: Measurements) -> list[Row]:
    """Context: absolute times, memory, CPU time, and the programs' own loop timers."""
    sample, train, cv = m.sample, m.train, m.cv
    values = [
        (f"sample-loop wall s ({m.high} epochs)", field_of(sample, "wall_high_s"), ".2f"),
        (f"covidreg train wall s ({m.high} epochs)", field_of(train, "wall_high_s"), ".2f"),
        (f"cv-5 wall s ({m.high} epochs)", field_of(cv, "wall_high_s"), ".2f"),
        ("cv-5 ms/epoch (all 5 folds)", field_of(cv, "ms_per_epoch"), ".2f"),
        ("cv-5 / train per-epoch ratio", m.cv_epoch_ratio(), ".2f"),
        ("cv-5 CPU ms/epoch (all processes)", field_of(cv, "cpu_ms_per_epoch"), ".2f"),
        ("cv-5 --fold-processes 1 wall s", field_of(m.cv_one, "wall_high_s"), ".2f"),
        ("cv-5 --fold-processes 1 / train wall ratio", m.cv_ratio(m.cv_one), ".2f"),
        ("cv-5 --fold-processes 1 ms/epoch", field_of(m.cv_one, "ms_per_epoch"), ".2f"),
        ("cv-5 --fold-processes 1 CPU ms/epoch", field_of(m.cv_one, "cpu_ms_per_epoch"), ".2f"),
        ("sample-loop peak memory MB (RSS)", field_of(sample, "max_rss_mib"), ".0f"),
        ("cv-5 peak memory MB (RSS)", field_of(cv, "max_rss_mib"), ".0f"),
        ("sample-loop CPU ms/epoch (all threads)", field_of(sample, "cpu_ms_per_epoch"), ".2f"),
        ("covidreg train CPU ms/epoch (all threads)", field_of(train, "cpu_ms_per_epoch"), ".2f"),
        ("sample-loop in-loop ms/epoch (own timer)", field_of(sample, "loop_ms_per_epoch"), ".2f"),
        ("covidreg train in-loop ms/epoch (metrics)", field_of(train, "loop_ms_per_epoch"), ".2f"),
    ]
    values.append(("speed-up from the in-loop timers (x)", m.loop_speedup(), ".1f"))
    for setting, cost in m.samples.items():
        label = f"sample-loop ms/epoch, torch threads {thread_label(m, setting)}"
        values.append((label, field_of(cost, "ms_per_epoch"), ".2f"))
        train_ms = field_of(train, "ms_per_epoch")
        sample_ms = field_of(cost, "ms_per_epoch")
        ratio = (
            sample_ms / train_ms
            if isinstance(train_ms, float) and isinstance(sample_ms, float) and train_ms > 0
            else "n/a"
        )
        values.append(("speed-up vs that setting (x)", ratio, ".1f"))
    return [(name, number(value, spec), "", "") for name, value, spec in values]


def render_table(m: Measurements) -> str:
    lines = ["| measure | value | target | met |", "| --- | --- | --- | --- |"]
    for cells in headline_rows(m) + detail_rows(m):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------


def thread_settings(text: str) -> list[int]:
    try:
        settings = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1, got {text!r}") from None
    if not settings or min(settings) < 0:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 0, got {text!r}")
    return list(dict.fromkeys(settings))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time covidreg against the course sample code's training loop."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data"),
        help=f"Folder with covid.train.csv and covid.test.csv (default: ${DATA_ENV}, "
        "else data/ in the repository).",
    )
    parser.add_argument("--epochs-low", type=int, default=100, help="Lower epoch count.")
    parser.add_argument("--epochs-high", type=int, default=1000, help="Higher epoch count.")
    parser.add_argument(
        "--repeats", type=int, default=5, help="Runs per program and epoch count (fastest kept)."
    )
    parser.add_argument("--help-runs", type=int, default=5, help="Timed runs of --help.")
    parser.add_argument(
        "--sample-threads",
        type=thread_settings,
        default=[0, 1],
        help="Comma-separated torch thread counts to run the sample loop with, the fastest "
        "kept; 0 is torch's default, as the course code ran (default: 0,1).",
    )
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
    """Run one measurement; a failure becomes its table cell, never a crash of the bench."""
    print(f"bench: {label} ...", file=sys.stderr, flush=True)
    try:
        return measure()
    except BenchFailure as exc:
        return str(exc)


def sample_runner(data: DataFiles, threads: int) -> Runner:
    return lambda epochs: run_sample(epochs, data, threads)


def measure_all(args: argparse.Namespace, data: DataFiles) -> Measurements:
    low, high = args.epochs_low, args.epochs_high
    print(
        "bench: sample loop, covidreg train and covidreg cv, interleaved ...",
        file=sys.stderr,
        flush=True,
    )
    settings: list[int] = args.sample_threads
    runners: list[Runner] = [sample_runner(data, threads) for threads in settings]
    runners.append(lambda epochs: run_covidreg("train", epochs, data))
    runners.append(lambda epochs: run_covidreg("cv", epochs, data))
    runners.append(lambda epochs: run_covidreg("cv", epochs, data, ["--fold-processes", "1"]))
    *samples, train, cv, cv_one = measure_epoch_costs(runners, low, high, args.repeats)
    return Measurements(
        low=low,
        high=high,
        samples=dict(zip(settings, samples, strict=True)),
        train=train,
        cv=cv,
        cv_one=cv_one,
        help=attempt("covidreg --help", lambda: time_help(args.help_runs)),
        imports=attempt("import check", heavy_imports),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = DataFiles(args.data_dir / "covid.train.csv", args.data_dir / "covid.test.csv")
    before = CpuClock.now()
    measurements = measure_all(args, data)
    after = CpuClock.now()
    print("## covidreg benchmark\n")
    lines = machine_lines(args, data, measurements) + outside_load_lines(before, after)
    print("\n".join(lines) + "\n")
    print(render_table(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
