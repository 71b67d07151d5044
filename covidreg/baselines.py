"""The simple answers a network must beat: persistence and closed-form ridge regression."""

from __future__ import annotations

import numpy as np

from covidreg.schema import HW01Table, fit_standardization

RIDGE_ALPHA = 1.0  # on standardised features; small next to the ~2000 training rows
# ridge_alpha = auto: the penalties tried, 1e-3 ... 1e3 two points a decade (RidgeCV's grid in
# make results)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def persistence_predict(table: HW01Table, rows: np.ndarray) -> np.ndarray:
    """Day D = day D-1 (day 3 = day 2 for 3-day windows): tomorrow's tested_positive is
    today's."""
    return table.features[rows, table.columns([table.layout.last_known])[0]]


def ridge_fit_predict(
    table: HW01Table,
    feature_names: list[str],
    train_idx: np.ndarray,
    predict_rows: np.ndarray,
    alpha: float = RIDGE_ALPHA,
    other: HW01Table | None = None,
) -> np.ndarray:
    """Ridge regression on standardised features (fitted on the training rows), solved exactly.

    The intercept is not penalised. Predicts ``predict_rows`` of ``other`` (default: ``table``).
    """
    columns = table.columns(feature_names)
    x_train = table.features[np.ix_(train_idx, columns)]
    mean, std = fit_standardization(x_train, feature_names, table.layout)
    weights, intercept = ridge_solve((x_train - mean) / std, table.target[train_idx], alpha)
    source = table if other is None else other
    z_pred = (source.features[np.ix_(predict_rows, columns)] - mean) / std
    return z_pred @ weights + intercept


def ridge_solve(
    z: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA
) -> tuple[np.ndarray, float]:
    """The ridge regression of ``y`` on the (standardised) columns of ``z``, in closed form:
    the weights and the unpenalised intercept (float64)."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z_mean, y_mean = z.mean(axis=0), y.mean()
    zc = z - z_mean
    gram = zc.T @ zc + alpha * np.eye(z.shape[1])
    weights = np.linalg.solve(gram, zc.T @ (y - y_mean))
    return weights, float(y_mean - z_mean @ weights)


def ridge_loo_alpha(
    z: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS
) -> float:
    """The penalty of ``alphas`` whose ridge regression (``ridge_solve``) has the lowest
    leave-one-out squared error on these rows, in closed form as scikit-learn's RidgeCV: with
    the hat matrix H of the fit, row i's left-out residual is e_i / (1 - H_ii). One SVD of the
    centred columns serves every alpha; the first of equal errors wins."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    u, s, _ = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    yc = y - y.mean()
    projected = u.T @ yc
    errors = []
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        residual = yc - u @ (shrink * projected)
        leverage = 1 / len(y) + (u**2) @ shrink  # the unpenalised intercept's 1/n, then H's
        errors.append(np.mean((residual / (1 - leverage)) ** 2))
    return float(alphas[int(np.argmin(errors))])


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - target) ** 2)))
