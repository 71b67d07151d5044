"""covidreg predict: rebuilding models from checkpoints alone, fold ensembles, scoring, refusals."""

from __future__ import annotations

import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg.cli import app
from covidreg.experiment import STATE_FILE
from covidreg.inference import find_models, load_model
from covidreg.layout import EDITIONS
from tests.conftest import interrupted_run_dir, synthetic_rows, write_hw01_csv

runner = CliRunner()
# Every non-default choice must come back from the checkpoint: predict takes no model flags.
MODEL_FLAGS = (
    "--hidden", "12,6", "--activation", "tanh", "--features", "strong_states",
    "--target", "delta", "--dropout", "0.1", "--init", "xavier_normal", "--ridge-blend", "0.3",
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("predict_data")
    return {
        "train": write_hw01_csv(base / "covid.train.csv", synthetic_rows(4, 30, seed=0)),
        "test": write_hw01_csv(
            base / "covid.test.csv", synthetic_rows(4, 6, seed=1), with_target=False
        ),
        # a training-format file predict scores: other days of the same states
        "scored": write_hw01_csv(base / "scored.csv", synthetic_rows(4, 8, seed=2), first_id=500),
    }


def data_args(data: dict[str, Path]) -> list[str]:
    return ["--train-csv", str(data["train"]), "--test-csv", str(data["test"])]


@pytest.fixture(scope="module")
def train_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict_runs") / "train"
    args = ["train", *data_args(data), "--epochs", "15", "--batch-size", "16", *MODEL_FLAGS]
    result = runner.invoke(app, [*args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def cv_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict_runs") / "cv"
    args = ["cv", *data_args(data), "--folds", "3", "--epochs", "6", "--batch-size", "16"]
    result = runner.invoke(app, [*args, "--predict", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    return out


def read_pred(path: Path) -> tuple[list[int], np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "id,tested_positive"
    rows = [line.split(",") for line in lines[1:]]
    return [int(r[0]) for r in rows], np.array([float(r[1]) for r in rows])


def predict(model: Path, csv: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ["predict", "--model", str(model), "--test-csv", str(csv), "--out", str(out), *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


# --- one model --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["model.pt", "run directory"])
def test_predict_reproduces_the_runs_own_predictions(
    target: str, train_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    model = train_run / "model.pt" if target == "model.pt" else train_run
    out = tmp_path / "pred.csv"
    code, stdout, stderr = predict(model, data["test"], out, "-q")
    assert code == 0, stderr
    assert stdout.strip() == f"wrote {out} (24 rows)"
    ids, values = read_pred(out)
    assert ids == list(range(24))
    assert np.isfinite(values).all()
    assert out.read_bytes() == (train_run / "pred.csv").read_bytes()


def test_checkpoint_alone_rebuilds_the_model(
    train_run: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no config.toml, no run directory around it, another working directory: only model.pt
    alone = tmp_path / "elsewhere" / "copied.pt"
    alone.parent.mkdir()
    shutil.copy(train_run / "model.pt", alone)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = predict(alone, data["test"], Path("p.csv"))
    assert code == 0, stderr
    assert (tmp_path / "p.csv").read_bytes() == (train_run / "pred.csv").read_bytes()

    loaded = load_model(alone)
    assert loaded.config.hidden == [12, 6]
    assert (loaded.config.activation, loaded.config.target) == ("tanh", "delta")
    assert loaded.config.dropout == 0.1
    assert loaded.config.ridge_blend == loaded.model.ridge_blend == 0.3
    assert torch.count_nonzero(loaded.model.ridge_weight) > 0  # the fitted ridge came back
    assert loaded.feature_names[:2] == ["AL", "AK"] and len(loaded.feature_names) == 54
    assert not loaded.model.training, "a loaded model predicts in eval mode"


def test_a_checkpoint_from_before_ridge_blend_predicts_as_it_was_trained(
    data: dict[str, Path], tmp_path: Path
) -> None:
    # a run of the network alone, saved as an earlier version did: no ridge_blend key, no
    # ridge buffers
    out = tmp_path / "net"
    args = ["train", *data_args(data), "--epochs", "5", "--batch-size", "16"]
    result = runner.invoke(app, [*args, "--ridge-blend", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert not any(k.startswith("ridge") for k in ckpt["state_dict"])
    del ckpt["config"]["ridge_blend"]
    torch.save(ckpt, tmp_path / "earlier.pt")
    assert load_model(tmp_path / "earlier.pt").config.ridge_blend == 0.0
    code, _, stderr = predict(tmp_path / "earlier.pt", data["test"], tmp_path / "p.csv", "-q")
    assert code == 0, stderr
    assert (tmp_path / "p.csv").read_bytes() == (out / "pred.csv").read_bytes()


def test_training_format_csv_is_scored(
    train_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "scored_pred.csv"
    code, stdout, stderr = predict(train_run, data["scored"], out)
    assert code == 0, stderr
    ids, pred = read_pred(out)
    assert ids == list(range(500, 532))
    target = np.loadtxt(data["scored"], delimiter=",", skiprows=1)[:, -1]
    rmse = math.sqrt(float(np.mean((pred - target) ** 2)))
    mae = float(np.mean(np.abs(pred - target)))
    assert f"rmse={rmse:.5f} mae={mae:.5f}" in stdout
    assert rmse > 0


# --- fold ensemble ----------------------------------------------------------------------------


def test_cv_directory_averages_the_fold_models(
    cv_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    folds = [cv_run / f"fold_{k}" / "model.pt" for k in (1, 2, 3)]
    assert find_models(cv_run) == folds
    singles = []
    for k, fold in enumerate(folds, start=1):
        assert predict(fold, data["test"], tmp_path / f"fold{k}.csv")[0] == 0
        singles.append(read_pred(tmp_path / f"fold{k}.csv")[1])
    assert not np.allclose(singles[0], singles[1]), "folds are different models"

    out = tmp_path / "ensemble.csv"
    code, _, stderr = predict(cv_run, data["test"], out)
    assert code == 0, stderr
    ids, values = read_pred(out)
    assert ids == list(range(24))
    np.testing.assert_array_equal(values, np.mean(singles, axis=0))
    assert "ensemble of 3 fold models" in stderr
    # cv --predict wrote the same ensemble
    np.testing.assert_allclose(read_pred(cv_run / "pred.csv")[1], values, rtol=1e-6)


def test_scoring_an_ensemble_lists_each_fold_model(
    cv_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    code, stdout, stderr = predict(cv_run, data["scored"], tmp_path / "p.csv")
    assert code == 0
    assert "rmse=" in stdout
    for k in (1, 2, 3):
        assert f"fold_{k}/model.pt: RMSE" in stderr


# --- refusals ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``touch marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class PlainObject:
    """A harmless class instance: still not something a covidreg checkpoint holds."""

    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


def _rewrite_header(path: Path, dest: Path, change: str) -> Path:
    lines = path.read_text().splitlines()
    cells = [line.split(",") for line in lines]
    if change == "rename":
        cells[0][41] = "cli_day1"  # column 42: the first day's cli
    else:  # drop day 1's wearing_mask (column 46) from the header and every row
        cells = [row[:45] + row[46:] for row in cells]
    dest.write_text("\n".join(",".join(row) for row in cells) + "\n")
    return dest


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("truncated", "cannot be read (truncated or damaged PyTorch file"),
        ("foreign_torch_file", "is not a covidreg checkpoint"),
        ("os_system_payload", "was refused: it references the Python object posix.system"),
        ("payload_in_covidreg_dict", "posix.system"),
        ("raw_pickle_payload", "not a PyTorch checkpoint file; nothing in it was run"),
        ("class_instance", "was refused: it references the Python object"),
        ("training_state", "is a training_state file, not a trained model"),
        ("renamed_column", "column 60 is 'cli', which the first day's columns lack"),
        ("missing_column", "column 63 is 'wearing_mask', expected 'travel_outside_state'"),
        ("no_model_dir", "holds no model.pt and no fold_*/ or seed_*/ models"),
        ("runs_dir_of_unrelated_runs", "holds no model.pt"),
        ("text_file_as_model", "not a PyTorch checkpoint file"),
    ],
)
def test_bad_model_or_csv_is_one_line_exit_1_and_writes_nothing(
    case: str, expected: str, train_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "payload_ran"
    model, csv = train_run / "model.pt", data["test"]
    bad = tmp_path / "bad.pt"
    if case == "missing":
        model = tmp_path / "nope.pt"
    elif case == "truncated":
        whole = (train_run / "model.pt").read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
        model = bad
    elif case == "foreign_torch_file":
        torch.save({"a": torch.ones(1)}, bad)
        model = bad
    elif case == "os_system_payload":
        torch.save(Payload(marker), bad)
        model = bad
    elif case == "payload_in_covidreg_dict":
        torch.save({"format": "covidreg-checkpoint", "kind": "model", "x": Payload(marker)}, bad)
        model = bad
    elif case == "raw_pickle_payload":
        bad.write_bytes(pickle.dumps(Payload(marker)))
        model = bad
    elif case == "class_instance":
        torch.save({"format": "covidreg-checkpoint", "state_dict": PlainObject()}, bad)
        model = bad
    elif case == "training_state":
        model = interrupted_run_dir(data, tmp_path / "interrupted") / STATE_FILE
    elif case == "renamed_column":
        csv = _rewrite_header(data["test"], tmp_path / "renamed.csv", "rename")
    elif case == "missing_column":
        csv = _rewrite_header(data["test"], tmp_path / "dropped.csv", "drop")
    elif case == "no_model_dir":
        model = tmp_path / "empty_run"
        model.mkdir()
        (model / "notes.txt").write_text("no model here\n")
    elif case == "runs_dir_of_unrelated_runs":
        model = tmp_path / "runs"
        (model / "20240101-train").mkdir(parents=True)
        shutil.copy(train_run / "model.pt", model / "20240101-train" / "model.pt")
    elif case == "text_file_as_model":
        bad.write_text("not a checkpoint\n")
        model = bad
    out = tmp_path / "new_dir" / "pred.csv"
    code, stdout, stderr = predict(model, csv, out)
    assert code == 1
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr
    assert "Traceback" not in stdout + stderr
    assert not out.parent.exists(), "nothing may be written for bad input"
    assert not marker.exists(), "the pickled payload must never run"


def test_payload_file_really_runs_when_loaded_unsafely(tmp_path: Path) -> None:
    """The refusal test above proves something only if the payload works when it is loaded."""
    marker = tmp_path / "payload_ran"
    torch.save(Payload(marker), tmp_path / "bad.pt")
    torch.load(tmp_path / "bad.pt", weights_only=False)
    assert marker.exists()


# --- the test file of the model's edition ---------------------------------------------------------


@pytest.mark.parametrize("data_dir", ["$COVIDREG_DATA_DIR", "data/"])
def test_predict_finds_the_test_file_of_the_models_edition(
    data_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = EDITIONS["2023"]
    folder = tmp_path / "data" if data_dir == "data/" else tmp_path / "hw01-2023"
    folder.mkdir()
    train = write_hw01_csv(
        folder / "covid_train.csv", synthetic_rows(3, 20, seed=0, layout=layout), layout=layout
    )
    rows = synthetic_rows(3, 5, seed=1, layout=layout)
    write_hw01_csv(folder / "covid_test.csv", rows, with_target=False, layout=layout)
    monkeypatch.chdir(tmp_path)
    if data_dir == "data/":
        monkeypatch.delenv("COVIDREG_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("COVIDREG_DATA_DIR", str(folder))
    args = ["train", "--train-csv", str(train), "--epochs", "4", "--batch-size", "16"]
    result = runner.invoke(app, [*args, "--out", "run", "-q"])
    assert result.exit_code == 0, result.stderr

    result = runner.invoke(app, ["predict", "--model", "run", "--out", "pred.csv"])
    assert result.exit_code == 0, result.stderr
    shown = folder if data_dir != "data/" else Path("data")
    assert f"predicted 15 rows of {shown / 'covid_test.csv'} with the model" in result.stderr
    assert (tmp_path / "pred.csv").read_bytes() == (tmp_path / "run" / "pred.csv").read_bytes()

    (folder / "covid_test.csv").unlink()
    result = runner.invoke(app, ["predict", "--model", "run", "--out", "again.csv"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: model {Path('run') / 'model.pt'} was trained on the 2023 files, and the data "
        f"directory {shown} has no covid_test.csv; "
        "pass the file to predict with --test-csv, or set $COVIDREG_DATA_DIR to the folder "
        "holding it"
    ]
    assert not (tmp_path / "again.csv").exists()


def test_predict_help_shows_auto_for_the_test_file() -> None:
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    start = result.stdout.index("--test-csv")
    text = result.stdout[start : result.stdout.index("--out", start)]
    assert "[default: auto]" in text and "data/covid.test.csv" not in result.stdout
