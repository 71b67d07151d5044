"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``).

One model of the config trains on a training split, one mini-batch per step, while its learning
rate grows exponentially from ``start_lr`` to ``end_lr``. The training loss is smoothed (an
exponential moving average with bias correction) and the test stops once it diverges (above
``diverge`` times its lowest value, or not finite).

``suggest`` makes the one suggestion, which ``covidreg lr-find`` leads with and ``lr = "auto"``
takes: fastai's valley (its default since fastai 2.5), the step a little past a third of the
way down the longest run of falling loss. Two more points are shown for reference: the rate of
the smoothed loss's steepest descent against log(lr) (Smith, Lightning) and the rate of its
minimum / 10, the latter left out when it lies below the first rate tested. On this data the
curve is nearly flat until it diverges (the delta target starts at its floor), so its steepest
descent is noise: 3e-6 on the default holdout, where the valley gives a rate that trains.
``lr = "auto"`` runs the test on each model's own training rows before it trains
(``member_at_rate``).

The steps are the engine's own arithmetic (``Stack.step_gradients``) and optimizer
(``StackOptimizer``) at a rate set per step. The global random state is put back afterwards and
nothing is written, so a later ``covidreg train`` is the same bits as without it. The command,
``covidreg lr-find``, is ``covidreg.lr_find``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidreg.config import AUTO_END, AUTO_LR, AUTO_START, AUTO_STEPS, Config
from covidreg.engine import Member, build_member
from covidreg.errors import CovidRegError
from covidreg.layout import Layout
from covidreg.schema import Arrays

SMOOTHING = 0.98  # the moving average's weight on the past, as fastai and Lightning use
SKIP_BEGIN, SKIP_END = 10, 1  # steps no point is taken from (as Lightning leaves them out)
DIVERGE = 4.0


@dataclass
class Suggestion:
    """What the test suggests, and two points shown beside it for reference."""

    suggested: float  # fastai's valley: the rate lr = auto takes and lr-find suggests
    steepest: float  # the smoothed loss's steepest descent against log(lr)
    min_loss: float  # the rate of the lowest smoothed loss
    min_loss_div10: float | None  # min_loss / 10; None where that lies below the first rate

    RULE = "valley"

    def as_dict(self) -> dict[str, Any]:
        """The points by the names every output gives them (result line, lr_find.json,
        lr_find.csv's point column, the plot's legend, metrics.json's lr_finder)."""
        return {
            "suggested_lr": self.suggested,
            "rule": self.RULE,
            "steepest_lr": self.steepest,
            "min_loss_lr": self.min_loss,
            "min_loss_lr_div10": self.min_loss_div10,
        }


@dataclass
class RangeTest:
    """The rates tried, the training loss at each, smoothed, and what they suggest."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool
    suggestion: Suggestion
    start_lr: float
    end_lr: float
    n_steps: int

    @property
    def auto_bounds(self) -> bool:
        """Whether these are the bounds of ``lr = "auto"``'s test (then its suggestion is the
        rate ``lr = "auto"`` takes on the same rows)."""
        return (self.start_lr, self.end_lr, self.n_steps) == (AUTO_START, AUTO_END, AUTO_STEPS)

    def record(self) -> dict[str, Any]:
        """The suggestion and the range it was found on, as plain types."""
        return {
            **self.suggestion.as_dict(),
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "steps": self.n_steps,
            "steps_run": len(self.lrs),
            "last_lr": self.lrs[-1],
            "diverged": self.diverged,
        }


class TooFewSteps(CovidRegError):
    """The loss diverged before the test had the steps a suggestion is made over."""

    def __init__(self, n_steps: int) -> None:
        super().__init__(
            f"the loss diverged after {n_steps} steps, too few to suggest a rate; "
            "lower --end-lr or raise --steps"
        )
        self.n_steps = n_steps


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
    layout: Layout,
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
        member = build_member(rated, layout, feature_names, train, valid, seed)
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
    """The valley (the suggestion), the steepest descent of the smoothed loss against log(lr)
    and the rate of its minimum / 10, all over the steps after the first ``SKIP_BEGIN`` and
    before the last ``SKIP_END``; the minimum / 10 is None where it lies below ``lrs[0]``."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    lrs = [lrs[i] for i in finite]
    smoothed = [smoothed[i] for i in finite]
    begin, end = SKIP_BEGIN, len(smoothed) - SKIP_END
    if end - begin < 2:
        raise TooFewSteps(len(lrs))
    window = np.asarray(smoothed[begin:end])
    rates = lrs[begin:end]
    slope = np.gradient(window, np.log(np.asarray(rates)))
    min_loss = float(rates[int(np.argmin(window))])
    return Suggestion(
        suggested=float(rates[valley(window)]),
        steepest=float(rates[int(np.argmin(slope))]),
        min_loss=min_loss,
        min_loss_div10=min_loss / 10 if min_loss / 10 >= lrs[0] else None,
    )


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


def run_range_test(
    cfg: Config,
    layout: Layout,
    feature_names: list[str],
    train: Arrays,
    valid: Arrays,
    seed: int,
    start_lr: float = AUTO_START,
    end_lr: float = AUTO_END,
    n_steps: int = AUTO_STEPS,
) -> RangeTest:
    """The range test on these training rows and its suggestion: ``covidreg lr-find``'s, and
    with the default bounds ``lr = "auto"``'s."""
    lrs, losses, diverged = range_test(
        cfg, layout, feature_names, train, valid, seed, start_lr, end_lr, n_steps
    )
    smoothed = smooth(losses)
    suggestion = suggest(lrs, smoothed)
    return RangeTest(lrs, losses, smoothed, diverged, suggestion, start_lr, end_lr, n_steps)


def find_rate(
    cfg: Config,
    layout: Layout,
    feature_names: list[str],
    train: Arrays,
    valid: Arrays,
    seed: int,
) -> dict[str, Any]:
    """``lr = "auto"``: the suggestion of the range test on these training rows with the
    command's defaults; the rate and how it was found, as plain types for metrics.json."""
    try:
        found = run_range_test(cfg, layout, feature_names, train, valid, seed)
    except TooFewSteps as exc:
        raise CovidRegError(
            f"lr = auto: the range test diverged after {exc.n_steps} steps, too few to suggest "
            "a rate; give --lr a number (covidreg lr-find shows the curve)"
        ) from None
    return {"lr": found.suggestion.suggested, **found.record()}


def member_at_rate(
    cfg: Config,
    layout: Layout,
    feature_names: list[str],
    train: Arrays,
    valid: Arrays,
    seed: int,
    scored: Arrays | None = None,
) -> Member:
    """``engine.build_member``, with ``lr = "auto"`` first replaced by the rate the range test
    finds on these training rows (the member records how it was found)."""
    if cfg.lr != AUTO_LR:
        return build_member(cfg, layout, feature_names, train, valid, seed, scored)
    found = find_rate(cfg, layout, feature_names, train, valid, seed)
    rated = dataclasses.replace(cfg, lr=found["lr"])
    return build_member(rated, layout, feature_names, train, valid, seed, scored, found)
