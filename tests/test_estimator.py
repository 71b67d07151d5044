"""CovidRegressor: scikit-learn's conventions, on covidreg's engine (covidreg train's numbers)."""

from __future__ import annotations

import inspect
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import TimeSeriesSplit, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from typer.testing import CliRunner

import covidreg
from covidreg import engine
from covidreg.cli import app
from covidreg.config import FIELDS, Config
from covidreg.estimator import NOT_PARAMETERS, CovidRegressor
from covidreg.splits import holdout_split
from tests.conftest import FEATURE_NAMES, PRESETS, STATES, TARGET, train_args, windows_order
from tests.test_api import read_csv

QUICK = {"epochs": 12, "batch_size": 16}


def hw01_xy(path: Path) -> tuple[pd.DataFrame, pd.Series | None]:
    frame = covidreg.read_hw01(path)
    return frame[list(FEATURE_NAMES)], frame.get(TARGET)


def linear_rows(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(0, 0.1, n)


def test_parameters_are_the_config_keys_with_the_config_defaults() -> None:
    parameters = inspect.signature(CovidRegressor).parameters
    assert list(parameters) == [name for name in FIELDS if name not in NOT_PARAMETERS]
    defaults = Config()
    for name, parameter in parameters.items():
        default = parameter.default
        assert (list(default) if isinstance(default, tuple) else default) == getattr(
            defaults, name
        ), name
    assert CovidRegressor().get_params()["hidden"] == (16,)


def test_fit_on_the_hw01_rows_is_covidreg_train(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    assert CliRunner().invoke(app, train_args(hw01_files, out, "-q")).exit_code == 0
    x, y = hw01_xy(hw01_files["train"])
    est = CovidRegressor(**QUICK).fit(x, y)
    metrics = json.loads((out / "metrics.json").read_text())
    assert est.valid_rmse_ == metrics["valid_rmse"] and est.best_epoch_ == metrics["best_epoch"]
    assert est.n_iter_ == metrics["epochs_run"] and est.stop_reason_ == metrics["stop_reason"]
    pd.testing.assert_frame_equal(est.history_, read_csv(out / "history.csv"))
    assert est.feature_names_ == list(PRESETS["strong"]) and est.target_ == "delta"
    test_x, _ = hw01_xy(hw01_files["test"])
    pred = read_csv(out / "pred.csv")["tested_positive"].to_numpy()
    assert np.array_equal(est.predict(test_x), pred)


def test_fit_trains_one_member_through_the_engine(
    hw01_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    stacks: list[int] = []
    real = engine.fit_members

    def recorded(cfg: Config, members: list[Any], *args: Any, **kwargs: Any) -> Any:
        stacks.append(len(members))
        return real(cfg, members, *args, **kwargs)

    monkeypatch.setattr(engine, "fit_members", recorded)
    CovidRegressor(**QUICK).fit(*hw01_xy(hw01_files["train"]))
    assert stacks == [1]


def test_a_given_validation_set_replaces_the_holdout(hw01_files: dict[str, Path]) -> None:
    x, y = hw01_xy(hw01_files["train"])
    states = x[list(STATES)].to_numpy().argmax(axis=1)
    train_idx, valid_idx = holdout_split(windows_order(states), "blocked", 0.2, 42, 2)
    own = CovidRegressor(**QUICK).fit(x, y)
    given = CovidRegressor(**QUICK).fit(
        x.iloc[train_idx], y.iloc[train_idx], x.iloc[valid_idx], y.iloc[valid_idx]
    )
    pd.testing.assert_frame_equal(own.history_, given.history_)
    assert np.array_equal(own.predict(x), given.predict(x))
    with pytest.raises(covidreg.CovidRegError, match="pass X_valid and y_valid together"):
        CovidRegressor(**QUICK).fit(x, y, X_valid=x)


def test_any_matrix_holds_out_its_last_rows_after_a_purge() -> None:
    x, y = linear_rows(100)
    # the last 20 rows validate; the 2 before them are dropped
    own = CovidRegressor(epochs=15, batch_size=16).fit(x, y)
    given = CovidRegressor(epochs=15, batch_size=16).fit(x[:78], y[:78], x[80:], y[80:])
    pd.testing.assert_frame_equal(own.history_, given.history_)
    assert own.feature_names_ == ["x0", "x1", "x2", "x3"] and own.target_ == "level"
    shifted = CovidRegressor(epochs=15, batch_size=16, purge=0).fit(x, y)
    assert not shifted.history_.equals(own.history_)


def test_named_columns_choose_the_features_and_the_target(hw01_files: dict[str, Path]) -> None:
    x, y = hw01_xy(hw01_files["train"])
    est = CovidRegressor(**QUICK, features="target_only").fit(x, y)
    assert est.feature_names_ == list(PRESETS["target_only"]) and est.target_ == "delta"
    # not the 93 HW01 columns: every column, and delta only with tested_positive_d2 among them
    some = ["cli_d3", "tested_positive_d1", "tested_positive_d2"]
    est = CovidRegressor(**QUICK, features="all").fit(x[some], y)
    assert est.feature_names_ == some and est.target_ == "delta"
    est = CovidRegressor(**QUICK).fit(x[some[:2]], y)
    assert est.target_ == "level" and est.model_.skip_index is None
    with pytest.raises(covidreg.CovidRegError, match="add tested_positive_d2 to --features") as e:
        CovidRegressor(**QUICK, features=("cli_d1",)).fit(x, y)
    assert isinstance(e.value, ValueError)


def test_errors_are_covidreg_errors_and_value_errors() -> None:
    x, y = linear_rows(40)
    with pytest.raises(covidreg.CovidRegError, match=r"config key 'lr' must be a positive"):
        CovidRegressor(lr=-1.0).fit(x, y)
    with pytest.raises(covidreg.CovidRegError, match=r"unknown feature 'nope'"):
        CovidRegressor(features="nope").fit(pd.DataFrame(x).set_axis(FEATURE_NAMES[:4], axis=1), y)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN") as e:
        CovidRegressor().fit(bad, y)
    assert isinstance(e.value, covidreg.CovidRegError) and "\n" not in str(e.value)
    with pytest.raises(NotFittedError):
        CovidRegressor().predict(x)
    with pytest.warns(UserWarning, match="batch_size 64 is larger than the 30 training rows"):
        est = CovidRegressor(epochs=3).fit(x, y)
    assert est.config_.batch_size == 30 and est.get_params()["batch_size"] == 64


def test_params_clone_and_pickle() -> None:
    x, y = linear_rows()
    est = CovidRegressor(epochs=10, hidden=(8, 4), lr=0.01)
    assert clone(est).get_params() == est.get_params()
    assert est.set_params(lr=0.02).lr == 0.02
    est.fit(x, y)
    again = pickle.loads(pickle.dumps(est))
    assert np.array_equal(again.predict(x), est.predict(x))
    refit = clone(est).fit(x, y)
    assert not hasattr(clone(est), "model_")
    assert np.array_equal(refit.predict(x), est.predict(x))  # the same seed, the same bits


@pytest.mark.slow
def test_passes_scikit_learns_estimator_checks() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch sizes cut to the checks' small data
        results = check_estimator(CovidRegressor(epochs=30, patience=5, lr=1e-2), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert failed == []
    assert len([r for r in results if r["status"] == "passed"]) > 40


def test_cross_val_score_with_a_time_series_split_in_a_pipeline() -> None:
    x, y = linear_rows(150)
    model = make_pipeline(StandardScaler(), CovidRegressor(epochs=20, batch_size=16, lr=0.01))
    splits = TimeSeriesSplit(n_splits=3)
    scores = cross_val_score(model, x, y, cv=splits)
    by_hand = [clone(model).fit(x[tr], y[tr]).score(x[te], y[te]) for tr, te in splits.split(x)]
    assert scores.tolist() == by_hand
    assert np.all(scores > 0.5)  # a linear target, learned


def test_a_column_selector_before_the_estimator(hw01_files: dict[str, Path]) -> None:
    x, y = hw01_xy(hw01_files["train"])
    strong = list(PRESETS["strong"])
    model = Pipeline(
        [
            ("strong", ColumnTransformer([("keep", "passthrough", strong)])),
            ("mlp", CovidRegressor(**QUICK, target="level")),
        ]
    ).fit(x, y)
    alone = CovidRegressor(**QUICK, target="level").fit(x[strong].to_numpy(), y)
    # the selector hands over a plain matrix: the same rows, split as one group
    assert model["mlp"].feature_names_ == [f"x{i}" for i in range(len(strong))]
    assert np.array_equal(model.predict(x), alone.predict(x[strong].to_numpy()))


def test_without_scikit_learn_the_estimator_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import covidreg\n"
        "try:\n"
        "    covidreg.CovidRegressor\n"
        "except covidreg.CovidRegError as exc:\n"
        "    print(isinstance(exc, ImportError), exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == (
        "True covidreg.CovidRegressor needs scikit-learn: pip install 'covidreg[sklearn]' "
        "(or pip install scikit-learn)\n"
    )
