"""Regenerate the Results tables of docs/results.md: blocked 5-fold cv RMSE over 3 seeds, peers too.

Each covidreg configuration runs as ``covidreg cv --folds 5 --split blocked --seeds 3`` in its
own process; the persistence and ridge baselines come from the same folds. The peers
(``peers.py``: scikit-learn, skorch, LightGBM) run here on exactly those folds (covidreg's
``make_folds`` for the default config) with the default config's seeds, on covidreg's default
features and on all 93. The tables replace the text between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers of docs/results.md (``--no-write`` only prints them).

    python bench/results.py --data-dir ../shared/hw01
"""

from __future__ import annotations

import argparse
import json
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's covidreg, whatever is installed

from peers import PEERS, Peer, covidreg_protocol, delta_target, peer_fold_rmse  # noqa: E402

from covidreg.config import Config  # noqa: E402
from covidreg.crossval import make_folds  # noqa: E402
from covidreg.experiment import load_data  # noqa: E402
from covidreg.schema import FEATURE_NAMES, resolve_features  # noqa: E402
from covidreg.seeds import seed_list  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
DEFAULT_LABEL = "covidreg default.toml (recommended setup)"
OPTIMISTIC_LABEL = (
    "covidreg default, stop_on = valid (early-stopped on the scored rows, as the course code)"
)

# (row label, features, config file, extra flags); every row uses the blocked split.
CONFIGS = [
    (
        "covidreg sample.toml (course sample code's hyperparameters)",
        "all (93)",
        "configs/sample.toml",
        [],
    ),
    (
        "covidreg, target_only features (default otherwise)",
        "target_only (42)",
        "configs/default.toml",
        ["--features", "target_only"],
    ),
    (DEFAULT_LABEL, "strong (14)", "configs/default.toml", []),
    (
        "covidreg default's network alone (ridge_blend = 0)",
        "strong (14)",
        "configs/default.toml",
        ["--ridge-blend", "0"],
    ),
    (OPTIMISTIC_LABEL, "strong (14)", "configs/default.toml", ["--stop-on", "valid"]),
    (
        "covidreg default's network alone, stop_on = valid",
        "strong (14)",
        "configs/default.toml",
        ["--ridge-blend", "0", "--stop-on", "valid"],
    ),
]
# Peers that predict the level clearly worse than the change from tested_positive_d2 get a
# second, labelled row with covidreg's delta target. RidgeCV, linear in tested_positive_d2
# already, gained little from it in a check (0.9779 -> 0.9788 on the default features, 1.0085 ->
# 0.9984 on all 93), so it has no such row.
DELTA_PEERS = ("scikit-learn MLPRegressor", "skorch NeuralNetRegressor", "LightGBM LGBMRegressor")
# On the default features this peer, with the delta target, is covidreg default's network,
# target and optimiser; stopped as covidreg cv stops, it differs from covidreg in the engine.
PROTOCOL_PEER = "skorch NeuralNetRegressor"


@dataclass
class Row:
    label: str
    features: str
    rmse: np.ndarray  # valid RMSE [seed, fold]; a deterministic row repeats one fit per seed

    @property
    def fold_means(self) -> np.ndarray:
        return self.rmse.mean(axis=0)

    @property
    def seed_std(self) -> float:
        """Seed luck: the std of the per-seed 5-fold means."""
        return _std(self.rmse.mean(axis=1))

    @property
    def fold_std(self) -> float:
        """How much the days differ: the std over folds of the seed-mean."""
        return _std(self.fold_means)


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_cv(
    config: str, extra: list[str], data_dir: Path, folds: int, seeds: int, out: Path
) -> list[dict]:
    """``covidreg cv --seeds``; each seed's summary.json, in seed order."""
    cmd = [
        sys.executable, "-m", "covidreg", "cv", "--config", str(ROOT / config),
        "--folds", str(folds), "--split", "blocked", "--seeds", str(seeds), "--quiet",
        "--train-csv", str(data_dir / "covid.train.csv"),
        "--test-csv", str(data_dir / "covid.test.csv"), "--out", str(out), *extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    order = json.loads((out / "seeds.json").read_text())["seeds"]
    return [json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in order]


def fold_matrix(summaries: list[dict], key: str) -> np.ndarray:
    """``key`` of every fold [seed, fold] from the seeds' summaries."""
    return np.array([[f[key] for f in s["folds"]] for s in summaries])


def covidreg_rows(data_dir: Path, n_folds: int, n_seeds: int, tmp: Path) -> list[Row]:
    """The covidreg configs, then the two baselines from the default config's folds."""
    rows = []
    for i, (label, features, config, extra) in enumerate(CONFIGS):
        start = time.perf_counter()
        summaries = run_cv(config, extra, data_dir, n_folds, n_seeds, tmp / str(i))
        rows.append(Row(label, features, fold_matrix(summaries, "valid_rmse")))
        _progress(rows[-1], f"{time.perf_counter() - start:.0f} s")
        if label == DEFAULT_LABEL:
            baselines = summaries
    rows.append(
        Row(
            "persistence baseline (day 3 = day 2)",
            "tested_positive_d2",
            fold_matrix(baselines, "persistence_rmse"),
        )
    )
    rows.append(
        Row(
            "covidreg ridge baseline (closed form, alpha 1)",
            "strong (14)",
            fold_matrix(baselines, "ridge_rmse"),
        )
    )
    return rows


def peer_rows(data_dir: Path, n_folds: int, n_seeds: int, jobs: int) -> list[Row]:
    """Every peer on the default features, then on all 93, on the default config's folds.

    The rows run in ``jobs`` processes; each row is one thread and seeded, so its numbers do
    not depend on how many run beside it.
    """
    cfg = Config(train_csv=str(data_dir / "covid.train.csv"), test_csv="")
    data = load_data(cfg, with_test=False)
    folds = make_folds(cfg, data, n_folds)
    seeds = seed_list(cfg.seed, n_seeds)
    default_names = resolve_features(cfg.features)
    tasks = [
        (features, names, peer)
        for features, names in (("strong (14)", default_names), ("all (93)", list(FEATURE_NAMES)))
        for peer in peer_variants(names, names == default_names)
    ]
    start = time.perf_counter()
    # spawn: a fresh interpreter per worker, not a fork of one that has loaded torch's threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = [
            pool.submit(peer_fold_rmse, peer, data.train, names, folds, seeds)
            for _, names, peer in tasks
        ]
        rows = []
        for (features, _, peer), future in zip(tasks, pending, strict=True):
            rows.append(Row(peer.name, features, future.result()))
            _progress(rows[-1], f"{time.perf_counter() - start:.0f} s into the peers")
    return rows


def peer_variants(names: list[str], default_features: bool) -> list[Peer]:
    """Each peer as documented, then its delta-target row and covidreg's protocol row."""
    skip = names.index("tested_positive_d2")
    variants = []
    for peer in PEERS:
        variants.append(peer)
        if peer.name in DELTA_PEERS:
            variants.append(delta_target(peer, skip))
        if peer.name == PROTOCOL_PEER and default_features:
            variants.append(covidreg_protocol(delta_target(peer, skip)))
    return variants


def _progress(row: Row, when: str) -> None:
    print(
        f"{row.label} [{row.features}]: {row.rmse.mean():.4f} ± {row.seed_std:.4f} ({when})",
        file=sys.stderr,
    )


def win_record(default: Row, row: Row) -> str:
    """On how many folds covidreg's default has the lower seed-mean RMSE."""
    wins = int(np.sum(default.fold_means < row.fold_means))
    return f"wins {wins}/{len(row.fold_means)}"


def tables(rows: list[Row], n_folds: int, n_seeds: int) -> str:
    default = next(r for r in rows if r.label == DEFAULT_LABEL)
    optimistic = next(r for r in rows if r.label == OPTIMISTIC_LABEL)
    lines = [
        f"Blocked {n_folds}-fold cross-validation on covid.train.csv, valid RMSE of "
        "tested_positive (lower is better), every row on the same folds. Seeded rows: mean over "
        f"{n_seeds} seeds of the {n_folds}-fold mean; ± seeds is the std of the per-seed "
        f"{n_folds}-fold means (seed luck), ± folds the std over folds of the seed-mean (how "
        "much the days differ). The baselines and RidgeCV are one fit per fold: zero seed "
        "spread. The last columns are covidreg default's record against the row, fold by fold: "
        "as `covidreg cv` runs it (each fold early-stopped on a blocked tail of its training "
        "rows, as the peers are, and only scored on its validation rows), and with `stop_on = "
        "valid` (early-stopped on the scored rows themselves: optimistic).",
        "",
        "| model | features | cv RMSE | ± seeds | ± folds | covidreg default | "
        "default, stop_on = valid |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        records = ["-" if r is mine else win_record(mine, r) for mine in (default, optimistic)]
        lines.append(
            f"| {r.label} | {r.features} | {r.rmse.mean():.4f} | {r.seed_std:.4f} | "
            f"{r.fold_std:.4f} | {records[0]} | {records[1]} |"
        )
    folds = range(1, n_folds + 1)
    lines += [
        "",
        f"Per fold (seed-mean RMSE; fold 1 holds each state's earliest days, fold {n_folds} its "
        "latest):",
        "",
        "| model | features | " + " | ".join(f"fold {k}" for k in folds) + " |",
        "| --- | --- |" + " ---: |" * n_folds,
    ]
    for r in rows:
        cells = " | ".join(f"{v:.4f}" for v in r.fold_means)
        lines.append(f"| {r.label} | {r.features} | {cells} |")
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
        "--data-dir", type=Path, default=Path(os.environ.get("COVIDREG_DATA_DIR", "data"))
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
    data_dir = args.data_dir.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        rows = covidreg_rows(data_dir, args.folds, args.seeds, Path(tmp))
    rows += peer_rows(data_dir, args.folds, args.seeds, max(1, args.jobs))
    text = tables(rows, args.folds, args.seeds)
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
