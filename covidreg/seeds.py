"""Repeat a run over several seeds: how much of a result is luck."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidreg import artifacts, tensorboard_logs
from covidreg.config import MAX_SEED, Config, from_dict, to_dict
from covidreg.crossval import FoldEvents, mean_std
from covidreg.engine import Engine, FittedModel, stack_groups
from covidreg.errors import CovidRegError, RunInterrupted
from covidreg.experiment import (
    SEEDS_STATE,
    STATE_FILE,
    TRAIN_STATE,
    LoadedData,
    check_train_inputs,
    read_test,
    resume_command,
)


@dataclass
class SeedRun:
    seed: int
    run_dir: Path
    valid_rmse: float
    result: Any


@dataclass
class SeedsResult:
    run_dir: Path
    runs: list[SeedRun]
    summary: dict[str, Any]


def seed_list(first: int, n_seeds: int) -> list[int]:
    """Seeds first, first+1, ...: the first run is the same run as without --seeds."""
    if n_seeds < 1:
        raise CovidRegError(f"--seeds must be 1 or more, got {n_seeds}")
    if first + n_seeds - 1 > MAX_SEED:
        raise CovidRegError(
            f"--seed {first} with --seeds {n_seeds} goes past the largest seed, {MAX_SEED}; "
            f"use a seed of at most {MAX_SEED - n_seeds + 1}"
        )
    return [first + i for i in range(n_seeds)]


def repeat_over_seeds(
    cfg: Config,
    n_seeds: int,
    out: str | Path | None,
    runs_dir: str | Path,
    name: str,
    run_one: Callable[[Config, Path, LoadedData], tuple[float, Any]],
    check: Callable[[Config], LoadedData],
    overwrite: bool = False,
) -> SeedsResult:
    """Run ``run_one(cfg with seed s, out/seed_<s>, data)`` for each seed; summarise its RMSE
    (``covidreg cv --seeds``: each seed's cv stacks its own folds).

    ``check`` reads and validates the inputs first (once for every seed), so bad input fails
    before anything is written; ``overwrite``: an ``out`` holding another run is replaced.
    """
    seeds = seed_list(cfg.seed, n_seeds)
    artifacts.check_run_target(out, overwrite)
    data = check(cfg)
    with artifacts.run_dir_for(out, runs_dir, name, overwrite) as run_dir:
        runs = []
        for seed in seeds:
            seed_dir = run_dir / f"seed_{seed}"
            rmse, result = run_one(dataclasses.replace(cfg, seed=seed), seed_dir, data)
            runs.append(SeedRun(seed, seed_dir, rmse, result))
        return _summarize(cfg, run_dir, runs, data)


def stack_state_file(index: int) -> str:
    """Where stack ``index`` (from 0) of a --seeds run saves its training state."""
    return f"training_state.stack_{index + 1}.pt"


def train_seeds(
    cfg: Config,
    n_seeds: int,
    out: str | Path | None,
    runs_dir: str | Path,
    events: FoldEvents,
    data: LoadedData,
    on_start: Callable[[Path], None] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> SeedsResult:
    """``covidreg train --seeds``: one model per seed on the same holdout, trained as stacks of
    seeds (``engine.stack_groups``), each written as the train run ``out/seed_<s>``.

    A seed's model is the bits of its stack: rerunning the same ``--seeds`` command repeats
    them; ``covidreg train --seed s`` trains the same model alone, equal to float rounding.
    Each stack saves its training state as train does (every ``checkpoint_every`` epochs);
    ``resume``: go on with the interrupted run in ``out`` from the states it saved
    (``resume_seeds``), to the same bits. ``overwrite``: an ``out`` holding another run is
    replaced (else refused).
    """
    from covidreg.splits import holdout_split

    seeds = seed_list(cfg.seed, n_seeds)
    tensorboard_logs.check(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.order, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    if resume:
        run_dir, created = Path(str(out)), False
        saved = _saved_stacks(cfg, run_dir, n_seeds)
    else:
        artifacts.check_run_target(out, overwrite, resumable=True)
        created = out is None or overwrite or not Path(out).exists()
        run_dir, saved = artifacts.claim_run_dir(out, runs_dir, "train", overwrite, True), {}
    # what --resume needs to go on, from the start if no stack has saved a state yet
    manifest = {"kind": SEEDS_STATE, "config": to_dict(cfg), "n_seeds": n_seeds}
    artifacts.save_checkpoint(run_dir / STATE_FILE, manifest)
    if on_start is not None:
        on_start(run_dir)
    try:
        runs = _train_seed_stacks(cfg, seeds, run_dir, events, data, train_idx, valid_idx, saved)
    except CovidRegError:  # the inputs fail, so would a resume: nothing is left to go on with
        _remove_states(run_dir)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds while the directory is empty
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(_interrupted_message(cfg, run_dir)) from None
    result = _summarize(cfg, run_dir, runs, data)
    _remove_states(run_dir)
    return result


def _train_seed_stacks(
    cfg: Config,
    seeds: list[int],
    run_dir: Path,
    events: FoldEvents,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    saved: dict[int, dict[str, Any]],
) -> list[SeedRun]:
    """Train the seeds' stacks (from their ``saved`` states) and write each seed's run."""
    from covidreg.crossval import cross_validate
    from covidreg.experiment import RunResult, run_metrics, write_run

    runs: list[SeedRun] = []

    def on_fold_fitted(k: int, fitted: FittedModel) -> None:
        seed_cfg = dataclasses.replace(cfg, seed=seeds[k - 1])
        seed_dir = run_dir / f"seed_{seed_cfg.seed}"
        seed_dir.mkdir(exist_ok=True)  # a resumed run may have written it before
        metrics = run_metrics(seed_cfg, data, train_idx, valid_idx, fitted)
        write_run(seed_dir, seed_cfg, data, valid_idx, fitted, metrics, plots)
        if cfg.tensorboard:  # one folder per seed under one log, so TensorBoard overlays them
            log_dir = run_dir / tensorboard_logs.LOG_DIR / f"seed_{seed_cfg.seed}"
            tensorboard_logs.write_history(log_dir, fitted.result.history)
        result = RunResult(seed_dir, metrics, fitted.result, fitted.result.message)
        runs.append(SeedRun(seed_cfg.seed, seed_dir, metrics["valid_rmse"], result))
        if events.on_fold_fitted is not None:
            events.on_fold_fitted(k, fitted)

    def save_stack(index: int, engine: Engine) -> None:
        state = {"kind": TRAIN_STATE, "config": to_dict(cfg), **engine.state_dict()}
        artifacts.save_checkpoint(run_dir / stack_state_file(index), state, durable=False)

    holdouts = [(train_idx, valid_idx)] * len(seeds)
    shown = dataclasses.replace(events, on_fold_fitted=on_fold_fitted, on_checkpoint=save_stack)
    with artifacts.Plots() as plots:
        cross_validate(cfg, data, holdouts, shown, seeds=seeds, holdouts=True, resume_states=saved)
        plots.finish()
    return runs


def _interrupted_message(cfg: Config, run_dir: Path) -> str:
    """What an interrupted --seeds run kept, and how to go on: its manifest is saved first, so
    --resume always goes on, from the stacks' training states or from their start."""
    resume = f"continue with '{resume_command(run_dir)}'"
    if any(run_dir.glob("training_state.stack_*.pt")):
        return f"the stacks' training states are saved in {run_dir}; {resume}"
    if cfg.checkpoint_every == 0:
        why = "checkpoint_every = 0 saves no training state"
    else:
        why = (
            f"no stack had saved a training state yet (one is saved every "
            f"{cfg.checkpoint_every} epochs: checkpoint_every)"
        )
    return f"{why}; {resume}, which trains the seeds from their start"


def _saved_stacks(cfg: Config, run_dir: Path, n_seeds: int) -> dict[int, dict[str, Any]]:
    """The training states the stacks of an interrupted --seeds run saved, by stack."""
    saved = {}
    for index in range(len(stack_groups(cfg, n_seeds))):
        path = run_dir / stack_state_file(index)
        if not path.exists():  # interrupted before this stack's first checkpoint
            continue
        state = artifacts.load_checkpoint(path, "training state")
        if state.get("kind") != TRAIN_STATE or state.get("config") != to_dict(cfg):
            raise CovidRegError(
                f"{path} is not a training state of the run in {run_dir}; remove it to train "
                "that stack again from its start"
            )
        saved[index] = state
    return saved


def _remove_states(run_dir: Path) -> None:
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    for path in run_dir.glob("training_state.stack_*.pt"):
        path.unlink(missing_ok=True)


def resume_seeds(
    run_dir: str | Path,
    state: dict[str, Any],
    events: FoldEvents,
    on_start: Callable[[Path], None] | None = None,
) -> SeedsResult:
    """Go on with the interrupted ``covidreg train --seeds`` run in ``run_dir``, whose
    ``STATE_FILE`` holds ``state`` (``experiment.load_training_state``)."""
    cfg = from_dict(state["config"], str(Path(run_dir) / STATE_FILE))
    data = check_train_inputs(cfg)
    return train_seeds(
        cfg, int(state["n_seeds"]), run_dir, "runs", events, data, on_start, resume=True
    )


def _summarize(cfg: Config, run_dir: Path, runs: list[SeedRun], data: LoadedData) -> SeedsResult:
    """seeds.json and the seed ensemble's pred.csv."""
    summary = {
        "n_seeds": len(runs),
        "seeds": [r.seed for r in runs],
        "valid_rmse": mean_std([r.valid_rmse for r in runs]),
        "runs": [{"seed": r.seed, "valid_rmse": r.valid_rmse, "dir": r.run_dir.name} for r in runs],
    }
    artifacts.write_json(run_dir / "seeds.json", summary)
    test = data.test
    if test is None:  # cv without --predict read no test CSV
        test = read_test(cfg, data.train)
    if test is not None:
        # the seed models' (or seed x fold models') average: an ensemble is steadier than a run
        from covidreg.inference import ensemble_predict, load_models

        pred = ensemble_predict(load_models(run_dir), test)
        artifacts.write_predictions(run_dir / "pred.csv", test.ids, pred)
    return SeedsResult(run_dir, runs, summary)
