"""Config variants side by side: ``covidreg compare --lr 1e-4,1e-3,1e-2``.

Each key given on the command line takes one or more values (``,`` between values; ``;``
between the values of a list key such as ``hidden``); several keys give their grid. Every
variant trains on the same split with the same seed as ``covidreg train`` with that value.

A model's bits depend on the stack it trains in (``covidreg.engine``), so each variant trains
as its own stack of one, the stack ``covidreg train`` uses: a variant's numbers equal
``covidreg train`` with that value, bit for bit. The variants' stacks train side by side in
forked processes (``covidreg.processes``), which only schedule them. With ``n_folds`` (and
``n_seeds``) each variant is instead cross-validated as ``covidreg cv`` would (its folds in
cv's stacks), once per seed, and its RMSE is the mean and spread over its folds x seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidreg import artifacts, tensorboard_logs
from covidreg.config import (
    FIELDS,
    Config,
    coerce_value,
    field_kind,
    is_list,
    resolve_config,
    show_value,
)
from covidreg.engine import DivergedAtOnce, EpochRecord, FitResult, FittedModel
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, fit_model, load_data, member_for, preflight
from covidreg.model import init_warning
from covidreg.splits import holdout_split

MAX_VARIANTS = 64
RESULT_COLUMNS = (
    "epochs_run",
    "best_epoch",
    "valid_rmse",
    "valid_rmse_std",
    "train_loss",
    "stop_reason",
)


@dataclass
class Variant:
    """One point of the grid: the values of the compared keys and the config they give."""

    values: dict[str, Any]
    cfg: Config

    @property
    def name(self) -> str:
        return "/".join(f"{key}={show_value(value)}" for key, value in self.values.items())


@dataclass
class VariantResult:
    variant: Variant
    epochs_run: float
    best_epoch: float
    valid_rmse: float
    valid_rmse_std: float
    train_loss: float
    stop_reason: str
    rmses: list[float]  # one per model: the holdout's one, or each fold x seed
    histories: list[list[EpochRecord]] = field(repr=False, default_factory=list)
    found_lrs: list[float] = field(default_factory=list)  # lr = auto: each model's found rate


@dataclass
class CompareResult:
    run_dir: Path
    keys: list[str]  # the compared keys: the columns of compare.csv
    results: list[VariantResult]
    n_folds: int | None
    n_seeds: int

    @property
    def best(self) -> VariantResult:
        return min(self.results, key=lambda r: r.valid_rmse)


def parse_values(key: str, text: str) -> list[Any]:
    """The values of one key: ``,``-separated, or ``;``-separated for a list key."""
    if key not in FIELDS:
        coerce_value(key, text, "command-line flags")  # the unknown-key error, naming the key
    separator = ";" if is_list(key) else ","
    if field_kind(key) is str and not is_list(key) and not str(text).strip():
        return [""]  # one empty value, as in train: --test-csv '' (no test CSV)
    items = [item.strip() for item in str(text).split(separator)]
    if any(not item for item in items):
        raise CovidRegError(
            f"--{key.replace('_', '-')} {text!r} has an empty value; separate values with "
            f"'{separator}'"
        )
    values = [coerce_value(key, item, "command-line flags", parse_text=True) for item in items]
    duplicates = [text for text, n in Counter(map(show_value, values)).items() if n > 1]
    if duplicates:
        raise CovidRegError(f"--{key.replace('_', '-')} repeats the value {duplicates[0]}")
    return values


def make_variants(
    config_path: str | Path | None, options: dict[str, str | None]
) -> tuple[list[Variant], list[str], list[str]]:
    """The grid of the given keys' values, each variant's config resolved and validated
    (defaults -> ``config_path`` -> its values). Returns the variants, the compared keys
    (those with several values; every given key when none has) and warnings."""
    given = {key: text for key, text in options.items() if text is not None}
    if not given:
        raise CovidRegError(
            "compare needs at least one key with values to compare, e.g. --lr 1e-4,1e-3,1e-2"
        )
    values = {key: parse_values(key, text) for key, text in given.items()}
    n_variants = math.prod(len(v) for v in values.values())
    if n_variants > MAX_VARIANTS:
        sizes = " x ".join(str(len(v)) for v in values.values())
        raise CovidRegError(
            f"{sizes} = {n_variants} variants is too many to compare (at most {MAX_VARIANTS}); "
            "give fewer values"
        )
    single = [f"--{key.replace('_', '-')}" for key, v in values.items() if len(v) == 1]
    warnings = []
    if single:
        warnings.append(
            f"{', '.join(single)}: one value each, nothing is compared along "
            f"{'it' if len(single) == 1 else 'them'} (every variant uses that value)"
        )
    keys = [key for key, v in values.items() if len(v) > 1] or list(values)
    variants = []
    for combo in itertools.product(*values.values()):
        chosen = dict(zip(values, combo, strict=True))
        cfg = resolve_config(config_path, {k: show_value(v) for k, v in chosen.items()})
        variants.append(Variant({k: chosen[k] for k in keys}, cfg))
    for variant in variants:  # a symmetric init is one of the things people compare
        warning = init_warning(variant.cfg)
        if warning:
            warnings.append(f"{variant.name}: {warning}")
    return variants, keys, warnings


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """What a variant trains on, read and checked before anything is written."""

    data: LoadedData
    splits: list[list[tuple[np.ndarray, np.ndarray]]]  # per seed: the holdout, or the folds


def prepare(variants: list[Variant], n_folds: int | None, n_seeds: int) -> list[_Prepared]:
    """Read the data once per distinct input and check every variant against it."""
    from covidreg.crossval import make_folds
    from covidreg.seeds import seed_list

    read: dict[tuple[str, tuple[str, ...]], LoadedData] = {}
    prepared = []
    for variant in variants:
        cfg = variant.cfg
        where = (cfg.train_csv, tuple(cfg.features))
        if where not in read:
            read[where] = load_data(cfg, with_test=False)
        data = read[where]
        if n_folds is None:
            split = holdout_split(data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge)
            preflight(cfg, data, len(split[0]))
            splits = [[split]]
        else:  # make_folds runs the preflight on every fold
            splits = [
                make_folds(dataclasses.replace(cfg, seed=s), data, n_folds)
                for s in seed_list(cfg.seed, n_seeds)
            ]
        prepared.append(_Prepared(data, splits))
    return prepared


def train_holdouts(
    variants: list[Variant],
    prepared: list[_Prepared],
    on_done: Callable[[int], None] | None = None,
) -> list[FittedModel]:
    """Each variant as its own stack of one (``experiment.fit_model``, as ``covidreg train``),
    the stacks side by side in forked processes."""
    from covidreg.processes import StackProcesses, process_count
    from covidreg.reproducibility import resolve_device, set_threads

    def members_of(i: int) -> list[Any]:
        cfg, p = variants[i].cfg, prepared[i]
        (train_idx, valid_idx) = p.splits[0][0]
        return [member_for(cfg, p.data, train_idx, valid_idx, cfg.seed)]

    def train_stack(i: int) -> list[FittedModel]:
        cfg, p = variants[i].cfg, prepared[i]
        train_idx, valid_idx = p.splits[0][0]
        try:
            return [fit_model(cfg, p.data, train_idx, valid_idx, cfg.seed)]
        except DivergedAtOnce as exc:
            # a rate far too large is one of the answers a comparison looks for, not a failure
            (member,) = members_of(i)
            result = FitResult([], 0, math.inf, "diverged", 0.0, str(exc))
            return [FittedModel(member.model, result, member.mean, member.std, member.lr_finder)]

    # the members receive the weights and results of the stacks trained by other processes
    stacks = [members_of(i) for i in range(len(variants))]
    first = variants[0].cfg
    n_processes = process_count(first, len(stacks), resolve_device(first.device))
    fitted: list[FittedModel | None] = [None] * len(variants)
    reported: set[int] = set()

    def report() -> None:
        for i, stack in enumerate(stacks):
            if fitted[i] is None and stack[0].fitted is not None:
                fitted[i] = stack[0].fitted
            if fitted[i] is not None and i not in reported:
                reported.add(i)
                if on_done is not None:
                    on_done(i)

    with StackProcesses(stacks, n_processes, train_stack) as others:
        for i in range(0, len(stacks), n_processes):
            (fitted[i],) = train_stack(i)
            others.poll()
            report()
        others.wait()
    set_threads(first.threads)
    report()
    return [f for f in fitted if f is not None]


def _holdout_result(variant: Variant, fitted: FittedModel) -> VariantResult:
    result = fitted.result
    rmse = math.sqrt(result.best_valid_mse)
    return VariantResult(
        variant=variant,
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        valid_rmse=rmse,
        valid_rmse_std=0.0,
        train_loss=result.history[-1].train_loss if result.history else math.nan,
        stop_reason=result.stop_reason,
        rmses=[rmse],
        histories=[result.history],
        found_lrs=found_lrs([fitted]),
    )


def found_lrs(fitted: list[FittedModel]) -> list[float]:
    return [f.lr_finder["lr"] for f in fitted if f.lr_finder is not None]


def cross_validate_variant(variant: Variant, prepared: _Prepared, n_seeds: int) -> VariantResult:
    """The variant's folds x seeds, each seed's folds trained as ``covidreg cv`` trains them."""
    from covidreg.crossval import cross_validate, mean_std
    from covidreg.seeds import seed_list

    fitted: list[FittedModel] = []
    for seed, folds in zip(seed_list(variant.cfg.seed, n_seeds), prepared.splits, strict=True):
        cfg = dataclasses.replace(variant.cfg, seed=seed)
        fitted += cross_validate(cfg, prepared.data, folds)
    results = [f.result for f in fitted]
    rmses = [math.sqrt(r.best_valid_mse) for r in results]
    spread = mean_std(rmses)
    reasons = Counter(r.stop_reason for r in results)
    return VariantResult(
        variant=variant,
        epochs_run=float(np.mean([len(r.history) for r in results])),
        best_epoch=float(np.mean([r.best_epoch for r in results])),
        valid_rmse=spread["mean"],
        valid_rmse_std=spread["std"],
        train_loss=float(np.mean([r.history[-1].train_loss for r in results])),
        stop_reason=" ".join(f"{reason}:{n}" for reason, n in reasons.most_common())
        if len(reasons) > 1
        else results[0].stop_reason,
        rmses=rmses,
        histories=[r.history for r in results],
        found_lrs=found_lrs(fitted),
    )


def run_compare(
    variants: list[Variant],
    keys: list[str],
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    n_folds: int | None = None,
    n_seeds: int = 1,
    on_start: Callable[[Path, int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> CompareResult:
    """``covidreg compare``: check every variant, train them, write the run directory
    (``overwrite``: replacing the run an ``out`` holds; else that is refused)."""
    if n_folds is not None and n_folds < 2:
        raise CovidRegError(f"--folds must be 2 or more, got {n_folds}")
    if n_seeds < 1:
        raise CovidRegError(f"--seeds must be 1 or more, got {n_seeds}")
    if n_seeds > 1 and n_folds is None:
        raise CovidRegError("--seeds on compare needs --folds (each seed's folds are compared)")
    artifacts.check_run_target(out, overwrite)
    prepared = prepare(variants, n_folds, n_seeds)
    with artifacts.run_dir_for(out, runs_dir, "compare", overwrite) as run_dir:
        return _compare_into(run_dir, variants, keys, prepared, n_folds, n_seeds, on_start, on_done)


def _compare_into(
    run_dir: Path,
    variants: list[Variant],
    keys: list[str],
    prepared: list[_Prepared],
    n_folds: int | None,
    n_seeds: int,
    on_start: Callable[[Path, int], None] | None,
    on_done: Callable[[int], None] | None,
) -> CompareResult:
    if on_start is not None:
        on_start(run_dir, len(variants))
    with artifacts.Plots() as plots:
        if n_folds is None:
            fitted = train_holdouts(variants, prepared, on_done)
            results = [_holdout_result(v, f) for v, f in zip(variants, fitted, strict=True)]
        else:
            results = []
            for i, (variant, p) in enumerate(zip(variants, prepared, strict=True)):
                results.append(cross_validate_variant(variant, p, n_seeds))
                if on_done is not None:
                    on_done(i)
        compare = CompareResult(run_dir, keys, results, n_folds, n_seeds)
        write_outputs(compare, plots)
        write_logs(compare)
        plots.finish()
    return compare


# --- outputs ------------------------------------------------------------------------------------


def log_folder(variant: Variant) -> str:
    """The variant's TensorBoard folder: one level per compared key, ``key=value``, with any
    character that a path would read differently replaced (a value may be a file path)."""
    return "/".join(
        re.sub(r"[^A-Za-z0-9._=,+-]", "_", f"{key}={show_value(value)}")
        for key, value in variant.values.items()
    )


def write_logs(compare: CompareResult) -> None:
    """``--tensorboard``: each variant's epochs under ``tensorboard/<key=value>/``, its folds
    (with ``--folds``) under ``seed_<s>/fold_<k>/`` below it."""
    from covidreg.seeds import seed_list

    for r in compare.results:
        if not r.variant.cfg.tensorboard:
            continue
        base = compare.run_dir / tensorboard_logs.LOG_DIR / log_folder(r.variant)
        if compare.n_folds is None:
            folders = [base]
        else:
            folders = [
                base / f"seed_{seed}" / f"fold_{k}"
                for seed in seed_list(r.variant.cfg.seed, compare.n_seeds)
                for k in range(1, compare.n_folds + 1)
            ]
        for folder, history in zip(folders, r.histories, strict=True):
            if history:  # a variant that diverged in its first epoch has none
                tensorboard_logs.write_history(folder, history)


def write_outputs(compare: CompareResult, plots: artifacts.Plots) -> None:
    run_dir, results = compare.run_dir, compare.results
    columns = [c for c in RESULT_COLUMNS if compare.n_folds or c != "valid_rmse_std"]
    rows = []
    auto = any(r.found_lrs for r in results)
    for r in results:
        measured = {
            "epochs_run": r.epochs_run,
            "best_epoch": r.best_epoch,
            "valid_rmse": repr(r.valid_rmse),
            "valid_rmse_std": repr(r.valid_rmse_std),
            "train_loss": repr(r.train_loss),
            "stop_reason": r.stop_reason,
        }
        values = [show_value(r.variant.values[k]) for k in compare.keys]
        found = [";".join(repr(lr) for lr in r.found_lrs)] if auto else []
        rows.append(values + [measured[c] for c in columns] + found)
    # lr = auto: the rates the range test found (one per model, ';'-separated)
    found_column = ["found_lr"] if auto else []
    artifacts.write_csv(run_dir / "compare.csv", [*compare.keys, *columns, *found_column], rows)
    if compare.n_folds is None:
        artifacts.write_csv(
            run_dir / "histories.csv",
            ["variant", "epoch", "train_loss", "valid_loss", "lr"],
            [
                (r.variant.name, e.epoch, repr(e.train_loss), repr(e.valid_loss), repr(e.lr))
                for r in results
                for e in r.histories[0]
            ],
        )
        curves = [
            (
                r.variant.name,
                [e.epoch for e in r.histories[0]],
                [e.train_loss for e in r.histories[0]],
                [e.valid_loss for e in r.histories[0]],
            )
            for r in results
        ]
        best = [int(r.best_epoch) for r in results]  # 0: diverged in its first epoch
        plots.draw("learning_curve", run_dir / "curves.png", curves, best, "Compared variants")
    else:
        what = (
            f"{compare.n_folds} folds x {compare.n_seeds} seed{'s' if compare.n_seeds > 1 else ''}"
        )
        plots.draw(
            "spread",
            run_dir / "spread.png",
            [r.variant.name for r in results],
            [r.rmses for r in results],
            what,
        )
