"""The command line through typer.testing.CliRunner: exit codes, key output lines, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.config import Config, resolve_config
from tests.conftest import (
    DAILY,
    RUN_FILES,
    interrupted_run_dir,
    synthetic_rows,
    train_args,
    write_hw01_csv,
)

runner = CliRunner()


def test_train_writes_every_output(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(hw01_files, out))
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    assert not list(out.glob(".*.tmp")), "no temporary files may remain"
    assert "valid_rmse=" in result.stdout
    assert "run directory:" in result.stderr

    pred = (out / "pred.csv").read_text().splitlines()
    assert pred[0] == "id,tested_positive"
    assert [int(line.split(",")[0]) for line in pred[1:]] == list(range(24))
    assert all(torch.isfinite(torch.tensor(float(line.split(",")[1]))) for line in pred[1:])

    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["format"] == "covidreg-checkpoint"
    assert ckpt["feature_names"][-1] == "tested_positive_d2"
    # the statistics are stored once, as the model's buffers
    assert ckpt["normalization"] == {"fitted_on": "training split", "applied": True}
    assert len(ckpt["state_dict"]["input_mean"]) == len(ckpt["feature_names"])

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 12
    assert metrics["valid_rmse"] == pytest.approx(metrics["valid_mse"] ** 0.5)
    assert metrics["environment"]["seed"] == 42
    assert metrics["environment"]["torch"] == torch.__version__
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,valid_loss,lr"
    assert len(history) == 13
    # the defaults: train's holdout early-stops on its validation rows (stop_on auto), where the
    # network alone has the history's best loss; the reported RMSE is the ridge blend's
    assert (metrics["stop_on"], metrics["ridge_blend"]) == ("valid", 0.5)
    assert "stop_rmse" not in metrics
    best = min(float(line.split(",")[2]) for line in history[1:])
    assert metrics["network_valid_rmse"] == pytest.approx(best**0.5, rel=1e-12)
    assert metrics["valid_rmse"] != pytest.approx(metrics["network_valid_rmse"], rel=1e-6)
    assert "network alone RMSE" in result.stderr
    resolved = resolve_config(out / "config.toml")
    assert resolved.epochs == 12 and resolved.batch_size == 16


def test_quiet_prints_only_the_result_line(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, train_args(hw01_files, tmp_path / "run", "--quiet"))
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("valid_rmse=")
    assert result.stderr == ""


def test_flags_override_config_file(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('optimizer = "sgd"\nlr = 0.01\nhidden = [8]\n')
    out = tmp_path / "run"
    args = train_args(hw01_files, out, "--config", str(config), "--lr", "0.003", "-q")
    assert runner.invoke(app, args).exit_code == 0
    resolved = resolve_config(out / "config.toml")
    assert (resolved.optimizer, resolved.lr, resolved.hidden) == ("sgd", 0.003, [8])


def test_hidden_and_init_flags_shape_the_model(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ("--hidden", "8,4", "--init", "kaiming_normal", "--optimizer", "adamw", "-q")
    assert runner.invoke(app, train_args(hw01_files, out, *extra)).exit_code == 0
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert state["body.0.weight"].shape == (8, 14)
    assert state["body.2.weight"].shape == (4, 8)
    assert state["head.weight"].shape == (1, 4)


def test_zero_init_warns(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, train_args(hw01_files, tmp_path / "run", "--init", "zeros"))
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "symmetry is broken by the biases alone" in result.stderr


def test_same_seed_gives_byte_identical_outputs(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    seeds = ["7", "7", "8"]
    for out, seed in zip(outs, seeds, strict=True):
        assert runner.invoke(app, train_args(hw01_files, out, "--seed", seed, "-q")).exit_code == 0
    a, b, c = ((o / "pred.csv").read_bytes() for o in outs)
    assert a == b
    assert a != c
    assert (outs[0] / "history.csv").read_bytes() == (outs[1] / "history.csv").read_bytes()
    wa = torch.load(outs[0] / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(outs[1] / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _bad_train_csv(tmp_path: Path) -> Path:
    path = write_hw01_csv(tmp_path / "bad.csv", synthetic_rows(2, 10))
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[50] = "abc"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("non_numeric", "line 4 (data row 3)"),
        ("missing_file", "does not exist"),
        ("directory", "is a directory"),
        ("test_as_train", "has no target column"),
        ("unknown_key", "unknown config key 'epoch'"),
        ("bad_type", "config key 'epochs'"),
        ("zero_epochs", "'epochs' must be a positive integer"),
        ("bad_choice", "'optimizer' must be one of"),
        ("unknown_feature", "unknown feature 'clii_d1'"),
        ("batch_too_large", "batch_size 5000 is larger"),
        ("delta_without_d2", "tested_positive_d2"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    case: str, expected: str, hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = train_args(hw01_files, out)
    config = tmp_path / "bad.toml"
    if case == "non_numeric":
        args += ["--train-csv", str(_bad_train_csv(tmp_path))]
    elif case == "missing_file":
        args += ["--train-csv", str(tmp_path / "nope.csv")]
    elif case == "directory":
        args += ["--train-csv", str(tmp_path)]
    elif case == "test_as_train":
        args += ["--train-csv", str(hw01_files["test"])]
    elif case == "unknown_key":
        config.write_text("epoch = 3\n")
        args += ["--config", str(config)]
    elif case == "bad_type":
        args += ["--epochs", "ten"]
    elif case == "zero_epochs":
        args += ["--epochs", "0"]
    elif case == "bad_choice":
        args += ["--optimizer", "lbfgs"]
    elif case == "unknown_feature":
        args += ["--features", "clii_d1"]
    elif case == "batch_too_large":
        args += ["--batch-size", "5000"]
    elif case == "delta_without_d2":
        args += ["--target", "delta", "--features", "cli_d1,ili_d1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists(), "nothing may be written for bad input"


def test_unwritable_output_directory(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, train_args(hw01_files, blocker / "run"))
    assert result.exit_code == 1
    assert "is a file" in result.stderr


def test_divergence_stops_with_a_message_and_keeps_best_weights(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    extra = ("--optimizer", "sgd", "--lr", "5", "--momentum", "0.9", "--epochs", "200")
    result = runner.invoke(app, train_args(hw01_files, out, *extra))
    if result.exit_code == 0:
        assert "diverged" in result.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["stop_reason"] == "diverged"
        assert torch.isfinite(torch.tensor(metrics["valid_mse"]))
    else:  # diverged in the very first epoch: no finite weights to keep
        assert result.exit_code == 1 and "diverged at epoch 1" in result.stderr
        assert not out.exists() or not (out / "model.pt").exists()


def test_every_command_and_option_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help and "Example:" in command.help, name
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


def test_each_command_is_listed_with_a_whole_sentence() -> None:
    """``covidreg --help`` lists each command with its docstring's first paragraph, line breaks
    kept: that paragraph must be one sentence on one line, shown whole on a wide terminal."""
    import inspect

    import typer.main

    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0
    rows = [line.strip("│ ") for line in listing.stdout.splitlines()]
    for name, command in typer.main.get_command(app).commands.items():
        first = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert "\n" not in first, f"{name}'s description breaks: {first!r}"
        assert first[0].isupper() and first.endswith("."), f"{name}: {first!r}"
        assert any(row.split(None, 1) == [name, first] for row in rows), (name, listing.stdout)


def test_config_flags_cover_every_config_key() -> None:
    import typer.main

    train = typer.main.get_command(app).commands["train"]
    names = {p.name for p in train.params}
    assert set(vars(Config())) <= names


def test_help_does_not_import_torch() -> None:
    code = "import sys, covidreg.cli; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_version_and_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "covidreg", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("covidreg ")


def test_seeds_repeat_the_run_and_average_predictions(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "seeds"
    result = runner.invoke(app, train_args(hw01_files, out, "--seeds", "3", "--seed", "5", "-q"))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [5, 6, 7]
    rmses = [r["valid_rmse"] for r in summary["runs"]]
    assert summary["valid_rmse"]["mean"] == pytest.approx(sum(rmses) / 3)
    assert len(set(rmses)) == 3, "different seeds must give different runs"
    # the first seed's run is the run without --seeds
    single = tmp_path / "single"
    assert runner.invoke(app, train_args(hw01_files, single, "--seed", "5", "-q")).exit_code == 0
    assert (out / "seed_5/pred.csv").read_bytes() == (single / "pred.csv").read_bytes()
    # the top-level pred.csv is the mean of the three seed models' predictions
    import numpy as np

    def values(path: Path) -> np.ndarray:
        return np.array([float(line.split(",")[1]) for line in path.read_text().splitlines()[1:]])

    mean = np.mean([values(out / f"seed_{s}/pred.csv") for s in (5, 6, 7)], axis=0)
    np.testing.assert_allclose(values(out / "pred.csv"), mean, rtol=1e-6)
    assert "seeds_rmse=" in result.stdout


def test_zero_seeds_is_an_error(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, train_args(hw01_files, tmp_path / "run", "--seeds", "0"))
    assert result.exit_code == 1
    assert "--seeds must be 1 or more" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--bogus"], "No such option: --bogus (see"),  # no far-fetched guess
        (["train", "--epoch", "3"], "No such option: --epoch; did you mean --epochs?"),
        (["cv", "--folds", "x"], "Invalid value for '--folds'"),
        (
            ["compare", "--tensorboard", "--epochs", "20"],
            "--tensorboard takes values in compare: --tensorboard true (or true,false",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_1(args: list[str], expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "covidreg", *args], capture_output=True, text=True, check=False
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert expected in out.stderr
    assert "Possible options" not in out.stderr


@pytest.mark.parametrize("command", ["train", "cv"])
def test_missing_default_data_points_at_fetch(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVIDREG_DATA_DIR", raising=False)
    result = runner.invoke(app, [command])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "data/covid.train.csv does not exist" in result.stderr
    assert "--train-csv" in result.stderr and "'covidreg fetch [--edition" in result.stderr
    assert "--from DIR" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


@pytest.mark.slow
def test_the_process_ends_with_its_output_flushed_and_its_exit_code(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """``main`` leaves through ``os._exit`` (no interpreter teardown): what a run printed to a
    pipe, the files it wrote and its exit code must all be there."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "covidreg", *train_args(hw01_files, out, "-q")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("valid_rmse=") and done.stdout.endswith(f"run_dir={out}\n")
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    failed = subprocess.run(
        [sys.executable, "-m", "covidreg", "train", "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert failed.stderr == "error: config key 'epochs' must be a positive integer, got 0\n"


# --- Ctrl-C --------------------------------------------------------------------------------------


def interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C as the progress display shows ``epoch`` (of any model)."""
    from covidreg.progress import EpochDisplay

    def on_epoch(self: EpochDisplay, record: Any, stopper: Any) -> None:
        if record.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochDisplay, "on_epoch", on_epoch)


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_an_interrupted_train_says_how_to_resume(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    args = train_args(hw01_files, out, "--epochs", "20", "--checkpoint-every", "5")
    interrupt_at(monkeypatch, 7)
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    resume = f"covidreg train --resume {out}"
    assert last_line(result.stderr) == (
        f"interrupted: the training state of epoch 5 is saved in {out}; continue with '{resume}'"
    )
    interrupt_at(monkeypatch, 12)  # the resumed run, interrupted in its turn
    again = runner.invoke(app, resume.split()[1:])
    assert again.exit_code == 130
    assert last_line(again.stderr).startswith("interrupted: the training state of epoch 10 is ")
    monkeypatch.undo()
    done = runner.invoke(app, resume.split()[1:])
    assert done.exit_code == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= RUN_FILES


@pytest.mark.parametrize(
    ("every", "why"),
    [
        (
            "10",
            "the run stopped before its first training state (one is saved every 10 epochs: "
            "checkpoint_every)",
        ),
        ("0", "checkpoint_every = 0 saves no training state"),
    ],
    ids=["before-the-first-state", "no-states"],
)
def test_an_interrupted_train_that_saved_nothing_says_why(
    every: str,
    why: str,
    hw01_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 7)
    result = runner.invoke(app, train_args(hw01_files, out, "--checkpoint-every", every))
    assert result.exit_code == 130
    assert last_line(result.stderr) == f"interrupted: nothing was saved to resume from: {why}"
    assert not out.exists(), "the empty run directory is removed"


def test_a_train_interrupted_while_writing_its_files_says_the_model_is_saved(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covidreg import artifacts

    def interrupted(self: artifacts.Plots) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.Plots, "finish", interrupted)  # the plots, drawn last
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(hw01_files, out, "--checkpoint-every", "0"))
    assert result.exit_code == 130
    assert last_line(result.stderr) == (
        f"interrupted: training had finished: {out / 'model.pt'} is saved, the run's other "
        "files may be missing; train again for the whole run"
    )


def test_an_interrupted_train_seeds_says_how_to_resume(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "seeds"
    flags = ("--seeds", "3", "--stack-size", "2", "--fold-processes", "1")
    args = train_args(hw01_files, out, *flags, "--epochs", "20", "--checkpoint-every", "5")
    interrupt_at(monkeypatch, 7)
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert last_line(result.stderr) == (
        f"interrupted: the stacks' training states are saved in {out}; continue with "
        f"'covidreg train --resume {out}'"
    )
    interrupt_at(monkeypatch, 3)
    early = runner.invoke(app, train_args(hw01_files, tmp_path / "early", *flags))
    assert early.exit_code == 130
    assert last_line(early.stderr).startswith(
        "interrupted: no stack had saved a training state yet (one is saved every 50 epochs: "
        f"checkpoint_every); continue with 'covidreg train --resume {tmp_path / 'early'}', "
        "which trains the seeds from their start"
    )


def test_an_interrupted_cv_is_a_plain_interrupted_line(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt_at(monkeypatch, 3)
    data = ["--train-csv", str(hw01_files["train"]), "--test-csv", str(hw01_files["test"])]
    args = ["cv", *data, "--folds", "2", "--batch-size", "16", "--fold-processes", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cv")])
    assert result.exit_code == 130
    assert last_line(result.stderr) == "interrupted"


def test_a_resumed_run_shows_its_total_epochs(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = interrupted_run_dir(hw01_files, tmp_path / "run")  # 20 epochs, stopped after 5
    result = runner.invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "resuming after epoch 5" in result.stderr
    assert "20/20" in result.stderr and "/?" not in result.stderr


def test_features_says_each_state_is_one_stretch_of_a_2023_file(tmp_path: Path) -> None:
    from covidreg.layout import EDITIONS

    layout = EDITIONS["2023"]
    rows = synthetic_rows(len(layout.states), 10, 0, layout)
    path = write_hw01_csv(tmp_path / "covid_train.csv", rows, layout=layout)
    result = runner.invoke(app, ["features", "--train-csv", str(path), "--test-csv", ""])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "day order: recovered from the rows' shared days, 34 stretches of consecutive windows "
        "for 34 states (each state one stretch)"
    )


def rank_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """A quick `covidreg features --rank` on the synthetic files: 3 folds, 20 epochs."""
    return [
        "features", "--rank", "--train-csv", str(files["train"]), "--folds", "3",
        "--repeats", "2", "--epochs", "20", "--batch-size", "16", "--out", str(out), *extra,
    ]  # fmt: skip


def test_features_rank_writes_the_ranking(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rank"
    result = runner.invoke(app, rank_args(hw01_files, out))
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"rank.csv", "rank.json", "rank.png", "config.toml"}
    (line,) = result.stdout.splitlines()
    order = line.split()[0].removeprefix("rank=").split(",")
    assert sorted(order) == sorted(DAILY) and line.endswith(f"run_dir={out}")
    ranked = [row.split(",")[1] for row in (out / "rank.csv").read_text().splitlines()[1:]]
    assert ranked == order
    assert "covidreg features --rank: permutation importance, 3 blocked folds x 2 repeats" in (
        result.stderr
    )
    assert "ranking model: 53 inputs" in result.stderr
    assert "tested_positive: its known days permuted in the inputs only" in result.stderr


def test_features_rank_quiet_prints_one_line(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    args = rank_args(hw01_files, tmp_path / "rank", "--quiet", "--features", "all")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("rank=")
    assert result.stderr == ""


def test_features_rank_warns_of_the_settings_it_does_not_use(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    args = rank_args(hw01_files, tmp_path / "rank", "--split", "random", "--states")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "warning: split random is not used: the ranking scores blocked folds" in result.stderr
    assert "states" in result.stdout.split()[0]


def test_features_rank_refuses_another_run_without_overwrite(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "rank"
    assert runner.invoke(app, rank_args(hw01_files, out, "-q")).exit_code == 0
    again = runner.invoke(app, rank_args(hw01_files, out, "-q"))
    assert again.exit_code == 1
    assert again.stderr.startswith(
        f"error: output directory {out} already holds a features --rank run"
    )
    assert runner.invoke(app, rank_args(hw01_files, out, "-q", "--overwrite")).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repeats", "0"], "error: --repeats must be an integer >= 1, got 0\n"),
        (["--folds", "1"], "error: number of folds must be an integer >= 2, got 1\n"),
        (["--train-csv", "missing.csv"], "error: training CSV missing.csv"),
        (["--lr", "fast"], "error: config key 'lr'"),
    ],
)
def test_features_rank_bad_input_is_one_line(
    hw01_files: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "rank"
    result = runner.invoke(app, rank_args(hw01_files, out, *extra))
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists()


def test_features_without_rank_refuses_the_ranking_options(hw01_files: dict[str, Path]) -> None:
    for extra in (["--folds", "3"], ["--lr", "0.01"], ["--quiet"]):
        args = ["features", "--train-csv", str(hw01_files["train"]), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert result.stderr == (
            f"error: {extra[0]} applies only with --rank: add --rank, or leave {extra[0]} out "
            "to see the layout\n"
        ), result.stderr
    shown = runner.invoke(app, ["features", "--train-csv", str(hw01_files["train"])])
    assert shown.exit_code == 0 and "strong (14): cli_d1," in shown.stdout


def test_features_shows_a_layout_without_the_cli_family(tmp_path: Path) -> None:
    from covidreg.layout import EDITIONS, Layout

    base = EDITIONS["2021"]
    layout = Layout(base.states, tuple(f"q_{c}" for c in base.daily[:-1]) + base.daily[-1:], 3)
    path = write_hw01_csv(tmp_path / "t.csv", synthetic_rows(4, 30, 0), layout=layout)
    result = runner.invoke(app, ["features", "--train-csv", str(path), "--test-csv", ""])
    assert result.exit_code == 0, result.stderr
    assert "strong: not available (feature preset 'strong' needs the daily column 'cli'" in (
        result.stdout
    )
    assert "target_only (42): AL," in result.stdout
