"""covidreg tune's study: option checks, resuming, and how many workers run by default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.tune.space import base_config, load_search_space
from covidreg.tune.study import default_workers, plan_tune
from tests.tune_files import flat, load_study, read_trials, tune_args, write_space

runner = CliRunner()


def test_rerun_resumes_and_numbering_continues(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--study", "hw01")
    assert runner.invoke(app, [*args, "--trials", "2"]).exit_code == 0
    more = runner.invoke(app, [*args, "--trials", "4"])
    assert more.exit_code == 0, more.stderr
    assert "2 of 4 trials done" in flat(more.stderr)
    again = runner.invoke(app, [*args, "--trials", "4"])  # the target is reached: nothing runs
    assert again.exit_code == 0
    numbers = [t.number for t in load_study(out, "hw01").trials]
    assert numbers == [0, 1, 2, 3]
    other_folds = runner.invoke(app, [*args, "--trials", "5", "--folds", "2"])
    assert other_folds.exit_code == 1
    assert "was run with --folds 1" in other_folds.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "grid", "--search", "LR_ONLY"], "[space.lr] needs values"),
        (["--lr", "0.01"], "--lr sets 'lr', which"),
        (["--sampler", "cmaes"], "unknown sampler 'cmaes'"),
        (["--pruner", "asha"], "unknown pruner 'asha'"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--search", "MISSING"], "does not exist; pass the path of a search-space TOML file"),
    ],
)
def test_bad_tune_options_are_one_line_errors(
    hw01_files: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    lr_only = write_space(tmp_path, "[space.lr]\ntype='float'\nlow=1e-3\nhigh=0.1\n", "lr.toml")
    paths = {"LR_ONLY": str(lr_only), "MISSING": str(tmp_path / "missing.toml")}
    extra = [paths.get(arg, arg) for arg in extra]
    args = tune_args(hw01_files, write_space(tmp_path), tmp_path / "out", "--trials", "1", *extra)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_default_workers_follow_the_available_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    journal = "runs/tune-covidreg/study.journal"
    assert default_workers(50, journal) == 3, "the cores this process may run on, not the machine's"
    assert default_workers(2, journal) == 2, "at most one worker per trial left to run"
    assert default_workers(0, journal) == 1, "nothing left: one worker finds the target reached"
    assert default_workers(50, "postgresql://user@host/db") == 3
    assert default_workers(50, "sqlite:///study.db") == 1, "SQLite is not safe for several"
    assert default_workers(50, "sqlite_runs/study.journal") == 3, "a journal file, not SQLite"
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert default_workers(100, journal) == 64, "no affinity mask: os.cpu_count()"
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers(100, journal) == 1


def test_plan_resolves_the_default_worker_count(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    space = load_search_space(write_space(tmp_path))
    cfg = base_config(None, {"train_csv": str(hw01_files["train"]), "threads": "4"}, space)
    plan = plan_tune(cfg, space, n_trials=50, n_folds=1, out=tmp_path / "a")
    assert plan.workers == 8 and plan.job.cfg.threads == 1, "several processes: one thread each"
    grid = plan_tune(cfg, space, n_trials=50, n_folds=1, sampler="grid", out=tmp_path / "g")
    assert grid.workers == 4 and grid.job.target == 4, "the grid's 4 points: at most 4 workers"
    one = plan_tune(cfg, space, n_trials=50, n_folds=1, workers=1, out=tmp_path / "one")
    assert one.workers == 1 and one.job.cfg.threads == 4
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sqlite = plan_tune(cfg, space, n_trials=50, n_folds=1, storage=url, out=tmp_path / "s")
    assert sqlite.workers == 1 and "SQLite is not safe for several workers" in sqlite.warnings[0]


def test_tune_runs_one_worker_per_core_by_default(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default journal file serves several workers; at most one worker per trial."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "0 of 2 trials done; 2 workers," in flat(result.stderr)
    assert [row["state"] for row in read_trials(out)] == ["complete", "complete"]
    assert sorted(t.number for t in load_study(out).trials) == [0, 1]
    again = runner.invoke(app, args)  # nothing left to run: no processes to start
    assert again.exit_code == 0, again.stderr
    assert "2 of 2 trials done; 1 worker," in flat(again.stderr)
