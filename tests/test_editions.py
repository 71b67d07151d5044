"""Every edition end to end: the 2022 files through every command, a shuffled 2021 file, a
synthetic 2023 file, checkpoints of one layout meeting files of another, the data directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import covidreg
from covidreg.cli import app
from covidreg.layout import EDITIONS
from covidreg.schema import read_hw01_csv
from covidreg.splits import make_splitter
from tests.conftest import synthetic_rows, write_hw01_csv
from tests.test_realdata import data_card_sums

runner = CliRunner()
SUMS_2022 = {
    "covid.train.csv": "298378b3db6a233e6cba686533c55844072b7c84e5e2eecf830a9e86a8dce475",
    "covid.test.csv": "d7bc0afb67a741638d745efa53dd4f967ca65f1e774957e701ff7822af6a37c3",
}


def paths(folder: Path, train: str = "covid.train.csv", test: str = "covid.test.csv") -> list[str]:
    return ["--train-csv", str(folder / train), "--test-csv", str(folder / test)]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def edition_files(tmp_path: Path, year: str, shuffle: bool = False) -> dict[str, Path]:
    """A synthetic training and test file of ``year``'s layout (rows shuffled if asked)."""
    layout = EDITIONS[year]
    rows = synthetic_rows(4, 30, seed=0, layout=layout)
    if shuffle:
        rows = rows[np.random.default_rng(1).permutation(len(rows))]
    train = write_hw01_csv(tmp_path / f"{year}_train.csv", rows, layout=layout)
    test_rows = synthetic_rows(4, 6, seed=1, layout=layout)
    test = write_hw01_csv(tmp_path / f"{year}_test.csv", test_rows, False, 1000, layout)
    return {"train": train, "test": test}


def quick(files: dict[str, Path], out: Path, command: str = "train", *extra: str) -> list[str]:
    return [
        command, "--train-csv", str(files["train"]), "--test-csv", str(files["test"]),
        "--epochs", "8", "--batch-size", "16", "--out", str(out), "-q", *extra,
    ]  # fmt: skip


# --- layouts meeting layouts --------------------------------------------------------------------


def test_a_model_refuses_a_file_of_another_layout(tmp_path: Path) -> None:
    old = edition_files(tmp_path, "2021")
    new = edition_files(tmp_path, "2022")
    invoke(*quick(old, tmp_path / "run"))
    out = tmp_path / "pred.csv"
    result = runner.invoke(
        app, ["predict", "--model", str(tmp_path / "run"), "--test-csv", str(new["test"]),
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "was trained on the 2021 layout (40 states, 3 days x 18)" in result.stderr
    assert "has the 2022 layout (37 states, 5 days x 16)" in result.stderr
    assert not out.exists()


def test_a_test_file_of_another_layout_is_refused_before_training(tmp_path: Path) -> None:
    old, new = edition_files(tmp_path, "2021"), edition_files(tmp_path, "2023")
    out = tmp_path / "run"
    result = runner.invoke(app, quick({"train": old["train"], "test": new["test"]}, out))
    assert result.exit_code == 1
    assert "has the 2021 layout" in result.stderr and "has the 2023 layout" in result.stderr
    assert not out.exists()


def test_a_checkpoint_without_a_layout_loads_as_2021(tmp_path: Path) -> None:
    files = edition_files(tmp_path, "2021")
    invoke(*quick(files, tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    del ckpt["layout"]
    torch.save(ckpt, tmp_path / "old.pt")
    out = tmp_path / "pred.csv"
    invoke("predict", "--model", str(tmp_path / "old.pt"), "--test-csv", str(files["test"]),
           "--out", str(out))  # fmt: skip
    assert out.read_bytes() == (tmp_path / "run" / "pred.csv").read_bytes()


@pytest.mark.parametrize("year", ["2022", "2023"])
def test_every_command_runs_on_a_synthetic_edition(year: str, tmp_path: Path) -> None:
    files = edition_files(tmp_path, year, shuffle=True)
    invoke(*quick(files, tmp_path / "train"))
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["data"]["layout"].startswith(f"{year} layout")
    invoke(*quick(files, tmp_path / "cv", "cv", "--folds", "3", "--predict"))
    invoke("predict", "--model", str(tmp_path / "cv"), "--test-csv", str(files["test"]),
           "--out", str(tmp_path / "p.csv"))  # fmt: skip
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 25
    invoke(*quick(files, tmp_path / "cmp", "compare", "--lr", "1e-3,1e-2"))
    lr_find = ["lr-find", "--train-csv", str(files["train"]), "--test-csv", "missing.csv",
               "--out", str(tmp_path / "lr"), "-q"]  # fmt: skip
    invoke(*lr_find)  # predicts nothing: never asks for the test file
    assert "tested_positive_d" in invoke("features", "--train-csv", str(files["train"]))


def test_the_shuffled_file_gives_the_same_folds_as_the_ordered_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ordered = read_hw01_csv(edition_files(tmp_path / "a", "2022")["train"])
    shuffled = read_hw01_csv(edition_files(tmp_path / "b", "2022", shuffle=True)["train"])
    splitter = make_splitter("blocked", 5)
    # the same windows (each known by its target), in the same day order
    by_row = [
        [t.target[valid].tolist() for _, valid in splitter.split(t.order)]
        for t in (ordered, shuffled)
    ]
    assert by_row[0] == by_row[1]


def test_the_estimator_reads_a_pandas_frame_as_covidregs_own(tmp_path: Path) -> None:
    files = edition_files(tmp_path, "2022", shuffle=True)
    raw = pd.read_csv(files["train"])
    ours = covidreg.read_hw01(files["train"])
    layout = covidreg.layout_of(ours)
    quick_params = {"epochs": 15, "batch_size": 16}
    from_raw = covidreg.CovidRegressor(**quick_params).fit(raw.iloc[:, 1:-1], raw.iloc[:, -1])
    from_ours = covidreg.CovidRegressor(**quick_params).fit(
        ours[list(layout.feature_names)], ours[layout.target]
    )
    assert from_raw.hw01_ and from_raw.layout_ == EDITIONS["2022"]
    assert from_raw.feature_names_ == from_ours.feature_names_
    np.testing.assert_array_equal(
        from_raw.predict(raw.iloc[:, 1:-1]), from_ours.predict(ours[list(layout.feature_names)])
    )


# --- the data directory -------------------------------------------------------------------------


def test_commands_read_the_data_directory_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = edition_files(tmp_path, "2023")
    data = tmp_path / "data23"
    data.mkdir()
    shutil.copy(files["train"], data / "covid_train.csv")
    shutil.copy(files["test"], data / "covid_test.csv")
    monkeypatch.setenv("COVIDREG_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    invoke("train", "--epochs", "5", "--out", str(tmp_path / "run"), "-q")
    seeds = invoke(
        "cv", "--seeds", "2", "--folds", "2", "--epochs", "3", "--batch-size", "16", "--out",
        str(tmp_path / "s"), "-q",
    )  # fmt: skip
    assert seeds.count("\n") == 1 and (tmp_path / "s" / "pred.csv").is_file()
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert recorded["train_csv"] == str(data / "covid_train.csv")
    assert recorded["layout"] == "2023 layout (34 states, 3 days x 18)"
    # a second edition beside it: one line asking which
    shutil.copy(edition_files(tmp_path, "2021")["train"], data / "covid.train.csv")
    result = runner.invoke(app, ["train", "--epochs", "5", "--out", str(tmp_path / "two")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "holds the files of two editions" in result.stderr and "--edition" in result.stderr
    assert not (tmp_path / "two").exists()
    invoke("train", "--edition", "2023", "--epochs", "5", "--out", str(tmp_path / "e"), "-q")
    result = runner.invoke(app, ["train", "--edition", "2022", "--epochs", "5"])
    assert result.exit_code == 1
    assert "has the 2021 layout (40 states, 3 days x 18), not the 2022 edition's" in result.stderr


def test_fetch_an_edition_from_a_folder_accepts_each_published_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from covidreg import fetch

    files = edition_files(tmp_path, "2023")
    folder = tmp_path / "kaggle"
    folder.mkdir()
    text = files["train"].read_text()
    zeros = text.replace(",0,", ",0.0,")  # the other number format, the same values
    assert zeros != text
    (folder / "covid_train.csv").write_text(zeros)
    shutil.copy(files["test"], folder / "covid_test.csv")
    sums = tuple(hashlib.sha256(t.encode()).hexdigest() for t in (text, zeros))
    train, test = fetch.EDITION_FILES["2023"]
    test_sum = hashlib.sha256(files["test"].read_bytes()).hexdigest()
    monkeypatch.setitem(
        fetch.EDITION_FILES,
        "2023",
        (replace(train, sha256=sums), replace(test, sha256=(test_sum,))),
    )
    dest = tmp_path / "data"
    out = invoke("fetch", "--edition", "2023", "--from", str(folder), "--dest", str(dest))
    assert out.count("verified") == 2
    assert sorted(p.name for p in dest.iterdir()) == ["covid_test.csv", "covid_train.csv"]
    result = runner.invoke(app, ["fetch", "--edition", "2020", "--dest", str(dest)])
    assert result.exit_code == 1 and "unknown edition '2020'" in result.stderr


# --- the real 2022 files ------------------------------------------------------------------------


@pytest.mark.realdata
def test_the_real_2022_files_verify_and_fetch_from_their_folder(
    real_2022_dir: Path, tmp_path: Path
) -> None:
    assert data_card_sums("2022") == SUMS_2022
    for name, digest in SUMS_2022.items():
        assert hashlib.sha256((real_2022_dir / name).read_bytes()).hexdigest() == digest
    out = invoke("fetch", "--edition", "2022", "--from", str(real_2022_dir), "--dest",
                 str(tmp_path / "d"))  # fmt: skip
    assert out.count("verified") == 2


@pytest.mark.realdata
@pytest.mark.slow
def test_every_command_runs_on_the_real_2022_files_with_only_the_paths(
    real_2022_dir: Path, tmp_path: Path
) -> None:
    given = paths(real_2022_dir)
    invoke("train", *given, "--out", str(tmp_path / "train"), "-q")
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["data"]["layout"] == "2022 layout (37 states, 5 days x 16)"
    assert metrics["valid_rmse"] < metrics["persistence_valid_rmse"]
    invoke("cv", *given, "--out", str(tmp_path / "cv"), "-q")
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["n_folds"] == 5 and summary["data"]["train_csv"].endswith("covid.train.csv")
    invoke("predict", "--model", str(tmp_path / "train"), "--test-csv",
           str(real_2022_dir / "covid.test.csv"), "--out", str(tmp_path / "p.csv"))  # fmt: skip
    pred = (tmp_path / "p.csv").read_bytes()
    assert pred == (tmp_path / "train" / "pred.csv").read_bytes()
    assert len(pred.decode().splitlines()) == 1079
    invoke("lr-find", "--train-csv", given[1], "--out", str(tmp_path / "lr"), "-q")
    invoke("compare", *given, "--lr", "1e-3,3e-3", "--epochs", "200", "--out",
           str(tmp_path / "cmp"), "-q")  # fmt: skip
    invoke("tune", "--train-csv", given[1], "--trials", "2", "--epochs", "100", "--out",
           str(tmp_path / "tune"), "-q")  # fmt: skip
    text = invoke("features", *given)
    assert "46 stretches" in text and "36 of them share a day with a training row" in text


@pytest.mark.realdata
def test_the_2021_file_shuffled_gives_the_same_cv_folds(
    real_data_dir: Path, tmp_path: Path
) -> None:
    lines = (real_data_dir / "covid.train.csv").read_text().splitlines()
    order = np.random.default_rng(0).permutation(len(lines) - 1)
    shuffled = tmp_path / "covid.train.csv"
    shuffled.write_text("\n".join([lines[0], *(lines[1 + i] for i in order)]) + "\n")
    tables = [read_hw01_csv(p) for p in (real_data_dir / "covid.train.csv", shuffled)]
    assert tables[1].order.n_stretches == 40
    folds = [
        [set(t.ids[valid]) for _, valid in make_splitter("blocked", 5).split(t.order)]
        for t in tables
    ]
    assert folds[0] == folds[1]
    cv_csv = []
    for i, path in enumerate((real_data_dir / "covid.train.csv", shuffled)):
        out = tmp_path / f"cv{i}"
        invoke("cv", "--train-csv", str(path), "--test-csv", "", "--epochs", "3", "--out",
               str(out), "-q")  # fmt: skip
        cv_csv.append(pd.read_csv(out / "cv.csv"))
    # the rows of each fold in day order whatever the file's order: the same bits
    pd.testing.assert_frame_equal(
        cv_csv[0].drop(columns="seconds"), cv_csv[1].drop(columns="seconds")
    )
