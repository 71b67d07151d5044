"""``covidreg features --rank``: what each daily column adds, on blocked validation.

Permutation importance (Breiman 2001, scikit-learn's ``permutation_importance``): one model per
blocked fold is trained on every daily column (``covidreg.crossval.cross_validate``, the engine
stacking the folds); then, on each fold's validation rows, one column group at a time is
permuted across the rows, its days together (``cli`` is ``cli_d1`` ... ``cli_dD``), and the
rise of the validation RMSE is what the model loses without that column's information.

Why permutation and not drop-column importance (one cv per column left out): drop-column trains
a model per group, about 19 times the training of one cv, and with the delta target the group
``tested_positive`` cannot be dropped at all (its last known day is the base the change is
added to). Permutation trains the folds once; its permutations are seeded from the config's
seed, so the same command gives the same bits.

Why every daily column: the default model sees only the ``strong`` preset, so it cannot say
what another column would add. The ranking model is the config's model (its hyperparameters,
target and seed) on every daily column of every day, with the state one-hots only when asked
(``with_states``: then ranked as one group, ``states``); the config's ``features`` and ``split``
are not used (the folds are blocked: random and interleaved folds leak).

The target's own history is a group of its own, ``tested_positive`` (its known days). With the
delta target the model adds its predicted change to the last known day's tested_positive; a
permutation of the group reaches the network's (and the ridge blend's) inputs but never that
base, which stays each row's own: the group then measures what the history adds to the
predicted change, not that a forecast needs yesterday's level (which any shuffle of the level
would show, by a margin that dwarfs every other column).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidreg import artifacts
from covidreg.baselines import persistence_predict, rmse
from covidreg.config import Config, to_toml
from covidreg.crossval import FoldEvents, cross_validate, make_folds, mean_std
from covidreg.engine import FittedModel, predict
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, load_data
from covidreg.layout import Layout
from covidreg.reproducibility import resolve_device
from covidreg.schema import select
from covidreg.splits import make_splitter

METHOD = "permutation"
DEFAULT_FOLDS = 5
DEFAULT_REPEATS = 5  # scikit-learn's permutation_importance takes 5 as well
STATES = "states"
PROTOCOL = "blocked"
# the third word of each permutation stream's seed, after the config's seed and the fold: no
# other stream of the project is seeded with it
_STREAM = 0x5241_4E4B  # "RANK"
RANK_COLUMNS = ("rank", "group", "features", "rmse_increase", "rmse_increase_std", "increase_pct")


@dataclass(frozen=True)
class ColumnGroup:
    """The features permuted together: one daily column on each of its days, or the states."""

    name: str
    features: tuple[str, ...]
    index: int  # its place in the layout (the states after the daily columns): its seed stream


def column_groups(layout: Layout, with_states: bool = False) -> list[ColumnGroup]:
    """Each daily column over the days the inputs hold it (every day; tested_positive its known
    days, the last one being the target), in the layout's order; then the states."""
    inputs = set(layout.feature_names)
    groups = [
        ColumnGroup(
            name,
            tuple(f for day in range(1, layout.n_days + 1) if (f := f"{name}_d{day}") in inputs),
            index,
        )
        for index, name in enumerate(layout.daily)
    ]
    if with_states:
        groups.append(ColumnGroup(STATES, layout.states, len(layout.daily)))
    return groups


def ranking_config(cfg: Config, groups: Sequence[ColumnGroup], layout: Layout) -> Config:
    """The config the ranking model trains with: every group's features (in the file's order)
    and blocked folds; everything else is ``cfg``'s."""
    wanted = {f for group in groups for f in group.features}
    features = [f for f in layout.feature_names if f in wanted]
    return dataclasses.replace(cfg, features=features, split=PROTOCOL)


def ignored_settings(cfg: Config) -> list[str]:
    """What a ranking does not take from ``cfg``, one sentence each (for warnings)."""
    notes = []
    if cfg.features != Config().features:
        notes.append(
            f"features {','.join(cfg.features)} is not used: the ranking model sees every daily "
            "column (--states adds the states)"
        )
    if cfg.split != PROTOCOL:
        notes.append(
            f"split {cfg.split} is not used: the ranking scores blocked folds ({cfg.split} "
            "folds leak neighbouring days)"
        )
    return notes


@dataclass
class GroupImportance:
    """One group's RMSE increases: ``increases[k, r]`` for fold k+1, repeat r+1."""

    group: ColumnGroup
    increases: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.increases.mean())

    @property
    def std(self) -> float:
        """Over every fold and repeat (ddof=1): how much of the mean is the days and the draws."""
        values = self.increases.reshape(-1)
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    def fold_means(self) -> list[float]:
        return [float(v) for v in self.increases.mean(axis=1)]


@dataclass
class FoldScore:
    fold: int
    train_rows: int
    valid_rows: int
    best_epoch: int
    rmse: float  # the ranking model on the fold's validation rows, nothing permuted
    persistence_rmse: float


@dataclass
class Ranking:
    """Every group's importance, the most important first, and the model it was measured on."""

    cfg: Config  # the ranking model's (``ranking_config``)
    layout: Layout
    n_repeats: int
    folds: list[FoldScore]
    groups: list[GroupImportance]  # by mean RMSE increase, highest first
    protocol: str

    @property
    def delta_base_kept(self) -> bool:
        """Whether the permutations of tested_positive left the delta target's base alone."""
        return self.cfg.target == "delta"

    def in_preset(self, preset: str = "strong") -> set[str]:
        """The groups with a feature in ``preset`` (none where the layout lacks it)."""
        try:
            names = set(self.layout.preset(preset))
        except CovidRegError:
            return set()
        return {g.group.name for g in self.groups if names & set(g.group.features)}

    def cv_rmse(self) -> dict[str, float]:
        return mean_std([f.rmse for f in self.folds])

    def persistence_rmse(self) -> dict[str, float]:
        return mean_std([f.persistence_rmse for f in self.folds])

    def rows(self) -> list[list[Any]]:
        """rank.csv's rows: ``RANK_COLUMNS`` and each fold's mean increase."""
        base = self.cv_rmse()["mean"]
        return [
            [
                i,
                g.group.name,
                ";".join(g.group.features),
                repr(g.mean),
                repr(g.std),
                repr(100 * g.mean / base),
                *(repr(v) for v in g.fold_means()),
            ]
            for i, g in enumerate(self.groups, start=1)
        ]

    def header(self) -> list[str]:
        return [*RANK_COLUMNS, *(f"fold_{f.fold}" for f in self.folds)]


def check_repeats(n_repeats: int) -> None:
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise CovidRegError(f"--repeats must be an integer >= 1, got {n_repeats!r}")


def _permutation_stream(seed: int, fold: int, group: ColumnGroup) -> np.random.Generator:
    """A group's permutations on a fold: from the config's seed alone, and each group's own,
    so adding a group (--states) leaves the others' draws as they were."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM, fold, group.index]))


def permutation_increases(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    columns: np.ndarray,
    n_repeats: int,
    rng: np.random.Generator,
    skip_index: int | None = None,
) -> np.ndarray:
    """The RMSE rises of ``model`` on the rows ``x`` (raw inputs) when the ``columns`` are
    permuted together across the rows, ``n_repeats`` draws of ``rng``: [repeats].

    ``skip_index``: the input the prediction adds the network's change to (the delta target);
    a permuted copy of it reaches the network, while the prediction keeps each row's own base.
    """
    device = next(model.parameters()).device
    target = y.astype(np.float64)
    base = rmse(predict(model, torch.from_numpy(x).to(device)), target)
    shuffled = np.repeat(x[None], n_repeats, axis=0)  # [repeats, rows, features]
    for r in range(n_repeats):
        shuffled[r][:, columns] = x[rng.permutation(len(x))][:, columns]
    flat = shuffled.reshape(-1, x.shape[1])
    pred = predict(model, torch.from_numpy(flat).to(device)).reshape(n_repeats, len(x))
    if skip_index is not None and skip_index in columns:
        # the base the change is added to stays the row's own
        own = x[:, skip_index].astype(np.float64)
        pred = pred - shuffled[:, :, skip_index].astype(np.float64) + own
    return np.array([rmse(p, target) - base for p in pred])


def rank_columns(
    cfg: Config,
    data: LoadedData,
    n_folds: int = DEFAULT_FOLDS,
    n_repeats: int = DEFAULT_REPEATS,
    with_states: bool = False,
    events: FoldEvents | None = None,
) -> Ranking:
    """Rank the daily columns of ``data`` (``experiment.load_data``; its feature set is not
    used) by permutation importance on ``n_folds`` blocked folds, ``n_repeats`` permutations
    each, with the model of ``cfg`` (``ranking_config``). ``events``: the folds' callbacks."""
    check_repeats(n_repeats)
    groups = column_groups(data.layout, with_states)
    rank_cfg = ranking_config(cfg, groups, data.layout)
    data = LoadedData(list(rank_cfg.features), data.train, None)
    folds = make_folds(rank_cfg, data, n_folds, PROTOCOL)
    fitted = cross_validate(rank_cfg, data, folds, events)
    increases = np.zeros((len(groups), len(folds), n_repeats))
    scores = []
    for k, ((train_idx, valid_idx), model) in enumerate(zip(folds, fitted, strict=True)):
        rows = select(data.train, data.train.columns(data.feature_names), valid_idx)
        for g, group in enumerate(groups):
            increases[g, k] = permutation_increases(
                model.model,
                rows.x,
                rows.y,
                np.array([data.feature_names.index(f) for f in group.features]),
                n_repeats,
                _permutation_stream(rank_cfg.seed, k + 1, group),
                model.model.skip_index,
            )
        scores.append(_fold_score(k + 1, data, train_idx, valid_idx, model))
    ranked = [GroupImportance(group, increases[g]) for g, group in enumerate(groups)]
    ranked.sort(key=lambda g: (-g.mean, g.group.index))
    protocol = make_splitter(PROTOCOL, n_folds, rank_cfg.seed, rank_cfg.purge).describe()
    return Ranking(rank_cfg, data.layout, n_repeats, scores, ranked, protocol)


def _fold_score(
    fold: int, data: LoadedData, train_idx: np.ndarray, valid_idx: np.ndarray, model: FittedModel
) -> FoldScore:
    rows = select(data.train, data.train.columns(data.feature_names), valid_idx)
    device = next(model.model.parameters()).device
    pred = predict(model.model, torch.from_numpy(rows.x).to(device))
    return FoldScore(
        fold=fold,
        train_rows=len(train_idx),
        valid_rows=len(valid_idx),
        best_epoch=model.result.best_epoch,
        rmse=rmse(pred, rows.y.astype(np.float64)),
        persistence_rmse=rmse(
            persistence_predict(data.train, valid_idx), data.train.target[valid_idx]
        ),
    )


# --- the run directory --------------------------------------------------------------------------


@dataclass
class RankResult:
    run_dir: Path
    ranking: Ranking
    summary: dict[str, Any] = field(repr=False)


def check_rank_inputs(
    cfg: Config, n_folds: int, n_repeats: int, with_states: bool = False
) -> LoadedData:
    """Read the training file and check the folds and the ranking model's config before
    anything is written; the data returned holds every input column."""
    check_repeats(n_repeats)
    data = load_data(dataclasses.replace(cfg, features=["all"]), with_test=False)
    groups = column_groups(data.layout, with_states)
    rank_cfg = ranking_config(cfg, groups, data.layout)
    make_folds(rank_cfg, LoadedData(list(rank_cfg.features), data.train, None), n_folds, PROTOCOL)
    return data


def run_rank(
    cfg: Config,
    n_folds: int = DEFAULT_FOLDS,
    n_repeats: int = DEFAULT_REPEATS,
    with_states: bool = False,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    overwrite: bool = False,
    on_start: Callable[[Path], None] | None = None,
    events: FoldEvents | None = None,
) -> RankResult:
    """``covidreg features --rank``: ``rank_columns``, then rank.csv, rank.json, rank.png and
    the ranking model's config.toml in the run directory (``overwrite``: replacing the run an
    ``out`` holds; else that is refused)."""
    artifacts.check_run_target(out, overwrite)
    data = check_rank_inputs(cfg, n_folds, n_repeats, with_states)
    with artifacts.run_dir_for(out, runs_dir, "rank", overwrite) as run_dir:
        if on_start is not None:
            on_start(run_dir)
        with artifacts.Plots() as plots:  # matplotlib loads beside the training
            start = time.perf_counter()
            ranking = rank_columns(cfg, data, n_folds, n_repeats, with_states, events)
            summary = rank_summary(ranking, data, time.perf_counter() - start)
            _write_rank(run_dir, ranking, summary, plots)
            plots.finish()
    return RankResult(run_dir, ranking, summary)


def rank_summary(ranking: Ranking, data: LoadedData, seconds: float) -> dict[str, Any]:
    """rank.json: how the ranking was made, its model's folds and every group's increases."""
    cfg = ranking.cfg
    return {
        "method": METHOD,
        "protocol": ranking.protocol,
        "n_folds": len(ranking.folds),
        "n_repeats": ranking.n_repeats,
        "seed": cfg.seed,
        "target": cfg.target,
        # with the delta target a permuted tested_positive never reaches the change's base
        "delta_base_kept": ranking.delta_base_kept,
        "n_features": len(cfg.features),
        "cv_rmse": ranking.cv_rmse(),
        "persistence_rmse": ranking.persistence_rmse(),
        "folds": [dataclasses.asdict(f) for f in ranking.folds],
        "groups": [
            {
                "rank": i,
                "group": g.group.name,
                "features": list(g.group.features),
                "rmse_increase": g.mean,
                "rmse_increase_std": g.std,
                "fold_means": g.fold_means(),
                "increases": g.increases.tolist(),
            }
            for i, g in enumerate(ranking.groups, start=1)
        ],
        "data": data.record(),
        "seconds": round(seconds, 3),
        "environment": artifacts.environment_info(
            str(resolve_device(cfg.device)), cfg.seed, cfg.deterministic
        ),
    }


def _write_rank(
    run_dir: Path, ranking: Ranking, summary: dict[str, Any], plots: artifacts.Plots
) -> None:
    artifacts.write_text(run_dir / "config.toml", to_toml(ranking.cfg))
    artifacts.write_csv(run_dir / "rank.csv", ranking.header(), ranking.rows())
    artifacts.write_json(run_dir / "rank.json", summary)
    strong = ranking.in_preset()
    plots.draw(
        "rank",
        run_dir / "rank.png",
        [g.group.name for g in ranking.groups],
        [g.mean for g in ranking.groups],
        [g.std for g in ranking.groups],
        [g.group.name in strong for g in ranking.groups],
        f"Permutation importance, {ranking.protocol} x {ranking.n_repeats} repeats\n"
        f"{ranking.layout.describe()}",
    )
