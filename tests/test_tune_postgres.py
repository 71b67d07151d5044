"""covidreg tune on a real PostgreSQL server: workers on "several machines", killed workers,
``--show`` and optuna-dashboard reading the same study.

The server is the one ``.ci/run`` starts (``.ci/with-postgres``): its URL is in
COVIDREG_TEST_POSTGRES_URL. Every test gets a database of its own, created empty and dropped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.tune import storage
from tests.tune_files import other_train_csv, read_trials, sha256, tune_args, write_space

POSTGRES_ENV = "COVIDREG_TEST_POSTGRES_URL"
runner = CliRunner()


@pytest.fixture
def server_url() -> str:
    """The test server's URL. CI starts a server, so there a missing one fails, never skips."""
    value = os.environ.get(POSTGRES_ENV)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set in CI: the PostgreSQL tests must run")
        pytest.skip(f"set {POSTGRES_ENV} (or run under .ci/with-postgres) for a PostgreSQL server")
    return value


@pytest.fixture
def database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped after the test."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"covidreg_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:  # FORCE: the test's own pooled connections go too
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def tune_command(
    files: dict[str, Path], space: Path, out: Path, url: str, *extra: str
) -> list[str]:
    """``tune_args`` on the server: two folds, one worker per command, random points."""
    on_the_server = ("--storage", url, "--study", "hw01", "--workers", "1")
    return tune_args(
        files, space, out, *on_the_server, "--sampler", "random", "--quiet", *extra, folds=2
    )


# A worker process that imports everything, says it is ready and waits for the go: processes
# started together open the database at the same moment, as workers on several machines may.
AT_THE_SAME_MOMENT = """
import pathlib, sys, time
import covidreg.cli, covidreg.tune.study, optuna, psycopg, sqlalchemy, torch
barrier = pathlib.Path(sys.argv[1])
(barrier / f"ready-{sys.argv[2]}").touch()
while not (barrier / "go").exists():
    time.sleep(0.002)
sys.argv = ["covidreg", *sys.argv[3:]]
covidreg.cli.main()
"""


def study_trials(url: str, name: str = "hw01") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage.open_storage(url)).get_trials()


def trials_if_any(backend: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or none while no worker has created the study yet."""
    try:
        return optuna.load_study(study_name="hw01", storage=backend).get_trials()
    except KeyError:
        return []


def states(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [t.state.name for t in sorted(trials, key=lambda t: t.number)]


def test_missing_driver_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hw01_files: dict[str, Path]
) -> None:
    def no_psycopg(url: str) -> None:
        raise ImportError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(storage, "import_driver", no_psycopg)
    url = "postgresql://user:secret@db.example:5432/hw01"
    shown = runner.invoke(app, ["tune", "--show", "--storage", url, "--out", str(tmp_path / "o")])
    space = write_space(tmp_path)
    tuned = runner.invoke(app, tune_command(hw01_files, space, tmp_path / "t", url))
    for result in (shown, tuned):
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            "error: cannot open storage postgresql://user:***@db.example:5432/hw01: psycopg is "
            "not installed; install it with pip install 'covidreg[postgres]'"
        )


@pytest.mark.slow
def test_workers_started_at_once_on_a_new_database(
    database: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    space = write_space(tmp_path)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                AT_THE_SAME_MOMENT,
                str(barrier),
                str(i),
                *tune_command(hw01_files, space, tmp_path / f"machine{i}", database),
                "--trials",
                "8",
                "--epochs",
                "20",
                "--pruner",
                "none",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        assert all(worker.poll() is None for worker in workers)
        time.sleep(0.01)
    (barrier / "go").touch()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert stdout.startswith("best_rmse="), stdout
    trials = study_trials(database)
    assert sorted(t.number for t in trials) == list(range(8))
    assert states(trials) == ["COMPLETE"] * 8

    # the study read from a third process, as from another machine
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "covidreg",
            "tune",
            "--show",
            "--storage",
            database,
            "--study",
            "hw01",
            "--out",
            str(tmp_path / "reader"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    best = min(trials, key=lambda t: t.value)
    assert f"best_rmse={best.value:.5f} trial={best.number}" in shown.stdout
    rows = read_trials(tmp_path / "reader")
    assert [int(r["number"]) for r in rows] == list(range(8))
    assert f"best trial #{best.number}" in (tmp_path / "reader" / "best.toml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("machine", ["this", "another"])
def test_trial_of_a_killed_worker_runs_again(
    database: str,
    hw01_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    machine: str,
) -> None:
    """kill -9 mid-trial; the same command again ends with exactly --trials complete.

    On this machine the dead worker's process id gives it away at once; on another machine
    only its silent heartbeat does, after the grace period, while the new worker waits.
    """
    space = write_space(tmp_path)
    args = tune_command(hw01_files, space, tmp_path / "study", database, "--trials", "2")
    args += ["--epochs", "2500", "--pruner", "none"]  # trials of about two seconds
    worker = subprocess.Popen(
        [sys.executable, "-m", "covidreg", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    backend = storage.open_storage(database)  # creates the tables, as the worker may at once
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            if any(t.state == TrialState.RUNNING for t in trials_if_any(backend)):
                break
            time.sleep(0.1)
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        if worker.stderr:
            worker.stderr.close()
    (killed,) = study_trials(database)
    assert killed.state == TrialState.RUNNING, "the worker must die mid-trial"
    if machine == "another":
        backend.set_trial_user_attr(killed._trial_id, "worker", {"host": "elsewhere", "pid": 1})
    monkeypatch.setattr(storage, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(storage, "GRACE_SECONDS", 2)

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    trials = sorted(study_trials(database), key=lambda t: t.number)
    assert states(trials) == ["FAIL", "COMPLETE", "COMPLETE"]
    (retried,) = [t for t in trials if t.user_attrs.get("requeued_from") == killed.number]
    assert retried.params == killed.params
    assert sorted(int(r["number"]) for r in read_trials(tmp_path / "study")) == [0, 1, 2]


def test_a_machine_on_another_file_is_refused(
    database: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """A study on the server is one data set: a machine with the same bytes elsewhere joins
    it, one with another file is refused before it adds a trial, and --show names the data."""
    space = write_space(tmp_path)
    first = tune_command(hw01_files, space, tmp_path / "machine0", database, "--trials", "1")
    assert runner.invoke(app, first).exit_code == 0
    copy = tmp_path / "machine1-data" / "covid.train.csv"
    copy.parent.mkdir()
    copy.write_bytes(hw01_files["train"].read_bytes())
    same = {**hw01_files, "train": copy}
    joined = runner.invoke(
        app, tune_command(same, space, tmp_path / "machine1", database, "--trials", "2")
    )
    assert joined.exit_code == 0, joined.stderr
    other = other_train_csv(hw01_files, tmp_path, "2023")
    elsewhere = {**hw01_files, "train": other}
    out = tmp_path / "machine2"
    refused = runner.invoke(app, tune_command(elsewhere, space, out, database, "--trials", "3"))
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"error: study 'hw01' was run on {hw01_files['train'].resolve()} (2021 layout" in message
    assert f"not on {other.resolve()} (2023 layout (34 states, 3 days x 18), sha256" in message
    assert message.endswith("start a new one with --study NAME or another --storage")
    assert not out.exists()
    trials = study_trials(database)
    assert len(trials) == 2
    assert optuna.load_study(study_name="hw01", storage=storage.open_storage(database)).user_attrs[
        "covidreg_data"
    ]["sha256"] == sha256(hw01_files["train"])
    shown = runner.invoke(
        app, ["tune", "--show", "--storage", database, "--study", "hw01", "--out", str(out)]
    )
    assert shown.exit_code == 0, shown.stderr
    assert f"data: {hw01_files['train'].resolve()} (2021 layout" in " ".join(shown.stderr.split())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_optuna_dashboard_reads_the_study(
    database: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    space = write_space(tmp_path)
    args = tune_command(hw01_files, space, tmp_path / "study", database, "--trials", "3")
    assert runner.invoke(app, args).exit_code == 0
    trials = study_trials(database)
    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen(
        [str(dashboard), database, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = None
        deadline = time.monotonic() + 30
        while studies is None and time.monotonic() < deadline and server.poll() is None:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "optuna-dashboard did not answer within 30 s"
        (summary,) = studies
        assert summary["study_name"] == "hw01"
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert [t["number"] for t in detail["trials"]] == [t.number for t in trials]
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
        best = min(trials, key=lambda t: t.value)
        assert detail["best_trials"][0]["values"] == [pytest.approx(best.value)]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr:
            server.stderr.close()
