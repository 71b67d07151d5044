"""covidreg from Python: train, cross-validate, load and predict, with the CLI's own functions.

``train`` and ``cv`` resolve their config as the commands do and call the same library
functions (``experiment.run_train``, ``crossval.run_cv``), so for the same config a run is the same
bits as ``covidreg train`` / ``covidreg cv``, and writes the same run directory. ``predict`` is
``covidreg predict``'s arithmetic (``inference.ensemble_predict``). Progress is rich's (in a
terminal and in Jupyter); ``quiet=True`` shows nothing. Every problem with the input is a
``CovidRegError``; nothing here ends the process.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidreg.config import Config, config_from
from covidreg.errors import CovidRegError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from covidreg.crossval import FoldResult
    from covidreg.inference import LoadedModel
    from covidreg.layout import Layout
    from covidreg.schema import HW01Table

    ConfigLike = Config | str | Path | dict[str, Any] | None
    # the path of an HW01 CSV, or a DataFrame in the HW01 schema (with or without the target)
    DataLike = str | Path | pd.DataFrame


def read_hw01(path: str | Path) -> pd.DataFrame:
    """An HW01 CSV of any edition, validated, as a DataFrame indexed by id: the input features
    named by day (``cli_d1`` ... ``tested_positive_d2`` in 2021; ``layout_of(frame)
    .feature_names``), then the target (``tested_positive_d3`` in 2021) for a training
    file."""
    from covidreg.schema import hw01_frame, read_hw01_csv

    return hw01_frame(read_hw01_csv(path, require_target=None, what="CSV"))


def layout_of(data: DataLike) -> Layout:
    """The layout (states, daily columns, days per window; ``.edition``, ``.feature_names``,
    ``.target``) of an HW01 CSV or DataFrame."""
    return _table(data).layout


def _history_frame(history: list[Any]) -> pd.DataFrame:
    from covidreg.engine import history_frame

    return history_frame(history)


def _warn(message: str | None) -> None:
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)


# --- models and predictions ---------------------------------------------------------------------


@dataclass
class Model:
    """Trained models read back from their checkpoints: one, or an ensemble (the mean of a cv
    run's folds or a --seeds run's seeds), as ``covidreg predict --model`` uses them."""

    path: Path
    members: list[LoadedModel] = field(repr=False)

    @property
    def config(self) -> Config:
        """The config of the (first) model."""
        return self.members[0].config

    @property
    def feature_names(self) -> list[str]:
        return self.members[0].feature_names

    def __len__(self) -> int:
        return len(self.members)

    def predict(self, data: DataLike) -> np.ndarray:
        """Predictions for every row of ``data`` (see ``covidreg.predict``)."""
        from covidreg.inference import ensemble_predict

        return ensemble_predict(self.members, _table(data))


def load(path: str | Path) -> Model:
    """A model.pt, a train run directory, or a cv / --seeds run directory (their ensemble)."""
    from covidreg.inference import load_models

    return Model(Path(path), load_models(path))


def _table(data: DataLike) -> HW01Table:
    import pandas as pd

    from covidreg.schema import read_hw01_csv, table_from_frame

    if isinstance(data, (str, Path)):
        return read_hw01_csv(data, require_target=None, what="CSV")
    if isinstance(data, pd.DataFrame):
        return table_from_frame(data)
    raise CovidRegError(
        f"data to predict must be the path of an HW01 CSV or a pandas DataFrame in the HW01 "
        f"schema, got {type(data).__name__}"
    )


def _as_model(model: Model | TrainResult | CvResult | str | Path) -> Model:
    if isinstance(model, (str, Path)):
        return load(model)
    if isinstance(model, (TrainResult, CvResult)):
        return model.model
    if isinstance(model, Model):
        return model
    raise CovidRegError(
        "model must be what covidreg.load returns, a model.pt or run directory, or a "
        f"covidreg.train / covidreg.cv result, got {type(model).__name__}"
    )


def predict(model: Model | TrainResult | CvResult | str | Path, data: DataLike) -> np.ndarray:
    """The predictions (float64, one per row, in row order) of a model for ``data``.

    ``model``: what ``covidreg.load`` returns, a path it accepts, or a result of
    ``covidreg.train`` / ``covidreg.cv``. ``data``: the path of an HW01 CSV or a DataFrame in
    the HW01 schema, with or without the target. The same numbers as ``covidreg predict``'s
    pred.csv; ``covidreg.submission`` pairs them with the ids.
    """
    return _as_model(model).predict(data)


def submission(model: Model | TrainResult | CvResult | str | Path, data: DataLike) -> pd.DataFrame:
    """The Kaggle ``id,tested_positive`` frame of ``predict(model, data)``; write it with
    ``.to_csv(path, index=False)``."""
    import pandas as pd

    from covidreg.inference import ensemble_predict

    table = _table(data)
    pred = ensemble_predict(_as_model(model).members, table)
    return pd.DataFrame({"id": table.ids, "tested_positive": pred})


# --- train --------------------------------------------------------------------------------------


class _FromRunDir:
    """What a finished run's directory gives: its model (a train run's, or a cv run's fold
    ensemble), read back once, and that model's predictions."""

    run_dir: Path

    @cached_property
    def model(self) -> Model:
        return load(self.run_dir)

    def predict(self, data: DataLike) -> np.ndarray:
        """The model's predictions for ``data`` (see ``covidreg.predict``)."""
        return self.model.predict(data)


@dataclass
class TrainResult(_FromRunDir):
    """A finished ``covidreg.train``: what ``covidreg train`` prints and writes."""

    run_dir: Path
    config: Config = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    history: pd.DataFrame = field(repr=False)  # the columns of history.csv
    message: str = field(default="", repr=False)  # why training ended early (divergence)

    @property
    def valid_rmse(self) -> float:
        return float(self.metrics["valid_rmse"])

    @property
    def best_epoch(self) -> int:
        return int(self.metrics["best_epoch"])

    def __repr__(self) -> str:
        return (
            f"TrainResult(valid_rmse={self.valid_rmse:.5f}, best_epoch={self.best_epoch}, "
            f"run_dir={str(self.run_dir)!r})"
        )


def train(
    config: ConfigLike = None,
    *,
    out: str | Path | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> TrainResult:
    """``covidreg train``: one MLP on the holdout split, early stopping, the run directory.

    ``config``: a ``covidreg.Config``, the path of a TOML file or a dict of config keys;
    ``overrides``: config keys as Python values (``lr=3e-3, hidden=[32, 16]``), applied last.
    ``out``: the run directory (default: a new ``runs/<time>-train/``); one that holds another
    run is refused unless ``overwrite`` (then that run is replaced). Shows the progress bar
    and the summary table unless ``quiet``; warnings (a symmetric init, a divergence) go
    through ``warnings``.

    Example: ``covidreg.train(lr=3e-3, epochs=500).valid_rmse``
    """
    from covidreg import progress
    from covidreg.experiment import run_train
    from covidreg.model import init_warning

    cfg = config_from(config, overrides, "covidreg.train() arguments")
    _warn(init_warning(cfg))
    with progress.epoch_display(quiet, cfg.epochs) as display:
        run = run_train(
            cfg, out, on_epoch=display.on_epoch, on_start=display.on_start, overwrite=overwrite
        )
    _warn(run.message)
    if not quiet:
        progress.train_summary(run, quiet=False)
    return TrainResult(
        run.run_dir, cfg, run.metrics, _history_frame(run.result.history), run.message
    )


# --- cv -----------------------------------------------------------------------------------------


@dataclass
class CvResult(_FromRunDir):
    """A finished ``covidreg.cv``: the per-fold results and their summary (summary.json)."""

    run_dir: Path
    config: Config = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    fold_results: list[FoldResult] = field(repr=False)
    pred_path: Path | None = field(default=None, repr=False)

    @property
    def n_folds(self) -> int:
        return len(self.fold_results)

    @property
    def fold_rmse(self) -> list[float]:
        """Each fold's validation RMSE, fold 1 first."""
        return [f.valid_rmse for f in self.fold_results]

    @property
    def mean(self) -> float:
        """Mean of the fold RMSEs."""
        return float(self.summary["valid_rmse"]["mean"])

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the fold RMSEs."""
        return float(self.summary["valid_rmse"]["std"])

    @property
    def folds(self) -> pd.DataFrame:
        """One row per fold: the columns of cv.csv."""
        import pandas as pd

        from covidreg.crossval import FOLD_COLUMNS

        return pd.DataFrame([f.row() for f in self.fold_results], columns=list(FOLD_COLUMNS))

    def history(self, fold: int) -> pd.DataFrame:
        """Fold ``fold``'s (from 1) epochs: the columns of its history.csv."""
        if not 1 <= fold <= self.n_folds:
            raise CovidRegError(f"fold must be 1 .. {self.n_folds}, got {fold}")
        return _history_frame(self.fold_results[fold - 1].history)

    def __repr__(self) -> str:
        return (
            f"CvResult(n_folds={self.n_folds}, mean={self.mean:.5f}, std={self.std:.5f}, "
            f"run_dir={str(self.run_dir)!r})"
        )


def displayed_cv(
    cfg: Any,
    n_folds: int,
    out: Any,
    write_predictions: bool,
    quiet: bool,
    data: Any = None,
    overwrite: bool = False,
    protocol: str = "auto",
) -> Any:
    """``crossval.run_cv`` with a progress bar per fold (none when ``quiet``): the cv of
    ``covidreg cv`` and ``covidreg.cv``. Here, not in ``progress``, which only displays."""
    from covidreg.crossval import run_cv
    from covidreg.progress import fold_display

    with fold_display(quiet, cfg.epochs) as display:
        return run_cv(
            cfg,
            n_folds,
            out,
            write_predictions=write_predictions,
            on_start=display.on_start,
            on_fold_start=display.on_fold_start,
            on_epoch=display.on_epoch,
            on_fold_end=display.on_fold_end,
            data=data,
            overwrite=overwrite,
            protocol=protocol,
        )


def displayed_rank(
    cfg: Any,
    n_folds: int,
    n_repeats: int,
    with_states: bool,
    out: Any,
    quiet: bool,
    overwrite: bool = False,
) -> Any:
    """``importance.run_rank`` with a progress bar per fold of the ranking model: ``covidreg
    features --rank``."""
    from covidreg.crossval import FoldEvents
    from covidreg.importance import run_rank
    from covidreg.progress import fold_display

    with fold_display(quiet, cfg.epochs) as display:
        events = FoldEvents(
            display.on_fold_start,
            display.on_epoch,
            lambda _k, fitted: display.on_fold_end(fitted),
        )
        return run_rank(
            cfg,
            n_folds,
            n_repeats,
            with_states,
            out,
            overwrite=overwrite,
            on_start=display.on_start,
            events=events,
        )


def cv(
    config: ConfigLike = None,
    *,
    folds: int = 5,
    protocol: str = "auto",
    out: str | Path | None = None,
    quiet: bool = False,
    predict: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> CvResult:
    """``covidreg cv``: ``folds``-fold cross-validation of one config, with the baselines.

    ``config``, ``overrides``, ``out``, ``quiet`` and ``overwrite`` as for ``covidreg.train``;
    ``protocol`` as ``covidreg cv --protocol``: auto (``folds`` folds of the config's split),
    a k-fold kind, or a temporal hold-out (``future``, ``past``: one fold); ``predict`` also
    writes the fold ensemble's pred.csv for the test CSV.

    Example: ``covidreg.cv(folds=5, lr=3e-3).fold_rmse``, ``covidreg.cv(protocol="future")``
    """
    from covidreg import progress

    cfg = config_from(config, overrides, "covidreg.cv() arguments")
    run = displayed_cv(cfg, folds, out, predict, quiet, overwrite=overwrite, protocol=protocol)
    if not quiet:
        progress.cv_summary(run, quiet=False)
    return CvResult(run.run_dir, cfg, run.summary, run.folds, run.pred_path)
