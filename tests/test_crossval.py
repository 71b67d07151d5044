"""covidreg cv: fold construction, fold seeds, the run directory, summary statistics, baselines."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg.baselines import RIDGE_ALPHA
from covidreg.cli import app
from covidreg.config import resolve_config
from covidreg.crossval import fold_seed, make_folds
from covidreg.engine import predict
from covidreg.experiment import load_data
from covidreg.inference import load_model
from covidreg.processes import can_fork
from covidreg.splits import make_splitter
from tests.conftest import FEATURE_NAMES, PRESETS, synthetic_rows, windows_order, write_hw01_csv

runner = CliRunner()
CV_COLUMNS = [
    "fold",
    "seed",
    "train_rows",
    "valid_rows",
    "epochs_run",
    "best_epoch",
    "valid_mse",
    "valid_rmse",
    "network_rmse",
    "persistence_rmse",
    "ridge_rmse",
    "lr",
    "seconds",
]
N_STATES, N_WINDOWS = 4, 30
STATES = np.repeat(np.arange(N_STATES), N_WINDOWS)
ORDER = windows_order(STATES)
# raw CSV columns (0 = id): day 2's tested_positive and the target
TESTED_POSITIVE_D2 = 1 + 40 + 18 + 17
TARGET = -1


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cv_data")
    return {
        "train": write_hw01_csv(base / "train.csv", synthetic_rows(N_STATES, N_WINDOWS, seed=0)),
        "test": write_hw01_csv(base / "test.csv", synthetic_rows(4, 6, seed=1), with_target=False),
    }


def cv_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "cv",
        "--train-csv",
        str(data["train"]),
        "--test-csv",
        str(data["test"]),
        "--folds",
        "3",
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def cv_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cv_runs") / "run"
    result = runner.invoke(app, cv_args(data, out, "--predict"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("cv_rmse=")
    return out


def read_cv_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def raw(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1)


def pred_values(path: Path) -> np.ndarray:
    return np.array([float(line.split(",")[1]) for line in path.read_text().splitlines()[1:]])


# --- folds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["blocked", "random", "interleaved"])
@pytest.mark.parametrize("n_folds", [2, 3, 7])
def test_every_row_is_in_exactly_one_validation_fold(
    split: str, n_folds: int, data: dict[str, Path]
) -> None:
    overrides = {"train_csv": str(data["train"]), "split": split, "batch_size": "16"}
    cfg = resolve_config(None, overrides)
    folds = make_folds(cfg, load_data(cfg, with_test=False), n_folds)
    assert len(folds) == n_folds
    counts = np.zeros(len(STATES), dtype=int)
    for train_idx, valid_idx in folds:
        counts[valid_idx] += 1
        assert not set(train_idx) & set(valid_idx)
        assert len(train_idx) > 0
    assert (counts == 1).all()


@pytest.mark.parametrize("n_folds", [2, 3, 5, 8])
def test_blocked_folds_share_no_day_with_their_training_rows(n_folds: int) -> None:
    position = ORDER.position
    for train_idx, valid_idx in make_splitter("blocked", n_folds, purge=2).split(ORDER):
        for state in range(N_STATES):
            # row at position p of a state covers that state's days p, p+1, p+2
            def days(rows: np.ndarray, state: int = state) -> set[int]:
                mine = position[rows[STATES[rows] == state]]
                return {int(p) + d for p in mine for d in range(3)}

            assert days(valid_idx), "every state has validation rows in every fold"
            assert not days(train_idx) & days(valid_idx)


def test_fold_seed_is_fixed_and_distinct() -> None:
    assert fold_seed(42, 1) == fold_seed(42, 1)
    per_fold = [fold_seed(42, k) for k in range(1, 11)]
    assert len(set(per_fold)) == 10
    per_seed = [fold_seed(s, 1) for s in range(10)]
    assert len(set(per_seed)) == 10
    assert fold_seed(1, 2) != fold_seed(2, 1)
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in per_fold + per_seed)


# --- the run directory ------------------------------------------------------------------------


def test_cv_csv_has_one_row_per_fold(cv_run: Path) -> None:
    rows = read_cv_csv(cv_run / "cv.csv")
    assert list(rows[0]) == CV_COLUMNS
    assert [int(r["fold"]) for r in rows] == [1, 2, 3]
    assert [int(r["seed"]) for r in rows] == [fold_seed(42, k) for k in (1, 2, 3)]
    folds = list(make_splitter("blocked", 3, purge=2).split(ORDER))
    for row, (train_idx, valid_idx) in zip(rows, folds, strict=True):
        assert int(row["train_rows"]) == len(train_idx)
        assert int(row["valid_rows"]) == len(valid_idx)
        assert int(row["epochs_run"]) == 6
        assert 1 <= int(row["best_epoch"]) <= 6
        assert float(row["valid_rmse"]) == pytest.approx(math.sqrt(float(row["valid_mse"])))
    for name in ("config.toml", "summary.json", "learning_curves.png", "pred.csv"):
        assert (cv_run / name).is_file(), name
    assert (cv_run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(cv_run.rglob(".*.tmp"))


def test_summary_is_mean_and_sample_std_of_the_folds(cv_run: Path) -> None:
    rows = read_cv_csv(cv_run / "cv.csv")
    summary = json.loads((cv_run / "summary.json").read_text())
    assert (summary["n_folds"], summary["split"], summary["seed"]) == (3, "blocked", 42)
    for key in ("valid_rmse", "persistence_rmse", "ridge_rmse"):
        values = np.array([float(r[key]) for r in rows])
        assert summary[key]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert summary[key]["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert summary[key]["min"] == values.min() and summary[key]["max"] == values.max()
    assert len(summary["folds"]) == 3


def test_fold_models_load_and_score_their_validation_rows(
    cv_run: Path, data: dict[str, Path]
) -> None:
    rows = read_cv_csv(cv_run / "cv.csv")
    table = raw(data["train"])
    folds = list(make_splitter("blocked", 3, purge=2).split(ORDER))
    for k, (row, (_, valid_idx)) in enumerate(zip(rows, folds, strict=True), start=1):
        loaded = load_model(cv_run / f"fold_{k}" / "model.pt")
        columns = [1 + FEATURE_NAMES.index(n) for n in loaded.feature_names]
        x = torch.from_numpy(table[np.ix_(valid_idx, columns)].astype(np.float32))
        pred = predict(loaded.model, x)
        rmse = math.sqrt(float(np.mean((pred - table[valid_idx, TARGET]) ** 2)))
        # the saved model is the best epoch's: its validation RMSE is the one reported
        assert rmse == pytest.approx(float(row["valid_rmse"]), rel=1e-4)
        # the default blends the network with a ridge; network_rmse is the network alone
        assert loaded.config.ridge_blend == 0.5
        alone = predict(loaded.model, x, with_ridge=False)
        network = math.sqrt(float(np.mean((alone - table[valid_idx, TARGET]) ** 2)))
        assert network == pytest.approx(float(row["network_rmse"]), rel=1e-4)
        assert network != pytest.approx(rmse, rel=1e-4)
        history = (cv_run / f"fold_{k}" / "history.csv").read_text().splitlines()
        assert history[0] == "epoch,train_loss,valid_loss,lr" and len(history) == 7


def test_cv_predict_is_the_mean_of_the_fold_models(cv_run: Path, data: dict[str, Path]) -> None:
    test = raw(data["test"])
    preds = []
    for k in (1, 2, 3):
        loaded = load_model(cv_run / f"fold_{k}" / "model.pt")
        columns = [1 + FEATURE_NAMES.index(n) for n in loaded.feature_names]
        preds.append(predict(loaded.model, torch.from_numpy(test[:, columns].astype(np.float32))))
    lines = (cv_run / "pred.csv").read_text().splitlines()
    assert lines[0] == "id,tested_positive"
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(24))
    np.testing.assert_allclose(pred_values(cv_run / "pred.csv"), np.mean(preds, axis=0), rtol=1e-6)


def without_seconds(path: Path) -> list[list[str]]:
    return [line.split(",")[:-1] for line in path.read_text().splitlines()]


def assert_same_cv_runs(first: Path, second: Path) -> None:
    """The same folds, bit for bit: cv.csv (but for the seconds), pred.csv, weights, histories."""
    assert without_seconds(first / "cv.csv") == without_seconds(second / "cv.csv")
    assert (first / "pred.csv").read_bytes() == (second / "pred.csv").read_bytes()
    for k in (1, 2, 3):
        a = torch.load(first / f"fold_{k}/model.pt", weights_only=True)["state_dict"]
        b = torch.load(second / f"fold_{k}/model.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        history = f"fold_{k}/history.csv"
        assert (first / history).read_bytes() == (second / history).read_bytes()


def test_same_seed_reruns_are_identical(
    cv_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert runner.invoke(app, cv_args(data, again, "--predict")).exit_code == 0
    assert_same_cv_runs(cv_run, again)

    other = tmp_path / "other_seed"
    assert runner.invoke(app, cv_args(data, other, "--seed", "7")).exit_code == 0
    assert without_seconds(other / "cv.csv") != without_seconds(cv_run / "cv.csv")


@pytest.mark.skipif(not can_fork(), reason="fold processes fork, on Linux only")
def test_fold_processes_change_only_the_time(
    cv_run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    for processes in ("1", "3"):  # cv_run: the default, one per available core
        out = tmp_path / f"processes_{processes}"
        result = runner.invoke(app, cv_args(data, out, "--predict", "--fold-processes", processes))
        assert result.exit_code == 0, result.stderr
        assert_same_cv_runs(cv_run, out)
        assert f"fold_processes = {processes}" in (out / "config.toml").read_text()


@pytest.mark.parametrize(
    ("folds", "split", "expected"),
    [
        ("1", "blocked", "number of folds must be an integer >= 2, got 1"),
        ("0", "random", "number of folds must be an integer >= 2, got 0"),
        ("-3", "interleaved", "number of folds must be an integer >= 2, got -3"),
        ("121", "random", "number of folds (121) exceeds the number of rows (120)"),
        (
            "31",
            "blocked",
            "needs a stretch of at least 31 consecutive windows, but the longest has 30",
        ),
    ],
)
def test_bad_fold_counts_are_one_line_errors(
    folds: str, split: str, expected: str, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*cv_args(data, out), "--folds", folds, "--split", split])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


# --- baselines --------------------------------------------------------------------------------


def ridge_by_lstsq(
    x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, alpha: float
) -> np.ndarray:
    """Ridge with an unpenalised intercept, as an augmented least-squares problem."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    z_train, z_valid = (x_train - mean) / std, (x_valid - mean) / std
    n, p = z_train.shape
    design = np.vstack(
        [
            np.hstack([z_train, np.ones((n, 1))]),
            np.hstack([math.sqrt(alpha) * np.eye(p), np.zeros((p, 1))]),
        ]
    )
    target = np.concatenate([y_train, np.zeros(p)])
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    return z_valid @ coef[:p] + coef[p]


def test_baselines_equal_hand_computations(cv_run: Path, data: dict[str, Path]) -> None:
    rows = read_cv_csv(cv_run / "cv.csv")
    table = raw(data["train"])
    columns = [1 + FEATURE_NAMES.index(n) for n in PRESETS["strong"]]  # the default features
    folds = list(make_splitter("blocked", 3, purge=2).split(ORDER))
    for row, (train_idx, valid_idx) in zip(rows, folds, strict=True):
        y_valid = table[valid_idx, TARGET]
        persistence = table[valid_idx, TESTED_POSITIVE_D2]  # day 3 = day 2
        expected = math.sqrt(float(np.mean((persistence - y_valid) ** 2)))
        assert float(row["persistence_rmse"]) == pytest.approx(expected, rel=1e-12)

        ridge = ridge_by_lstsq(
            table[np.ix_(train_idx, columns)],
            table[train_idx, TARGET],
            table[np.ix_(valid_idx, columns)],
            alpha=RIDGE_ALPHA,
        )
        expected = math.sqrt(float(np.mean((ridge - y_valid) ** 2)))
        assert float(row["ridge_rmse"]) == pytest.approx(expected, rel=1e-9)
        # and ridge is a real baseline here: far better than predicting the mean
        assert expected < 0.5 * float(np.std(y_valid))


# --- stop_on = train_tail ---------------------------------------------------------------------


@pytest.mark.parametrize("stop_on", ["valid", "train_tail", "auto"])
def test_with_train_tail_the_validation_rows_are_only_scored(
    data: dict[str, Path], tmp_path: Path, stop_on: str
) -> None:
    # the validation rows' targets changed: with train_tail (auto, the default, is train_tail
    # for cv folds) the training must not notice
    stops_on = "valid" if stop_on == "valid" else "train_tail"
    rows = synthetic_rows(N_STATES, N_WINDOWS, seed=0)
    folds = list(make_splitter("blocked", 3, purge=2).split(ORDER))
    changed = rows.copy()
    changed[folds[1][1], TARGET] += 5.0
    other = write_hw01_csv(tmp_path / "changed.csv", changed)
    runs = {}
    for name, csv_path in (("same", data["train"]), ("changed", other)):
        args = cv_args(data, tmp_path / name, "--stop-on", stop_on, "--epochs", "12")
        args[args.index("--train-csv") + 1] = str(csv_path)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        runs[name] = tmp_path / name
    same = (runs["same"] / "fold_2" / "history.csv").read_text()
    assert (same == (runs["changed"] / "fold_2" / "history.csv").read_text()) == (
        stops_on == "train_tail"
    )
    assert json.loads((runs["same"] / "summary.json").read_text())["stop_on"] == stops_on
    # the reported RMSE is the fold model's on its validation rows, whatever it stopped on
    table = load_data(resolve_config(None, {"train_csv": str(data["train"]), "test_csv": ""}))
    for k, row in enumerate(read_cv_csv(runs["same"] / "cv.csv")):
        model = load_model(runs["same"] / f"fold_{k + 1}" / "model.pt")
        valid = folds[k][1]
        columns = [FEATURE_NAMES.index(name) for name in model.feature_names]
        x = torch.from_numpy(table.train.features[np.ix_(valid, columns)].astype(np.float32))
        error = predict(model.model, x) - table.train.target[valid]
        assert float(row["valid_rmse"]) == pytest.approx(math.sqrt(np.mean(error**2)), rel=1e-5)


# --- protocols ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "end"), [("future", "last"), ("past", "first")])
def test_cv_protocol_scores_the_temporal_holdout(
    protocol: str, end: str, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / protocol
    result = runner.invoke(app, cv_args(data, out, "--protocol", protocol, "--predict"))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_folds"], summary["split"]) == (1, protocol)
    assert summary["protocol"] == f"{protocol} hold-out (each state's {end} 14 windows)"
    rows = read_cv_csv(out / "cv.csv")
    # each of the 4 states' 14 windows held out; the 2 windows sharing a day with them purged
    assert [(r["fold"], r["valid_rows"], r["train_rows"]) for r in rows] == [
        ("1", str(4 * 14), str(4 * (N_WINDOWS - 14 - 2)))
    ]
    paths = {"train_csv": str(data["train"]), "test_csv": "", "batch_size": "16"}
    cfg = resolve_config(None, paths)
    (train_idx, valid_idx), *_ = make_splitter(protocol).split(ORDER, STATES)
    assert len(train_idx) == int(rows[0]["train_rows"])
    loaded = load_model(out / "fold_1" / "model.pt")
    table = raw(data["train"])
    x = torch.from_numpy(table[valid_idx][:, 1:TARGET].astype(np.float32))
    got = predict(loaded.model, x[:, [FEATURE_NAMES.index(n) for n in loaded.feature_names]])
    rmse = math.sqrt(float(np.mean((got - table[valid_idx, TARGET]) ** 2)))
    assert rmse == pytest.approx(float(rows[0]["valid_rmse"]), rel=1e-6)
    assert len(make_folds(cfg, load_data(cfg, with_test=False), 5, protocol)) == 1
    assert (out / "pred.csv").is_file()


def test_an_unknown_protocol_is_a_one_line_error(data: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, cv_args(data, tmp_path / "run", "--protocol", "later"))
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unknown split or protocol 'later'; use blocked, random, interleaved, future, past\n"
    )
    assert not (tmp_path / "run").exists()
