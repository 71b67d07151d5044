"""Reproducibility and reliability you can prove.

A run killed mid-training resumes to the same bits as an uninterrupted run; a process killed while
it writes a checkpoint leaves a loadable file; reruns are bit-identical; every run records where it
came from; and every bad input is one line, exit code 1, with nothing written.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg import artifacts
from covidreg.cli import app
from covidreg.experiment import STATE_FILE
from covidreg.reproducibility import resolve_device
from tests.conftest import interrupted_run_dir, train_args

runner = CliRunner()


def state_dicts_equal(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- exact resume after SIGKILL ---------------------------------------------------------------

RESUME_EPOCHS = 150  # ~10 ms each here: the kill after epoch 10 lands long before the end
KILL_AFTER_EPOCH = 10


def wait_for_state(state: Path, proc: subprocess.Popen[bytes], min_epoch: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training finished (rc {proc.returncode}) before the kill"
        if state.exists():
            # written atomically: any moment's file must load
            epoch = int(artifacts.load_checkpoint(state, "training state")["epoch"])
            if epoch >= min_epoch:
                return epoch
        time.sleep(0.005)
    raise AssertionError("no training state appeared within 60 s")


def assert_no_process_left(marker: str, seconds: float = 10.0) -> None:
    """No process whose command line names ``marker`` outlives the killed run (its plot
    process ends when it does)."""
    deadline = time.monotonic() + seconds
    while True:
        left = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if marker in cmdline.read_bytes().decode(errors="replace"):
                    left.append(cmdline.parent.name)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == [], f"processes left behind: {left}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((), id="plain"),
        pytest.param(("--dropout", "0.2", "--scheduler", "cosine"), id="dropout-cosine"),
    ],
)
def test_sigkilled_run_resumes_bit_identically(
    extra: tuple[str, ...], hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    common = ["--epochs", str(RESUME_EPOCHS), "--patience", "0", "--checkpoint-every", "5", "-q"]
    args = [*train_args(hw01_files, killed), *common, *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "covidreg", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        saved = wait_for_state(killed / STATE_FILE, proc, KILL_AFTER_EPOCH)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists(), "the kill must land mid-run"
    assert_no_process_left(str(killed))
    state = artifacts.load_checkpoint(killed / STATE_FILE)
    assert saved <= state["epoch"] < RESUME_EPOCHS and state["epoch"] % 5 == 0

    resumed = runner.invoke(app, ["train", "--resume", str(killed), "-q"])
    assert resumed.exit_code == 0, resumed.stderr
    uninterrupted = runner.invoke(app, [*train_args(hw01_files, reference), *common, *extra])
    assert uninterrupted.exit_code == 0, uninterrupted.stderr

    assert not (killed / STATE_FILE).exists(), "a finished run removes its training state"
    assert state_dicts_equal(killed / "model.pt", reference / "model.pt")
    for name in ("history.csv", "pred.csv", "config.toml"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    history = (killed / "history.csv").read_text().splitlines()
    assert len(history) == RESUME_EPOCHS + 1

    def comparable(run: Path) -> dict[str, object]:
        metrics = json.loads((run / "metrics.json").read_text())
        env = metrics.pop("environment")
        metrics.pop("seconds")
        return {**metrics, "seed": env["seed"], "deterministic": env["deterministic"]}

    assert comparable(killed) == comparable(reference)


# --- a kill while a checkpoint is being written -----------------------------------------------

WRITER = """
import sys, torch
from covidreg import artifacts
base = torch.arange(1_000_000, dtype=torch.float64)
version = 0
while True:
    version += 1
    artifacts.save_checkpoint(sys.argv[1], {"kind": "stress", "version": version,
                                            "data": base + version})
    if version == 1:
        print("first", flush=True)
"""


@pytest.mark.slow
def test_kill_during_checkpoint_writes_leaves_a_loadable_file(tmp_path: Path) -> None:
    rng = random.Random()
    writers = []
    for i in range(3):
        path = tmp_path / f"w{i}" / "state.pt"
        path.parent.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=tmp_path
        )
        writers.append((path, proc))
    try:
        for _, proc in writers:
            assert proc.stdout is not None and proc.stdout.readline() == b"first\n"
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
    finally:
        for _, proc in writers:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    base = torch.arange(1_000_000, dtype=torch.float64)
    for path, _ in writers:
        ckpt = artifacts.load_checkpoint(path)  # the previous or the new version, whole
        assert ckpt["version"] >= 1
        assert torch.equal(ckpt["data"], base + ckpt["version"])
        others = {p.name for p in path.parent.iterdir()} - {path.name}
        # at most the interrupted write's temporary file, never under the final name
        assert all(name.startswith(".state.pt.") and name.endswith(".tmp") for name in others)


# --- bit-identical reruns ---------------------------------------------------------------------


def test_cv_fold_processes_do_not_change_results(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        args = [
            "cv",
            "--train-csv",
            str(hw01_files["train"]),
            "--test-csv",
            str(hw01_files["test"]),
            "--folds",
            "2",
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--dropout",
            "0.1",
            "--stack-size",
            "1",
            "--fold-processes",
            workers,
            "--predict",
            "--out",
            str(out),
            "-q",
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        runs[workers] = out
    w0, w2 = runs["1"], runs["2"]

    def without_seconds(path: Path) -> list[list[str]]:
        return [line.split(",")[:-1] for line in path.read_text().splitlines()]

    assert without_seconds(w0 / "cv.csv") == without_seconds(w2 / "cv.csv")
    assert (w0 / "pred.csv").read_bytes() == (w2 / "pred.csv").read_bytes()
    for k in (1, 2):
        assert state_dicts_equal(w0 / f"fold_{k}/model.pt", w2 / f"fold_{k}/model.pt")


# --- provenance -------------------------------------------------------------------------------


def test_metrics_record_where_a_run_came_from(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ("--seed", "9", "--no-deterministic", "--epochs", "3", "-q")
    assert runner.invoke(app, train_args(hw01_files, out, *extra)).exit_code == 0
    env = json.loads((out / "metrics.json").read_text())["environment"]
    assert (env["seed"], env["deterministic"]) == (9, False)
    assert env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__
    assert env["python"] == platform.python_version()
    assert env["device"] == str(resolve_device("auto"))
    assert "git_commit" in env
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert env["git_commit"] == artifacts.git_commit()
    # the checkpoint carries the same record
    ckpt = artifacts.load_checkpoint(out / "model.pt")
    assert ckpt["metrics"]["environment"]["seed"] == 9

    cv_out = tmp_path / "cv"
    cv_args = ["cv", "--train-csv", str(hw01_files["train"]), "--folds", "2", "--epochs", "2"]
    cv_args += ["--batch-size", "16", "--seed", "5", "--out", str(cv_out), "-q"]
    assert runner.invoke(app, cv_args).exit_code == 0
    cv_env = json.loads((cv_out / "summary.json").read_text())["environment"]
    assert (cv_env["seed"], cv_env["deterministic"]) == (5, True)
    for key in ("torch", "numpy", "python", "device", "git_commit"):
        assert key in cv_env, key


# --- bad inputs -------------------------------------------------------------------------------


def _edit_cell(src: Path, dest: Path, row: int, col: int, value: str) -> Path:
    lines = src.read_text().splitlines()
    cells = lines[row].split(",")
    cells[col] = value
    lines[row] = ",".join(cells)
    dest.write_text("\n".join(lines) + "\n")
    return dest


def _edit_columns(src: Path, dest: Path, change: str) -> Path:
    rows = [line.split(",") for line in src.read_text().splitlines()]
    if change == "drop":  # day 1's wearing_mask (column 46), header and every row
        rows = [row[:45] + row[46:] for row in rows]
    else:  # one more column at the end
        rows = [[*row, "extra" if i == 0 else "1"] for i, row in enumerate(rows)]
    dest.write_text("\n".join(",".join(row) for row in rows) + "\n")
    return dest


def _unwritable_out(tmp_path: Path) -> tuple[Path, str]:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked / "run", "is not writable"
    # root ignores the mode bits: a path under a regular file is unwritable for anyone
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return blocker / "run", "is a file, not a directory"


# case -> a fragment of its one-line message (on the 4 states x 30 windows synthetic file)
BAD_INPUTS: dict[str, str] = {
    "missing file": "does not exist; check the path",
    "empty file": "is empty; expected the HW01 CSV with a header row",
    "directory as file": "is a directory; pass the path of a CSV file",
    "missing column": "column 63 is 'wearing_mask', expected 'travel_outside_state'",
    "extra column": "column 96 is 'extra', expected 'cli'",
    "non-numeric cell": "line 4 (data row 3), column 'cli_d1' (column 42): 'abc', not a finite",
    "NaN cell": "line 4 (data row 3), column 'cli_d1' (column 42): 'nan', not a finite number",
    "inf cell": "line 6 (data row 5), column 'tested_positive_d3' (column 95): 'inf', not a",
    "test file with the target (--test-csv)": "has the target column",
    "train file without the target (--train-csv)": "has no target column",
    "resume: another tool's checkpoint": "is not a covidreg checkpoint (no covidreg header)",
    "resume: truncated training_state.pt": "cannot be read (truncated or damaged PyTorch file",
    "resume: a finished run": "nothing to resume",
    "config: unknown key": "unknown config key 'epoch'",
    "config: wrong type": "config key 'epochs' in",
    "negative epochs": "config key 'epochs' must be a positive integer, got -5",
    "zero epochs": "config key 'epochs' must be a positive integer, got 0",
    "batch size larger than the data": "batch_size 5000 is larger than the 88 training rows",
    "unwritable output directory": "",  # chmod 0o500, or a path under a file when root
    "learning rate that diverges in epoch 1": "training diverged at epoch 1",
}


def _build_bad_input(
    case: str, files: dict[str, Path], tmp_path: Path
) -> tuple[list[str], Path, str]:
    """The arguments of ``covidreg train`` for one bad input, its --out, and the message."""
    out = tmp_path / "run"
    args = train_args(files, out)
    expected = BAD_INPUTS[case]
    train = files["train"]
    if case == "missing file":
        args += ["--train-csv", str(tmp_path / "nope.csv")]
    elif case == "empty file":
        (tmp_path / "empty.csv").write_text("")
        args += ["--train-csv", str(tmp_path / "empty.csv")]
    elif case == "directory as file":
        (tmp_path / "a_dir.csv").mkdir()
        args += ["--train-csv", str(tmp_path / "a_dir.csv")]
    elif case == "missing column":
        args += ["--train-csv", str(_edit_columns(train, tmp_path / "m.csv", "drop"))]
    elif case == "extra column":
        args += ["--train-csv", str(_edit_columns(train, tmp_path / "x.csv", "extra"))]
    elif case == "non-numeric cell":
        args += ["--train-csv", str(_edit_cell(train, tmp_path / "b.csv", 3, 41, "abc"))]
    elif case == "NaN cell":
        args += ["--train-csv", str(_edit_cell(train, tmp_path / "b.csv", 3, 41, "nan"))]
    elif case == "inf cell":
        args += ["--train-csv", str(_edit_cell(train, tmp_path / "b.csv", 5, 94, "inf"))]
    elif case == "test file with the target (--test-csv)":
        args += ["--test-csv", str(train)]
    elif case == "train file without the target (--train-csv)":
        args += ["--train-csv", str(files["test"])]
    elif case == "resume: another tool's checkpoint":
        (tmp_path / "foreign").mkdir()
        torch.save({"epoch": 5, "model": {"w": torch.ones(2)}}, tmp_path / "foreign" / STATE_FILE)
        args = ["train", "--resume", str(tmp_path / "foreign")]
    elif case == "resume: truncated training_state.pt":
        state = interrupted_run_dir(files, tmp_path / "cut") / STATE_FILE
        whole = state.read_bytes()
        state.write_bytes(whole[: len(whole) // 2])
        args = ["train", "--resume", str(state.parent)]
    elif case == "resume: a finished run":
        done = tmp_path / "done"
        assert runner.invoke(app, train_args(files, done, "--epochs", "2", "-q")).exit_code == 0
        args = ["train", "--resume", str(done)]
    elif case == "config: unknown key":
        (tmp_path / "c.toml").write_text("epoch = 3\n")
        args += ["--config", str(tmp_path / "c.toml")]
    elif case == "config: wrong type":
        (tmp_path / "c.toml").write_text('epochs = "ten"\n')
        args += ["--config", str(tmp_path / "c.toml")]
    elif case == "negative epochs":
        args += ["--epochs", "-5"]
    elif case == "zero epochs":
        args += ["--epochs", "0"]
    elif case == "batch size larger than the data":
        args += ["--batch-size", "5000"]
    elif case == "unwritable output directory":
        out, expected = _unwritable_out(tmp_path)
        args += ["--out", str(out)]
    elif case == "learning rate that diverges in epoch 1":
        # -q: the progress display has started by then; the error is still its own last line
        args += ["--optimizer", "sgd", "--lr", "1e3", "--device", "cpu", "-q"]
    return args, out, expected


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    case: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    args, out, expected = _build_bad_input(case, hw01_files, tmp_path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()
    assert snapshot(tmp_path) == before, "nothing may be written for bad input"


# --- divergence -------------------------------------------------------------------------------


def test_divergence_after_epoch_1_stops_and_keeps_finite_best_weights(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    extra = ("--optimizer", "sgd", "--lr", "3", "--momentum", "0.9", "--epochs", "30")
    extra += ("--target", "level", "--hidden", "32,8")  # diverges after epoch 1 on this data
    result = runner.invoke(app, train_args(hw01_files, out, *extra, "--device", "cpu"))
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "training diverged at epoch" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "diverged"
    assert 1 <= metrics["epochs_run"] < 30
    assert f"diverged at epoch {metrics['epochs_run'] + 1}" in result.stderr
    assert np.isfinite(metrics["valid_mse"])
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    weights = artifacts.load_checkpoint(out / "model.pt")["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    history = (out / "history.csv").read_text().splitlines()[1:]
    assert len(history) == metrics["epochs_run"]
    values = [float(v) for line in history for v in line.split(",")[1:]]
    assert np.isfinite(values).all(), "a diverged epoch is not recorded"
    pred = [float(line.split(",")[1]) for line in (out / "pred.csv").read_text().splitlines()[1:]]
    assert np.isfinite(pred).all()


def test_resume_with_a_state_that_does_not_fit_is_a_clear_error(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """A training state from another config/version (here: one optimizer group where the saved
    config asks for two) is refused in one line."""
    out = interrupted_run_dir(hw01_files, tmp_path / "run")
    state = torch.load(out / STATE_FILE, weights_only=True)
    state["config"]["output_lr"] = 0.01  # the rebuilt optimizer gets two parameter groups
    artifacts.save_checkpoint(out / STATE_FILE, {k: v for k, v in state.items() if k != "format"})
    result = runner.invoke(app, ["train", "--resume", str(out), "-q"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the saved training state does not fit")
    assert result.stderr.count("\n") == 1


# --- run directories: never replaced or mixed into unasked --------------------------------------


def command_args(command: str, files: dict[str, Path], out: Path, tmp_path: Path) -> list[str]:
    """A quick run of ``command`` on the synthetic files into ``out``, printing one line."""
    from tests.tune_files import tune_args, write_space

    data = ["--train-csv", str(files["train"]), "--test-csv", str(files["test"])]
    quick = ["--epochs", "2", "--batch-size", "16", "--out", str(out), "-q"]
    if command == "train":
        return ["train", *data, *quick]
    if command == "train --seeds":
        return ["train", *data, *quick, "--seeds", "2"]
    if command == "cv":
        return ["cv", *data, *quick, "--folds", "2"]
    if command == "cv --seeds":
        return ["cv", *data, *quick, "--folds", "2", "--seeds", "2"]
    if command == "compare":
        return ["compare", *data, *quick, "--lr", "1e-3,1e-2"]
    if command == "compare --folds":
        return ["compare", *data, *quick, "--lr", "1e-3,1e-2", "--folds", "2"]
    if command == "lr-find":
        return ["lr-find", *data, "--steps", "20", *quick[2:]]
    assert command == "tune"
    space = write_space(tmp_path, name="space.toml")
    return tune_args(files, space, out, "--trials", "1", "--workers", "1", "--epochs", "2", "-q")


RUN_COMMANDS = ["train", "train --seeds", "cv", "cv --seeds", "compare", "lr-find", "tune"]


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_an_out_holding_another_run_is_refused_and_left_untouched(
    command: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    taken = tmp_path / "try1"
    assert runner.invoke(app, train_args(hw01_files, taken, "--epochs", "2", "-q")).exit_code == 0
    before = snapshot(taken)
    result = runner.invoke(app, command_args(command, hw01_files, taken, tmp_path))
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"output directory {taken} already holds a finished train run (" in result.stderr
    assert "--overwrite" in result.stderr
    assert "--resume" not in result.stderr, "a finished run has nothing to resume"
    assert snapshot(taken) == before, "nothing in the other run may change"


# what another run's directory holds, as the refusal names it
HELD_RUNS = {
    "train --seeds": "a finished train --seeds run",
    "cv": "a cv run",
    "cv --seeds": "a finished cv --seeds run",
    "compare": "a compare run",
    "lr-find": "an lr-find run",
    "tune": "a tune study's outputs",
}


@pytest.mark.parametrize("command", list(HELD_RUNS))
def test_train_into_another_commands_run_says_what_it_holds_and_never_resume(
    command: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    taken = tmp_path / "other"
    done = runner.invoke(app, command_args(command, hw01_files, taken, tmp_path))
    assert done.exit_code == 0, done.stderr
    for train in ("train", "train --seeds"):
        result = runner.invoke(app, command_args(train, hw01_files, taken, tmp_path))
        assert result.exit_code == 1
        message = result.stderr.removeprefix("error: ")
        assert message.startswith(f"output directory {taken} already holds {HELD_RUNS[command]} (")
        assert message.endswith("; choose another --out, or replace it with --overwrite\n")
        assert "--resume" not in message


@pytest.mark.parametrize("command", ["train", "train --seeds", "cv"])
def test_an_out_holding_an_interrupted_train_run_suggests_resume_to_train_only(
    command: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    taken = interrupted_run_dir(hw01_files, tmp_path / "cut")
    result = runner.invoke(app, command_args(command, hw01_files, taken, tmp_path))
    assert result.exit_code == 1
    held = (
        f"error: output directory {taken} already holds an interrupted train run ({STATE_FILE}); "
    )
    if command == "cv":  # cv cannot go on with it
        assert result.stderr == f"{held}choose another --out, or replace it with --overwrite\n"
    else:
        assert result.stderr == (
            f"{held}continue it with 'covidreg train --resume {taken}', replace it with "
            "--overwrite, or choose another --out\n"
        )
    assert runner.invoke(app, ["train", "--resume", str(taken), "-q"]).exit_code == 0


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_overwrite_replaces_the_run_once_the_inputs_are_checked(
    command: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    taken = tmp_path / "try1"
    assert runner.invoke(app, train_args(hw01_files, taken, "--epochs", "2", "-q")).exit_code == 0
    before = snapshot(taken)
    args = [*command_args(command, hw01_files, taken, tmp_path), "--overwrite"]
    bad = runner.invoke(app, [*args, "--train-csv", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 1 and "does not exist" in bad.stderr, bad.stderr
    assert snapshot(taken) == before, "a refused run removes nothing"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    if command != "train":
        assert not (taken / "model.pt").exists(), "the old run is gone, not mixed in"


def test_overwrite_never_removes_files_covidreg_did_not_write(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = runner.invoke(app, train_args(hw01_files, mine, "--overwrite", "-q"))
    assert result.exit_code == 1
    assert "holds files that are not a covidreg run's (notes.txt)" in result.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_predict_after_a_refused_cv_still_reads_the_train_run(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """The issue's sequence: train, then cv into the same --out (refused), then predict."""
    taken = tmp_path / "try1"
    assert runner.invoke(app, train_args(hw01_files, taken, "--epochs", "2", "-q")).exit_code == 0
    again = runner.invoke(app, train_args(hw01_files, taken, "--epochs", "5", "-q"))
    assert again.exit_code == 1 and "already holds a finished train run" in again.stderr
    cv = runner.invoke(app, command_args("cv", hw01_files, taken, tmp_path))
    assert cv.exit_code == 1 and not list(taken.glob("fold_*"))
    args = ["predict", "-m", str(taken), "--test-csv", str(hw01_files["test"])]
    pred = runner.invoke(app, [*args, "--out", str(tmp_path / "pred.csv")])
    assert pred.exit_code == 0 and "with the model" in pred.stderr


# --- every command checks the seed -------------------------------------------------------------


@pytest.mark.parametrize("command", [*RUN_COMMANDS, "compare --folds"])
@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("-1", "config key 'seed' must be an integer in 0 .. 4294967295, got -1"),
        ("4294967296", "config key 'seed' must be an integer in 0 .. 4294967295, got 4294967296"),
    ],
)
def test_a_seed_out_of_range_is_one_line_for_every_command(
    command: str, seed: str, message: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*command_args(command, hw01_files, out, tmp_path), "--seed", seed])
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert "run directory" not in result.stdout + result.stderr
    assert not out.exists()


def test_seeds_past_the_largest_seed_are_refused(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [*command_args("train --seeds", hw01_files, out, tmp_path), "--seed", "4294967295"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "goes past the largest seed" in result.stderr
    assert not out.exists()


# --- --quiet: one result line ------------------------------------------------------------------


@pytest.mark.parametrize("command", [*RUN_COMMANDS, "compare --folds"])
def test_quiet_prints_exactly_one_result_line(
    command: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    result = runner.invoke(app, command_args(command, hw01_files, tmp_path / "run", tmp_path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    assert "run_dir=" in result.stdout or "best_toml=" in result.stdout


# --- train --seeds resumes ---------------------------------------------------------------------


def test_an_interrupted_train_seeds_run_resumes_to_the_same_bits(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    from covidreg.crossval import FoldEvents
    from covidreg.experiment import check_train_inputs
    from covidreg.seeds import train_seeds
    from tests.conftest import files_config

    flags = {"epochs": "12", "checkpoint_every": "5", "patience": "0", "stack_size": "2"}
    cfg = files_config(hw01_files, **flags, fold_processes="1", dropout="0.1")

    def interrupt(record: object, stopper: object) -> None:
        if record.epoch == 8:  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_seeds(cfg, 3, cut, "runs", FoldEvents(on_epoch=interrupt), check_train_inputs(cfg))
    # stack 1 (seeds 42, 43) saved epoch 5; stack 2 (seed 44) had not started
    assert {p.name for p in cut.iterdir()} == {STATE_FILE, "training_state.stack_1.pt"}

    resumed = runner.invoke(app, ["train", "--resume", str(cut), "--lr", "0.5", "--epochs", "3"])
    assert resumed.exit_code == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --lr is ignored with --resume: the run goes on with its saved config",
        "warning: --epochs is ignored with --resume: the run goes on with its saved config",
    ]
    assert not list(cut.glob("training_state*")), "a finished run removes its training states"

    reference = tmp_path / "reference"
    args = train_args(hw01_files, reference, "--seeds", "3", "--dropout", "0.1", "-q")
    args += [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert runner.invoke(app, args).exit_code == 0
    for seed in (42, 43, 44):
        assert state_dicts_equal(cut / f"seed_{seed}/model.pt", reference / f"seed_{seed}/model.pt")
        for name in ("history.csv", "pred.csv"):
            assert (cut / f"seed_{seed}" / name).read_bytes() == (
                reference / f"seed_{seed}" / name
            ).read_bytes()
    assert (cut / "pred.csv").read_bytes() == (reference / "pred.csv").read_bytes()
    seeds = json.loads((cut / "seeds.json").read_text())
    assert seeds == json.loads((reference / "seeds.json").read_text())


def test_resume_of_a_directory_without_a_run_does_not_say_to_wait(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "empty")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "holds no interrupted covidreg train run" in result.stderr
    assert "yet" not in result.stderr


# --- messages ----------------------------------------------------------------------------------


def test_a_cv_fold_that_diverges_at_once_is_named(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = command_args("cv", hw01_files, out, tmp_path)
    result = runner.invoke(app, [*args, "--optimizer", "sgd", "--lr", "1e3", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: fold 1: training diverged at epoch 1")
    assert not out.exists()


def test_predict_names_the_members_of_a_seeds_ensemble(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "seeds"
    assert (
        runner.invoke(app, command_args("train --seeds", hw01_files, out, tmp_path)).exit_code == 0
    )
    pred = ["predict", "-m", str(out), "--test-csv", str(hw01_files["test"])]
    result = runner.invoke(app, [*pred, "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.stderr
    assert "with the ensemble of 2 seed models" in result.stderr


# --- docs/errors.md quotes the real messages ----------------------------------------------------

ERRORS_MD = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def documented_errors() -> dict[str, str]:
    """docs/errors.md's table: each case and the message it quotes ('...' marks a cut)."""
    quoted = {}
    for line in ERRORS_MD.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`") and cells[2].endswith("`"):
            quoted[cells[0]] = cells[2][1:-1]
    return quoted


def quotes(quoted: str, message: str) -> bool:
    """Whether ``quoted`` is ``message`` with the parts '...' stands for left out."""
    first, *rest = quoted.split("...")
    if not rest:
        return message == quoted
    if not message.startswith(first) or not message.endswith(rest[-1]):
        return False
    at = len(first)
    for part in rest[:-1]:
        found = message.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return len(message) - len(rest[-1]) >= at


def _documented_case(case: str, here: Path) -> list[str]:
    """The command line of one case of docs/errors.md, its files written into ``here`` (the
    working directory, which holds the real covid.train.csv and covid.test.csv)."""
    train = ["--train-csv", "covid.train.csv"]
    real = here / "covid.train.csv"
    if case == "missing file":
        return ["train", "--train-csv", "nope.csv"]
    if case == "default data not fetched":
        return ["train"]
    if case == "empty file":
        (here / "empty.csv").write_text("")
        return ["train", "--train-csv", "empty.csv"]
    if case == "directory as file":
        (here / "a_dir").mkdir()
        return ["train", "--train-csv", "a_dir"]
    if case == "missing / renamed column":
        return ["train", "--train-csv", _edit_columns(real, here / "m.csv", "drop").name]
    if case == "extra column":
        return ["train", "--train-csv", _edit_columns(real, here / "x.csv", "extra").name]
    if case == "non-numeric, NaN or inf cell":
        return ["train", "--train-csv", _edit_cell(real, here / "b.csv", 3, 41, "abc").name]
    if case == "state one-hot not one-hot":
        _edit_cell(real, here / "s.csv", 1, 2, "1")  # AL's first row with AK's 1 too
        return ["train", "--train-csv", "s.csv"]
    if case == "test file with the target":
        return ["train", *train, "--test-csv", "covid.train.csv"]
    if case == "training file without the target":
        return ["train", "--train-csv", "covid.test.csv"]
    if case == "checkpoint from another tool":
        torch.save({"epoch": 5, "model": {"w": torch.ones(2)}}, here / "other.pt")
        return ["predict", "--model", "other.pt", "--test-csv", "covid.test.csv"]
    if case == "checkpoint with pickled objects":
        torch.save(RunsACommand(), here / "evil.pt")
        return ["predict", "--model", "evil.pt", "--test-csv", "covid.test.csv"]
    if case == "truncated checkpoint":
        artifacts.save_checkpoint(here / "whole.pt", {"kind": "model"})
        whole = (here / "whole.pt").read_bytes()
        (here / "cut.pt").write_bytes(whole[: len(whole) // 2])
        return ["predict", "--model", "cut.pt", "--test-csv", "covid.test.csv"]
    if case == "resume a finished run":
        done = ["train", *train, "--epochs", "2", "--out", "runs/done", "-q"]
        assert runner.invoke(app, done).exit_code == 0
        return ["train", "--resume", "runs/done"]
    if case == "unknown config key":
        (here / "c.toml").write_text("epoch = 3\n")
        return ["train", *train, "--config", "c.toml"]
    if case == "key in another section":
        (here / "c.toml").write_text("[data]\nlr = 0.1\n")
        return ["train", *train, "--config", "c.toml"]
    if case == "wrong type":
        (here / "c.toml").write_text('epochs = "ten"\n')
        return ["train", *train, "--config", "c.toml"]
    if case == "zero or negative epochs":
        return ["train", *train, "--epochs", "0"]
    if case == "batch larger than the data":
        return ["train", *train, "--batch-size", "5000"]
    if case == "too many folds":
        return ["cv", *train, "--folds", "5000"]
    if case == "unwritable output":
        (here / "a_file").write_text("x")
        return ["train", *train, "--out", "a_file/run"]
    if case == "output holding another run":
        cv = ["cv", *train, "--folds", "2", "--epochs", "2", "--out", "runs/cv1", "-q"]
        assert runner.invoke(app, cv).exit_code == 0
        return ["train", *train, "--out", "runs/cv1"]
    if case == "learning rate that diverges at once":
        return ["train", *train, "--optimizer", "sgd", "--lr", "3", "--device", "cpu", "-q"]
    assert case == "unknown option or bad number", f"docs/errors.md's case {case!r} is not run"
    return ["train", "--bogus"]


class RunsACommand:
    """An object whose unpickling would call os.system: what a malicious checkpoint holds."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("true",))


@pytest.mark.realdata
@pytest.mark.parametrize("case", list(documented_errors()))
def test_docs_errors_md_quotes_each_real_message(
    case: str, real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("covid.train.csv", "covid.test.csv"):
        (tmp_path / name).symlink_to(real_data_dir / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVIDREG_DATA_DIR", raising=False)
    args = _documented_case(case, tmp_path)
    if case == "unknown option or bad number":  # the entry point's usage errors, as installed
        entry_point = "import sys; from covidreg.cli import main; sys.argv[0] = 'covidreg'; main()"
        done = subprocess.run(
            [sys.executable, "-c", entry_point, *args], capture_output=True, text=True, check=False
        )
        code, stderr = done.returncode, done.stderr
    else:
        result = runner.invoke(app, args)
        code, stderr = result.exit_code, result.stderr
    assert code == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    message = stderr.removeprefix("error: ").rstrip("\n")
    quoted = documented_errors()[case]
    assert quotes(quoted, message), f"docs/errors.md quotes {quoted!r}, the message is {message!r}"


def test_docs_errors_md_has_its_table() -> None:
    assert len(documented_errors()) >= 20
    assert quotes("a ... c", "a b c") and quotes("a ...", "a b") and not quotes("a ... d", "a b c")
