"""CovidRegressor against scikit-learn's RidgeCV on covidreg's blocked folds."""

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import covidreg
from covidreg.datadir import default_paths
from covidreg.schema import read_hw01_csv
from covidreg.splits import BlockedKFold

train_csv, _ = default_paths()  # the data directory's training file, of any edition
frame = covidreg.read_hw01(train_csv)
layout = covidreg.layout_of(frame)  # the file's states, days and feature names
X, y = frame[list(layout.feature_names)], frame[layout.target]
# covidreg's blocked folds, on the day order recovered from the rows
blocked = list(BlockedKFold(5).split(read_hw01_csv(train_csv).order))
ridge = make_pipeline(
    ColumnTransformer([("strong", StandardScaler(), list(layout.preset("strong")))]),
    RidgeCV(alphas=np.logspace(-3, 3, 13)),
)
for name, model in [("CovidRegressor", covidreg.CovidRegressor()), ("RidgeCV", ridge)]:
    rmse = -cross_val_score(model, X, y, cv=blocked, scoring="neg_root_mean_squared_error")
    print(f"{name}: {rmse.mean():.5f} ± {rmse.std(ddof=1):.5f}")
