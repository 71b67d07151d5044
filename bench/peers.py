"""Other libraries' regressors on covidreg's folds, each used as its own documentation shows.

Every peer is one function ``fit_predict(fold, seed) -> predictions of the fold's validation
rows``; ``peer_fold_rmse`` runs one peer over every fold and seed, so the loop over folds and
seeds, the feature selection and the RMSE are written once. The peers predict the plain level
(day-3 ``tested_positive``), as a user of these libraries would; ``delta_target`` wraps a peer
to predict the change from ``tested_positive_d2`` instead, as covidreg's default does.

Early stopping needs validation rows of its own, never the fold's: scikit-learn's MLP holds out
its documented random ``validation_fraction``; skorch and LightGBM fit on the rest of the
training fold and stop on its blocked tail (``inner_blocked_split``: covidreg's blocked holdout,
the last ``valid_ratio`` of each state's training days with ``purge`` windows before them
dropped, the split of ``covidreg train``), as ``covidreg cv``'s folds do by default.
``covidreg_protocol`` makes a peer fit on the whole training fold and stop on the fold's
validation rows instead, as ``covidreg cv --stop-on valid`` does.

FLAML's AutoML searches models of its own choosing by its own cross-validation of the training
fold: it is given the whole training fold, as its documentation shows, and stops on nothing of
ours. It is optional (the ``flaml`` extra): ``installed_peers`` leaves it out where it does not
import, with a note that says how to install it.

These libraries are bench dependencies (the ``bench`` and ``flaml`` extras), never covidreg's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetRegressor
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from skorch.utils import noop
from threadpoolctl import threadpool_limits

from covidreg.baselines import rmse
from covidreg.config import Config
from covidreg.crossval import fold_seed
from covidreg.dayorder import DayOrder
from covidreg.schema import HW01Table
from covidreg.splits import holdout_split

HIDDEN = 16  # covidreg's default network: one hidden layer of 16 ReLU units
RIDGE_ALPHAS = np.logspace(-3, 3, 13)  # RidgeCV's grid: 1e-3 ... 1e3, two points a decade
SKORCH_MAX_EPOCHS = 300
SKORCH_PATIENCE = 20  # epochs without a 1e-4 relative improvement of the inner valid loss
LGB_MAX_ROUNDS = 2000
LGB_PATIENCE = 50  # boosting rounds without improvement on the inner valid rows
# FLAML's documented example is time_budget=60: a wall-clock budget, so how far its search gets
# depends on the machine and on what runs beside it. An iteration budget with no time budget is
# reproducible: FLAML then counts trials where it would count seconds (its learner choice and
# its searches' costs), so a seed gives the same models on any machine and at any load.
# 60 models take 5-90 s a fit on one thread of a shared 2-core machine (default features to all
# of them), about the example's 60 s; later trials cost ever more (100 models took 140 s on a
# 2021 cv fold, 129 s of it in ever larger random forests), and the 2021 future RMSE moved
# either way (seed 1: 1.2469 -> 1.2237 on the default features, 1.4775 -> 1.5223 on all).
FLAML_MAX_ITER = 60
# One seed of the three: each FLAML fit is a search of FLAML_MAX_ITER models, each scored by a
# 5-fold cv; its rows on both editions took 20 minutes of two shared cores with one seed (the
# rest of make results about 30), three seeds would take an hour. Its rows report no seed spread.
FLAML_SEEDS = 1
FLAML_MISSING = "FLAML not installed: pip install -e '.[flaml]'"


@dataclass
class Fold:
    """One fold's rows, and the rows that early-stopping peers fit on and stop on."""

    x_train: np.ndarray  # float64 [n_train, n_features], raw (each peer scales its own way)
    y_train: np.ndarray  # float64 [n_train]
    x_valid: np.ndarray  # the rows to predict
    x_fit: np.ndarray  # what early-stopping peers fit on ...
    y_fit: np.ndarray
    x_stop: np.ndarray  # ... and the rows whose loss stops them
    y_stop: np.ndarray


FitPredict = Callable[[Fold, int], np.ndarray]


@dataclass
class Peer:
    name: str  # the row label
    fit_predict: FitPredict
    seeded: bool  # False: the same fit whatever the seed (the seed spread is zero)
    stop_on_valid: bool = False  # see make_fold
    n_seeds: int | None = None  # how many of the run's seeds it fits (None: every one)


def inner_blocked_split(order: DayOrder) -> tuple[np.ndarray, np.ndarray]:
    """covidreg's blocked holdout of the training fold's rows (default valid_ratio, purge)."""
    cfg = Config()
    return holdout_split(order, "blocked", cfg.valid_ratio, purge=cfg.purge)


def make_fold(
    table: HW01Table,
    feature_names: list[str],
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    stop_on_valid: bool = False,
) -> Fold:
    """``stop_on_valid``: as ``covidreg cv --stop-on valid``, fit on the whole training fold
    and stop on the fold's validation rows (the rows that are then scored)."""
    x, y = table.features[:, table.columns(feature_names)], table.target
    x_train, y_train = x[train_idx], y[train_idx]
    if stop_on_valid:
        return Fold(x_train, y_train, x[valid_idx], x_train, y_train, x[valid_idx], y[valid_idx])
    fit, stop = inner_blocked_split(table.order.take(train_idx))
    return Fold(
        x_train, y_train, x[valid_idx], x_train[fit], y_train[fit], x_train[stop], y_train[stop]
    )


# --- the peers ----------------------------------------------------------------------------------


def ridge_cv(fold: Fold, seed: int) -> np.ndarray:
    """scikit-learn RidgeCV on standardised features; alpha by its efficient leave-one-out."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    return model.fit(fold.x_train, fold.y_train).predict(fold.x_valid)


def sklearn_mlp(fold: Fold, seed: int) -> np.ndarray:
    """scikit-learn MLPRegressor, 16 ReLU units, Adam, early stopping on its random 10%."""
    mlp = MLPRegressor(
        hidden_layer_sizes=(HIDDEN,), early_stopping=True, max_iter=1000, random_state=seed
    )
    model = make_pipeline(StandardScaler(), mlp)
    return model.fit(fold.x_train, fold.y_train).predict(fold.x_valid)


def skorch_mlp(fold: Fold, seed: int) -> np.ndarray:
    """skorch NeuralNetRegressor: covidreg's default network and optimiser (Adam, lr 1e-3,
    batch 64), stopped by skorch's EarlyStopping on the stopping rows (``predefined_split``)."""
    torch.manual_seed(seed)  # the module's init and the shuffling of the mini-batches
    scaler = StandardScaler().fit(fold.x_fit)

    def scaled(x: np.ndarray) -> np.ndarray:  # skorch wants float32 inputs
        return scaler.transform(x).astype(np.float32)

    def column(y: np.ndarray) -> np.ndarray:  # ... and a 2-d float32 regression target
        return y.astype(np.float32).reshape(-1, 1)

    n_features = fold.x_train.shape[1]
    module = torch.nn.Sequential(
        torch.nn.Linear(n_features, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1)
    )
    net = NeuralNetRegressor(
        module,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        batch_size=64,
        max_epochs=SKORCH_MAX_EPOCHS,
        iterator_train__shuffle=True,
        iterator_valid__batch_size=len(fold.x_stop),  # the stopping loss in one batch
        train_split=predefined_split(Dataset(scaled(fold.x_stop), column(fold.y_stop))),
        callbacks=[EarlyStopping(patience=SKORCH_PATIENCE, load_best=True, sink=noop)],
        verbose=0,
    )
    net.fit(scaled(fold.x_fit), column(fold.y_fit))
    return net.predict(scaled(fold.x_valid)).ravel().astype(np.float64)


def lightgbm_gbm(fold: Fold, seed: int) -> np.ndarray:
    """LightGBM LGBMRegressor (default trees, learning rate 0.05), early stopping on the
    stopping rows; trees need no scaling."""
    model = lgb.LGBMRegressor(
        n_estimators=LGB_MAX_ROUNDS,
        learning_rate=0.05,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,
        n_jobs=1,
        verbose=-1,
    )
    model.fit(
        fold.x_fit,
        fold.y_fit,
        eval_X=fold.x_stop,
        eval_y=fold.y_stop,
        callbacks=[lgb.early_stopping(LGB_PATIENCE, verbose=False)],
    )
    return model.predict(fold.x_valid)  # at the best iteration


def flaml_automl(fold: Fold, seed: int) -> np.ndarray:
    """FLAML AutoML, ``AutoML().fit(X, y, task="regression")`` on the whole training fold:
    FLAML_MAX_ITER models of its default learners (LightGBM, XGBoost, random forest, extra
    trees, SGD), chosen by the RMSE of its own shuffled 5-fold cv of those rows, the best then
    refitted on all of them."""
    from flaml import AutoML  # the optional flaml extra: see installed_peers

    automl = AutoML()
    automl.fit(
        fold.x_train,
        fold.y_train,
        task="regression",
        metric="rmse",
        time_budget=-1,  # no wall-clock budget: see FLAML_MAX_ITER
        max_iter=FLAML_MAX_ITER,
        seed=seed,
        n_jobs=1,
        verbose=0,
        # an installed mlflow would otherwise change the fit (no refit outside an mlflow run)
        mlflow_logging=False,
    )
    return automl.predict(fold.x_valid)


PEERS = [
    Peer("scikit-learn RidgeCV", ridge_cv, seeded=False),
    Peer("scikit-learn MLPRegressor", sklearn_mlp, seeded=True),
    Peer("skorch NeuralNetRegressor", skorch_mlp, seeded=True),
    Peer("LightGBM LGBMRegressor", lightgbm_gbm, seeded=True),
]
FLAML_PEER = Peer("FLAML AutoML", flaml_automl, seeded=True, n_seeds=FLAML_SEEDS)


def flaml_installed() -> bool:
    try:
        from flaml import AutoML  # noqa: F401  (flaml without its automl extra has none)
    except ImportError:
        return False
    return True


def installed_peers() -> tuple[list[Peer], list[str]]:
    """PEERS and the optional peers whose library imports, and a note for each that does not."""
    if flaml_installed():
        return [*PEERS, FLAML_PEER], []
    return list(PEERS), [FLAML_MISSING]


@dataclass(frozen=True)
class DeltaTarget:
    """A peer's fit_predict on the change from feature ``skip``, added back (a class, not a
    closure, so that a peer pickles into a worker process)."""

    fit_predict: FitPredict
    skip: int

    def __call__(self, fold: Fold, seed: int) -> np.ndarray:
        skip = self.skip
        change = replace(
            fold,
            y_train=fold.y_train - fold.x_train[:, skip],
            y_fit=fold.y_fit - fold.x_fit[:, skip],
            y_stop=fold.y_stop - fold.x_stop[:, skip],
        )
        return self.fit_predict(change, seed) + fold.x_valid[:, skip]


def delta_target(peer: Peer, skip: int) -> Peer:
    """``peer`` fitted to the change from feature ``skip`` (tested_positive_d2)."""
    name = f"{peer.name}, delta target"
    return replace(peer, name=name, fit_predict=DeltaTarget(peer.fit_predict, skip))


def covidreg_protocol(peer: Peer) -> Peer:
    """``peer`` stopped on the fold's validation rows, as ``covidreg cv --stop-on valid``."""
    name = f"{peer.name}, stopped on the fold's valid rows (as stop_on = valid)"
    return replace(peer, name=name, stop_on_valid=True)


# --- running them -------------------------------------------------------------------------------


def peer_fold_rmse(
    peer: Peer,
    table: HW01Table,
    feature_names: list[str],
    folds: list[tuple[np.ndarray, np.ndarray]],
    seeds: list[int],
) -> np.ndarray:
    """Valid RMSE [seed, fold]; fold k (from 1) of run seed s fits with ``fold_seed(s, k)``,
    the seed covidreg's fold k gets, reduced to LightGBM's 31-bit range. A peer with
    ``n_seeds`` fits the first ``n_seeds`` of ``seeds`` only."""
    seeds = seeds[: peer.n_seeds]
    built = [
        make_fold(table, feature_names, train, valid, peer.stop_on_valid) for train, valid in folds
    ]
    targets = [table.target[valid] for _, valid in folds]
    # one thread: the same bits whatever the core count, and no oversubscribed shared cores
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        if not peer.seeded:  # one fit per fold, the same for every seed
            row = [rmse(peer.fit_predict(f, 0), t) for f, t in zip(built, targets, strict=True)]
            return np.tile(row, (len(seeds), 1))
        return np.array(
            [
                [
                    rmse(peer.fit_predict(f, fold_seed(s, k) % 2**31), t)
                    for k, (f, t) in enumerate(zip(built, targets, strict=True), start=1)
                ]
                for s in seeds
            ]
        )
