"""Rebuild models from checkpoints alone and predict a CSV (one model or a fold ensemble)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidreg import artifacts
from covidreg.config import Config, from_dict
from covidreg.datadir import AUTO, data_dir, default_paths
from covidreg.engine import predict
from covidreg.errors import CovidRegError
from covidreg.layout import EARLIER_LAYOUT, EDITIONS, Layout
from covidreg.model import MLP, build_model
from covidreg.schema import HW01Table, check_same_layout, read_hw01_csv, select

MODEL_FILE = "model.pt"
_MEMBER_DIR = re.compile(r"(fold|seed)_\d+")


@dataclass
class LoadedModel:
    path: Path
    model: MLP
    config: Config
    layout: Layout
    feature_names: list[str]


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild a model from a covidreg checkpoint (config, features and statistics inside)."""
    path = Path(path)
    ckpt = artifacts.load_checkpoint(path)
    if ckpt.get("kind") != "model":
        raise CovidRegError(
            f"checkpoint {path} is a {ckpt.get('kind', 'unknown')} file, not a trained model; "
            "pass the model.pt of a finished run"
        )
    try:
        cfg = from_dict(ckpt["config"], str(path))
        # a checkpoint written before layouts were recorded was trained on the 2021 files
        saved = ckpt.get("layout")
        layout = EDITIONS[EARLIER_LAYOUT] if saved is None else Layout.from_dict(saved)
        names = [str(n) for n in ckpt["feature_names"]]
        unknown = [n for n in names if n not in layout.feature_names]
        if unknown:
            raise CovidRegError(
                f"checkpoint {path} uses features its {layout.describe()} lacks: "
                f"{', '.join(unknown)}; retrain the model"
            )
        model = build_model(cfg, layout, names)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise CovidRegError(
            f"checkpoint {path} is damaged or incomplete ({reason}); retrain the model"
        ) from None
    model.eval()
    return LoadedModel(path, model, cfg, layout, names)


def find_models(path: str | Path) -> list[Path]:
    """A model.pt file, a train run directory, or a cv / --seeds run directory (its members)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CovidRegError(f"model {path} does not exist; pass a model.pt or a run directory")
    if (path / MODEL_FILE).is_file():
        return [path / MODEL_FILE]
    # a cv run (fold_k/), a --seeds run (seed_s/) or a cv --seeds run (seed_s/fold_k/); only
    # those names: a runs/ directory of unrelated runs must not become an ensemble
    members = _members(path, f"*/{MODEL_FILE}") or _members(path, f"*/*/{MODEL_FILE}")
    if not members:
        raise CovidRegError(
            f"{path} holds no {MODEL_FILE} and no fold_*/ or seed_*/ models; pass a directory "
            "written by covidreg train or covidreg cv"
        )
    return sorted(members, key=_member_order)


def _members(path: Path, pattern: str) -> list[Path]:
    return [
        p
        for p in path.glob(pattern)
        if all(_MEMBER_DIR.fullmatch(part) for part in p.relative_to(path).parent.parts)
    ]


def _member_order(path: Path) -> tuple[int, ...]:
    """fold_2 before fold_10: order ensemble members by the numbers in their directory names."""
    return tuple(
        int(part.rsplit("_", 1)[1]) for part in path.parent.parts if _MEMBER_DIR.fullmatch(part)
    )


def load_models(path: str | Path) -> list[LoadedModel]:
    return [load_model(p) for p in find_models(path)]


def ensemble_predict(models: list[LoadedModel], table: HW01Table) -> np.ndarray:
    """Mean of the models' predictions (each model selects its own features); a table of
    another layout than a model's is an error."""
    preds = []
    for loaded in models:
        check_same_layout(loaded.layout, table, f"model {loaded.path} was trained on")
        x = torch.from_numpy(select(table, table.columns(loaded.feature_names)).x)
        preds.append(predict(loaded.model, x))
    return np.mean(preds, axis=0)


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    err = pred - target
    return {"rmse": math.sqrt(float(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


@dataclass
class PredictResult:
    out: Path
    n_rows: int
    n_models: int
    scores: dict[str, float] | None
    per_model: list[dict[str, Any]]
    members: str = "model"  # what the models are: model, fold models, seed models, ...
    csv: Path | None = None  # the file predicted


def ensemble_members(root: str | Path, models: list[LoadedModel]) -> str:
    """What an ensemble's models are, from their directories under ``root``: "fold models"
    (a cv run), "seed models" (train --seeds) or "seed x fold models" (cv --seeds)."""
    if len(models) == 1:
        return "model"
    try:
        parts = models[0].path.relative_to(Path(root)).parent.parts
    except ValueError:
        return "models"
    return " x ".join(part.rsplit("_", 1)[0] for part in parts) + " models"


def default_test_csv(models: list[LoadedModel]) -> str:
    """The test file of the models' edition in the data directory ($COVIDREG_DATA_DIR, else
    data/): what ``--test-csv auto`` names."""
    edition = models[0].layout.edition
    if edition not in EDITIONS:
        raise CovidRegError(
            f"model {models[0].path} was trained on a {models[0].layout.describe()}, which names "
            "no test file in the data directory; pass the file to predict with --test-csv"
        )
    test_csv = default_paths(edition)[1]
    if not Path(test_csv).is_file():
        raise CovidRegError(
            f"model {models[0].path} was trained on the {edition} files, and the data directory "
            f"{data_dir()} has no {Path(test_csv).name}; pass the file to predict with "
            f"--test-csv, or set $COVIDREG_DATA_DIR to the folder holding it"
        )
    return test_csv


def run_predict(
    model_path: str | Path, csv_path: str | Path = AUTO, out: str | Path = "pred.csv"
) -> PredictResult:
    """``covidreg predict``: validate, predict, and write ``id,tested_positive`` atomically.

    ``csv_path`` ``auto``: the test file of the model's edition in the data directory. A
    training-format CSV (with the target column) is also scored: RMSE and MAE.
    """
    models = load_models(model_path)
    if str(csv_path) == AUTO:
        csv_path = default_test_csv(models)
    table = read_hw01_csv(csv_path, require_target=None, what="CSV")
    out = Path(out)
    artifacts.check_output_target(out.parent, "output directory")
    if out.is_dir():
        raise CovidRegError(f"--out {out} is a directory; pass a file path such as pred.csv")
    pred = ensemble_predict(models, table)
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_predictions(out, table.ids, pred)
    scores = None if table.target is None else score(pred, table.target)
    per_model = []
    if table.target is not None and len(models) > 1:
        for loaded in models:
            single = ensemble_predict([loaded], table)
            per_model.append({"model": str(loaded.path), **score(single, table.target)})
    members = ensemble_members(model_path, models)
    return PredictResult(out, len(table), len(models), scores, per_model, members, Path(csv_path))
