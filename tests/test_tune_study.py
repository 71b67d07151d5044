"""covidreg tune's study: option checks, resuming, how many workers run by default, and its
one data set."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.layout import EDITIONS
from covidreg.progress import trial_display
from covidreg.tune import study as study_module
from covidreg.tune.space import base_config, load_search_space
from covidreg.tune.storage import open_storage
from covidreg.tune.study import default_workers, plan_tune
from tests.tune_files import (
    flat,
    load_study,
    other_train_csv,
    read_trials,
    sha256,
    snapshot,
    tune_args,
    write_space,
)

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


# --- a study is one data set -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["2022", "2023", "other rows", "changed"])
def test_another_training_file_is_refused_before_any_trial(
    hw01_files: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "study"
    first_csv = hw01_files["train"].resolve()
    first = sha256(first_csv)
    args = tune_args(hw01_files, write_space(tmp_path), out, "--workers", "1")
    assert runner.invoke(app, [*args, "--trials", "2"]).exit_code == 0
    before = snapshot(out)
    other = other_train_csv(hw01_files, tmp_path, kind).resolve()
    result = runner.invoke(app, [*args, "--trials", "4", "--train-csv", str(other)])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith(
        f"error: study 'covidreg' was run on {first_csv} (2021 layout (40 states, 3 days x 18), "
        f"sha256 {first[:12]}), "
    )
    if kind == "changed":
        assert f"which has changed since (sha256 {sha256(other)[:12]} now)" in message
    else:
        layout = EDITIONS.get(kind, EDITIONS["2021"]).describe()
        assert f"not on {other} ({layout}, sha256 {sha256(other)[:12]})" in message
    assert message.endswith(
        "a study is one data set; start a new one with --study NAME or another --out"
    )
    assert snapshot(out) == before, "no trial is added, no output rewritten"
    assert len(load_study(out).trials) == 2
    # the way out the message names: a new study on the other file, in the same storage
    new = runner.invoke(app, [*args, "--trials", "1", "--train-csv", str(other), "--study", "b"])
    assert new.exit_code == 0, new.stderr
    assert load_study(out, "b").user_attrs["covidreg_data"]["sha256"] == sha256(other)


def test_the_same_data_resumes_and_the_study_records_it(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--workers", "1")
    assert runner.invoke(app, [*args, "--trials", "1"]).exit_code == 0
    copy = tmp_path / "elsewhere" / "covid.train.csv"  # the same bytes: the same data set
    copy.parent.mkdir()
    copy.write_bytes(hw01_files["train"].read_bytes())
    resumed = runner.invoke(app, [*args, "--trials", "2", "--train-csv", str(copy)])
    assert resumed.exit_code == 0, resumed.stderr
    assert len(load_study(out).trials) == 2
    recorded = load_study(out).user_attrs["covidreg_data"]
    layout = EDITIONS["2021"]
    assert recorded == {
        "train_csv": str(hw01_files["train"].resolve()),
        "sha256": sha256(hw01_files["train"]),
        "rows": 120,
        "edition": "2021",
        "layout": layout.describe(),
        "columns": layout.to_dict(),
    }
    label = f"{recorded['train_csv']} ({layout.describe()}, sha256 {recorded['sha256'][:12]})"
    assert f"data: {label}" in flat(resumed.stderr), "the run names its data"
    shown = runner.invoke(app, ["tune", "--show", "--out", str(out)])
    assert shown.exit_code == 0, shown.stderr
    assert f"data: {label}" in flat(shown.stderr)
    assert f"# data: {label}\n" in (out / "best.toml").read_text()


def test_a_study_begun_before_data_sets_were_recorded_is_given_its_own(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--workers", "1")
    with monkeypatch.context() as earlier:  # a study as covidreg wrote them before
        earlier.setattr(study_module, "_record_data", lambda *args: None)
        assert runner.invoke(app, [*args, "--trials", "1"]).exit_code == 0
    assert "covidreg_data" not in load_study(out).user_attrs
    shown = runner.invoke(app, ["tune", "--show", "--out", str(out)])
    assert "data: not recorded (a study begun before covidreg recorded its data set)" in flat(
        shown.stderr
    )
    resumed = runner.invoke(app, [*args, "--trials", "2"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "has no record of its data set (it began before covidreg recorded one): it now " in (
        flat(resumed.stderr)
    )
    assert "its 1 earlier trial(s) are taken to have run on it" in flat(resumed.stderr)
    recorded = load_study(out).user_attrs["covidreg_data"]
    assert recorded["sha256"] == sha256(hw01_files["train"])
    other = other_train_csv(hw01_files, tmp_path, "2023")
    refused = runner.invoke(app, [*args, "--trials", "3", "--train-csv", str(other)])
    assert refused.exit_code == 1 and "a study is one data set" in refused.stderr


def test_another_file_is_refused_on_sqlite_too(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = tune_args(hw01_files, write_space(tmp_path), tmp_path / "a", "--storage", url)
    assert runner.invoke(app, [*args, "--trials", "1"]).exit_code == 0
    other = other_train_csv(hw01_files, tmp_path, "2022")
    out = tmp_path / "b"  # another machine's outputs, the same database
    result = runner.invoke(
        app, [*args, "--trials", "2", "--train-csv", str(other), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "(2022 layout (37 states" in result.stderr
    assert result.stderr.strip().endswith("start a new one with --study NAME or another --storage")
    assert not out.exists(), "refused before its outputs' directory is made"
    backend = open_storage(url)
    assert len(optuna.load_study(study_name="covidreg", storage=backend).trials) == 1


def test_a_resumed_study_shows_its_best_so_far_from_the_start(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """Not "best -" while the first trial of this run trains, or when none is left to run."""
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--workers", "1")
    assert runner.invoke(app, [*args, "--trials", "2"]).exit_code == 0
    best = load_study(out).best_trial
    space = load_search_space(write_space(tmp_path))
    cfg = base_config(None, {"train_csv": str(hw01_files["train"])}, space)
    plan = plan_tune(cfg, space, n_trials=2, n_folds=1, workers=1, out=out)
    assert (plan.progress.done, plan.progress.best_value) == (2, best.value)
    with trial_display(quiet=False) as display:
        display.on_start(plan)
        (task,) = display.progress.tasks
        assert task.completed == 2
        assert task.fields["best"] == f"{best.value:.5f} (#{best.number})"
