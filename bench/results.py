"""Regenerate the Results tables: covidreg and its peers on three protocols, on each edition.

The protocols, every row on the same rows: blocked 5-fold cv (``make_folds``), and two temporal
hold-outs (``covidreg.splits.temporal_holdout``): per state, the last (future) or first (past)
14 windows of its day order held out, every window sharing a day with them dropped, the rest
to train on. Each covidreg configuration runs its cv as ``covidreg cv --folds 5 --split blocked
--seeds 3`` in its own process, and its hold-outs here, each seed's model trained on the rest as
``covidreg train`` trains on its file (its blocked holdout of those rows to early-stop on) and
scored on the held-out rows. The persistence and ridge baselines come from the same rows. The
peers (``peers.py``: scikit-learn, skorch, LightGBM, and FLAML where its extra is installed) run
here on exactly those rows with the default config's seeds, on covidreg's default features and on
all of them; a peer that is not installed is named in a note, printed and on the page. The
tables replace the text between the ``<!-- results:start -->`` and ``<!-- results:end -->``
markers of docs/results.md (``--no-write`` only prints them).

    python bench/results.py --data-dir ../shared/hw01 --data-dir-2022 ../shared/hw01-2022
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's covidreg, whatever is installed

from peers import (  # noqa: E402
    FLAML_MAX_ITER,
    FLAML_PEER,
    FLAML_SEEDS,
    Peer,
    covidreg_protocol,
    delta_target,
    installed_peers,
    peer_fold_rmse,
)

from covidreg.baselines import persistence_predict, ridge_fit_predict, rmse  # noqa: E402
from covidreg.config import Config, resolve_config  # noqa: E402
from covidreg.crossval import cross_validate, fold_seed, make_folds  # noqa: E402
from covidreg.experiment import LoadedData, load_data  # noqa: E402
from covidreg.seeds import seed_list  # noqa: E402
from covidreg.splits import HOLDOUT_WINDOWS  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
DEFAULT_LABEL = "covidreg default.toml (recommended setup)"
OPTIMISTIC_LABEL = (
    "covidreg default, stop_on = valid (early-stopped on the scored rows, as the course code)"
)

# (row label, config file, keys that differ from it); every row uses the blocked split.
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("covidreg sample.toml (course sample code's hyperparameters)", "configs/sample.toml", {}),
    (
        "covidreg, target_only features (default otherwise)",
        "configs/default.toml",
        {"features": "target_only"},
    ),
    (DEFAULT_LABEL, "configs/default.toml", {}),
    (
        "covidreg default's network alone (ridge_blend = 0)",
        "configs/default.toml",
        {"ridge_blend": "0"},
    ),
    (
        "covidreg default, ridge_alpha = auto (the blend's penalty by leave-one-out)",
        "configs/default.toml",
        {"ridge_alpha": "auto"},
    ),
    (OPTIMISTIC_LABEL, "configs/default.toml", {"stop_on": "valid"}),
]
# Peers that predict the level clearly worse than the change from the last known
# tested_positive get a second, labelled row with covidreg's delta target. RidgeCV, linear in
# that feature already, gained little from it in a check (0.9779 -> 0.9788 on the 2021 default
# features), so it has no such row; it has one on the states with the strong features instead.
# FLAML's search ends in trees, as LightGBM's: 1.2469 -> 1.1451 on the 2021 future hold-out
# (default features, 60 models, one seed).
DELTA_PEERS = (
    "scikit-learn MLPRegressor",
    "skorch NeuralNetRegressor",
    "LightGBM LGBMRegressor",
    FLAML_PEER.name,
)
# On the default features this peer, with the delta target, is covidreg default's network,
# target and optimiser; stopped as covidreg cv stops, it differs from covidreg in the engine.
PROTOCOL_PEER = "skorch NeuralNetRegressor"
RIDGE_PEER = "scikit-learn RidgeCV"
PROTOCOLS = ("cv", "future", "past")
PROTOCOL_TITLES = {
    "cv": "blocked {folds}-fold cv",
    "future": "future hold-out (each state's last 14 windows)",
    "past": "past hold-out (each state's first 14 windows)",
}
EDITION_ENV = {"2021": "COVIDREG_DATA_DIR", "2022": "COVIDREG_DATA_DIR_2022"}


@dataclass
class Row:
    label: str
    features: str
    rmse: np.ndarray  # RMSE of the scored rows [seed, fold] (one fold for a hold-out)
    # another library's model, stopped as covidreg's default is (the summary's rivals)
    peer: bool = False

    @property
    def fold_means(self) -> np.ndarray:
        return self.rmse.mean(axis=0)

    @property
    def seed_means(self) -> np.ndarray:
        return self.rmse.mean(axis=1)

    @property
    def seed_spread(self) -> str:
        """The seed std as a cell; a row of one seed (FLAML's) has none to show."""
        return f"{self.seed_std:.4f}" if len(self.seed_means) > 1 else "n/a (1 seed)"

    @property
    def seed_std(self) -> float:
        """Seed luck: the std of the per-seed means over the folds."""
        return _std(self.seed_means)

    @property
    def fold_std(self) -> float:
        """How much the days differ: the std over folds of the seed-mean."""
        return _std(self.fold_means)


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def features_label(cfg: Config, data: LoadedData) -> str:
    spec = cfg.features[0] if len(cfg.features) == 1 else "named"
    return f"{spec} ({len(data.feature_names)})"


def run_cv(
    config: str, overrides: dict[str, Any], data_dir: Path, folds: int, seeds: int, out: Path
) -> list[dict]:
    """``covidreg cv --seeds``; each seed's summary.json, in seed order."""
    flags = [item for k, v in overrides.items() for item in (f"--{k.replace('_', '-')}", v)]
    cmd = [
        sys.executable, "-m", "covidreg", "cv", "--config", str(ROOT / config),
        "--folds", str(folds), "--split", "blocked", "--seeds", str(seeds), "--quiet",
        "--train-csv", str(data_dir / "covid.train.csv"),
        "--test-csv", str(data_dir / "covid.test.csv"), "--out", str(out), *flags,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    order = json.loads((out / "seeds.json").read_text())["seeds"]
    return [json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in order]


def fold_matrix(summaries: list[dict], key: str) -> np.ndarray:
    """``key`` of every fold [seed, fold] from the seeds' summaries."""
    return np.array([[f[key] for f in s["folds"]] for s in summaries])


def holdouts(cfg: Config, data: LoadedData) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each temporal hold-out as a list of one (train, held-out rows) split: the folds of
    ``covidreg cv --protocol future`` (``past``)."""
    return {side: make_folds(cfg, data, 1, side) for side in ("future", "past")}


def holdout_rmse(
    cfg: Config, data: LoadedData, splits: list[tuple[np.ndarray, np.ndarray]], n_seeds: int
) -> np.ndarray:
    """covidreg on each hold-out [seed, 1]: seed s's model (seeded as cv's fold 1 of run seed
    s) trains on the rest and early-stops on its blocked tail, as ``covidreg train`` does on a
    training file, and is scored on the held-out rows. Every seed is one stack."""
    seeds = [fold_seed(s, 1) for s in seed_list(cfg.seed, n_seeds)]
    fitted = cross_validate(cfg, data, splits * n_seeds, processes=False, seeds=seeds)
    return np.array([[math.sqrt(f.result.best_valid_mse)] for f in fitted])


def baseline_rows(
    data: LoadedData, splits: list[tuple[np.ndarray, np.ndarray]], n_seeds: int, default: str
) -> list[Row]:
    """Persistence and covidreg's closed-form ridge (alpha 1, default features) on ``splits``."""
    table, target = data.train, data.train.target

    def per_split(predict: Any) -> np.ndarray:
        row = [rmse(predict(train, valid), target[valid]) for train, valid in splits]
        return np.tile(row, (n_seeds, 1))

    return [
        Row(
            "persistence baseline (day D = day D-1)",
            data.layout.last_known,
            per_split(lambda _train, valid: persistence_predict(table, valid)),
        ),
        Row(
            "covidreg ridge baseline (closed form, alpha 1)",
            default,
            per_split(
                lambda train, valid: ridge_fit_predict(table, data.feature_names, train, valid)
            ),
        ),
    ]


def covidreg_rows(data_dir: Path, n_folds: int, n_seeds: int, tmp: Path) -> dict[str, list[Row]]:
    """The covidreg configs on every protocol, then the baselines."""
    rows: dict[str, list[Row]] = {p: [] for p in PROTOCOLS}
    paths = {"train_csv": str(data_dir / "covid.train.csv"), "test_csv": ""}
    for i, (label, config, overrides) in enumerate(CONFIGS):
        cfg = resolve_config(ROOT / config, {**overrides, **paths, "fold_processes": 1})
        data = load_data(cfg, with_test=False)
        features = features_label(cfg, data)
        start = time.perf_counter()
        summaries = run_cv(config, overrides, data_dir, n_folds, n_seeds, tmp / str(i))
        rows["cv"].append(Row(label, features, fold_matrix(summaries, "valid_rmse")))
        for side, splits in holdouts(cfg, data).items():
            rows[side].append(Row(label, features, holdout_rmse(cfg, data, splits, n_seeds)))
        _progress(label, rows, f"{time.perf_counter() - start:.0f} s")
        if label == DEFAULT_LABEL:
            default_data, default_features = data, features
    folds = make_folds(Config(**paths), default_data, n_folds)
    for protocol, splits in {"cv": folds, **holdouts(Config(**paths), default_data)}.items():
        rows[protocol] += baseline_rows(default_data, splits, n_seeds, default_features)
    return rows


def peer_rows(
    data_dir: Path, n_folds: int, n_seeds: int, jobs: int, peers: list[Peer]
) -> dict[str, list[Row]]:
    """Every peer on every protocol, on the default features, then on all of them.

    The rows run in ``jobs`` processes; each row is one thread and seeded, so its numbers do
    not depend on how many run beside it.
    """
    cfg = Config(train_csv=str(data_dir / "covid.train.csv"), test_csv="")
    data = load_data(cfg, with_test=False)
    splits = {"cv": make_folds(cfg, data, n_folds), **holdouts(cfg, data)}
    seeds = seed_list(cfg.seed, n_seeds)
    layout, default_names = data.layout, data.feature_names
    states = list(layout.preset("strong_states"))
    # (label, names, RidgeCV only): the states with the strong features only for RidgeCV, the
    # best 2021 future peer of the earlier measurements
    sets = [
        (features_label(cfg, data), default_names, False),
        (f"strong_states ({len(states)})", states, True),
        (f"all ({len(layout.feature_names)})", list(layout.feature_names), False),
    ]
    tasks = [
        (protocol, features, names, peer)
        for protocol in PROTOCOLS
        for features, names, ridge_only in sets
        for peer in peer_variants(peers, names, layout.last_known, names == default_names)
        if peer.name == RIDGE_PEER or not ridge_only
    ]
    start = time.perf_counter()
    # spawn: a fresh interpreter per worker, not a fork of one that has loaded torch's threads
    context = multiprocessing.get_context("spawn")
    rows: dict[str, list[Row]] = {p: [] for p in PROTOCOLS}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = [
            pool.submit(peer_fold_rmse, peer, data.train, names, splits[protocol], seeds)
            for protocol, _, names, peer in tasks
        ]
        for (protocol, features, _, peer), future in zip(tasks, pending, strict=True):
            # a peer stopped on the scored rows is the optimistic protocol's: no rival
            row = Row(peer.name, features, future.result(), peer=not peer.stop_on_valid)
            rows[protocol].append(row)
            _progress(peer.name, {protocol: rows[protocol]}, f"{time.perf_counter() - start:.0f} s")
    return rows


def peer_variants(
    peers: list[Peer], names: list[str], last_known: str, default_features: bool
) -> list[Peer]:
    """Each peer as documented, then its delta-target row and covidreg's protocol row."""
    skip = names.index(last_known)
    variants = []
    for peer in peers:
        variants.append(peer)
        if peer.name in DELTA_PEERS:
            variants.append(delta_target(peer, skip))
        if peer.name == PROTOCOL_PEER and default_features:
            variants.append(covidreg_protocol(delta_target(peer, skip)))
    return variants


def _progress(label: str, rows: dict[str, list[Row]], when: str) -> None:
    cells = [
        f"{p} {r.rmse.mean():.4f} ± {r.seed_spread}"
        for p, rs in rows.items()
        for r in rs[-1:]
        if r.label == label
    ]
    print(f"{label}: {', '.join(cells)} ({when})", file=sys.stderr)


def win_record(default: Row, row: Row) -> str:
    """cv: on how many folds the default has the lower seed-mean RMSE; a hold-out: whether
    it has, by how much, and whether the margin exceeds the larger seed spread of the two."""
    if len(row.fold_means) > 1:
        wins = int(np.sum(default.fold_means < row.fold_means))
        return f"wins {wins}/{len(row.fold_means)}"
    margin = float(row.rmse.mean() - default.rmse.mean())
    spread = max(default.seed_std, row.seed_std)
    verdict = "wins" if margin > 0 else "loses"
    beyond = " (beyond seeds)" if abs(margin) > spread else " (within seeds)"
    return f"{verdict} by {abs(margin):.4f}{beyond}"


def protocol_table(rows: list[Row], protocol: str, n_folds: int) -> list[str]:
    default = next(r for r in rows if r.label == DEFAULT_LABEL)
    spread = "± folds | " if protocol == "cv" else ""
    lines = [
        f"| model | features | RMSE | ± seeds | {spread}covidreg default |",
        "| --- | --- | ---: | ---: | " + ("---: | " if protocol == "cv" else "") + "--- |",
    ]
    for r in sorted(rows, key=lambda r: r.rmse.mean()):
        folds = f"{r.fold_std:.4f} | " if protocol == "cv" else ""
        record = "-" if r is default else win_record(default, r)
        lines.append(
            f"| {r.label} | {r.features} | {r.rmse.mean():.4f} | {r.seed_spread} | {folds}"
            f"{record} |"
        )
    return lines


def summary_table(editions: dict[str, dict[str, list[Row]]], n_folds: int) -> list[str]:
    """The default against the best peer of each edition and protocol."""
    lines = [
        "| edition | protocol | covidreg default | best peer | its RMSE | default |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for edition, by_protocol in editions.items():
        for protocol, rows in by_protocol.items():
            default = next(r for r in rows if r.label == DEFAULT_LABEL)
            best = min((r for r in rows if r.peer), key=lambda r: r.rmse.mean())
            title = PROTOCOL_TITLES[protocol].format(folds=n_folds).split(" (")[0]
            lines.append(
                f"| {edition} | {title} | {default.rmse.mean():.4f} ± {default.seed_std:.4f} | "
                f"{best.label} [{best.features}] | {best.rmse.mean():.4f} ± {best.seed_spread} "
                f"| {win_record(default, best)} |"
            )
    return lines


def tables(
    editions: dict[str, dict[str, list[Row]]],
    n_folds: int,
    n_seeds: int,
    missing: list[str] | None = None,
) -> str:
    """The page's text between the markers; ``missing``: a note for each peer not run."""
    rows = [r for by_protocol in editions.values() for rs in by_protocol.values() for r in rs]
    first_seeds = "the first seed only" if FLAML_SEEDS == 1 else f"the first {FLAML_SEEDS} seeds"
    one_seed = (
        f" {FLAML_PEER.name} fits {first_seeds} (each fit is a search of {FLAML_MAX_ITER} "
        "models); a row of one seed has no seed spread to show (n/a), and the record against "
        "it weighs the default's alone."
        if n_seeds > 1 and any(r.label.startswith(FLAML_PEER.name) for r in rows)
        else ""
    )
    lines = [
        "Every row of a table is scored on the same rows: RMSE of tested_positive (lower is "
        f"better), mean over {n_seeds} seeds; ± seeds is the std of the per-seed means (seed "
        f"luck). The baselines and RidgeCV are one fit per split: zero seed spread.{one_seed}",
        "",
        *(line for note in missing or [] for line in (f"{note} (none of its rows below).", "")),
        f"- **blocked {n_folds}-fold cv**: fold k holds the k-th block of days of every "
        "stretch of consecutive windows, the windows sharing a day with it purged; each "
        "covidreg fold early-stops on a blocked tail of its training rows and is only scored on "
        "its fold, as the peers are.",
        f"- **future** and **past** hold-outs: per state, the last (first) {HOLDOUT_WINDOWS} "
        "windows of its day order are held out and every window sharing a day with them is "
        "dropped; a model trains on the rest as `covidreg train` trains on its file (covidreg: "
        "its own blocked holdout of those rows to early-stop on) and is scored on the held-out "
        "rows. A state whose training rows break into stretches (2022: up to 3 a state) has no "
        "known order of them: neither its training rows nor the test windows share a day that "
        "links two. Each stretch then gives the end (start) of its run of days, its share of "
        f"the state's {HOLDOUT_WINDOWS} in proportion to its length "
        "(`covidreg.splits.temporal_holdout`).",
        "",
        "The Kaggle test rows are days outside every training stretch (2021: no test window "
        "shares a day with a training window; 2022: 36 of 1,078 do), so the hold-outs, days "
        "no model has seen beyond the end of a stretch, are the protocols that resemble the "
        "Kaggle test; blocked cv scores days between training days, with the training days "
        "on both sides.",
        "",
        "Summary: covidreg default against the best peer (another library's model, stopped "
        "on rows of its own, never on the scored ones) of each edition and protocol; a "
        "hold-out's record says whether the margin exceeds the larger "
        "of the two seed spreads.",
        "",
        *summary_table(editions, n_folds),
    ]
    for edition, by_protocol in editions.items():
        for protocol, rows in by_protocol.items():
            title = PROTOCOL_TITLES[protocol].format(folds=n_folds)
            lines += ["", f"**{edition}, {title}**", "", *protocol_table(rows, protocol, n_folds)]
    cpu = platform.processor() or platform.machine()
    lines += [
        "",
        f"Generated by `make results` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores, "
        f"{cpu}, Python {platform.python_version()}).",
    ]
    return "\n".join(lines)


def write_results(text: str) -> None:
    page = ROOT / "docs" / "results.md"
    content = page.read_text()
    if START not in content or END not in content:
        sys.exit(f"docs/results.md has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp_path = page.with_suffix(".md.tmp")
    tmp_path.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    os.replace(tmp_path, page)
    print("docs/results.md updated", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get(EDITION_ENV["2021"], "data"))
    )
    parser.add_argument(
        "--data-dir-2022",
        type=Path,
        default=Path(os.environ.get(EDITION_ENV["2022"], "data/2022")),
        help="the 2022 files (skipped when absent)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="processes for the peer rows (default: one per available core)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()
    dirs = {"2021": args.data_dir, "2022": args.data_dir_2022}
    installed, missing = installed_peers()
    for note in missing:
        print(f"{note}: its rows are skipped", file=sys.stderr)
    editions: dict[str, dict[str, list[Row]]] = {}
    for edition, data_dir in dirs.items():
        data_dir = data_dir.resolve()
        if edition != "2021" and not (data_dir / "covid.train.csv").exists():
            print(f"no {edition} files in {data_dir}: skipped", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rows = covidreg_rows(data_dir, args.folds, args.seeds, Path(tmp))
        peers = peer_rows(data_dir, args.folds, args.seeds, max(1, args.jobs), installed)
        editions[edition] = {p: rows[p] + peers[p] for p in PROTOCOLS}
    text = tables(editions, args.folds, args.seeds, missing)
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
