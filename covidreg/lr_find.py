"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``).

One model of the config trains on the training split of ``covidreg train``, one mini-batch per
step, while its learning rate grows exponentially from ``start_lr`` to ``end_lr``. The training
loss is smoothed (an exponential moving average with bias correction) and the test stops once it
diverges (above ``diverge`` times its lowest value, or not finite). The suggestion is the rate of
the smoothed loss's steepest descent against log(lr); the rate of its minimum / 10 is shown too.

The steps are the engine's own arithmetic (``Stack.step_gradients``) and optimizer
(``StackOptimizer``) at a rate set per step. The global random state is put back afterwards and
nothing is written but the outputs, so a later ``covidreg train`` is the same bits as without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidreg import artifacts
from covidreg.config import Config
from covidreg.errors import CovidRegError

SMOOTHING = 0.98  # the moving average's weight on the past, as fastai and Lightning use
SKIP_BEGIN, SKIP_END = 10, 1  # steps left out of the steepest-descent search (as Lightning)


@dataclass
class LrFindResult:
    run_dir: Path
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    min_lr_div10: float
    diverged: bool


def check_bounds(start_lr: float, end_lr: float, n_steps: int) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise CovidRegError(f"--start-lr must be a positive number, got {start_lr!r}")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise CovidRegError(
            f"--end-lr ({end_lr:g}) must be higher than --start-lr ({start_lr:g}); "
            "the rate grows from the start to the end"
        )
    if n_steps < SKIP_BEGIN + SKIP_END + 2:
        raise CovidRegError(f"--steps must be {SKIP_BEGIN + SKIP_END + 2} or more, got {n_steps}")


def range_test(
    cfg: Config, start_lr: float, end_lr: float, n_steps: int, diverge: float = 4.0
) -> tuple[list[float], list[float], bool]:
    """The rates tried and the training loss at each (plain batch MSE); True if it diverged."""
    from covidreg.engine import build_member
    from covidreg.experiment import check_train_inputs
    from covidreg.reproducibility import (
        denormals_flushed,
        global_rng_state,
        resolve_device,
        set_global_rng_state,
    )
    from covidreg.schema import feature_columns, select
    from covidreg.splits import holdout_split
    from covidreg.stack import Stack, parameter_groups

    data = check_train_inputs(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.states, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    columns = feature_columns(data.feature_names)
    saved_rng = global_rng_state()
    try:
        member = build_member(
            cfg,
            data.feature_names,
            select(data.train, columns, train_idx),
            select(data.train, columns, valid_idx),
            cfg.seed,
        )
        stack = Stack(cfg, [member], [0], resolve_device(cfg.device))
        base_rates, groups = parameter_groups(cfg, len(stack.layers))
        from covidreg.optimizers import StackOptimizer

        optimizer = StackOptimizer(cfg, stack.params, groups)
        growth = (end_lr / start_lr) ** (1 / (n_steps - 1))
        lrs: list[float] = []
        losses: list[float] = []
        with denormals_flushed(cfg.flush_denormal):
            while len(lrs) < n_steps:
                plan = stack.plan(cfg.batch_size)
                order = member.loader.sampler.epoch_order()[0]
                epoch = stack.epoch_rows([order], plan)
                for s, (_, _, active) in enumerate(plan.steps):
                    lr = start_lr * growth ** len(lrs)
                    loss = stack.epoch_step(epoch, plan, s).item()
                    lrs.append(lr)
                    losses.append(loss)
                    if not math.isfinite(loss) or _diverged(losses, diverge):
                        return lrs, losses, True
                    # the head's rate (output_lr) keeps its ratio to the body's
                    rates = {0: [lr * r / base_rates[0] for r in base_rates]}
                    optimizer.step(active.ids, active.params, active.grads, rates)
                    if len(lrs) == n_steps:
                        break
        return lrs, losses, False
    finally:
        set_global_rng_state(saved_rng)


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The exponential moving average of the losses, bias-corrected (as fastai's)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def _diverged(losses: list[float], factor: float) -> bool:
    smoothed = smooth(losses)
    return len(smoothed) > 1 and smoothed[-1] > factor * min(smoothed)


def suggestions(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """The rate of the steepest descent of the smoothed loss against log(lr), and the rate of
    its minimum / 10."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    lrs = [lrs[i] for i in finite]
    smoothed = [smoothed[i] for i in finite]
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    minimum = lrs[low] / 10
    begin, end = SKIP_BEGIN, len(smoothed) - SKIP_END
    if end - begin < 2:
        raise CovidRegError(
            f"the loss diverged after {len(lrs)} steps, too few to suggest a rate; "
            "lower --end-lr or raise --steps"
        )
    slope = np.gradient(np.asarray(smoothed[begin:end]), np.log(np.asarray(lrs[begin:end])))
    return float(lrs[begin + int(np.argmin(slope))]), float(minimum)


def run_lr_find(
    cfg: Config,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    n_steps: int = 100,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
) -> LrFindResult:
    """``covidreg lr-find``: the range test, then lr_find.csv and lr_find.png."""
    check_bounds(start_lr, end_lr, n_steps)
    artifacts.check_output_target(out)
    lrs, losses, diverged = range_test(cfg, start_lr, end_lr, n_steps)
    smoothed = smooth(losses)
    suggested, minimum = suggestions(lrs, smoothed)
    run_dir = (
        artifacts.ensure_writable_dir(out) if out else artifacts.new_run_dir(runs_dir, "lr-find")
    )
    artifacts.write_csv(
        run_dir / "lr_find.csv",
        ["step", "lr", "loss", "smoothed_loss"],
        [
            (i + 1, repr(lr), repr(loss), repr(s))
            for i, (lr, loss, s) in enumerate(zip(lrs, losses, smoothed, strict=True))
        ],
    )
    artifacts.plot_lr_find(run_dir / "lr_find.png", lrs, losses, smoothed, suggested, minimum)
    return LrFindResult(run_dir, lrs, losses, smoothed, suggested, minimum, diverged)
