"""The training engine: a stack of S >= 1 independent MLPs of one architecture, trained together.

``covidreg train`` is a stack of one model, ``cv`` stacks its folds, ``--seeds`` its seeds and
``tune`` a trial's folds; the commands only decide what goes into a stack and read out what
comes back. Each model of the stack (a ``Member``) keeps its own initial weights, rows,
normalisation, batch order, dropout masks, optimizer state and step count, learning rates,
early stopping and best weights. Every step runs all members at once (``covidreg.stack``), so
S models cost little more per step than one: a network this small spends a step on
per-operation overhead.

Members with fewer rows get zero-weighted padding rows: a per-row weight makes each member's
loss its own batch-mean MSE, and a member without a batch at a step does not step. When members
stop, the stack is rebuilt from those still training.

The bits: a member's result depends on the stack it trains in (a batched product over S
matrices may round differently from one over S'), and on nothing else: its arithmetic is a
function of its own config, seed and rows, of the config and rows of the other members, and of
the step at which each stops. So callers choose stacks from the config alone, never from the
machine's cores (``stack_groups``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from covidreg.baselines import ridge_loo_alpha, ridge_solve
from covidreg.config import AUTO_ALPHA, AUTO_LR, Config
from covidreg.errors import CovidRegError
from covidreg.layout import Layout
from covidreg.loaders import HW01Dataset, make_loader
from covidreg.model import MLP, build_model
from covidreg.optimizers import LearningRates, StackOptimizer
from covidreg.reproducibility import (
    denormals_flushed,
    global_rng_state,
    resolve_device,
    seed_everything,
    set_global_rng_state,
    set_threads,
)
from covidreg.schema import Arrays, fit_standardization
from covidreg.stack import Stack, parameter_groups, unflatten_into

# --- records ------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # plain MSE over the epoch's batches (no penalty)
    valid_loss: float  # plain MSE on the validation rows
    lr: float


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_valid_mse: float  # on the scored validation rows, with the best epoch's weights
    stop_reason: str  # "early_stopping", "max_epochs", "diverged"
    seconds: float
    message: str = ""
    # stop_on = train_tail: the best loss on the rows early stopping watched (history's
    # valid_loss); None when those are the validation rows themselves
    stop_mse: float | None = None
    # the network alone on the scored validation rows (best_valid_mse without a ridge blend)
    network_mse: float | None = None


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs in a row without improvement (patience 0: never stop).

    An improvement means ``best - loss > min_delta``: a loss exactly ``min_delta`` below the best
    is not one. The epoch count is exact: with patience 3 and the best at epoch 5, training
    stops after epoch 8 (the course sample code stopped one epoch late).
    """

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, loss: float, epoch: int) -> bool:
        """Record one epoch's validation loss; True if it is a new best."""
        if self.best - loss > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


def divergence_message(record: EpochRecord, best_epoch: int | None) -> str:
    """What to tell the user when a loss became NaN or infinite."""
    kept = (
        f"kept the best weights (epoch {best_epoch})"
        if best_epoch is not None
        else "no epoch finished with a finite loss"
    )
    return (
        f"training diverged at epoch {record.epoch} (train loss {record.train_loss:g}, "
        f"valid loss {record.valid_loss:g}); {kept} — try a lower --lr"
    )


class DivergedAtOnce(CovidRegError):
    """The loss was not finite in a model's first epoch: there are no weights to keep."""


# --- one member of the stack --------------------------------------------------------------------


@dataclass
class FittedModel:
    """A trained member: its model with the best weights, and how its training went."""

    model: MLP
    result: FitResult
    mean: np.ndarray
    std: np.ndarray
    lr_finder: dict[str, Any] | None = None  # lr = "auto": the range test's rate and rule


@dataclass
class Member:
    """One model of a stack and everything it keeps for itself."""

    model: MLP  # built and seeded; receives the best weights at the end
    train: Arrays
    valid: Arrays
    mean: np.ndarray
    std: np.ndarray
    loader: torch.utils.data.DataLoader  # its sampler orders the member's batches
    dropout_masks: torch.Generator
    stopper: EarlyStopping
    rates: LearningRates
    history: list[EpochRecord] = field(default_factory=list)
    running: bool = True
    stop_reason: str = "max_epochs"
    message: str = ""
    seconds: float = 0.0  # this member's share of the epochs' wall time
    best: list[torch.Tensor] | None = None  # best weights so far, in MLP.linears() order
    fitted: FittedModel | None = None
    lr_finder: dict[str, Any] | None = None  # lr = "auto": what the range test found
    scored: Arrays | None = None  # stop_on = train_tail: the validation rows, only scored


def check_batch_size(cfg: Config, n_train: int) -> None:
    if cfg.batch_size > n_train:
        raise CovidRegError(
            f"batch_size {cfg.batch_size} is larger than the {n_train} training rows of this "
            f"split; use --batch-size {n_train} or less"
        )


def build_member(
    cfg: Config,
    layout: Layout,
    feature_names: list[str],
    train: Arrays,
    valid: Arrays,
    seed: int,
    scored: Arrays | None = None,
    lr_finder: dict[str, Any] | None = None,
) -> Member:
    """Seed, build the model and fit its normalisation on the training rows only.

    In this order, always: the same seed gives the same initial weights in any stack.
    ``cfg.lr`` is a number: ``lr = "auto"`` is resolved first by the range test
    (``lr_range.member_at_rate``, which passes how it found the rate as ``lr_finder``).
    """
    check_batch_size(cfg, len(train))
    if cfg.lr == AUTO_LR:
        raise CovidRegError("lr = auto reaches the engine unresolved; use lr_range.member_at_rate")
    set_threads(cfg.threads)
    seed_everything(seed, cfg.deterministic)
    model = build_model(cfg, layout, feature_names)
    # per-set normalisation leaks the valid/test statistics: fit on the training rows only
    mean, std = fit_standardization(train.x.astype(np.float64), feature_names, layout)
    if cfg.normalize:
        model.set_normalization(mean, std)
    if cfg.ridge_blend:
        fit_ridge(model, train, cfg.ridge_alpha)
    device = resolve_device(cfg.device)
    masks = torch.Generator(device=device)
    if device.type == "cpu":
        masks.set_state(torch.get_rng_state())  # the masks nn.Dropout would draw from here
    else:
        masks.manual_seed(seed)
    base_rates, _ = parameter_groups(cfg, len(model.linears()))
    return Member(
        model=model,
        train=train,
        valid=valid,
        mean=mean,
        std=std,
        loader=make_loader(HW01Dataset(train.x, train.y), cfg.batch_size, True, seed),
        dropout_masks=masks,
        stopper=EarlyStopping(cfg.patience, cfg.min_delta),
        rates=LearningRates(base_rates, cfg),
        lr_finder=lr_finder,
        scored=scored,
    )


def fit_ridge(model: MLP, train: Arrays, alpha: float | str) -> None:
    """The blend's ridge regression: on the rows and standardised inputs the network trains
    on, for its target (the change from the last known tested_positive with the delta
    target); ``alpha`` auto: its penalty by leave-one-out on those rows."""
    x = torch.from_numpy(train.x)
    target = train.y.astype(np.float64)
    if model.skip_index is not None:
        target = target - train.x[:, model.skip_index].astype(np.float64)
    z = model.normalize(x).double().numpy()
    if alpha == AUTO_ALPHA:
        alpha = ridge_loo_alpha(z, target)
    model.set_ridge(*ridge_solve(z, target, alpha))


def stack_groups(cfg: Config, n_members: int) -> list[list[int]]:
    """The stacks ``n_members`` models train in: consecutive groups of at most
    ``cfg.stack_size``, a function of the config alone (the bits of a model depend on its
    stack, so never on the machine)."""
    size = cfg.stack_size
    return [list(range(i, min(i + size, n_members))) for i in range(0, n_members, size)]


# --- the epochs ---------------------------------------------------------------------------------

OnEpoch = Callable[[int, EpochRecord, EarlyStopping], None]


class Engine:
    """Trains ``members`` together to their ends: early stopping, divergence or ``cfg.epochs``.

    ``fit`` fires ``on_epoch(member, record, stopper)`` for each member after each of its
    epochs, ``on_checkpoint(engine)`` every ``cfg.checkpoint_every`` epochs and
    ``after_epoch(epoch)`` after every epoch (it may raise, to stop the training);
    ``state_dict``/``load_state_dict`` capture everything (random states included), so a
    resumed run continues bit-identically.
    """

    def __init__(self, cfg: Config, members: list[Member]) -> None:
        self.cfg = cfg
        self.members = members
        self.device = resolve_device(cfg.device)
        self.epoch = 0  # the last finished epoch
        self.stack = Stack(cfg, members, self.running(), self.device)
        _, groups = parameter_groups(cfg, len(self.stack.layers))
        self.optimizer = StackOptimizer(cfg, self.stack.params, groups)

    def running(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if m.running]

    def fit(
        self,
        on_epoch: OnEpoch | None = None,
        on_checkpoint: Callable[[Engine], None] | None = None,
        after_epoch: Callable[[int], None] | None = None,
    ) -> list[FittedModel]:
        with denormals_flushed(self.cfg.flush_denormal):
            while self.epoch < self.cfg.epochs and self.stack.ids:
                start = time.perf_counter()
                self.epoch += 1
                records = self._epoch(self.epoch)
                share = (time.perf_counter() - start) / len(records)
                for k, record in records:
                    self.members[k].seconds += share
                    if on_epoch is not None and record is not None:
                        on_epoch(k, record, self.members[k].stopper)
                if any(not self.members[k].running for k in self.stack.ids):
                    self._rebuild()
                every = self.cfg.checkpoint_every
                if on_checkpoint is not None and every and self.epoch % every == 0:
                    on_checkpoint(self)
                if after_epoch is not None:
                    after_epoch(self.epoch)
        return [self._finish(k) for k in range(len(self.members))]

    def _rebuild(self) -> None:
        """Write the stack's weights back into the members' models and stack the runners."""
        self._write_back()
        running = self.running()
        if running:
            self.stack = Stack(self.cfg, self.members, running, self.device)
        else:
            self.stack.ids = []

    def _write_back(self) -> None:
        for j, k in enumerate(self.stack.ids):
            unflatten_into(self.stack.flat[j], self.members[k].model)

    def _epoch(self, epoch: int) -> list[tuple[int, EpochRecord | None]]:
        stack = self.stack
        ids = stack.ids
        rates = {k: self.members[k].rates.rates() for k in ids}
        train_sum = self._train_epoch(rates)
        valid_mse = stack.valid_mse()
        # the epoch's one host synchronisation
        train_sums, valid_losses = torch.stack([train_sum, valid_mse]).tolist()
        records: list[tuple[int, EpochRecord | None]] = []
        for j, k in enumerate(ids):
            member = self.members[k]
            record = EpochRecord(
                epoch, train_sums[j] / stack.train.n_rows[j], valid_losses[j], rates[k][0]
            )
            if not (math.isfinite(record.train_loss) and math.isfinite(record.valid_loss)):
                self._diverged(member, record)
                records.append((k, None))
                continue
            member.history.append(record)
            if member.stopper.step(record.valid_loss, epoch):
                member.best = stack.flat[j].clone()
            member.rates.step(record.valid_loss)
            if member.stopper.should_stop:
                member.running = False
                member.stop_reason = "early_stopping"
            records.append((k, record))
        return records

    def _train_epoch(self, rates: dict[int, list[float]]) -> torch.Tensor:
        """One epoch of every member of the stack; each one's summed batch MSE x rows [S]."""
        stack = self.stack
        plan = stack.plan(self.cfg.batch_size)
        epoch = stack.epoch_rows(
            [self.members[k].loader.sampler.epoch_order()[0] for k in stack.ids], plan
        )
        total = torch.zeros(len(stack.ids), device=self.device)
        for s, (_, _, active) in enumerate(plan.steps):
            loss = stack.epoch_step(epoch, plan, s)
            self.optimizer.step(active.ids, active.params, active.grads, rates)
            total.addcmul_(loss, plan.row_counts[s])
        return total

    def _diverged(self, member: Member, record: EpochRecord) -> None:
        """Stop the member; with no finite epoch at all, there is nothing to keep: fail."""
        member.running = False
        member.stop_reason = "diverged"
        best = member.stopper.best_epoch if member.history else None
        member.message = divergence_message(record, best)
        if not member.history:
            raise DivergedAtOnce(member.message)

    def _finish(self, k: int) -> FittedModel:
        """Member k's best weights in its own model, and its result."""
        member = self.members[k]
        if member.fitted is not None:
            return member.fitted
        if member.best is None:
            raise CovidRegError(
                member.message or "training produced no finite validation loss; try a lower --lr"
            )
        unflatten_into(member.best, member.model)
        member.model.to(self.device)
        # early stopping watched the network's own loss, on the validation rows or (train_tail)
        # on others; what is reported is the whole model's (the blend's) on the validation rows
        best = member.stopper.best
        stopped_elsewhere = member.scored is not None
        rows = member.scored if stopped_elsewhere else member.valid
        network_mse = (
            _mse(member.model, rows, self.device, with_ridge=False) if stopped_elsewhere else best
        )
        scored_mse = _mse(member.model, rows, self.device) if self.cfg.ridge_blend else network_mse
        stop_mse = best if stopped_elsewhere else None
        result = FitResult(
            history=list(member.history),
            best_epoch=member.stopper.best_epoch,
            best_valid_mse=scored_mse,
            stop_reason=member.stop_reason,
            seconds=member.seconds,
            message=member.message,
            stop_mse=stop_mse,
            network_mse=network_mse,
        )
        member.fitted = FittedModel(member.model, result, member.mean, member.std, member.lr_finder)
        return member.fitted

    # --- exact resume ---

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only, so ``torch.load(weights_only=True)`` reads it back."""
        self._write_back()
        everyone = list(range(len(self.members)))
        return {
            "epoch": self.epoch,
            "members": [_member_state(m) for m in self.members],
            "optimizer": self.optimizer.state_dict(everyone),
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        for member, saved in zip(self.members, state["members"], strict=True):
            _load_member_state(member, saved)
        self.optimizer.load_state_dict(state["optimizer"], list(range(len(self.members))))
        set_global_rng_state(state["rng"])
        running = self.running()
        self.stack = Stack(self.cfg, self.members, running or [0], self.device)
        self.stack.ids = running  # none running: a state saved after the last epoch


def _mse(model: MLP, rows: Arrays, device: torch.device, with_ridge: bool = True) -> float:
    """The model's MSE on ``rows`` (float64); ``with_ridge=False``: the network's alone."""
    x = torch.from_numpy(rows.x).to(device)
    error = predict(model, x, with_ridge=with_ridge) - rows.y.astype(np.float64)
    return float(np.mean(np.square(error)))


def _member_state(member: Member) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in member.model.state_dict().items()},
        "best": member.best,
        "history": history_columns(member.history),
        "running": member.running,
        "stop_reason": member.stop_reason,
        "message": member.message,
        "seconds": member.seconds,
        "early_stopping": member.stopper.state_dict(),
        "rates": member.rates.state_dict(),
        "batch_order": member.loader.sampler.generator.get_state(),
        "dropout_masks": member.dropout_masks.get_state(),
    }


def _load_member_state(member: Member, saved: dict[str, Any]) -> None:
    member.model.load_state_dict(saved["model"])
    member.best = saved["best"]
    member.history = history_records(saved["history"])
    member.running = bool(saved["running"])
    member.stop_reason = str(saved["stop_reason"])
    member.message = str(saved["message"])
    member.seconds = float(saved["seconds"])
    member.stopper.load_state_dict(saved["early_stopping"])
    member.rates.load_state_dict(saved["rates"])
    member.loader.sampler.generator.set_state(saved["batch_order"])
    member.dropout_masks.set_state(saved["dropout_masks"])


def history_columns(history: list[EpochRecord]) -> dict[str, torch.Tensor]:
    """The history as one tensor per field: a training state is saved every few epochs, and
    pickling thousands of small dicts each time cost more than the rest of it together."""
    return {
        "epoch": torch.tensor([r.epoch for r in history], dtype=torch.int64),
        "train_loss": torch.tensor([r.train_loss for r in history], dtype=torch.float64),
        "valid_loss": torch.tensor([r.valid_loss for r in history], dtype=torch.float64),
        "lr": torch.tensor([r.lr for r in history], dtype=torch.float64),
    }


def history_frame(history: list[EpochRecord]) -> Any:
    """The history as a pandas DataFrame with history.csv's columns."""
    import pandas as pd

    rows = [(r.epoch, r.train_loss, r.valid_loss, r.lr) for r in history]
    return pd.DataFrame(rows, columns=["epoch", "train_loss", "valid_loss", "lr"])


def history_records(saved: dict[str, torch.Tensor]) -> list[EpochRecord]:
    """``history_columns`` read back (float64 holds each Python float exactly)."""
    columns = [saved[k].tolist() for k in ("epoch", "train_loss", "valid_loss", "lr")]
    return [EpochRecord(*row) for row in zip(*columns, strict=True)]


def fit_members(
    cfg: Config,
    members: list[Member],
    on_epoch: OnEpoch | None = None,
    on_checkpoint: Callable[[Engine], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> list[FittedModel]:
    """Train ``members`` as one stack and return each one's fitted model, in order."""
    engine = Engine(cfg, members)
    if resume_state is not None:
        try:
            engine.load_state_dict(resume_state)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise CovidRegError(
                f"the saved training state does not fit this model and optimizer ({reason}); "
                "it was written by another covidreg version or config: start the run again"
            ) from None
    return engine.fit(on_epoch, on_checkpoint, after_epoch)


def predict(
    model: MLP, x: torch.Tensor, batch_size: int = 65536, with_ridge: bool = True
) -> np.ndarray:
    """The model's predictions for raw inputs ``x`` (float64 numpy); ``with_ridge=False``:
    the network's alone, without a ridge blend."""
    model.eval()
    with torch.no_grad():
        outputs = [model(chunk, with_ridge) for chunk in x.split(batch_size)]
    return torch.cat(outputs).double().cpu().numpy()
