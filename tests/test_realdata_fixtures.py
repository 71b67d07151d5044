"""The real-data fixtures: which folder holds an edition's published files, and a skip with its
reason (outside CI) or a failure (CI=true) where none does."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from covidreg import fetch
from covidreg.layout import EDITIONS
from tests.conftest import (
    REAL_DATA_2022_ENV,
    REAL_DATA_ENV,
    real_files,
    synthetic_rows,
    write_hw01_csv,
)


@pytest.fixture
def published_2022(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of synthetic 2022-layout files, registered as the published 2022 files."""
    folder = tmp_path / "hw01-2022"
    folder.mkdir()
    layout = EDITIONS["2022"]
    train = write_hw01_csv(
        folder / "covid.train.csv", synthetic_rows(2, 8, seed=0, layout=layout), layout=layout
    )
    rows = synthetic_rows(2, 3, seed=1, layout=layout)
    test = write_hw01_csv(folder / "covid.test.csv", rows, with_target=False, layout=layout)
    known = tuple(
        replace(file, sha256=(hashlib.sha256(path.read_bytes()).hexdigest(),))
        for file, path in zip(fetch.EDITION_FILES["2022"], (train, test), strict=True)
    )
    monkeypatch.setitem(fetch.EDITION_FILES, "2022", known)
    return folder


def test_absent_files_skip_with_the_reason_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path))
    monkeypatch.setenv(REAL_DATA_2022_ENV, str(tmp_path / "2022"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        real_files(REAL_DATA_2022_ENV, "2022")
    assert str(skipped.value) == (
        f"no 2022 HW01 files ({tmp_path / '2022'} holds no covid.train.csv; {tmp_path} holds no "
        "covid.train.csv): run 'covidreg fetch --edition 2022 --dest DIR' and set "
        "COVIDREG_DATA_DIR_2022=DIR"
    )
    monkeypatch.delenv(REAL_DATA_ENV)
    with pytest.raises(pytest.skip.Exception, match="COVIDREG_DATA_DIR is not set"):
        real_files(REAL_DATA_ENV, "2021")


def test_absent_files_fail_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="the real-data tests must run in CI"):
        real_files(REAL_DATA_ENV, "2021")
    monkeypatch.delenv(REAL_DATA_ENV)
    with pytest.raises(pytest.fail.Exception, match="COVIDREG_DATA_DIR is not set"):
        real_files(REAL_DATA_ENV, "2021")


def test_another_editions_files_are_not_taken_for_2021(
    published_2022: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(REAL_DATA_ENV, str(published_2022))
    with pytest.raises(pytest.skip.Exception) as skipped:
        real_files(REAL_DATA_ENV, "2021")
    assert f"{published_2022 / 'covid.train.csv'} is not the published 2021" in str(skipped.value)


def test_the_2022_files_in_the_data_directory_serve_the_2022_tests(
    published_2022: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(REAL_DATA_ENV, str(published_2022))
    monkeypatch.setenv(REAL_DATA_2022_ENV, str(tmp_path / "absent"))
    assert real_files(REAL_DATA_2022_ENV, "2022") == published_2022
    monkeypatch.setenv(REAL_DATA_2022_ENV, str(published_2022))
    monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path / "absent"))
    assert real_files(REAL_DATA_2022_ENV, "2022") == published_2022
