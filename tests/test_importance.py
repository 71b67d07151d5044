"""Permutation importance of the daily columns on blocked folds (covidreg.importance)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from covidreg.config import Config, resolve_config
from covidreg.errors import CovidRegError
from covidreg.experiment import load_data
from covidreg.importance import (
    STATES,
    check_rank_inputs,
    column_groups,
    ignored_settings,
    permutation_increases,
    rank_columns,
    ranking_config,
    run_rank,
)
from covidreg.layout import EDITIONS
from covidreg.model import build_model
from tests.conftest import synthetic_rows, write_hw01_csv

# the synthetic target: tested_positive of day D is 0.8 x day D-1's plus 3 x (cli + hh_cmnty_cli
# / 2) of day D, plus noise; every other daily column is a random walk it never reads
DRIVERS = {"tested_positive", "cli", "hh_cmnty_cli"}


@pytest.fixture
def driven_csv(tmp_path: Path) -> Path:
    """A training file of 8 states x 40 windows (enough rows for 3 blocked folds to learn)."""
    return write_hw01_csv(tmp_path / "covid.train.csv", synthetic_rows(8, 40, seed=0))


def quick_config(train: Path, **changes: str) -> Config:
    values = {"train_csv": str(train), "test_csv": "", "batch_size": "16", "epochs": "300"}
    return resolve_config(None, {**values, **changes})


def test_each_daily_column_is_one_group_over_its_days() -> None:
    layout = EDITIONS["2021"]
    groups = column_groups(layout)
    assert [g.name for g in groups] == list(layout.daily)
    assert groups[0].features == ("cli_d1", "cli_d2", "cli_d3")
    # the target's own history: the known days only (day 3 is the target)
    assert groups[-1].features == ("tested_positive_d1", "tested_positive_d2")
    with_states = column_groups(layout, with_states=True)
    assert with_states[:-1] == groups
    assert (with_states[-1].name, with_states[-1].features) == (STATES, layout.states)
    five_days = column_groups(EDITIONS["2022"])
    assert len(five_days) == 16 and five_days[-1].features[-1] == "tested_positive_d4"
    assert all(len(g.features) == 5 for g in five_days[:-1])


def test_the_ranking_model_sees_every_daily_column_on_blocked_folds() -> None:
    layout = EDITIONS["2021"]
    cfg = dataclasses.replace(Config(), split="random", lr=3e-3)
    rank_cfg = ranking_config(cfg, column_groups(layout), layout)
    assert rank_cfg.features == list(layout.daily_features[:-1])  # 53: no states, no target
    assert (rank_cfg.split, rank_cfg.lr, rank_cfg.hidden) == ("blocked", 3e-3, cfg.hidden)
    with_states = ranking_config(cfg, column_groups(layout, True), layout)
    assert with_states.features == list(layout.feature_names)
    assert len(ignored_settings(cfg)) == 1 and "random" in ignored_settings(cfg)[0]
    assert ignored_settings(Config()) == []


def test_the_columns_the_target_is_built_from_rank_first(driven_csv: Path) -> None:
    cfg = quick_config(driven_csv)
    ranking = rank_columns(cfg, load_data(cfg, with_test=False), n_folds=3, n_repeats=3)
    names = [g.group.name for g in ranking.groups]
    assert set(names[:3]) == DRIVERS, names
    assert sorted(names) == sorted(EDITIONS["2021"].daily)
    # a clear gap between what the target reads and the best of what it does not
    assert ranking.groups[2].mean > 2 * ranking.groups[3].mean
    assert ranking.groups[0].increases.shape == (3, 3)
    assert [f.fold for f in ranking.folds] == [1, 2, 3]
    assert ranking.protocol == "3 blocked folds" and ranking.delta_base_kept


def test_the_level_target_ranks_the_same_drivers_first(driven_csv: Path) -> None:
    cfg = quick_config(driven_csv, target="level")
    ranking = rank_columns(cfg, load_data(cfg, with_test=False), n_folds=3, n_repeats=3)
    assert ranking.groups[0].group.name == "tested_positive"
    assert not ranking.delta_base_kept


def test_the_same_call_gives_the_same_bits_whatever_the_processes(
    driven_csv: Path, tmp_path: Path
) -> None:
    """Three stacks of one fold: in one process, or side by side in two; the permutations are
    the config seed's, whatever numpy's global state."""
    texts = []
    for processes, global_seed in ((1, 0), (2, 1)):
        np.random.seed(global_seed)
        cfg = quick_config(driven_csv, epochs="60", stack_size="1", fold_processes=str(processes))
        out = tmp_path / f"run{processes}"
        run_rank(cfg, n_folds=3, n_repeats=2, out=out)
        texts.append((out / "rank.csv").read_bytes())
    assert texts[0] == texts[1]
    written = [line.split(",") for line in texts[0].decode().splitlines()[1:]]

    def rows(seed: str) -> list[list[str]]:
        cfg = quick_config(driven_csv, epochs="60", stack_size="1", seed=seed)
        ranking = rank_columns(cfg, load_data(cfg, with_test=False), 3, 2)
        return [[str(cell) for cell in row] for row in ranking.rows()]

    assert rows("42") == written
    assert rows("7") != written


def test_the_run_directory_holds_the_ranking(driven_csv: Path, tmp_path: Path) -> None:
    cfg = quick_config(driven_csv, epochs="40")
    result = run_rank(cfg, n_folds=3, n_repeats=2, with_states=True, out=tmp_path / "run")
    assert {p.name for p in result.run_dir.iterdir()} == {
        "rank.csv",
        "rank.json",
        "rank.png",
        "config.toml",
    }
    with open(result.run_dir / "rank.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "rank", "group", "features", "rmse_increase", "rmse_increase_std", "increase_pct",
        "fold_1", "fold_2", "fold_3",
    ]  # fmt: skip
    assert [int(r["rank"]) for r in rows] == list(range(1, 20))  # 18 daily columns + states
    means = [float(r["rmse_increase"]) for r in rows]
    assert means == sorted(means, reverse=True)
    states = next(r for r in rows if r["group"] == STATES)
    assert states["features"].split(";") == list(EDITIONS["2021"].states)
    for row, group in zip(rows, result.ranking.groups, strict=True):
        fold_means = [float(row[f"fold_{k}"]) for k in (1, 2, 3)]
        assert np.mean(fold_means) == pytest.approx(float(row["rmse_increase"]), rel=1e-12)
        assert float(row["rmse_increase_std"]) == group.std
    assert (result.run_dir / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = resolve_config(result.run_dir / "config.toml")
    assert saved.features == result.ranking.cfg.features and len(saved.features) == 93
    assert result.summary["method"] == "permutation" and result.summary["n_repeats"] == 2


def test_a_permuted_delta_base_never_reaches_the_prediction() -> None:
    """A network that predicts no change is persistence: permuting tested_positive then changes
    nothing, since the change's base stays each row's own; permuting the base too would."""
    layout = EDITIONS["2021"]
    names = list(layout.daily_features[:-1])
    cfg = dataclasses.replace(Config(), ridge_blend=0.0, features=names)
    model = build_model(cfg, layout, names)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    rows = synthetic_rows(2, 20, seed=3)[:, len(layout.states) :]
    x, y = rows[:, :-1].astype(np.float32), rows[:, -1].astype(np.float32)
    tested = np.array([names.index("tested_positive_d1"), names.index("tested_positive_d2")])
    skip = names.index("tested_positive_d2")
    kept = permutation_increases(model, x, y, tested, 3, np.random.default_rng(0), skip)
    assert kept.tolist() == [0.0, 0.0, 0.0]
    moved = permutation_increases(model, x, y, tested, 3, np.random.default_rng(0))
    assert (moved > 0.5).all()


def test_bad_inputs_are_refused_before_anything_is_written(
    driven_csv: Path, tmp_path: Path
) -> None:
    cfg = quick_config(driven_csv)
    out = tmp_path / "run"
    with pytest.raises(CovidRegError, match="--repeats must be an integer >= 1, got 0"):
        run_rank(cfg, n_folds=3, n_repeats=0, out=out)
    with pytest.raises(CovidRegError, match="number of folds must be an integer >= 2"):
        run_rank(cfg, n_folds=1, out=out)
    with pytest.raises(CovidRegError, match="batch_size 500 is larger"):
        check_rank_inputs(quick_config(driven_csv, batch_size="500"), 3, 5)
    assert not out.exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_the_real_2021_ranking_is_led_by_the_strong_columns(real_data_dir: Path) -> None:
    cfg = resolve_config(None, {"train_csv": str(real_data_dir / "covid.train.csv")})
    ranking = rank_columns(cfg, load_data(cfg, with_test=False))
    names = [g.group.name for g in ranking.groups]
    assert sorted(names) == sorted(EDITIONS["2021"].daily)
    strong = {"cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli", "tested_positive"}
    assert set(names[:3]) <= strong, names
    assert ranking.groups[0].mean > 0.05  # above 5% of the ~1.0 RMSE
    assert ranking.cv_rmse()["mean"] < ranking.persistence_rmse()["mean"]
    assert [f.valid_rows for f in ranking.folds] == [560, 560, 540, 520, 520]
