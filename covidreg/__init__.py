"""covidreg: a reproducible, fast regression trainer for the NTU ML HW1 COVID-19 data (the
2021, 2022 and 2023 editions, and files of the same shape).

From Python::

    import covidreg

    result = covidreg.train(lr=3e-3, epochs=500)        # covidreg train, the same bits
    result.valid_rmse, result.history, result.predict("data/covid.test.csv")
    covidreg.cv(folds=5).fold_rmse                      # covidreg cv
    covidreg.predict(covidreg.load("runs/<run>"), frame)
    covidreg.CovidRegressor(epochs=300).fit(X, y)       # a scikit-learn estimator

The names are imported on first use, so ``import covidreg`` (and ``covidreg --help``) loads
neither torch nor pandas nor scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "covidreg.api",
    "cv": "covidreg.api",
    "load": "covidreg.api",
    "predict": "covidreg.api",
    "submission": "covidreg.api",
    "read_hw01": "covidreg.api",
    "TrainResult": "covidreg.api",
    "CvResult": "covidreg.api",
    "Model": "covidreg.api",
    "Config": "covidreg.config",
    "CovidRegError": "covidreg.errors",
    "CovidRegressor": "covidreg.estimator",
    "layout_of": "covidreg.api",
    "Layout": "covidreg.layout",
    "EDITIONS": "covidreg.layout",
}
__all__ = [
    "EDITIONS",
    "Config",
    "CovidRegError",
    "CovidRegressor",
    "CvResult",
    "Layout",
    "Model",
    "TrainResult",
    "__version__",
    "cv",
    "layout_of",
    "load",
    "predict",
    "read_hw01",
    "submission",
    "train",
]

if TYPE_CHECKING:
    from covidreg.api import (
        CvResult,
        Model,
        TrainResult,
        cv,
        layout_of,
        load,
        predict,
        read_hw01,
        submission,
        train,
    )
    from covidreg.config import Config
    from covidreg.errors import CovidRegError
    from covidreg.estimator import CovidRegressor
    from covidreg.layout import EDITIONS, Layout


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'covidreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
