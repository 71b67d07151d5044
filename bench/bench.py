"""Benchmark covidreg against the course sample code's loop and a reference commit.

    python bench/bench.py [--data-dir DIR] [--reference COMMIT|none] [--repeats R] [--quick]

Every measurement is a separate child process, run one after another: whole-process wall time
(start-up included) and the child's own peak RSS (``os.wait4``). Each round runs every program
once per setting, interleaved, and the fastest run of each is kept. The reference commit is
checked out into a temporary ``git worktree`` (removed at exit) and run with the same Python,
importing the worktree's covidreg. Targets are reported, never enforced: the exit code is 0
unless the bench itself fails. This script imports only the standard library; the children bring
torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LOOP = Path(__file__).resolve().parent / "sample_loop.py"
DATA_ENV = "COVIDREG_DATA_DIR"
DATA_2022_ENV = "COVIDREG_DATA_DIR_2022"
SAMPLE_CONFIG = Path("configs") / "sample.toml"  # relative to the checkout that runs it
CHILD_TIMEOUT_S = 900  # a hung child must not hang the bench
DEFAULT_REFERENCE = "28b92f9"
TUNE_TRIALS = 12
HEAVY = ("torch", "numpy", "pandas")

# Settings of a full run, and of --quick (a smoke run: one round, short runs).
FULL = {"repeats": 5, "epochs": 1400, "epochs_low": 100, "epochs_high": 1400}
QUICK = {"repeats": 1, "epochs": 200, "epochs_low": 50, "epochs_high": 200}
QUICK_COMMAND_EPOCHS = 200  # --quick caps train, cv and tune at this many epochs
QUICK_TUNE_TRIALS = 3

# Runs `covidreg --help` the way `python -m covidreg --help` does, then reports which heavy
# libraries the import of covidreg.cli and the whole --help path loaded.
_IMPORT_PROBE = f"""
import contextlib, io, json, sys
heavy = {HEAVY!r}
import covidreg, covidreg.cli
after_import = [m for m in heavy if m in sys.modules]
# the command's own dispatch (its entry point may end the process without returning)
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    covidreg.cli.app(["--help"], prog_name="covidreg")
after_help = [m for m in heavy if m in sys.modules]
print(json.dumps({{"after_import": after_import, "after_help": after_help}}))
"""
_WHERE_PROBE = "import json, covidreg; print(json.dumps(covidreg.__file__))"

_BOX_DRAWING = {code: " " for code in range(0x2500, 0x2580)}


# --- child processes ----------------------------------------------------------------------------


@dataclass
class ChildRun:
    """One finished child process."""

    argv: list[str]
    wall_s: float
    cpu_s: float  # user + system CPU seconds of this child, all its threads and reaped children
    max_rss_kib: int  # ru_maxrss of this child (and the children it reaped; Linux reports KiB)
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """A one-line reason for a failed run, from the first line of its stderr.

        An ``error:`` line wins; a Python traceback gives its last line (the exception, not
        "Traceback (most recent call last):"); rich's box characters are dropped.
        """
        if self.timed_out:
            return f"n/a (command failed: timed out after {CHILD_TIMEOUT_S} s)"
        text = self.stderr.translate(_BOX_DRAWING)
        # a rich error panel's title line reads just "Error"
        lines = [line.strip() for line in text.splitlines() if line.strip() not in ("", "Error")]
        if not lines:
            lines = [line.strip() for line in self.stdout.splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error")]
        if errors:
            reason = errors[0]
        elif "Traceback (most recent call last):" in lines:
            reason = lines[-1]
        else:
            reason = lines[0] if lines else f"exit status {self.returncode}, no output"
        return f"n/a (command failed: {reason[:160]})"


class BenchFailure(Exception):
    """A measurement could not be taken; the message is what the table shows."""


def run_child(
    argv: Sequence[str],
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> ChildRun:
    """Run ``argv`` to completion; wall time and peak RSS of that process.

    ``os.wait4`` returns the rusage of the one child waited for, unlike
    ``getrusage(RUSAGE_CHILDREN)`` whose ``ru_maxrss`` is a maximum over all children so far.
    Output goes to files, not pipes, so a chatty child cannot block on a full pipe. If the bench
    is interrupted, the child is killed before the interruption goes on.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=err)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        killer = threading.Timer(timeout_s, kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen consistent
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return ChildRun(
            list(argv),
            wall,
            cpu,
            usage.ru_maxrss,
            proc.returncode,
            out.read(),
            err.read(),
            timed_out.is_set(),
        )


# --- where covidreg comes from ------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    """A covidreg source tree: the repository itself, or the reference commit's worktree."""

    name: str  # "current" or "reference"
    root: Path  # the children's working directory; `python -m covidreg` imports from it
    env: dict[str, str] | None = None  # None: this process's environment

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "covidreg", *args]

    def run(self, argv: Sequence[str]) -> ChildRun:
        return run_child(argv, cwd=self.root, env=self.env)

    def imported_from(self) -> Path:
        """The ``covidreg/__init__.py`` a child of this checkout imports."""
        run = self.run([sys.executable, "-c", _WHERE_PROBE])
        if not run.ok:
            raise BenchFailure(run.failure())
        return Path(json.loads(run.stdout.strip().splitlines()[-1])).resolve()

    def imports_own_code(self) -> tuple[bool, Path | str]:
        try:
            where = self.imported_from()
        except BenchFailure as exc:
            return False, str(exc)
        return where.is_relative_to(self.root.resolve()), where


def git(*args: str, cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def git_error(exc: subprocess.CalledProcessError) -> str:
    lines = [line.strip() for line in (exc.stderr or "").splitlines() if line.strip()]
    return lines[0] if lines else f"git exited with status {exc.returncode}"


@dataclass
class Reference:
    """The reference commit, or why there is none (then ``problem`` fills its cells)."""

    commit: str | None  # as asked for; None: --reference none
    describe: str = ""  # short hash and subject
    checkout: Checkout | None = None
    problem: str = ""
    imported_from: Path | str = ""


@contextmanager
def reference_worktree(commit: str | None) -> Iterator[Reference]:
    """A detached worktree of ``commit`` in a temporary folder, removed however the bench ends.

    The reference runs as ``sys.executable -m covidreg`` with the worktree as working directory
    and ``PYTHONPATH``; a child checks that its ``covidreg`` really comes from the worktree,
    else the reference rows are refused.
    """
    if commit is None:
        yield Reference(None, problem="n/a (--reference none)")
        return
    try:
        sha = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
        describe = git("log", "-1", "--format=%h %s", sha)
    except (OSError, subprocess.CalledProcessError):
        yield Reference(commit, problem=f"n/a (no commit {commit!r} in this repository)")
        return
    parent = Path(tempfile.mkdtemp(prefix="covidreg-bench-ref-"))
    tree = parent / "worktree"
    added = False
    try:
        print(f"bench: reference {sha[:9]} in {tree} ...", file=sys.stderr, flush=True)
        try:
            git("worktree", "add", "--detach", str(tree), sha)
            added = True
        except (OSError, subprocess.CalledProcessError) as exc:
            reason = git_error(exc) if isinstance(exc, subprocess.CalledProcessError) else exc
            yield Reference(commit, describe, problem=f"n/a (git worktree add failed: {reason})")
            return
        path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
        checkout = Checkout("reference", tree, {**os.environ, "PYTHONPATH": path})
        own, where = checkout.imports_own_code()
        if not own:
            problem = (
                f"n/a (reference refused: its child imported covidreg from {where}, "
                f"not from the worktree {tree})"
            )
            yield Reference(commit, describe, problem=problem, imported_from=where)
            return
        yield Reference(commit, describe, checkout, imported_from=where)
    finally:
        removed = False
        if added:
            try:
                git("worktree", "remove", "--force", str(tree))
                removed = True
            except (OSError, subprocess.CalledProcessError):
                pass
        shutil.rmtree(parent, ignore_errors=True)
        if not removed:  # an add cut short, or a failed remove: drop git's record of the folder
            subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, check=False)


def precompile(checkout: Checkout) -> None:
    """Write covidreg's bytecode first, so no timed run pays for compiling it."""
    checkout.run([sys.executable, "-m", "compileall", "-q", str(checkout.root / "covidreg")])


# --- the measured commands ----------------------------------------------------------------------


@dataclass
class DataFiles:
    train_csv: Path
    test_csv: Path

    def flags(self) -> list[str]:
        return ["--train-csv", str(self.train_csv), "--test-csv", str(self.test_csv)]


Report = dict[str, float]
Runner = Callable[[int], tuple[ChildRun, Report]]


def sample_train_args(epochs: int) -> list[str]:
    """covidreg with the course sample's hyperparameters, every epoch run, no checkpoints."""
    return [
        "train",
        *("--config", str(SAMPLE_CONFIG), "--epochs", str(epochs), "--patience", "0"),
        *("--checkpoint-every", "0", "-q"),
    ]


@dataclass(frozen=True)
class Commands:
    """The commands run on both checkouts, with their default flags except these."""

    tune_trials: int = TUNE_TRIALS
    epochs: int | None = None  # --quick: cap train, cv and tune at this many epochs

    def extra(self) -> list[str]:
        return [] if self.epochs is None else ["--epochs", str(self.epochs)]

    def train(self) -> list[str]:
        return ["train", "-q", *self.extra()]

    def cv(self) -> list[str]:
        return ["cv", "--folds", "5", "-q", *self.extra()]

    def tune(self) -> list[str]:
        trials = ["--trials", str(self.tune_trials), "--sampler", "random", "--pruner", "none"]
        return ["tune", *trials, "--seed", "1", "-q", *self.extra()]


def run_covidreg(
    checkout: Checkout, args: Sequence[str], data: DataFiles, epochs: int | None = None
) -> tuple[ChildRun, Report]:
    """One covidreg run into a fresh throw-away directory (for tune: a new study and journal),
    and the loop seconds its ``metrics.json`` reports. With ``epochs`` (patience 0) every one of
    them must have run."""
    with tempfile.TemporaryDirectory(prefix=f"covidreg-bench-{args[0]}-") as tmp:
        out = Path(tmp) / "run"
        run = checkout.run(checkout.argv(*args, "--out", str(out), *data.flags()))
        metrics_path = out / "metrics.json"
        if not run.ok or not metrics_path.is_file():
            return run, {}
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return run, {}
    if not isinstance(metrics, dict):
        return run, {}
    if epochs is not None and metrics.get("epochs_run", epochs) != epochs:
        raise BenchFailure(
            f"n/a (covidreg {args[0]} ran {metrics['epochs_run']} epochs, asked for {epochs})"
        )
    seconds = metrics.get("seconds")
    return run, {"seconds": float(seconds)} if isinstance(seconds, (int, float)) else {}


def run_sample(epochs: int, data: DataFiles, threads: int) -> tuple[ChildRun, Report]:
    """One run of the sample loop; it reports its loop seconds and torch thread count."""
    argv = [sys.executable, str(SAMPLE_LOOP), "--train-csv", str(data.train_csv)]
    run = run_child([*argv, "--epochs", str(epochs), "--threads", str(threads)])
    if not run.ok:
        return run, {}
    try:
        return run, json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchFailure("n/a (the sample loop printed no JSON result)") from None


# --- repeated runs ------------------------------------------------------------------------------


@dataclass
class Timing:
    """The runs of one program at one setting."""

    wall_s: float  # fastest whole-process wall time: the least disturbed run
    median_wall_s: float
    cpu_s: float  # least CPU time (all threads and processes)
    max_rss_mib: float  # peak RSS over these runs
    loop_s: float | None  # fastest reading of the program's own timer around its loop
    threads: float | None  # torch threads, when the program reports them
    runs: int


Result = Timing | str  # a string is why there is no result: the table shows it


@dataclass
class Series:
    """All runs of one program, by setting (an epoch count, or 0 for a fixed command); after a
    failure it is not run again."""

    label: str
    runner: Runner
    runs: dict[int, list[tuple[ChildRun, Report]]] = field(default_factory=dict)
    failure: str | None = None

    def run(self, key: int, progress: str) -> None:
        if self.failure is not None:
            return
        what = f"{self.label}, {key} epochs" if key else self.label
        print(f"bench: {progress} {what} ...", end="", file=sys.stderr, flush=True)
        try:
            run, report = self.runner(key)
        except BenchFailure as exc:
            self.failure = str(exc)
        else:
            if run.ok:
                self.runs.setdefault(key, []).append((run, report))
            else:
                self.failure = run.failure()
        if self.failure is None:
            print(f" {run.wall_s:.2f} s", file=sys.stderr, flush=True)
        else:
            print(f" {self.failure}", file=sys.stderr, flush=True)

    def timing(self, key: int = 0) -> Result:
        if self.failure is not None:
            return self.failure
        runs = self.runs.get(key)
        if not runs:
            return "n/a (not run)"
        walls = [run.wall_s for run, _ in runs]
        loops = [report["seconds"] for _, report in runs if "seconds" in report]
        return Timing(
            wall_s=min(walls),
            median_wall_s=statistics.median(walls),
            cpu_s=min(run.cpu_s for run, _ in runs),
            max_rss_mib=max(run.max_rss_kib for run, _ in runs) / 1024,
            loop_s=min(loops) if loops else None,
            threads=runs[-1][1].get("threads"),
            runs=len(runs),
        )


@dataclass
class EpochCost:
    """Marginal cost per epoch, from whole-process runs at two epoch counts (start-up cancels)."""

    ms_per_epoch: float
    cpu_ms_per_epoch: float
    loop_ms_per_epoch: float | None  # the program's own loop timer at the high count


def epoch_cost(low: Result, high: Result, n_low: int, n_high: int) -> EpochCost | str:
    if isinstance(low, str):
        return low
    if isinstance(high, str):
        return high
    span = n_high - n_low
    loop = None if high.loop_s is None else 1000 * high.loop_s / n_high
    return EpochCost(
        ms_per_epoch=1000 * (high.wall_s - low.wall_s) / span,
        cpu_ms_per_epoch=1000 * (high.cpu_s - low.cpu_s) / span,
        loop_ms_per_epoch=loop,
    )


# --- start-up checks ----------------------------------------------------------------------------


@dataclass
class HelpTiming:
    median_s: float
    min_s: float


def time_help(checkout: Checkout, runs: int) -> HelpTiming:
    """Wall time of ``python -m covidreg --help`` after one unmeasured warm-up run."""
    argv = checkout.argv("--help")
    warm = checkout.run(argv)
    if not warm.ok:
        raise BenchFailure(warm.failure())
    walls = [checkout.run(argv).wall_s for _ in range(runs)]
    return HelpTiming(statistics.median(walls), min(walls))


def heavy_imports(checkout: Checkout) -> list[str]:
    """Which of torch, numpy, pandas ``import covidreg.cli`` and then ``--help`` loaded."""
    run = checkout.run([sys.executable, "-c", _IMPORT_PROBE])
    if not run.ok:
        raise BenchFailure(run.failure())
    try:
        found = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchFailure("n/a (the import check printed no JSON result)") from None
    return sorted(set(found["after_import"] + found["after_help"]))


def attempt(label: str, measure: Callable[[], T]) -> T | str:
    """Run one measurement; a failure becomes its table cell, never a crash of the bench."""
    print(f"bench: {label} ...", file=sys.stderr, flush=True)
    try:
        return measure()
    except BenchFailure as exc:
        return str(exc)


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


# --- all measurements ---------------------------------------------------------------------------


@dataclass
class Side:
    """One checkout's results; the reference's are strings (why not) when it has none."""

    train: Result
    cv: Result
    tune: Result
    help: HelpTiming | str
    imports: list[str] | str


@dataclass
class Measurements:
    epochs: int  # the end-to-end count
    low: int
    high: int
    samples: dict[int, dict[int, Result]]  # thread setting (0: torch's default) -> epochs -> runs
    sample_train: dict[int, Result]  # covidreg train --config configs/sample.toml, by epochs
    current: Side
    reference: Side
    tune_trials: int
    train_2022: Result  # current's default train on the 2022 files (a string when not run)

    def sample_at(self, epochs: int) -> tuple[int | None, Result]:
        """The sample loop's fastest thread setting at ``epochs``: the baseline must not be slow
        because its threads fight over cores."""
        found = [(s, r[epochs]) for s, r in self.samples.items()]
        timed = [(s, t) for s, t in found if isinstance(t, Timing)]
        if timed:
            return min(timed, key=lambda st: st[1].wall_s)
        return None, found[0][1] if found else "n/a (not run)"

    def sample_cost(self, setting: int) -> EpochCost | str:
        runs = self.samples[setting]
        return epoch_cost(runs[self.low], runs[self.high], self.low, self.high)

    def fastest_sample_cost(self) -> tuple[int | None, EpochCost | str]:
        costs = [(s, self.sample_cost(s)) for s in self.samples]
        valid = [(s, c) for s, c in costs if isinstance(c, EpochCost) and c.ms_per_epoch > 0]
        if valid:
            return min(valid, key=lambda sc: sc[1].ms_per_epoch)
        if costs:
            return costs[0]
        return None, "n/a (not run)"

    def train_cost(self) -> EpochCost | str:
        runs = self.sample_train
        return epoch_cost(runs[self.low], runs[self.high], self.low, self.high)


def sample_runner(data: DataFiles, threads: int) -> Runner:
    return lambda epochs: run_sample(epochs, data, threads)


def fixed_runner(checkout: Checkout, args: list[str], data: DataFiles) -> Runner:
    return lambda _key: run_covidreg(checkout, args, data)


def measure_all(
    args: argparse.Namespace,
    data: DataFiles,
    current: Checkout,
    ref: Reference,
    data_2022: DataFiles | None = None,
) -> Measurements:
    """Round by round, every program once per setting, so a burst of outside load hits all
    alike. The order of the epoch counts, and of current and reference, alternates from round
    to round: a run right after another program's long run can start slower, and that must not
    always fall on the same one."""
    counts = sorted({args.epochs_low, args.epochs_high, args.epochs})
    commands = Commands(args.tune_trials, args.command_epochs)
    for checkout in (current, ref.checkout):
        if checkout is not None:
            precompile(checkout)
    samples = {
        threads: Series(
            f"sample loop, torch threads {threads or 'default'}", sample_runner(data, threads)
        )
        for threads in args.sample_threads
    }
    sample_train = Series(
        "covidreg train --config configs/sample.toml",
        lambda epochs: run_covidreg(current, sample_train_args(epochs), data, epochs),
    )
    checkouts = [current] if ref.checkout is None else [current, ref.checkout]
    fixed = {  # command -> its series, one per checkout
        name: [
            Series(
                f"{checkout.name}: covidreg {' '.join(argv)}", fixed_runner(checkout, argv, data)
            )
            for checkout in checkouts
        ]
        for name, argv in (
            ("train", commands.train()),
            ("cv", commands.cv()),
            ("tune", commands.tune()),
        )
    }
    if data_2022 is not None:  # the same command on the other edition's files, in each round
        fixed["train_2022"] = [
            Series(
                "current: covidreg train (2022 files)",
                fixed_runner(current, commands.train(), data_2022),
            )
        ]
    for round_ in range(args.repeats):
        progress = f"[round {round_ + 1}/{args.repeats}]"
        forward = round_ % 2 == 0
        for one in [*samples.values(), sample_train]:
            for epochs in counts if forward else counts[::-1]:
                one.run(epochs, progress)
        for series in fixed.values():
            for one in series if forward else series[::-1]:
                one.run(0, progress)

    def side(index: int) -> Side:
        if index >= len(checkouts):
            return Side(*([ref.problem] * 5))
        checkout = checkouts[index]
        return Side(
            train=fixed["train"][index].timing(),
            cv=fixed["cv"][index].timing(),
            tune=fixed["tune"][index].timing(),
            help=attempt(
                f"{checkout.name}: covidreg --help", lambda: time_help(checkout, args.help_runs)
            ),
            imports=attempt(f"{checkout.name}: import check", lambda: heavy_imports(checkout)),
        )

    return Measurements(
        epochs=args.epochs,
        low=args.epochs_low,
        high=args.epochs_high,
        samples={s: {n: one.timing(n) for n in counts} for s, one in samples.items()},
        sample_train={n: sample_train.timing(n) for n in counts},
        current=side(0),
        reference=side(1),
        tune_trials=args.tune_trials,
        train_2022=(
            fixed["train_2022"][0].timing() if data_2022 is not None else "n/a (no 2022 files)"
        ),
    )


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
    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "covidreg")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} (covidreg/ modified)" if dirty else rev


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 0


def header_lines(
    args: argparse.Namespace, data: DataFiles, ref: Reference, current_from: Path | str
) -> list[str]:
    cores = os.cpu_count() or 0
    settings = ", ".join(str(s) if s else "default" for s in args.sample_threads)
    if ref.commit is None:
        reference = "none (--reference none)"
    elif ref.checkout is not None:
        reference = (
            f"{ref.describe}; a temporary git worktree, covidreg imported from {ref.imported_from}"
        )
    else:
        reference = f"{ref.describe or ref.commit}: {ref.problem}"
    lines = [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {cores} cores ({usable_cpus()} usable), {platform.system()} "
        f"{platform.release()}",
        f"- python {platform.python_version()}, torch {package_version('torch')}",
        f"- current: git {git_revision()}, covidreg imported from {current_from}",
        f"- reference: {reference}",
        f"- data: {data.train_csv}; fastest of {args.repeats} runs each, interleaved round by "
        f"round; sample loop with torch threads {settings} (the fastest is the baseline)",
    ]
    if args.quick:
        lines.append(
            f"- **quick smoke run**: {args.repeats} run each, {args.epochs} epochs end to end, "
            f"train/cv/tune capped at --epochs {args.command_epochs}, tune with "
            f"{args.tune_trials} trials; the figures do not answer the targets"
        )
    return lines


def number(value: float | str | None, spec: str, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else f"{value:{spec}}{unit}"


def attr(result: object, name: str) -> float | str | None:
    """A field of a result, or the result itself when it is the reason there is none."""
    return result if isinstance(result, str) else getattr(result, name)


def ratio(top: float | str | None, bottom: float | str | None) -> float | str:
    if not isinstance(top, float) or not isinstance(bottom, float):
        return "n/a"
    return top / bottom if bottom > 0 else "n/a"


def check(value: float | str, passes: Callable[[float], bool]) -> str:
    if isinstance(value, str):
        return "n/a"
    return "yes" if passes(value) else "**no**"


Row = tuple[str, str, str, str, str, str]  # measure, current, reference, ratio, target, met


def wall_row(name: str, cur: Result, ref: Result, limit: float, target: str) -> Row:
    """Whole wall time of one command on both checkouts, and current / reference."""
    value = ratio(attr(cur, "wall_s"), attr(ref, "wall_s"))
    return (
        name,
        number(attr(cur, "wall_s"), ".2f"),
        number(attr(ref, "wall_s"), ".2f"),
        number(value, ".2f", "x"),
        target,
        check(value, lambda v: v <= limit),
    )


def cv_train_cell(side: Side) -> tuple[str, float | str]:
    value = ratio(attr(side.cv, "wall_s"), attr(side.train, "wall_s"))
    if isinstance(value, float):
        return f"{value:.2f}x", value
    reasons = [result for result in (side.cv, side.train) if isinstance(result, str)]
    return (reasons[0] if reasons else value), value


def help_cell(value: HelpTiming | str) -> str:
    return value if isinstance(value, str) else f"{value.median_s:.3f} (min {value.min_s:.3f})"


def imports_cell(value: list[str] | str) -> str:
    if isinstance(value, str):
        return value
    return f"{'yes' if 'torch' in value else 'no'} (loaded: {', '.join(value) or 'none'})"


def train_memory(m: Measurements) -> float | str:
    """Peak RSS over every covidreg train run of the current code (sample and default config)."""
    runs = [*m.sample_train.values(), m.current.train]
    numbers = [t.max_rss_mib for t in runs if isinstance(t, Timing)]
    if numbers:
        return max(numbers)
    return m.current.train if isinstance(m.current.train, str) else "n/a"


def headline_rows(m: Measurements) -> list[Row]:
    """The rows with targets, and the per-epoch times as information."""
    cur, ref = m.current, m.reference
    setting, sample = m.sample_at(m.epochs)
    train_e2e = m.sample_train.get(m.epochs, "n/a (not run)")
    speedup = ratio(attr(sample, "wall_s"), attr(train_e2e, "wall_s"))
    threads = "" if setting is None else f" at torch threads {thread_name(setting)}"
    cv_cur, cv_cur_value = cv_train_cell(cur)
    cv_ref, _ = cv_train_cell(ref)
    memory = train_memory(m)
    help_value = cur.help.median_s if isinstance(cur.help, HelpTiming) else cur.help
    if isinstance(cur.imports, str):
        imports_met = "n/a"
    else:
        imports_met = "**no**" if "torch" in cur.imports else "yes"
    setting_low, sample_cost = m.fastest_sample_cost()
    train_cost = m.train_cost()
    per_epoch = ratio(attr(sample_cost, "ms_per_epoch"), attr(train_cost, "ms_per_epoch"))
    if isinstance(train_cost, EpochCost) and train_cost.ms_per_epoch <= 0:
        per_epoch = "n/a (per-epoch time lost in start-up noise; raise --epochs-high)"
    low_threads = "" if setting_low is None else f" at torch threads {thread_name(setting_low)}"
    return [
        (
            f"end to end, {m.epochs} epochs, wall s: `train --config configs/sample.toml` "
            f"vs the sample loop{threads}",
            number(attr(train_e2e, "wall_s"), ".2f"),
            number(attr(sample, "wall_s"), ".2f"),
            number(speedup, ".2f", "x"),
            "sample / current >= 5x",
            check(speedup, lambda v: v >= 5),
        ),
        wall_row("`train` (default config), wall s", cur.train, ref.train, 0.6, "<= 0.6x"),
        wall_row(
            f"`tune --trials {m.tune_trials} --sampler random --pruner none`, wall s",
            cur.tune,
            ref.tune,
            0.5,
            "<= 0.5x",
        ),
        wall_row("`cv --folds 5` (default config), wall s", cur.cv, ref.cv, 1.0, "<= 1x"),
        wall_row(
            "`train` (default config) on the 2022 files vs the 2021 files, current, wall s",
            m.train_2022,
            cur.train,
            1.3,
            "<= 1.3x",
        ),
        (
            "`cv --folds 5` / `train` wall (each checkout's own)",
            cv_cur,
            cv_ref,
            "",
            "current <= 2x",
            check(cv_cur_value, lambda v: v <= 2),
        ),
        (
            "train peak memory MB (RSS; current: largest of its train runs)",
            number(memory, ".0f"),
            number(attr(ref.train, "max_rss_mib"), ".0f"),
            "",
            "< 500",
            check(memory, lambda v: v < 500),
        ),
        (
            "`--help` seconds (median of runs)",
            help_cell(cur.help),
            help_cell(ref.help),
            "",
            "< 0.3",
            check(help_value, lambda v: v < 0.3),
        ),
        (
            "torch imported by `--help`",
            imports_cell(cur.imports),
            imports_cell(ref.imports),
            "",
            "no",
            imports_met,
        ),
        (
            f"train ms/epoch, marginal over {m.low}-{m.high} epochs (sample config) vs the "
            f"sample loop{low_threads}",
            number(attr(train_cost, "ms_per_epoch"), ".2f"),
            number(attr(sample_cost, "ms_per_epoch"), ".2f"),
            number(per_epoch, ".1f", "x"),
            "information",
            "",
        ),
    ]


def thread_name(setting: int) -> str:
    return str(setting) if setting else "default"


DetailRow = tuple[str, str, str, str]  # measure, current, reference/baseline, ratio


def detail_rows(m: Measurements) -> list[DetailRow]:
    """Context: spread, CPU time, memory, each thread setting, and the programs' own timers."""
    rows: list[DetailRow] = []

    def add(
        name: str, cur: float | str | None, ref: float | str | None, spec: str, share: str = ""
    ) -> None:
        """``share``: "cur/ref" or "ref/cur" shows that ratio."""
        value = {"cur/ref": ratio(cur, ref), "ref/cur": ratio(ref, cur)}.get(share)
        shown = "" if value is None else number(value, ".2f", "x")
        rows.append((name, number(cur, spec), number(ref, spec), shown))

    cur, ref = m.current, m.reference
    for name, cur_run, ref_run in (
        ("`train`", cur.train, ref.train),
        ("`cv --folds 5`", cur.cv, ref.cv),
        ("`tune`", cur.tune, ref.tune),
    ):
        add(
            f"{name} median wall s",
            attr(cur_run, "median_wall_s"),
            attr(ref_run, "median_wall_s"),
            ".2f",
            "cur/ref",
        )
        add(
            f"{name} CPU s (all its threads and processes)",
            attr(cur_run, "cpu_s"),
            attr(ref_run, "cpu_s"),
            ".2f",
            "cur/ref",
        )
        add(
            f"{name} peak memory MB (RSS)",
            attr(cur_run, "max_rss_mib"),
            attr(ref_run, "max_rss_mib"),
            ".0f",
        )
    counts = sorted(m.sample_train)
    for setting, runs in m.samples.items():
        for n in counts:
            add(
                f"{n} epochs wall s: `train --config configs/sample.toml` vs the sample loop at "
                f"torch threads {thread_label(runs[n], setting)}",
                attr(m.sample_train[n], "wall_s"),
                attr(runs[n], "wall_s"),
                ".2f",
                "ref/cur",
            )
    train_cost = m.train_cost()
    for setting in m.samples:
        cost = m.sample_cost(setting)
        label = thread_name(setting)
        add(
            f"ms/epoch vs the sample loop at torch threads {label}",
            attr(train_cost, "ms_per_epoch"),
            attr(cost, "ms_per_epoch"),
            ".2f",
            "ref/cur",
        )
        add(
            f"CPU ms/epoch (all threads) vs torch threads {label}",
            attr(train_cost, "cpu_ms_per_epoch"),
            attr(cost, "cpu_ms_per_epoch"),
            ".2f",
            "ref/cur",
        )
        add(
            f"in-loop ms/epoch ({m.high} epochs; own timers: metrics.json seconds, the sample's "
            f"printed seconds) vs torch threads {label}",
            attr(train_cost, "loop_ms_per_epoch"),
            attr(cost, "loop_ms_per_epoch"),
            ".2f",
            "ref/cur",
        )
    sample_rss = [
        t.max_rss_mib for runs in m.samples.values() for t in runs.values() if isinstance(t, Timing)
    ]
    train_rss = [t.max_rss_mib for t in m.sample_train.values() if isinstance(t, Timing)]
    add(
        "peak memory MB (RSS): `train --config configs/sample.toml` vs the sample loop",
        max(train_rss) if train_rss else "n/a",
        max(sample_rss) if sample_rss else "n/a",
        ".0f",
    )
    return rows


def thread_label(result: Result, setting: int) -> str:
    used = result.threads if isinstance(result, Timing) else None
    if setting:
        return str(setting)
    return "default" + ("" if used is None else f" ({used:.0f})")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for cells in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def command_lines(args: argparse.Namespace, ref: Reference) -> list[str]:
    commands = Commands(args.tune_trials, args.command_epochs)
    data = "--train-csv <train> --test-csv <test>"
    where = "the current code runs in the repository"
    if ref.checkout is not None:
        where += "; the reference in its worktree, with PYTHONPATH=<worktree>"
    lines = [
        f"Every covidreg command is `{Path(sys.executable).name} -m covidreg ... --out <new "
        f"temporary folder> {data}`; {where}.",
        "- sample loop: `bench/sample_loop.py --train-csv <train> --epochs N --threads T`",
        "- `covidreg train --config configs/sample.toml --epochs N --patience 0 "
        "--checkpoint-every 0 -q`, current code only",
    ]
    for name in ("train", "cv", "tune"):
        lines.append(f"- `covidreg {' '.join(getattr(commands, name)())}`")
    return lines


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
        description="Time covidreg against the course sample code's loop and a reference commit."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data"),
        help=f"Folder with covid.train.csv and covid.test.csv (default: ${DATA_ENV}, "
        "else data/ in the repository).",
    )
    parser.add_argument(
        "--data-dir-2022",
        type=Path,
        default=Path(os.environ.get(DATA_2022_ENV) or REPO_ROOT / "data" / "2022"),
        help=f"Folder with the 2022 covid.train.csv and covid.test.csv, for the row comparing "
        f"train on both editions (default: ${DATA_2022_ENV}, else data/2022); skipped when "
        "absent.",
    )
    parser.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        metavar="COMMIT",
        help=f"Commit to compare train, tune and cv with (default: {DEFAULT_REFERENCE}); "
        "'none' skips those rows.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Smoke run: {QUICK['repeats']} run each, {QUICK['epochs']} epochs end to end, "
        f"train/cv/tune capped at {QUICK_COMMAND_EPOCHS} epochs, {QUICK_TUNE_TRIALS} tune "
        "trials. Checks that the bench works; its figures do not answer the targets.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"Runs of every program and setting, the fastest kept (default: {FULL['repeats']}).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"Epochs of the end-to-end comparison (default: {FULL['epochs']}).",
    )
    parser.add_argument(
        "--epochs-low",
        type=int,
        help=f"Lower epoch count of the per-epoch rows (default: {FULL['epochs_low']}).",
    )
    parser.add_argument(
        "--epochs-high",
        type=int,
        help=f"Higher epoch count of the per-epoch rows (default: {FULL['epochs_high']}; a "
        "count equal to --epochs shares its runs).",
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
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.tune_trials = QUICK_TUNE_TRIALS if args.quick else TUNE_TRIALS
    args.command_epochs = QUICK_COMMAND_EPOCHS if args.quick else None
    args.reference = None if args.reference.lower() == "none" else args.reference
    if not 0 < args.epochs_low < args.epochs_high:
        parser.error(
            f"need 0 < --epochs-low < --epochs-high, got {args.epochs_low}, {args.epochs_high}"
        )
    if args.epochs < 1 or args.repeats < 1 or args.help_runs < 1:
        parser.error("--epochs, --repeats and --help-runs must be at least 1")
    for name in ("covid.train.csv", "covid.test.csv"):
        if not (args.data_dir / name).is_file():
            parser.error(f"{args.data_dir / name} not found; pass --data-dir or set {DATA_ENV}")
    return args


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the worktree's clean-up


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = DataFiles(
        args.data_dir.resolve() / "covid.train.csv", args.data_dir.resolve() / "covid.test.csv"
    )
    folder_2022 = args.data_dir_2022.resolve()
    data_2022 = DataFiles(folder_2022 / "covid.train.csv", folder_2022 / "covid.test.csv")
    if not data_2022.train_csv.is_file():
        data_2022 = None
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    current = Checkout("current", REPO_ROOT)
    try:
        with reference_worktree(args.reference) as ref:
            if ref.problem and ref.commit is not None:
                print(f"bench: {ref.problem}", file=sys.stderr, flush=True)
            own, current_from = current.imports_own_code()
            if not own and isinstance(current_from, Path):
                current_from = f"{current_from}, **not this repository**"
            before = CpuClock.now()
            measurements = measure_all(args, data, current, ref, data_2022)
            after = CpuClock.now()
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    print("## covidreg benchmark\n")
    lines = header_lines(args, data, ref, current_from) + outside_load_lines(before, after)
    print("\n".join(lines) + "\n")
    header = ("measure", "current", "reference/baseline", "ratio", "target", "met")
    print(markdown_table(header, headline_rows(measurements)))
    print(
        "\nratio: sample / current against the sample loop (a speed-up: higher is faster), "
        "current / reference against the reference commit (lower is faster); every time is the "
        "fastest of its runs."
    )
    print("\n### Details\n")
    print(markdown_table(header[:4], detail_rows(measurements)))
    print("\n### Commands\n")
    print("\n".join(command_lines(args, ref)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
