"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``).

One model of the config trains on a training split, one mini-batch per step, while its learning
rate grows exponentially from ``start_lr`` to ``end_lr``. The training loss is smoothed (an
exponential moving average with bias correction) and the test stops once it diverges (above
``diverge`` times its lowest value, or not finite). The suggestion is the rate of the smoothed
loss's steepest descent against log(lr); the rate of its minimum / 10 is shown too.

``lr = "auto"`` takes fastai's valley instead (its default since fastai 2.5): the step a little
past a third of the way down the longest run of falling loss. On this data the curve is nearly
flat until it diverges (the delta target starts at its floor), so its steepest descent is noise:
3e-6 on the default holdout, where the valley gives a rate that trains. ``lr = "auto"`` runs the
test on each model's own training rows before it trains (``engine.build_member``).

The steps are the engine's own arithmetic (``Stack.step_gradients``) and optimizer
(``StackOptimizer``) at a rate set per step. The global random state is put back afterwards and
nothing is written but the outputs, so a later ``covidreg train`` is the same bits as without it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidreg import artifacts
from covidreg.config import AUTO_LR, Config
from covidreg.errors import CovidRegError

if TYPE_CHECKING:
    from covidreg.schema import Arrays

SMOOTHING = 0.98  # the moving average's weight on the past, as fastai and Lightning use
SKIP_BEGIN, SKIP_END = 10, 1  # steps left out of the steepest-descent search (as Lightning)
DIVERGE = 4.0
# the bounds of the test that lr = "auto" runs (those of the lr-find command's defaults)
AUTO_START, AUTO_END, AUTO_STEPS = 1e-7, 10.0, 100


@dataclass
class Suggestion:
    """What the test suggests: the steepest descent (Smith, Lightning), fastai's valley (the
    rate ``lr = auto`` takes) and the rate of the minimum / 10."""

    steepest: float
    valley: float
    min_div10: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LrFindResult:
    run_dir: Path
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: Suggestion
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
    cfg: Config,
    feature_names: list[str],
    train: Arrays,
    valid: Arrays,
    seed: int,
    start_lr: float,
    end_lr: float,
    n_steps: int,
) -> tuple[list[float], list[float], bool]:
    """The rates tried on these rows and the training loss at each (plain batch MSE); True if
    it diverged. The model is the one ``seed`` gives in training."""
    from covidreg.engine import build_member
    from covidreg.optimizers import StackOptimizer
    from covidreg.reproducibility import (
        denormals_flushed,
        global_rng_state,
        resolve_device,
        set_global_rng_state,
    )
    from covidreg.stack import Stack, parameter_groups

    # a rate of its own only weighs the head's (output_lr) against the body's; "auto" has none
    rated = cfg if cfg.lr != AUTO_LR else dataclasses.replace(cfg, lr=start_lr)
    saved_rng = global_rng_state()
    try:
        member = build_member(rated, feature_names, train, valid, seed)
        stack = Stack(rated, [member], [0], resolve_device(cfg.device))
        base_rates, groups = parameter_groups(rated, len(stack.layers))
        optimizer = StackOptimizer(rated, stack.params, groups)
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
                    if not math.isfinite(loss) or _diverged(losses):
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


def _diverged(losses: list[float]) -> bool:
    """Above ``DIVERGE`` times its lowest value since the first ``SKIP_BEGIN`` steps: before
    them the average holds a few batches only, too noisy a yardstick."""
    settled = smooth(losses)[SKIP_BEGIN:]
    return len(settled) > 1 and settled[-1] > DIVERGE * min(settled)


def suggest(lrs: list[float], smoothed: list[float]) -> Suggestion:
    """The steepest descent of the smoothed loss against log(lr), fastai's valley and the rate
    of the minimum / 10, over the steps after the first ``SKIP_BEGIN`` and before the last
    ``SKIP_END``."""
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
    window = np.asarray(smoothed[begin:end])
    slope = np.gradient(window, np.log(np.asarray(lrs[begin:end])))
    steepest = float(lrs[begin + int(np.argmin(slope))])
    return Suggestion(steepest, float(lrs[begin + valley(window)]), minimum)


def valley(losses: np.ndarray) -> int:
    """fastai's ``valley``: the longest run of falling loss (its longest decreasing
    subsequence), and the step a little past a third of the way down it."""
    longest = np.ones(len(losses), dtype=np.int64)  # longest decreasing subsequence ending at i
    end = 0
    for i in range(1, len(losses)):
        higher = losses[:i] > losses[i]
        if higher.any():
            longest[i] = longest[:i][higher].max() + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end]
    third = (end - start) / 3
    return int(start + int(third) + int(third / 2))


def find_rate(
    cfg: Config, feature_names: list[str], train: Arrays, valid: Arrays, seed: int
) -> dict[str, Any]:
    """``lr = "auto"``: the range test on these training rows with the command's defaults; the
    rate (the valley) and how it was found, as plain types for metrics.json."""
    lrs, losses, _ = range_test(
        cfg, feature_names, train, valid, seed, AUTO_START, AUTO_END, AUTO_STEPS
    )
    try:
        found = suggest(lrs, smooth(losses))
    except CovidRegError:
        raise CovidRegError(
            f"lr = auto: the range test diverged after {len(lrs)} steps, too few to suggest a "
            "rate; give --lr a number (covidreg lr-find shows the curve)"
        ) from None
    return {
        "lr": found.valley,
        "rule": "valley",
        **found.as_dict(),
        "start_lr": AUTO_START,
        "end_lr": AUTO_END,
        "steps": AUTO_STEPS,
    }


def holdout_range_test(
    cfg: Config, start_lr: float, end_lr: float, n_steps: int
) -> tuple[list[float], list[float], bool]:
    """The range test on the training split of ``covidreg train`` with this config."""
    from covidreg.experiment import check_train_inputs
    from covidreg.schema import feature_columns, select
    from covidreg.splits import holdout_split

    data = check_train_inputs(cfg)
    train_idx, valid_idx = holdout_split(
        data.train.states, cfg.split, cfg.valid_ratio, cfg.seed, cfg.purge
    )
    columns = feature_columns(data.feature_names)
    train = select(data.train, columns, train_idx)
    valid = select(data.train, columns, valid_idx)
    return range_test(cfg, data.feature_names, train, valid, cfg.seed, start_lr, end_lr, n_steps)


def run_lr_find(
    cfg: Config,
    start_lr: float = AUTO_START,
    end_lr: float = AUTO_END,
    n_steps: int = AUTO_STEPS,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    overwrite: bool = False,
) -> LrFindResult:
    """``covidreg lr-find``: the range test, then lr_find.csv and lr_find.png (``overwrite``:
    replacing the run an ``out`` holds; else that is refused)."""
    check_bounds(start_lr, end_lr, n_steps)
    artifacts.check_run_target(out, overwrite)
    lrs, losses, diverged = holdout_range_test(cfg, start_lr, end_lr, n_steps)
    smoothed = smooth(losses)
    suggestion = suggest(lrs, smoothed)
    run_dir = artifacts.claim_run_dir(out, runs_dir, "lr-find", overwrite)
    artifacts.write_csv(
        run_dir / "lr_find.csv",
        ["step", "lr", "loss", "smoothed_loss"],
        [
            (i + 1, repr(lr), repr(loss), repr(s))
            for i, (lr, loss, s) in enumerate(zip(lrs, losses, smoothed, strict=True))
        ],
    )
    artifacts.plot_lr_find(run_dir / "lr_find.png", lrs, losses, smoothed, suggestion)
    return LrFindResult(run_dir, lrs, losses, smoothed, suggestion, diverged)
