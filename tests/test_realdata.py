"""The real HW01 files (COVIDREG_DATA_DIR): checksums, and train / predict / cv end to end."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidreg.cli import app
from tests.conftest import RUN_FILES

pytestmark = pytest.mark.realdata

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "configs" / "sample.toml"
N_TEST = 893


def data_card_sums(edition: str = "2021") -> dict[str, str]:
    """file -> sha256 from the table of ``edition``'s section of data/README.md."""
    text = (REPO / "data" / "README.md").read_text().split(f"\n## {edition} ", 1)[1]
    text = text.split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\S+\.csv) \|.*\| ([0-9a-f]{64}) \|$", text, flags=re.M)
    return dict(rows)


def train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        str(SAMPLE_CONFIG),
        "--epochs",
        "30",
        "--train-csv",
        str(data_dir / "covid.train.csv"),
        "--test-csv",
        str(data_dir / "covid.test.csv"),
        "--out",
        str(out),
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs made once per module (by the first test that needs them)."""
    return {"base": tmp_path_factory.mktemp("realdata")}


@pytest.fixture
def sample_run(real_data_dir: Path, runs: dict[str, Path]) -> Path:
    if "sample" not in runs:
        out = runs["base"] / "sample"
        result = runner.invoke(app, train_args(real_data_dir, out))
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("valid_rmse=")
        runs["sample"] = out
    return runs["sample"]


def read_pred(path: Path) -> tuple[list[int], np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "id,tested_positive"
    rows = [line.split(",") for line in lines[1:]]
    return [int(r[0]) for r in rows], np.array([float(r[1]) for r in rows])


def test_real_files_match_the_data_card(real_data_dir: Path) -> None:
    sums = data_card_sums()
    assert {"covid.train.csv", "covid.test.csv"} <= set(sums)
    for name, expected in sums.items():
        path = real_data_dir / name
        if name == "sampleSubmission.csv" and not path.exists():
            continue  # not needed for training; covidreg fetch does not require it
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, name


def test_sample_config_run_writes_every_output(sample_run: Path) -> None:
    assert {p.name for p in sample_run.iterdir()} == RUN_FILES
    ids, values = read_pred(sample_run / "pred.csv")
    assert ids == list(range(N_TEST))
    assert np.isfinite(values).all()
    # percentages of positive tests: a trained model's predictions are in a sane range
    assert 0 < np.median(values) < 60

    ckpt = torch.load(sample_run / "model.pt", weights_only=True)
    assert ckpt["config"]["optimizer"] == "sgd" and ckpt["config"]["hidden"] == [64]
    assert ckpt["config"]["epochs"] == 30
    assert len(ckpt["feature_names"]) == 93

    metrics = json.loads((sample_run / "metrics.json").read_text())
    assert metrics["epochs_run"] <= 30
    assert (metrics["split"], metrics["train_rows"] + metrics["valid_rows"]) == (
        "interleaved",
        2700,
    )
    assert np.isfinite(metrics["valid_rmse"])
    history = (sample_run / "history.csv").read_text().splitlines()
    assert len(history) == metrics["epochs_run"] + 1


def test_same_seed_rerun_is_byte_identical(
    sample_run: Path, real_data_dir: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert runner.invoke(app, train_args(real_data_dir, again)).exit_code == 0
    assert (again / "pred.csv").read_bytes() == (sample_run / "pred.csv").read_bytes()
    assert (again / "history.csv").read_bytes() == (sample_run / "history.csv").read_bytes()


def test_predict_reproduces_the_runs_predictions(
    sample_run: Path, real_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.csv"
    args = [
        "predict",
        "--model",
        str(sample_run),
        "--test-csv",
        str(real_data_dir / "covid.test.csv"),
    ]
    result = runner.invoke(app, [*args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} ({N_TEST} rows)"
    assert out.read_bytes() == (sample_run / "pred.csv").read_bytes()


def test_scoring_the_training_file_prints_rmse(
    sample_run: Path, real_data_dir: Path, tmp_path: Path
) -> None:
    train = real_data_dir / "covid.train.csv"
    out = tmp_path / "train_pred.csv"
    args = ["predict", "--model", str(sample_run / "model.pt"), "--test-csv", str(train)]
    result = runner.invoke(app, [*args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    found = re.search(r"rows\) rmse=([0-9.]+) mae=([0-9.]+)$", result.stdout.strip())
    assert found, result.stdout
    _, pred = read_pred(out)
    target = np.loadtxt(train, delimiter=",", skiprows=1)[:, -1]
    assert len(pred) == len(target) == 2700
    assert float(found.group(1)) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), abs=1e-5)


def test_cv_predict_on_real_data(real_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    args = [
        "cv",
        "--folds",
        "3",
        "--epochs",
        "20",
        "--predict",
        "--train-csv",
        str(real_data_dir / "covid.train.csv"),
        "--test-csv",
        str(real_data_dir / "covid.test.csv"),
        "--out",
        str(out),
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("cv_rmse=")
    ids, values = read_pred(out / "pred.csv")
    assert ids == list(range(N_TEST))
    assert np.isfinite(values).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_folds"] == 3 and len(summary["folds"]) == 3
    assert all((out / f"fold_{k}" / "model.pt").is_file() for k in (1, 2, 3))


def test_flushing_subnormals_changes_no_result_on_the_real_data(real_data_dir: Path) -> None:
    """With the sample config, the momentum of one-hot weights no batch reaches decays into
    subnormal floats; flushing them to zero (the default) gives the same training, bit for bit."""
    from covidreg.config import resolve_config
    from covidreg.engine import Engine, build_member
    from covidreg.experiment import load_data
    from covidreg.schema import select
    from covidreg.splits import holdout_split

    overrides = {
        "epochs": 300,
        "patience": 0,
        "train_csv": str(real_data_dir / "covid.train.csv"),
        "test_csv": "",
    }
    fits = {}
    for flush in (True, False):
        cfg = resolve_config(SAMPLE_CONFIG, {**overrides, "flush_denormal": flush})
        data = load_data(cfg)
        train_idx, valid_idx = holdout_split(
            data.train.states, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
        )
        columns = data.train.columns(data.feature_names)
        train, valid = (select(data.train, columns, idx) for idx in (train_idx, valid_idx))
        engine = Engine(
            cfg, [build_member(cfg, data.layout, data.feature_names, train, valid, cfg.seed)]
        )
        (fitted,) = engine.fit()
        fits[flush] = (engine, fitted)

    def subnormals(engine: Engine) -> int:
        (buffers,) = engine.optimizer.state["momentum_buffer"]  # the one model's
        tiny = torch.finfo(torch.float32).tiny
        return sum(int(((b != 0) & (b.abs() < tiny)).sum()) for b in buffers)

    assert subnormals(fits[False][0]) > 0  # they do occur without flushing
    assert subnormals(fits[True][0]) == 0
    fits = {flush: fitted for flush, (_, fitted) in fits.items()}
    flushed, kept = fits[True].model.state_dict(), fits[False].model.state_dict()
    assert all(torch.equal(flushed[k], kept[k]) for k in flushed)
    assert [vars(r) for r in fits[True].result.history] == [
        vars(r) for r in fits[False].result.history
    ]
