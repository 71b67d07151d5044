"""covidreg tune's storage: journal files, SQLite URLs, trials of dead workers claimed again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.tune import storage
from tests.tune_files import tune_args, write_space

runner = CliRunner()


def test_dead_workers_trial_is_queued_again(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    journal = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=storage.open_storage(journal))
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan.set_user_attr("worker", {"host": storage._HOST, "pid": dead.pid})
    fresh = storage.claim(study, target=2, storage=journal)
    assert fresh is not None
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[0] == optuna.trial.TrialState.FAIL  # the orphan: it does not count
    assert study.trials[1].user_attrs["requeued_from"] == 0
    assert study.trials[1].system_attrs["fixed_params"] == orphan.params


def test_sqlite_storage_warns(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = tune_args(hw01_files, write_space(tmp_path), tmp_path / "out", "--trials", "1")
    result = runner.invoke(app, [*args, "--storage", url])
    assert result.exit_code == 0, result.stderr
    assert "SQLite is not safe for several workers" in result.stderr
    shown = runner.invoke(app, ["tune", "--show", "--storage", url, "--out", str(tmp_path / "o")])
    assert shown.exit_code == 0 and shown.stdout.startswith("best_rmse=")


def test_a_trial_abandoned_by_an_interruption_says_why(tmp_path: Path) -> None:
    from covidreg.tune.reports import TrialRow

    study = optuna.create_study(study_name="s", storage=storage.open_storage(str(tmp_path / "j")))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    why = "interrupted (Ctrl-C); its parameters were queued again"
    storage.abandon(study, trial.number, dict(trial.params), requeue=True, why=why)
    abandoned = study.get_trials(deepcopy=False)[0]
    assert abandoned.state == optuna.trial.TrialState.FAIL
    assert TrialRow.of(abandoned).error == why  # the error column of trials.csv
    assert not storage.counts(abandoned), "an abandoned trial does not count"
