"""CovidRegressor against scikit-learn's RidgeCV on covidreg's blocked folds."""

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import covidreg
from covidreg.schema import PRESETS, STATES
from covidreg.splits import BlockedKFold

frame = covidreg.read_hw01("data/covid.train.csv")
X, y = frame[list(covidreg.FEATURE_NAMES)], frame[covidreg.TARGET]
blocked = list(BlockedKFold(5, purge=2).split(X[list(STATES)].to_numpy().argmax(axis=1)))
ridge = make_pipeline(
    ColumnTransformer([("strong", StandardScaler(), list(PRESETS["strong"]))]),
    RidgeCV(alphas=np.logspace(-3, 3, 13)),
)
for name, model in [("CovidRegressor", covidreg.CovidRegressor()), ("RidgeCV", ridge)]:
    rmse = -cross_val_score(model, X, y, cv=blocked, scoring="neg_root_mean_squared_error")
    print(f"{name}: {rmse.mean():.5f} ± {rmse.std(ddof=1):.5f}")
