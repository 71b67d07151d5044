"""covidreg tune's workers: the objective, samplers, pruners, shared studies, Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.config import from_dict, resolve_config
from covidreg.crossval import run_cv
from covidreg.experiment import load_data
from covidreg.tune import workers
from covidreg.tune.space import base_config, load_search_space
from covidreg.tune.study import plan_tune, run_tune
from tests.tune_files import SMALL_SPACE, flat, load_study, read_trials, tune_args, write_space

runner = CliRunner()


@pytest.mark.parametrize(
    ("sampler", "pruner"), [("tpe", "median"), ("random", "hyperband"), ("grid", "none")]
)
def test_each_sampler_and_pruner_writes_the_outputs(
    hw01_files: dict[str, Path], tmp_path: Path, sampler: str, pruner: str
) -> None:
    out = tmp_path / "study"
    space = write_space(tmp_path)
    args = tune_args(hw01_files, space, out, "--trials", "5", "--sampler", sampler)
    result = runner.invoke(app, [*args, "--pruner", pruner])
    assert result.exit_code == 0, result.stderr
    rows = read_trials(out)
    if sampler == "grid":  # 2 lr x 2 hidden x 1 weight_decay: every point once, then stop
        assert "the grid has 4 points" in result.stderr
        assert sorted((r["lr"], r["hidden"]) for r in rows) == [
            ("0.003", "16"),
            ("0.003", "32,8"),
            ("0.03", "16"),
            ("0.03", "32,8"),
        ]
    else:
        assert [int(r["number"]) for r in rows] == list(range(5))
    complete = [r for r in rows if r["state"] == "complete"]
    best = min(complete, key=lambda r: float(r["value"]))
    assert f"best_rmse={float(best['value']):.5f} trial={best['number']}" in result.stdout
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best trial #{best['number']}" in (out / "best.toml").read_text()
    assert resolve_config(out / "best.toml").lr == pytest.approx(float(best["lr"]))
    assert not list(out.glob(".*.tmp"))


def test_median_pruner_stops_hopeless_trials(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    space = write_space(
        tmp_path,
        "[fixed]\nepochs = 15\npatience = 0\nbatch_size = 16\n\n"
        "[space.lr]\nchoices = [3e-2, 1e-2, 1e-6]\n",
    )
    out = tmp_path / "study"
    args = tune_args(hw01_files, space, out, "--trials", "12", "--sampler", "random")
    # one worker: the startup trials end before the later ones start, in the seeded order
    result = runner.invoke(
        app, [*args, "--pruner", "median", "--seed", "1", "-q", "--workers", "1"]
    )
    assert result.exit_code == 0, result.stderr
    study = load_study(out)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "lr=1e-6 barely moves: the median pruner must stop it"
    assert all(t.last_step < 15 for t in pruned), "a pruned trial stops before its last epoch"
    # after the pruner's 5 startup trials, no hopeless trial runs to the end
    late_hopeless = [t for t in study.trials if t.number >= 5 and t.params["lr"] == 1e-6]
    assert late_hopeless
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in late_hopeless)
    assert result.stdout.startswith("best_rmse=") and len(result.stdout.splitlines()) == 1


def test_two_workers_share_one_journal_study(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    space = load_search_space(write_space(tmp_path))
    # trials long enough (about half a second each) that the second worker, a second or two behind
    # the first (its own start-up), still finds trials to claim
    cfg = base_config(None, {"train_csv": str(hw01_files["train"]), "epochs": "1000"}, space)
    plan = plan_tune(
        cfg, space, n_trials=8, n_folds=1, workers=2, out=tmp_path / "study", pruner="none"
    )
    result = run_tune(plan)
    trials = load_study(tmp_path / "study").trials
    assert sorted(t.number for t in trials) == list(range(8)), "none lost, none duplicated"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2, "both workers ran trials"
    assert plan.job.cfg.threads == 1, "several processes: one thread each"
    assert result.best is not None and result.best_toml is not None


def test_cv_objective_is_what_covidreg_cv_reports(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """Same folds and seeds as covidreg cv (which may train them together: float rounding)."""
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "2", "-q")
    result = runner.invoke(app, [*args, "--folds", "2"])
    assert result.exit_code == 0, result.stderr
    best_value = float(result.stdout.split()[0].split("=")[1])
    cv = run_cv(resolve_config(out / "best.toml"), 2, out=tmp_path / "cv")
    assert cv.summary["valid_rmse"]["mean"] == pytest.approx(best_value, rel=1e-4)


def test_trial_values_reproduce_from_their_saved_config(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """The CSV is read once per study: each trial must still train on its own features."""
    space = SMALL_SPACE + '\n[space.features]\nchoices = ["target_only", "all"]\n'
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path, space), out, "--trials", "3", "-q")
    assert runner.invoke(app, [*args, "--pruner", "none"]).exit_code == 0
    for trial in load_study(out).trials:
        cfg = from_dict(trial.user_attrs["config"])
        assert cfg.features != ["strong"]  # never the default preset the data was loaded with
        fresh = workers.evaluate(cfg, load_data(cfg, with_test=False), 1, 8, lambda *_: None)
        assert fresh == trial.user_attrs["fold_rmse"]


def test_ctrl_c_keeps_trials_and_requeues_the_interrupted_one(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "study"
    # one process: the patched objective runs in this one, not in spawned workers
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3", "--workers", "1")
    evaluate = workers.evaluate
    calls = []

    def interrupted_second_time(*a: object, **k: object) -> list[float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(workers, "evaluate", interrupted_second_time)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130
    assert "1 of 3 trials" in flat(stopped.stderr)
    assert "Run the same command to resume" in flat(stopped.stderr)
    monkeypatch.setattr(workers, "evaluate", evaluate)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.stderr
    trials = load_study(out).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].user_attrs["requeued_from"] == 1
    assert trials[2].params == trials[1].params


def test_sequential_search_is_reproducible(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    values = []
    for name in ("a", "b"):
        args = tune_args(hw01_files, write_space(tmp_path), tmp_path / name, "--trials", "3")
        # a sequential search: a parallel one is not reproducible
        assert runner.invoke(app, [*args, "-q", "--workers", "1"]).exit_code == 0
        values.append([(t.params, t.value) for t in load_study(tmp_path / name).trials])
    assert values[0] == values[1]
