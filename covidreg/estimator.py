"""CovidRegressor: covidreg's MLP as a scikit-learn estimator, trained by the same engine.

``fit`` builds one engine member (``engine.build_member``) and trains it as a stack of one
(``engine.fit_members``), as ``covidreg train`` does, so on the HW01 training rows with the
same split the valid RMSE, best epoch and history are ``covidreg train``'s, and the test
predictions agree with its pred.csv to float32 rounding. scikit-learn is an optional dependency
(``pip install 'covidreg[sklearn]'``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from covidreg.config import Config, config_from
from covidreg.errors import CovidRegError, MissingDependency
from covidreg.layout import PRESET_HELP, TESTED, Layout

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError:
    raise MissingDependency(
        "covidreg.CovidRegressor needs scikit-learn: pip install 'covidreg[sklearn]' "
        "(or pip install scikit-learn)"
    ) from None


class EstimatorError(CovidRegError, ValueError):
    """Bad input to CovidRegressor: a CovidRegError, and a ValueError as scikit-learn expects."""


#: Config keys that are no estimator parameters: the data comes as arrays (train_csv,
#: test_csv), one model trains alone (stack_size, fold_processes), nothing resumes
#: (checkpoint_every), and batch_norm is not supported by the engine.
# what an estimator has no use for: CSV paths, the run directory's files, stacking several
# models, and stop_on (fit always early-stops on rows of its own; whoever scores it holds theirs)
NOT_PARAMETERS = frozenset(
    {
        "train_csv",
        "test_csv",
        "edition",
        "batch_norm",
        "stack_size",
        "fold_processes",
        "checkpoint_every",
        "tensorboard",
        "stop_on",
    }
)
_DEFAULTS = Config()
# what the engine is told of another matrix's columns: no one-hot states (every column is
# standardised), and the delta target's base is a column named tested_positive_d2
_MATRIX_LAYOUT = Layout((), (TESTED,), 3)


def _check_unused_features(spec: list[str], columns: list[str]) -> None:
    """``features`` of a matrix that is no HW01 frame: used whole, but a name it cannot have
    is still an error."""
    if len(spec) == 1 and spec[0] in PRESET_HELP:
        return
    unknown = [name for name in spec if name not in columns]
    if unknown:
        raise EstimatorError(
            f"unknown feature '{unknown[0]}': X is no HW01 frame, so features must be a preset "
            f"({', '.join(PRESET_HELP)}) or its column names"
        )


def _default(name: str) -> Any:
    """A config default as a constructor default: scikit-learn wants lists as tuples."""
    value = getattr(_DEFAULTS, name)
    return tuple(value) if isinstance(value, list) else value


class CovidRegressor(RegressorMixin, BaseEstimator):
    """covidreg's MLP regressor; its parameters are the config keys, with the config defaults.

    ``fit(X, y)`` early-stops on a holdout of the rows it is given, chosen by ``split``:
    ``blocked`` (default) holds out the last ``valid_ratio`` of the rows, in their order, and
    drops the ``purge`` rows before them; ``random`` and ``interleaved`` as in covidreg.
    ``fit(X, y, X_valid, y_valid)`` early-stops on that validation set instead.

    ``X`` is any numeric matrix. A DataFrame with the input columns of an HW01 file of any
    edition, named by feature (``covidreg.read_hw01``'s ``cli_d1`` ...) or as
    ``pandas.read_csv`` names them (``cli``, ``cli.1`` ..., the id column optional), is read as
    HW01 rows: the ``features`` preset or names select its columns, the blocked split holds
    out the last days of each stretch in the day order recovered from the rows (as
    ``covidreg train``), and the ``delta`` target works. Any other matrix is used whole
    (``features`` is ignored), its rows in order as one stretch whose neighbours share days as
    3-day windows do (``purge = auto`` drops 2), and ``target='delta'`` needs a column named
    ``tested_positive_d2``: without one it falls back to ``level`` (``target_`` says which was
    used). A ``batch_size`` larger than the training rows is cut to them, with a
    warning. Errors are ``CovidRegError`` (and ``ValueError``).

    Fitted attributes: ``model_`` (the torch MLP, best weights, on the CPU), ``history_``
    (a DataFrame: epoch, train_loss, valid_loss, lr), ``best_epoch_``, ``valid_rmse_``,
    ``n_iter_`` (epochs run), ``stop_reason_``, ``target_``, ``feature_names_`` (the model's
    inputs), ``hw01_`` (whether X was read as HW01 rows), ``layout_`` (its
    ``covidreg.Layout``, None for another matrix), ``config_`` (the resolved
    covidreg.Config), ``n_features_in_``.
    """

    def __init__(
        self,
        *,
        features: tuple[str, ...] = _default("features"),
        split: str = _default("split"),
        valid_ratio: float = _default("valid_ratio"),
        purge: int = _default("purge"),
        normalize: bool = _default("normalize"),
        target: str = _default("target"),
        hidden: tuple[int, ...] = _default("hidden"),
        activation: str = _default("activation"),
        dropout: float = _default("dropout"),
        ridge_blend: float = _default("ridge_blend"),
        ridge_alpha: float = _default("ridge_alpha"),
        init: str = _default("init"),
        init_a: float = _default("init_a"),
        init_b: float = _default("init_b"),
        init_mean: float = _default("init_mean"),
        init_std: float = _default("init_std"),
        init_mode: str = _default("init_mode"),
        init_gain: float = _default("init_gain"),
        init_value: float = _default("init_value"),
        bias_init: str = _default("bias_init"),
        bias_value: float = _default("bias_value"),
        optimizer: str = _default("optimizer"),
        lr: float = _default("lr"),
        weight_decay: float = _default("weight_decay"),
        momentum: float = _default("momentum"),
        nesterov: bool = _default("nesterov"),
        output_lr: float = _default("output_lr"),
        l2: float = _default("l2"),
        l1: float = _default("l1"),
        scheduler: str = _default("scheduler"),
        step_size: int = _default("step_size"),
        gamma: float = _default("gamma"),
        plateau_patience: int = _default("plateau_patience"),
        min_lr: float = _default("min_lr"),
        epochs: int = _default("epochs"),
        batch_size: int = _default("batch_size"),
        patience: int = _default("patience"),
        min_delta: float = _default("min_delta"),
        seed: int = _default("seed"),
        deterministic: bool = _default("deterministic"),
        device: str = _default("device"),
        threads: int = _default("threads"),
        flush_denormal: bool = _default("flush_denormal"),
    ) -> None:
        # scikit-learn's rule: store every parameter unchanged; they are checked in fit
        given = locals()
        for name in self._get_param_names():
            setattr(self, name, given[name])

    # --- fit ---

    def fit(self, X: Any, y: Any, X_valid: Any = None, y_valid: Any = None) -> CovidRegressor:
        """Train on ``X, y``; early-stop on their holdout, or on ``X_valid, y_valid``."""
        from covidreg import engine
        from covidreg.lr_range import member_at_rate

        try:
            cfg = config_from(None, self.get_params(), "CovidRegressor parameters")
            x, target = self._checked(X, y, reset=True)
            cfg, columns = self._layout(cfg)
            train, valid = self._split(cfg, x, target, columns, X_valid, y_valid)
            cfg = self._batch_size(cfg, len(train))
            layout = self.layout_ or _MATRIX_LAYOUT
            member = member_at_rate(cfg, layout, self.feature_names_, train, valid, cfg.seed)
            (fitted,) = engine.fit_members(cfg, [member])
        except EstimatorError:
            raise
        except CovidRegError as exc:
            raise EstimatorError(str(exc)) from None
        if fitted.result.message:
            warnings.warn(fitted.result.message, UserWarning, stacklevel=2)
        self._store(cfg, columns, fitted)
        return self

    def _checked(self, X: Any, y: Any, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            x, target = validate_data(self, X, y, reset=reset, dtype=np.float64, y_numeric=True)
        except ValueError as exc:
            raise EstimatorError(" ".join(str(exc).split())) from None
        return x, target

    def _layout(self, cfg: Config) -> tuple[Config, np.ndarray]:
        """Which columns of X the model sees (``feature_names_``), and the target it can learn."""
        from covidreg.schema import frame_layout

        names = [str(n) for n in getattr(self, "feature_names_in_", [])]
        found = frame_layout(names) if names else None
        self.layout_ = None if found is None or found[1] else found[0]  # X holds no target
        self.hw01_ = self.layout_ is not None
        if self.layout_ is not None:
            self.feature_names_ = self.layout_.resolve_features(cfg.features)
            # X's columns by feature name, whether pandas named them cli.1 or cli_d2
            canonical = list(self.layout_.feature_names)
            names = ["id", *canonical] if names[0] == "id" else canonical
        else:
            self.feature_names_ = names or [f"x{i}" for i in range(self.n_features_in_)]
            _check_unused_features(cfg.features, self.feature_names_)
        index = {n: i for i, n in enumerate(names or self.feature_names_)}
        columns = np.array([index[n] for n in self.feature_names_], dtype=np.int64)
        if not self.hw01_ and "tested_positive_d2" not in self.feature_names_:
            cfg = replace(cfg, target="level")  # delta adds tested_positive_d2 back
        return cfg, columns

    def _order(self, x: np.ndarray) -> Any:
        """The blocked split's day order: HW01 rows' recovered from their shared days, any
        other rows in order as one stretch of 3-day windows."""
        from covidreg.dayorder import DayOrder
        from covidreg.schema import HW01Table

        if self.layout_ is None:
            rows = np.arange(len(x))
            days = rows[:, None] + np.arange(3)
            return DayOrder(np.zeros(len(x), dtype=np.int64), rows, days, source="file")
        start = 1 if str(self.feature_names_in_[0]) == "id" else 0
        features = x[:, start : start + len(self.layout_.feature_names)]
        ids = np.arange(len(x))
        return HW01Table("X", self.layout_, ids, features, None).order

    def _split(
        self,
        cfg: Config,
        x: np.ndarray,
        target: np.ndarray,
        columns: np.ndarray,
        X_valid: Any,
        y_valid: Any,
    ) -> tuple[Any, Any]:
        from covidreg.schema import Arrays
        from covidreg.splits import holdout_split

        def arrays(rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> Arrays:
            # the rows of covidreg train's schema.select: float64 values cut to float32
            return Arrays(x[np.ix_(rows, columns)].astype(np.float32), y[rows].astype(np.float32))

        if (X_valid is None) != (y_valid is None):
            raise EstimatorError("pass X_valid and y_valid together, or neither")
        if X_valid is not None:
            xv, yv = self._checked(X_valid, y_valid, reset=False)
            every = np.arange(len(x))
            return arrays(every, x, target), arrays(np.arange(len(xv)), xv, yv)
        if len(x) < 2:
            raise EstimatorError(
                f"CovidRegressor needs rows to train on and rows to validate on; got "
                f"{len(x)} sample"
            )
        train_idx, valid_idx = holdout_split(
            self._order(x), cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
        )
        return arrays(train_idx, x, target), arrays(valid_idx, x, target)

    def _batch_size(self, cfg: Config, n_train: int) -> Config:
        if cfg.batch_size <= n_train:
            return cfg
        warnings.warn(
            f"batch_size {cfg.batch_size} is larger than the {n_train} training rows; using "
            f"{n_train}",
            UserWarning,
            stacklevel=3,
        )
        return replace(cfg, batch_size=n_train)

    def _store(self, cfg: Config, columns: np.ndarray, fitted: Any) -> None:
        from covidreg.engine import history_frame

        result = fitted.result
        self.config_ = cfg
        self.target_ = cfg.target
        self.columns_ = columns
        self.model_ = fitted.model.cpu().eval()
        self.history_ = history_frame(result.history)
        self.best_epoch_ = result.best_epoch
        self.valid_rmse_ = math.sqrt(result.best_valid_mse)
        self.n_iter_ = len(result.history)
        self.stop_reason_ = result.stop_reason

    # --- predict ---

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (float64) for the rows of ``X``, with the columns ``fit`` saw."""
        import torch

        from covidreg.engine import predict

        check_is_fitted(self, "model_")
        try:
            x = validate_data(self, X, reset=False, dtype=np.float64)
        except ValueError as exc:
            raise EstimatorError(" ".join(str(exc).split())) from None
        inputs = torch.from_numpy(x[:, self.columns_].astype(np.float32))
        return predict(self.model_, inputs)
