"""--tensorboard: event files read back with TensorBoard's own reader, equal to the histories."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from typer.testing import CliRunner

from covidreg import tensorboard_logs
from covidreg.cli import app
from covidreg.config import resolve_config
from covidreg.crossval import make_folds
from covidreg.engine import EarlyStopping, EpochRecord
from covidreg.experiment import STATE_FILE, load_data, resume_train, run_train
from covidreg.tune import workers
from tests.conftest import files_config, train_args
from tests.tune_files import load_study, read_trials, tune_args, write_space

runner = CliRunner()
COLUMNS = {"loss/train": "train_loss", "loss/valid": "valid_loss", "lr": "lr"}


def read_log(log_dir: Path) -> EventAccumulator:
    assert log_dir.is_dir(), f"no TensorBoard folder {log_dir}"
    # 0: keep every event (the reader samples long runs by default)
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(log: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    events = log.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def read_history(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def assert_log_is_history(
    log_dir: Path, history_csv: Path | dict[str, list[float]], prefix: str = ""
) -> None:
    """Each scalar has the history's epochs as steps and its values after float32 rounding."""
    log = read_log(log_dir)
    history = read_history(history_csv) if isinstance(history_csv, Path) else history_csv
    assert set(log.Tags()["scalars"]) >= {prefix + tag for tag in COLUMNS}
    for tag, column in COLUMNS.items():
        steps, values = scalars(log, prefix + tag)
        assert steps == [int(e) for e in history["epoch"]], tag
        np.testing.assert_array_equal(np.float32(values), np.float32(history[column]), err_msg=tag)


def test_train_logs_every_epoch_as_in_history_csv(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(hw01_files, out, "--tensorboard", "-q"))
    assert result.exit_code == 0, result.stderr
    assert_log_is_history(out / "tensorboard", out / "history.csv")
    assert len(read_history(out / "history.csv")["epoch"]) == 12
    # logging changes no bit of the run
    plain = tmp_path / "plain"
    assert runner.invoke(app, train_args(hw01_files, plain, "-q")).exit_code == 0
    for name in ("history.csv", "pred.csv"):
        assert (out / name).read_bytes() == (plain / name).read_bytes()
    # the key travels with the run: config.toml and the checkpoint
    assert resolve_config(out / "config.toml").tensorboard is True
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["config"]["tensorboard"] is True


def tensorboard_cfg(files: dict[str, Path], **changes: str):
    return files_config(files, epochs="20", checkpoint_every="5", tensorboard="true", **changes)


def test_resume_continues_the_log_with_each_epoch_once(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tensorboard_cfg(hw01_files)
    out = tmp_path / "interrupted"

    def interrupt(record: EpochRecord, stopper: EarlyStopping) -> None:
        # the log is written as the epochs come: its file is there before the run ends
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        if record.epoch == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, out, on_epoch=interrupt)
    assert scalars(read_log(out / "tensorboard"), "loss/valid")[0] == list(range(1, 9))
    assert (out / STATE_FILE).exists()  # saved after epoch 5: epochs 6-8 are trained again

    resume_train(out)
    assert_log_is_history(out / "tensorboard", out / "history.csv")
    steps, resumed = scalars(read_log(out / "tensorboard"), "loss/valid")
    assert steps == list(range(1, 21))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    straight = tmp_path / "straight"
    run_train(cfg, straight)
    assert scalars(read_log(straight / "tensorboard"), "loss/valid") == (steps, resumed)


def test_a_run_that_diverges_at_once_leaves_no_directory(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "diverged"
    result = runner.invoke(app, train_args(hw01_files, out, "--tensorboard", "--lr", "1e30"))
    assert result.exit_code == 1
    assert "diverged" in result.stderr
    assert not out.exists()


def test_seeds_log_one_folder_per_seed(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    args = train_args(hw01_files, out, "--seeds", "2", "--seed", "5", "--tensorboard", "-q")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["seed_5", "seed_6"]
    for seed in (5, 6):
        assert_log_is_history(out / f"tensorboard/seed_{seed}", out / f"seed_{seed}/history.csv")


def test_cv_logs_one_folder_per_fold_from_every_process(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    args = [
        *train_args(hw01_files, out, "--tensorboard", "-q"),
        "--folds",
        "3",
        # a stack per fold, two processes: the forked one's folds are logged by the parent
        "--stack-size",
        "1",
        "--fold-processes",
        "2",
    ]
    args[0] = "cv"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    folds = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert folds == ["fold_1", "fold_2", "fold_3"]
    for k in (1, 2, 3):
        assert_log_is_history(out / f"tensorboard/fold_{k}", out / f"fold_{k}/history.csv")
    histories = [read_history(out / f"fold_{k}/history.csv")["valid_loss"] for k in (1, 2, 3)]
    assert histories[0] != histories[1], "each folder holds its own fold"


def test_compare_logs_one_folder_per_variant(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "compare"
    args = train_args(hw01_files, out, "--lr", "1e-3,1e-2", "--hidden", "16;32,8", "-q")
    result = runner.invoke(app, ["compare", *args[1:], "--tensorboard", "true"])
    assert result.exit_code == 0, result.stderr
    with (out / "histories.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    variants = sorted({r["variant"] for r in rows})
    assert variants == ["hidden=16/lr=0.001", "hidden=16/lr=0.01", "hidden=32,8/lr=0.001",
                        "hidden=32,8/lr=0.01"]  # fmt: skip
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        history = {key: [float(r[key]) for r in mine] for key in ("epoch", *COLUMNS.values())}
        assert_log_is_history(out / "tensorboard" / variant, history)


def test_compare_with_folds_logs_each_seed_and_fold(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "compare"
    args = train_args(hw01_files, out, "--lr", "1e-3,1e-2", "--folds", "2", "--seeds", "2")
    result = runner.invoke(app, ["compare", *args[1:], "--tensorboard", "true", "-q"])
    assert result.exit_code == 0, result.stderr
    folders = sorted(
        str(p.parent.relative_to(out / "tensorboard")) for p in out.rglob("events.out.tfevents.*")
    )
    assert folders == [
        f"lr={lr}/seed_{seed}/fold_{k}" for lr in ("0.001", "0.01") for seed in (42, 43)
        for k in (1, 2)
    ]  # fmt: skip
    # the same models as covidreg cv: seed 43's second fold
    cv = tmp_path / "cv"
    cv_args = train_args(hw01_files, cv, "--lr", "1e-2", "--folds", "2", "--seed", "43", "-q")
    assert runner.invoke(app, ["cv", *cv_args[1:]]).exit_code == 0
    assert_log_is_history(out / "tensorboard/lr=0.01/seed_43/fold_2", cv / "fold_2/history.csv")


def session_start(log: EventAccumulator) -> plugin_data_pb2.SessionStartInfo:
    content = log.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG in content
    data = plugin_data_pb2.HParamsPluginData.FromString(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    return data.session_start_info


def test_tune_logs_each_trial_with_its_hparams_and_objective(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "study"
    # the network alone (no ridge blend), stopped on the fold's own rows: a fold's RMSE is then
    # its best logged valid loss
    extra = ("--trials", "2", "--ridge-blend", "0", "--stop-on", "valid")
    args = tune_args(hw01_files, write_space(tmp_path), out, *extra, folds=2)
    result = runner.invoke(
        app, [*args, "--workers", "1", "--pruner", "none", "--tensorboard", "-q"]
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["trial_0000", "trial_0001"]
    rows = {int(r["number"]): r for r in read_trials(out)}
    for trial in load_study(out).trials:
        log = read_log(out / f"tensorboard/trial_{trial.number:04d}")
        hparams = session_start(log).hparams
        assert set(hparams) == {"lr", "hidden", "weight_decay"}
        assert hparams["lr"].number_value == trial.user_attrs["values"]["lr"]
        assert hparams["weight_decay"].number_value == trial.user_attrs["values"]["weight_decay"]
        assert hparams["hidden"].string_value == rows[trial.number]["hidden"]
        assert scalars(log, "valid_rmse") == ([trial.number], [np.float32(trial.value)])
        for k, fold_rmse in enumerate(trial.user_attrs["fold_rmse"], start=1):
            steps, valid = scalars(log, f"fold_{k}/loss/valid")
            assert steps == list(range(1, 9))  # the space's 8 epochs, no early stopping
            assert math.sqrt(min(valid)) == pytest.approx(fold_rmse, rel=1e-6)


def test_a_pruned_trial_logs_its_epochs_so_far_and_no_objective(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = resolve_config(
        None,
        {"train_csv": str(hw01_files["train"]), "epochs": "10", "batch_size": "16"},
    )
    data = load_data(cfg, with_test=False)
    assert len(make_folds(cfg, data, 3)) == 3

    def prune_at_epoch_4(step: int, value: float) -> None:
        if step == 4:
            raise optuna.TrialPruned

    histories: dict[int, list[EpochRecord]] = {}
    with pytest.raises(optuna.TrialPruned):
        workers.evaluate(cfg, data, 3, 10, prune_at_epoch_4, histories.__setitem__)
    assert {k: [r.epoch for r in h] for k, h in histories.items()} == {
        k: [1, 2, 3, 4] for k in (1, 2, 3)
    }
    log_dir = tmp_path / "trial_0007"
    tensorboard_logs.write_trial(log_dir, 7, {"lr": 1e-3, "hidden": [32, 8]}, histories, None)
    log = read_log(log_dir)
    assert session_start(log).hparams["hidden"].string_value == "32,8"
    assert "valid_rmse" not in log.Tags()["scalars"]
    assert scalars(log, "fold_2/loss/train") == (
        [1, 2, 3, 4],
        [np.float32(r.train_loss) for r in histories[2]],
    )


NOTHING_IMPORTED = """
import json, sys
from pathlib import Path
from covidreg.config import resolve_config
from covidreg.crossval import run_cv
from covidreg.experiment import run_train

train_csv, out = sys.argv[1], Path(sys.argv[2])
cfg = resolve_config(None, {"train_csv": train_csv, "test_csv": "", "epochs": "3",
                            "batch_size": "16"})
run_train(cfg, out / "train")
run_cv(cfg, 2, out / "cv")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard"
                        or m.startswith("torch.utils.tensorboard"))))
"""


def test_without_the_key_nothing_is_written_or_imported(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """In a fresh interpreter (this one has imported TensorBoard's reader)."""
    out = subprocess.run(
        [sys.executable, "-c", NOTHING_IMPORTED, str(hw01_files["train"]), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []
    assert (tmp_path / "train/model.pt").exists() and (tmp_path / "cv/fold_2").is_dir()
    assert not list(tmp_path.rglob("tensorboard")) and not list(tmp_path.rglob("*tfevents*"))


def without_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules: `import tensorboard` raises ImportError, as when it is not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def assert_install_hint(result) -> None:
    assert result.exit_code == 1
    assert result.stderr == f"error: {tensorboard_logs.INSTALL_HINT}\n"
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["train", "seeds", "cv", "cv-seeds", "tune", "compare"])
def test_without_the_package_the_flag_fails_before_anything_is_written(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    without_tensorboard(monkeypatch)
    out = tmp_path / "out"
    train = train_args(hw01_files, out)
    args = {
        "train": [*train, "--tensorboard"],
        "seeds": [*train, "--seeds", "2", "--tensorboard"],
        "cv": ["cv", *train[1:], "--folds", "2", "--tensorboard"],
        "cv-seeds": ["cv", *train[1:], "--folds", "2", "--seeds", "2", "--tensorboard"],
        "tune": [*tune_args(hw01_files, write_space(tmp_path), out), "--tensorboard"],
        "compare": ["compare", *train[1:], "--lr", "1e-3,1e-2", "--tensorboard", "true", "-q"],
    }[command]
    assert_install_hint(runner.invoke(app, args))
    assert not out.exists()


def test_without_the_package_a_logged_run_does_not_resume(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "interrupted"

    def interrupt(record: EpochRecord, stopper: EarlyStopping) -> None:
        if record.epoch == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(tensorboard_cfg(hw01_files), out, on_epoch=interrupt)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    without_tensorboard(monkeypatch)
    assert_install_hint(runner.invoke(app, ["train", "--resume", str(out)]))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
