"""The peers of bench/results.py (``make results``): FLAML's AutoML where its extra is installed,
a note on the page and on stderr where it is not, and the peers that fit fewer seeds."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from covidreg.config import Config
from covidreg.crossval import fold_seed, make_folds
from covidreg.experiment import LoadedData, load_data
from tests.conftest import synthetic_rows, write_hw01_csv

BENCH = Path(__file__).resolve().parent.parent / "bench"
FLAML_NOTE = "FLAML not installed: pip install -e '.[flaml]'"


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))  # results.py imports peers.py as `peers`
        return importlib.import_module("peers")


@pytest.fixture(scope="module")
def results(peers: ModuleType) -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        return importlib.import_module("results")


@pytest.fixture
def no_flaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """flaml absent: its import fails as it does where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "flaml", None)


def require_flaml(peers: ModuleType) -> None:
    """FLAML is not in the dev extra (xgboost and a CUDA library, ~600 MB): without it these
    tests skip, with the reason in pytest's summary; the absence path is tested everywhere."""
    if not peers.flaml_installed():
        pytest.skip(f"{FLAML_NOTE} (not in the dev extra)")


def holdout_data(tmp_path: Path) -> tuple[LoadedData, list[tuple[np.ndarray, np.ndarray]]]:
    """A synthetic 2021-layout file (5 states x 40 windows), and its future hold-out."""
    path = write_hw01_csv(tmp_path / "covid.train.csv", synthetic_rows(5, 40, seed=3))
    cfg = Config(train_csv=str(path), test_csv="")
    data = load_data(cfg, with_test=False)
    return data, make_folds(cfg, data, 1, "future")


# --- FLAML, where it is installed -------------------------------------------------------------


def test_flaml_fits_the_training_rows_alone_and_a_seed_gives_the_same_bits(
    peers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_flaml(peers)
    monkeypatch.setattr(peers, "FLAML_MAX_ITER", 8)  # a small search: the same code path
    data, splits = holdout_data(tmp_path)
    (train, valid), names = splits[0], data.feature_names
    fold = peers.make_fold(data.train, names, train, valid)
    predictions = peers.flaml_automl(fold, 7)
    assert predictions.shape == (len(valid),)
    assert np.isfinite(predictions).all()
    target = data.train.target[valid]
    # it learned the target: well under the error of predicting the training mean
    mean_rmse = float(np.sqrt(np.mean((target - fold.y_train.mean()) ** 2)))
    assert float(np.sqrt(np.mean((predictions - target) ** 2))) < 0.5 * mean_rmse
    # the same seed, the same models (an iteration budget, not a wall-clock one) ...
    np.testing.assert_array_equal(peers.flaml_automl(fold, 7), predictions)
    # ... and the rows other peers stop on are not used: FLAML is given the training rows only
    noise = np.random.default_rng(0)
    scrambled = peers.Fold(
        fold.x_train,
        fold.y_train,
        fold.x_valid,
        noise.normal(size=fold.x_fit.shape),
        noise.normal(size=fold.y_fit.shape),
        noise.normal(size=fold.x_stop.shape),
        noise.normal(size=fold.y_stop.shape),
    )
    np.testing.assert_array_equal(peers.flaml_automl(scrambled, 7), predictions)


def test_flaml_runs_in_make_results_on_its_first_seed(
    peers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_flaml(peers)
    monkeypatch.setattr(peers, "FLAML_MAX_ITER", 4)
    installed, missing = peers.installed_peers()
    assert missing == []
    assert installed[-1] is peers.FLAML_PEER and installed[:-1] == peers.PEERS
    data, splits = holdout_data(tmp_path)
    names = data.feature_names
    scores = peers.peer_fold_rmse(peers.FLAML_PEER, data.train, names, splits, [42, 43, 44])
    assert scores.shape == (peers.FLAML_SEEDS, 1) == (1, 1)
    (train, valid) = splits[0]
    fold = peers.make_fold(data.train, names, train, valid)
    first = peers.flaml_automl(fold, fold_seed(42, 1) % 2**31)  # seed 42's fold 1
    expected = np.sqrt(np.mean((first - data.train.target[valid]) ** 2))
    assert scores[0, 0] == pytest.approx(expected, rel=1e-12)


# --- without FLAML ------------------------------------------------------------------------------


def test_without_flaml_the_other_peers_run_and_a_note_says_how_to_install_it(
    peers: ModuleType, no_flaml: None
) -> None:
    assert not peers.flaml_installed()
    installed, missing = peers.installed_peers()
    assert installed == peers.PEERS and peers.FLAML_PEER not in installed
    assert missing == [FLAML_NOTE]


def test_make_results_without_flaml_prints_the_note_and_writes_it_on_the_page(
    results: ModuleType,
    no_flaml: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main() as `make results` runs it (--no-write), its rows from stand-ins: what is under
    test is which peers it is given to run and what it says of the missing one."""
    given: list[list[str]] = []

    def covidreg_rows(data_dir, n_folds, n_seeds, tmp):
        default = results.Row(results.DEFAULT_LABEL, "strong (14)", np.full((n_seeds, 1), 1.0))
        return {p: [default] for p in results.PROTOCOLS}

    def peer_rows(data_dir, n_folds, n_seeds, jobs, peers):
        given.append([p.name for p in peers])
        ridge = results.Row(
            "scikit-learn RidgeCV", "strong (14)", np.full((n_seeds, 1), 1.1), peer=True
        )
        return {p: [ridge] for p in results.PROTOCOLS}

    monkeypatch.setattr(results, "covidreg_rows", covidreg_rows)
    monkeypatch.setattr(results, "peer_rows", peer_rows)
    (tmp_path / "2021").mkdir()
    argv = ["results.py", "--data-dir", str(tmp_path / "2021"), "--no-write"]
    monkeypatch.setattr(sys, "argv", [*argv, "--data-dir-2022", str(tmp_path / "none")])
    results.main()
    out, err = capsys.readouterr()
    assert given == [[p.name for p in results.installed_peers()[0]]]
    assert "FLAML AutoML" not in given[0] and "LightGBM LGBMRegressor" in given[0]
    assert f"{FLAML_NOTE}: its rows are skipped" in err
    assert f"{FLAML_NOTE} (none of its rows below)." in out.splitlines()
    assert "FLAML AutoML fits" not in out  # no FLAML rows: no word on their seeds


# --- the tables of a peer fitted on fewer seeds --------------------------------------------------


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_peer_with_n_seeds_fits_the_first_of_the_run_seeds(
    peers: ModuleType, tmp_path: Path
) -> None:
    data, splits = holdout_data(tmp_path)
    names = data.feature_names
    mlp = peers.Peer("scikit-learn MLPRegressor", peers.sklearn_mlp, seeded=True)
    every = peers.peer_fold_rmse(mlp, data.train, names, splits, [42, 43])
    first = peers.peer_fold_rmse(
        peers.Peer(mlp.name, mlp.fit_predict, seeded=True, n_seeds=1),
        data.train,
        names,
        splits,
        [42, 43],
    )
    assert every.shape == (2, 1) and first.shape == (1, 1)
    assert first[0, 0] == every[0, 0] != every[1, 0]


def test_a_row_of_one_seed_shows_no_seed_spread_and_the_page_says_why(
    results: ModuleType,
) -> None:
    default = results.Row(results.DEFAULT_LABEL, "strong (14)", np.array([[1.00], [1.02], [1.01]]))
    flaml = results.Row("FLAML AutoML", "all (93)", np.array([[0.9]]), peer=True)
    by_protocol = {p: [default, flaml] for p in results.PROTOCOLS}
    text = results.tables({"2021": by_protocol}, 5, 3, [])
    lines = text.splitlines()
    assert "| FLAML AutoML | all (93) | 0.9000 | n/a (1 seed) | wins by" not in text
    assert (
        "| FLAML AutoML | all (93) | 0.9000 | n/a (1 seed) | loses by 0.1100 (beyond seeds) |"
        in lines
    )
    summary = next(line for line in lines if line.startswith("| 2021 | future hold-out |"))
    assert "| FLAML AutoML [all (93)] | 0.9000 ± n/a (1 seed) |" in summary
    assert "FLAML AutoML fits the first seed only (each fit is a search of" in text
    assert FLAML_NOTE not in text
