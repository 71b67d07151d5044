"""Cross-validation folds trained together: the K fold models as one stack of batched weights.

A network this small spends a training step on per-operation overhead, not arithmetic, so K folds
trained one after another pay that overhead K times. Here every step runs all folds at once: the
weights of fold k are row k of one [K, P] tensor, each linear layer is one ``baddbmm`` over
[K, batch, features], and the optimizer update is a handful of whole-stack tensor operations.

Each fold is still the run ``experiment.fit_model`` makes with the fold's seed: the same initial
weights (built and seeded exactly as there, then stacked), its own normalisation statistics, its
own batch order (its own seeded generator), its own optimizer state and step count, its own
learning-rate schedule and early stopping, its own dropout masks (drawn from a copy of the RNG
state its run would start from), and its best weights restored at the end. Folds whose
training sets differ in size get padded batches: a per-row weight makes each fold's loss its own
batch-mean MSE, and a per-fold step mask keeps a fold still at the steps it does not have and
after it stopped. The results equal the one-after-another loop to float rounding.

With ``fold_processes`` above 1 the folds are split into groups of consecutive folds, each
trained by its own forked process; when a process finishes early, the first process hands some of
its running folds to new ones, from the epoch it has reached. Nothing a fold computes depends on
the others or on the size of its stack, so the results are bit-identical for any split.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import nn

from covidreg.config import Config
from covidreg.data import Arrays, gather_rows
from covidreg.errors import CovidRegError
from covidreg.experiment import FittedModel, LoadedData, OnEpoch, prepare_model
from covidreg.model import ACTIVATION_BACKWARD, ACTIVATIONS, MLP
from covidreg.train import (
    EarlyStopping,
    EpochRecord,
    FitResult,
    build_scheduler,
    denormals_flushed,
    divergence_message,
    parameter_groups,
    resolve_device,
)

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


def supports(cfg: Config) -> bool:
    """Whether ``cfg`` can train its folds together.

    Batch normalisation cannot: its running statistics and per-batch normalisation would need a
    batched re-implementation of ``nn.BatchNorm1d``, so those configs use the sequential loop.
    """
    return not cfg.batch_norm


@dataclass
class FoldEvents:
    """Callbacks of a cross-validation, fired in fold order as the one-after-another loop fires
    them: ``on_fold_start(k, n_folds)``, ``on_epoch(record, stopper)`` for each of fold k's
    epochs, then ``on_fold_fitted(k, fitted)``. ``on_epoch_mean(epoch, mse)`` gets, after every
    epoch, the mean validation MSE of the folds that ran that epoch (a pruner may raise)."""

    on_fold_start: Callable[[int, int], None] | None = None
    on_epoch: OnEpoch | None = None
    on_fold_fitted: Callable[[int, FittedModel], None] | None = None
    on_epoch_mean: Callable[[int, float], None] | None = None


# --- one fold's own state ---------------------------------------------------------------------


@dataclass
class _Fold:
    """What fold k keeps for itself beside its row of the weight stack."""

    number: int  # 1-based, as reported
    model: MLP  # built and seeded as fit_model does; receives the best weights at the end
    mean: np.ndarray
    std: np.ndarray
    train: Arrays
    valid: Arrays
    batch_order: torch.Generator
    dropout_masks: torch.Generator  # the global RNG's state where fit_model starts training
    stopper: EarlyStopping
    lr_optimizer: torch.optim.Optimizer | None  # holds the learning rates only, see _lr_schedule
    scheduler: Any
    base_lrs: list[float]  # each parameter group's rate, where no scheduler changes it
    history: list[EpochRecord] = field(default_factory=list)
    running: bool = True
    stop_reason: str = "max_epochs"
    message: str = ""
    seconds: float = 0.0  # this fold's share of the epochs' wall time
    fitted: FittedModel | None = None

    def learning_rates(self) -> list[float]:
        """This epoch's rate of each parameter group."""
        if self.lr_optimizer is None:
            return self.base_lrs
        return [group["lr"] for group in self.lr_optimizer.param_groups]


def _build_fold(
    cfg: Config,
    data: LoadedData,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    seed: int,
    number: int = 1,
) -> _Fold:
    """Seed, build and normalise exactly as ``experiment.fit_model`` does (same function)."""
    prepared = prepare_model(cfg, data, train_idx, valid_idx, seed)
    # fit_model's dropout masks come from the global RNG as prepare_model leaves it; a copy of
    # that state gives this fold the same masks, whatever other folds draw or where it trains
    dropout_masks = torch.Generator()
    dropout_masks.set_state(torch.get_rng_state())
    model, train, valid = prepared.model, prepared.train, prepared.valid
    mean, std = prepared.mean, prepared.std
    base_lrs = [group["lr"] for group in parameter_groups(model, cfg)]
    lr_optimizer, scheduler = _lr_schedule(base_lrs, cfg)
    return _Fold(
        number=number,
        model=model,
        mean=mean,
        std=std,
        train=train,
        valid=valid,
        # make_loader orders the batches with a generator seeded with the run's seed
        batch_order=torch.Generator().manual_seed(seed),
        dropout_masks=dropout_masks,
        stopper=EarlyStopping(cfg.patience, cfg.min_delta),
        lr_optimizer=lr_optimizer,
        scheduler=scheduler,
        base_lrs=base_lrs,
    )


def _build_folds(cfg: Config, data: LoadedData, folds: Folds, seeds: Sequence[int]) -> list[_Fold]:
    """Every fold's own state, fold k (numbered from 1) with ``seeds[k - 1]``."""
    return [
        _build_fold(cfg, data, train_idx, valid_idx, seed, number)
        for number, ((train_idx, valid_idx), seed) in enumerate(
            zip(folds, seeds, strict=True), start=1
        )
    ]


def _lr_schedule(base_lrs: list[float], cfg: Config) -> tuple[torch.optim.Optimizer | None, Any]:
    """A stand-in optimizer with one parameter group per rate of ``base_lrs`` (the fold's
    ``parameter_groups``), and the real scheduler over it: stepping it gives exactly
    torch.optim.lr_scheduler's sequence of rates, plateau's per-fold state included. The
    stand-in updates nothing: its groups hold empty tensors, and its one ``step()`` (no
    gradients, a no-op) tells the scheduler it was stepped.

    Without a scheduler the rates stay ``base_lrs`` and nothing is built: the first torch.optim
    optimizer a process builds imports torch._dynamo, over a second of start-up.
    """
    if cfg.scheduler == "none":
        return None, None
    lr_optimizer = torch.optim.SGD(
        [{"params": [torch.zeros(0)], "lr": lr} for lr in base_lrs], lr=cfg.lr
    )
    scheduler = build_scheduler(lr_optimizer, cfg)
    lr_optimizer.step()
    return lr_optimizer, scheduler


# --- the stacked network ----------------------------------------------------------------------


class _StackedMLP:
    """K MLPs whose parameters are the rows of one [K, P] tensor, ``params``.

    A row holds each linear layer's weight (transposed, [in, out], so a layer is one
    ``baddbmm`` with no transpose) then its bias, body first, head last. The per-layer tensors
    the forward pass uses are views of ``params`` made leaves of their own, so autograd gives
    per-layer gradients without tracing any view, and the optimizer updates ``params`` in place.
    Inputs arrive standardised with each fold's own statistics (the same elementwise float32
    operations as ``MLP.forward``).
    """

    def __init__(
        self,
        models: list[MLP],
        cfg: Config,
        device: torch.device,
        dropout_masks: list[torch.Generator] | None = None,
    ) -> None:
        linears = self._linears(models[0])
        if sum(1 for _ in models[0].parameters()) != 2 * len(linears):
            raise CovidRegError("batched folds support linear layers only (no batch_norm)")
        self.shapes = [(m.in_features, m.out_features) for m in linears]
        self.sizes = [n for n_in, n_out in self.shapes for n in (n_in * n_out, n_out)]
        self.n_folds = len(models)
        self.activation = ACTIVATIONS[cfg.activation]()
        self.dropout = cfg.dropout
        # the hand-written step's per-fold mask generators (None: one draw from the global RNG)
        self.dropout_masks = dropout_masks
        self.params = torch.stack([self._row(m) for m in models]).to(device)
        pieces = self.params.split(self.sizes, dim=1)
        self.leaves: list[torch.Tensor] = []
        for i, (n_in, n_out) in enumerate(self.shapes):
            weight = pieces[2 * i].view(self.n_folds, n_in, n_out)
            bias = pieces[2 * i + 1].view(self.n_folds, 1, n_out)
            self.leaves += [weight.detach().requires_grad_(), bias.detach().requires_grad_()]
        self.ones = self.params.new_ones(self.n_folds)
        self.activation_backward = ACTIVATION_BACKWARD[type(self.activation)]
        # the hand-written step: on the CPU (where F.dropout runs the unfused ops copied here)
        # or without dropout; GPU dropout's fused kernel draws other masks, so autograd there
        self.manual_grads = self.dropout == 0 or device.type == "cpu"
        # the gradient stack, rewritten every step; its per-layer views take the products
        self.grad = torch.zeros_like(self.params)
        grad_pieces = self.grad.split(self.sizes, dim=1)
        self.grad_views = [
            piece.view(self.n_folds, n_in, n_out) if j == 0 else piece.view(self.n_folds, 1, n_out)
            for i, (n_in, n_out) in enumerate(self.shapes)
            for j, piece in enumerate(grad_pieces[2 * i : 2 * i + 2])
        ]
        # each weight's [K, out, in] transpose (views: they follow the in-place updates), for
        # the backward's grad @ W^T
        self.weights_t = [w.detach().transpose(1, 2) for w in self.leaves[0::2]]
        # the head's weight gradient [K, H, 1] as [K, 1, H]: grad @ inputs with the outputs
        # as a row [K, 1, rows] (a row times a matrix, a third of the column form's time)
        self.head_grad_row = self.grad_views[-2].view(self.n_folds, 1, self.shapes[-1][0])

    @staticmethod
    def _linears(model: MLP) -> list[nn.Linear]:
        return [m for m in model.modules() if isinstance(m, nn.Linear)]

    def _row(self, model: MLP) -> torch.Tensor:
        parts = [t for m in self._linears(model) for t in (m.weight.t(), m.bias)]
        return torch.cat([t.detach().reshape(-1) for t in parts])

    def copy_row_into(self, row: torch.Tensor, model: MLP) -> None:
        """Load one row of the stack (fold k's weights) into fold k's own MLP."""
        pieces = row.split(self.sizes)
        with torch.no_grad():
            for i, (linear, (n_in, n_out)) in enumerate(
                zip(self._linears(model), self.shapes, strict=True)
            ):
                linear.weight.copy_(pieces[2 * i].view(n_in, n_out).t())
                linear.bias.copy_(pieces[2 * i + 1])

    def __call__(self, x: torch.Tensor, skip: torch.Tensor | None, training: bool) -> torch.Tensor:
        """Predictions [K, rows] for inputs x [K, rows, features]."""
        h = x
        last = len(self.shapes) - 1
        for i in range(last):
            h = self.activation(torch.baddbmm(self.leaves[2 * i + 1], h, self.leaves[2 * i]))
            if self.dropout > 0 and training:
                # elementwise masks over [K, rows, units]: every fold draws its own
                h = nn.functional.dropout(h, self.dropout, training=True)
        out = self._head(h, self.leaves[2 * last].transpose(1, 2)).squeeze(1)
        return out if skip is None else out + skip

    def _head(self, h: torch.Tensor, weight_row: torch.Tensor) -> torch.Tensor:
        """The one-output head as a row [K, 1, rows]: each row's products with the weight row,
        summed over the hidden units, plus the bias. Not a batched matrix product: a stack of
        one fold takes another BLAS path for a product with one output column and rounds
        differently there, so a fold's results would depend on how many folds share its stack.
        This is also faster here than those products (a third less time for 3 folds)."""
        sums = torch.mul(h, weight_row).sum(2).unsqueeze(1)
        return sums + self.leaves[-1]

    def loss_and_gradient(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        skip: torch.Tensor | None,
        row_weight: torch.Tensor,
        manual: bool | None = None,
        batch_rows: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's per-fold losses [K] (each fold's weighted batch MSE) and
        d(sum of them)/d(params) [K, P].

        ``batch_rows``: each fold's rows in this step (0: the fold does not step); with
        per-fold mask generators, dropout draws fold k's masks for exactly those rows, as its
        DataLoader batch would in ``fit_model``.

        By hand (``manual``, the default where ``manual_grads``): the forward of ``__call__``
        and, step by step, the backward autograd runs over it (the same ATen kernels on the same
        operands: ``baddbmm``'s backward is two ``bmm`` and a sum, the activations' are
        ``ACTIVATION_BACKWARD``'s), without recording a graph. The returned gradient is a
        buffer rewritten by the next step.
        """
        if manual is None:
            manual = self.manual_grads
        if not manual:
            pred = self(x, skip, training=True)
            per_fold = ((pred - y).square() * row_weight).sum(1)
            return per_fold.detach(), self.gradient(per_fold)
        with torch.no_grad():
            return self._manual_step(x, y, skip, row_weight, batch_rows)

    def _manual_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        skip: torch.Tensor | None,
        row_weight: torch.Tensor,
        batch_rows: Sequence[int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        leaves, views = self.leaves, self.grad_views
        last = len(self.shapes) - 1
        saved = []
        a = x
        for i in range(last):
            pre = torch.baddbmm(leaves[2 * i + 1], a, leaves[2 * i])
            post = self.activation.forward(pre)  # the module's op, without its call overhead
            noise = None if self.dropout == 0 else self._dropout_noise(post, batch_rows)
            saved.append((a, pre, post, noise))
            a = post if noise is None else post * noise
        out = self._head(a, self.weights_t[last])  # a row of outputs [K, 1, rows]
        if skip is not None:
            out = out + skip.unsqueeze(1)
        diff = out - y.unsqueeze(1)
        row_weight = row_weight.unsqueeze(1)
        per_fold = (diff.square() * row_weight).sum(2).squeeze(1)
        # sum's, mul's, square's (pow_backward: grad * (2 * diff)) and sub's backward: [K, 1, rows]
        grad = row_weight * (diff * 2)
        # the head's backward: its bias (broadcast over the rows): grad summed over them; its
        # weight (as a row): grad @ a; its input: grad^T times the weight row
        torch.sum(grad, 2, keepdim=True, out=views[2 * last + 1])
        torch.bmm(grad, a, out=self.head_grad_row)
        for i in range(last - 1, -1, -1):
            inputs, pre, post, noise = saved[i]
            if i == last - 1:
                grad = grad.transpose(1, 2) * self.weights_t[last]
            else:
                grad = grad.bmm(self.weights_t[i + 1])
            if noise is not None:
                grad = grad * noise
            grad = self.activation_backward(self.activation, grad, pre, post)
            torch.sum(grad, 1, keepdim=True, out=views[2 * i + 1])
            torch.bmm(inputs.transpose(1, 2), grad, out=views[2 * i])
        return per_fold, self.grad

    def _dropout_noise(self, like: torch.Tensor, batch_rows: Sequence[int] | None) -> torch.Tensor:
        """F.dropout's mask on the CPU (at::dropout's unfused ops, in this order): either one
        draw over the whole stack from the global RNG, or fold k's rows from its generator."""
        keep = 1 - self.dropout
        if self.dropout_masks is None:
            return torch.empty_like(like).bernoulli_(keep).div_(keep)
        if batch_rows is None:
            raise ValueError("per-fold dropout masks need the step's batch_rows")
        noise = torch.zeros_like(like)  # padding rows: 0, their gradients are weighed 0 anyway
        for k, rows in enumerate(batch_rows):
            if rows:
                noise[k, :rows].bernoulli_(keep, generator=self.dropout_masks[k])
        return noise.div_(keep)

    def gradient(self, per_fold_loss: torch.Tensor) -> torch.Tensor:
        """d(sum of the folds' losses)/d(params) as a [K, P] stack: fold k's own gradient."""
        grads = torch.autograd.grad(per_fold_loss, self.leaves, grad_outputs=self.ones)
        return torch.cat([g.reshape(self.n_folds, -1) for g in grads], dim=1)


def _pad(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack per-fold tensors of different lengths into [K, length, ...], zero-padded."""
    out = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out


@dataclass
class _Inputs:
    """One side (train or valid) of every fold, padded to the longest fold: [K, rows, ...]."""

    x: torch.Tensor  # standardised features
    y: torch.Tensor
    skip: torch.Tensor | None  # raw tested_positive_d2 for the delta target
    n_rows: list[int]
    gathered: torch.Tensor | None = None  # the epoch's rows of x, rewritten every epoch

    @classmethod
    def stack(cls, arrays: list[Arrays], models: list[MLP], device: torch.device) -> _Inputs:
        length = max(len(a) for a in arrays)
        raw = [torch.from_numpy(a.x) for a in arrays]
        x = [(r - m.input_mean.cpu()) / m.input_std.cpu() for r, m in zip(raw, models, strict=True)]
        skip_index = models[0].skip_index
        skip = None if skip_index is None else _pad([r[:, skip_index] for r in raw], length)
        return cls(
            x=_pad(x, length).to(device),
            y=_pad([torch.from_numpy(a.y) for a in arrays], length).to(device),
            skip=None if skip is None else skip.to(device),
            n_rows=[len(a) for a in arrays],
        )

    def rows(
        self, index: torch.Tensor, shape: tuple[int, int, int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
        """x, y and skip of the flattened rows ``index``, split into steps: each step's
        tensors are [K, batch_size, ...] slices of one gathered block."""
        n_folds, length = self.y.shape
        self.gathered = gather_rows(self.x.view(n_folds * length, -1), index, self.gathered)
        x = self.gathered.view(*shape, -1)
        y = self.y.view(-1).index_select(0, index).view(shape)
        if self.skip is None:
            return list(x.unbind(0)), list(y.unbind(0)), None
        skip = self.skip.view(-1).index_select(0, index).view(shape)
        return list(x.unbind(0)), list(y.unbind(0)), list(skip.unbind(0))


# --- optimizer update rules -------------------------------------------------------------------


class _UpdateRule:
    """One torch.optim algorithm applied to the whole weight stack, fold by fold.

    A single torch.optim optimizer over the stack would be right only while every fold steps at
    every step; here a fold may skip a step (it has fewer batches, or has stopped), so each fold
    has its own step count, learning rates and masked state updates. ``prepare`` turns one
    epoch's plan into per-step factors (one small tensor each); ``update`` then costs a few
    whole-stack operations per step, with no host synchronisation.
    """

    state_names: tuple[str, ...] = ()  # its [K, P] state tensors, a row per fold

    def __init__(self, cfg: Config, weights: torch.Tensor, group_index: torch.Tensor) -> None:
        self.weight_decay = cfg.weight_decay
        self.group_index = group_index
        self.device = weights.device
        self.lr = weights.new_zeros(())

    def state(self) -> list[torch.Tensor]:
        """The rule's per-fold state ([K, P] tensors), as this configuration keeps it."""
        return [t for t in (getattr(self, name) for name in self.state_names) if t is not None]

    def _per_step(self, values: np.ndarray) -> list[torch.Tensor]:
        """[S, K] float64 factors -> S float32 tensors [K, 1], cast once as torch casts scalars."""
        table = torch.from_numpy(values.astype(np.float32)).to(self.device)
        return list(table.unsqueeze(-1).unbind(0))

    def prepare(self, mask: np.ndarray, counts: np.ndarray, lrs: np.ndarray) -> None:
        """mask [S, K]: fold k steps at step s; counts [S, K]: that step's number for the fold
        (1 for its first step ever); lrs [K, G]: each fold's learning rate per parameter group."""
        if np.all(lrs == lrs[:, :1]):
            self.lr = torch.from_numpy(lrs[:, :1].astype(np.float32)).to(self.device)
        else:  # a separate output_lr: a learning rate per element
            table = torch.from_numpy(lrs.astype(np.float32)).to(self.device)
            self.lr = table[:, self.group_index]
        self._prepare(mask.astype(np.float64), counts)

    def _prepare(self, mask: np.ndarray, counts: np.ndarray) -> None:
        raise NotImplementedError

    def update(self, weights: torch.Tensor, grad: torch.Tensor, s: int) -> None:
        raise NotImplementedError

    def _l2_into_grad(self, weights: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.add(weights, alpha=self.weight_decay) if self.weight_decay else grad


class _SGD(_UpdateRule):
    """torch.optim.SGD (dampening 0): buf = momentum * buf + g; first step buf = g."""

    state_names = ("buf",)

    def __init__(self, cfg: Config, weights: torch.Tensor, group_index: torch.Tensor) -> None:
        super().__init__(cfg, weights, group_index)
        self.momentum = cfg.momentum
        self.nesterov = cfg.nesterov
        # a zero buffer gives buf = g on the first step exactly, as torch's clone does
        self.buf = torch.zeros_like(weights) if cfg.momentum else None

    def _prepare(self, mask: np.ndarray, counts: np.ndarray) -> None:
        self.take = self._per_step(mask)
        self.keep = self._per_step(np.where(mask > 0, self.momentum, 1.0))

    def update(self, weights: torch.Tensor, grad: torch.Tensor, s: int) -> None:
        grad = self._l2_into_grad(weights, grad)
        if self.buf is not None:
            self.buf.mul_(self.keep[s]).addcmul_(grad, self.take[s])
            grad = grad.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
        weights.addcmul_(grad, self.lr * self.take[s], value=-1)


class _Adagrad(_UpdateRule):
    """torch.optim.Adagrad with lr_decay 0, initial_accumulator_value 0, eps 1e-10."""

    eps = 1e-10
    state_names = ("sum",)

    def __init__(self, cfg: Config, weights: torch.Tensor, group_index: torch.Tensor) -> None:
        super().__init__(cfg, weights, group_index)
        self.sum = torch.zeros_like(weights)

    def _prepare(self, mask: np.ndarray, counts: np.ndarray) -> None:
        self.take = self._per_step(mask)

    def update(self, weights: torch.Tensor, grad: torch.Tensor, s: int) -> None:
        grad = self._l2_into_grad(weights, grad)
        self.sum.addcmul_(grad, grad * self.take[s])
        std = self.sum.sqrt().add_(self.eps)
        weights.addcdiv_(grad * (self.lr * self.take[s]), std, value=-1)


class _RMSprop(_UpdateRule):
    """torch.optim.RMSprop with alpha 0.99, eps 1e-8, not centred, momentum from the config."""

    alpha = 0.99
    eps = 1e-8
    state_names = ("square_avg", "buf")

    def __init__(self, cfg: Config, weights: torch.Tensor, group_index: torch.Tensor) -> None:
        super().__init__(cfg, weights, group_index)
        self.momentum = cfg.momentum
        self.square_avg = torch.zeros_like(weights)
        self.buf = torch.zeros_like(weights) if cfg.momentum else None

    def _prepare(self, mask: np.ndarray, counts: np.ndarray) -> None:
        self.take = self._per_step(mask)
        self.keep_avg = self._per_step(np.where(mask > 0, self.alpha, 1.0))
        self.take_avg = self._per_step(mask * (1 - self.alpha))
        self.keep_buf = self._per_step(np.where(mask > 0, self.momentum, 1.0))

    def update(self, weights: torch.Tensor, grad: torch.Tensor, s: int) -> None:
        grad = self._l2_into_grad(weights, grad)
        self.square_avg.mul_(self.keep_avg[s]).addcmul_(grad, grad * self.take_avg[s])
        avg = self.square_avg.sqrt().add_(self.eps)
        if self.buf is not None:
            self.buf.mul_(self.keep_buf[s]).addcdiv_(grad * self.take[s], avg)
            weights.addcmul_(self.buf, self.lr * self.take[s], value=-1)
        else:
            weights.addcdiv_(grad * (self.lr * self.take[s]), avg, value=-1)


class _Adam(_UpdateRule):
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no amsgrad); AdamW's weight decay is
    decoupled: weights *= 1 - lr * weight_decay before the Adam step."""

    beta1, beta2, eps = 0.9, 0.999, 1e-8
    decoupled = False
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, cfg: Config, weights: torch.Tensor, group_index: torch.Tensor) -> None:
        super().__init__(cfg, weights, group_index)
        self.exp_avg = torch.zeros_like(weights)
        self.exp_avg_sq = torch.zeros_like(weights)

    def _prepare(self, mask: np.ndarray, counts: np.ndarray) -> None:
        counts = np.where(mask > 0, counts, 1)  # a skipped step: any count, its update is 0
        self.take1 = self._per_step(mask * (1 - self.beta1))
        self.keep2 = self._per_step(np.where(mask > 0, self.beta2, 1.0))
        self.take2 = self._per_step(mask * (1 - self.beta2))
        # step_size = lr / (1 - beta1^t), sqrt(1 - beta2^t): the bias corrections, per fold
        self.step_factor = self._per_step(mask / (1 - self.beta1**counts))
        self.bias2_sqrt = self._per_step(np.sqrt(1 - self.beta2**counts))
        self.decay = self._per_step(mask * self.weight_decay)

    def update(self, weights: torch.Tensor, grad: torch.Tensor, s: int) -> None:
        if self.decoupled:
            if self.weight_decay:
                weights.addcmul_(weights, self.lr * self.decay[s], value=-1)
        else:
            grad = self._l2_into_grad(weights, grad)
        self.exp_avg.lerp_(grad, self.take1[s])
        self.exp_avg_sq.mul_(self.keep2[s]).addcmul_(grad, grad * self.take2[s])
        denom = self.exp_avg_sq.sqrt().div_(self.bias2_sqrt[s]).add_(self.eps)
        weights.addcdiv_(self.exp_avg * (self.lr * self.step_factor[s]), denom, value=-1)


class _AdamW(_Adam):
    decoupled = True


UPDATE_RULES: dict[str, type[_UpdateRule]] = {
    "sgd": _SGD,
    "adagrad": _Adagrad,
    "rmsprop": _RMSprop,
    "adam": _Adam,
    "adamw": _AdamW,
}


# --- the training loop ------------------------------------------------------------------------


class _Batches:
    """Every fold's mini-batches of one epoch, padded to one shape [S, K, batch_size].

    Fold k's batches are ``randperm(n_k, generator=its own).split(batch_size)``, what its
    DataLoader would give. Row weights 1 / (rows in that batch) make a fold's loss its batch mean;
    the rows past a fold's end (its short last batch, the steps it has no batch for) weigh 0.
    """

    def __init__(self, n_rows: list[int], batch_size: int, device: torch.device) -> None:
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.n_batches = np.array([-(-n // batch_size) for n in n_rows])
        self.n_steps = int(self.n_batches.max())
        # rows in fold k's batch at step s [S, K]: batch_size, the last batch's rest, or 0
        starts = np.arange(self.n_steps)[:, None] * batch_size
        rows = np.clip(np.asarray(n_rows)[None, :] - starts, 0, batch_size)
        in_batch = np.arange(batch_size)[None, None, :] < rows[:, :, None]
        weight = np.where(in_batch, 1.0 / np.maximum(rows, 1)[:, :, None], 0.0)
        self.row_weight = list(torch.from_numpy(weight.astype(np.float32)).to(device).unbind(0))
        self.rows = list(torch.from_numpy(rows.astype(np.float32)).to(device).unbind(0))
        self.host_rows = rows  # [S, K] ints
        self.device = device

    def order(
        self, generators: list[torch.Generator], running: list[int], padded_rows: int
    ) -> torch.Tensor:
        """The epoch's rows of the [K * padded_rows] flattened inputs, in [S, K, batch_size]
        order: one permutation per running fold (a stopped fold draws none, as its loader
        would not; its rows are never stepped on)."""
        n_folds = len(generators)
        index = torch.zeros(n_folds, self.n_steps * self.batch_size, dtype=torch.long)
        for k in running:
            perm = torch.randperm(self.n_rows[k], generator=generators[k])
            index[k, : self.n_rows[k]] = perm + k * padded_rows
        index = index.view(n_folds, self.n_steps, self.batch_size).transpose(0, 1)
        return index.reshape(-1).to(self.device)


def _group_index(model: MLP, cfg: Config) -> torch.Tensor:
    """The optimizer parameter group (body or head) of every element of a weight-stack row."""
    groups = parameter_groups(model, cfg)
    group_of = {id(p): g for g, group in enumerate(groups) for p in group["params"]}
    in_row_order = [p for m in _StackedMLP._linears(model) for p in (m.weight, m.bias)]
    return torch.cat([torch.full((p.numel(),), group_of[id(p)]) for p in in_row_order]).long()


def _weight_elements(net: _StackedMLP) -> torch.Tensor:
    """1 for the elements of weight matrices, 0 for biases: the L1/L2 penalties' domain."""
    return torch.cat([torch.full((n,), float(i % 2 == 0)) for i, n in enumerate(net.sizes)])


class _BatchedTrainer:
    """The K folds' epochs, steps and bookkeeping; ``Trainer.fit`` for all folds at once."""

    def __init__(self, cfg: Config, folds: list[_Fold], device: torch.device) -> None:
        self.cfg = cfg
        self.folds = folds
        models = [fold.model for fold in folds]
        self.net = _StackedMLP(models, cfg, device, [fold.dropout_masks for fold in folds])
        self.params = self.net.params  # updated in place by the rule
        self.best = self.params.clone()
        self.train = _Inputs.stack([f.train for f in folds], models, device)
        self.valid = _Inputs.stack([f.valid for f in folds], models, device)
        n_valid = torch.tensor(self.valid.n_rows, device=device)
        is_row = torch.arange(self.valid.y.shape[1], device=device)[None, :] < n_valid[:, None]
        self.valid_weight = is_row / n_valid[:, None].float()
        self.batches = _Batches(self.train.n_rows, cfg.batch_size, device)
        group_index = _group_index(models[0], cfg).to(device)
        self.rule = UPDATE_RULES[cfg.optimizer](cfg, self.params, group_index)
        is_weight = _weight_elements(self.net).to(device)
        self.l2_grad = 2 * cfg.l2 * is_weight if cfg.l2 else None
        self.l1_grad = cfg.l1 * is_weight if cfg.l1 else None
        self.steps = np.zeros(len(folds), dtype=np.int64)  # each fold's optimizer steps so far

    def subset(self, keep: Sequence[int]) -> _BatchedTrainer:
        """A trainer over the folds ``keep`` that goes on exactly where this one is: their rows
        of the weight stack, of the best weights and of the optimizer state, and their step
        counts (the rest of a fold's state, generators included, is in the fold itself)."""
        keep = list(keep)
        other = _BatchedTrainer(self.cfg, [self.folds[k] for k in keep], self.params.device)
        with torch.no_grad():
            other.params.copy_(self.params[keep])
            other.best.copy_(self.best[keep])
            for theirs, mine in zip(other.rule.state(), self.rule.state(), strict=True):
                theirs.copy_(mine[keep])
        other.steps = self.steps[keep].copy()
        return other

    def running(self) -> list[int]:
        return [k for k, fold in enumerate(self.folds) if fold.running]

    def fit(
        self,
        after_epoch: Callable[[_BatchedTrainer, int], _BatchedTrainer] | None = None,
        on_epoch_mean: Callable[[int, float], None] | None = None,
        first_epoch: int = 1,
    ) -> None:
        """Train every fold to its end, from ``first_epoch``.

        ``after_epoch(trainer, epoch)`` runs after each epoch's bookkeeping (a finished fold has
        its ``fitted`` by then) and returns the trainer that goes on: this one, or a ``subset``
        of it when it handed its other folds to other processes. ``on_epoch_mean`` as in
        FoldEvents.
        """
        trainer = self
        with denormals_flushed(self.cfg.flush_denormal):
            for epoch in range(first_epoch, self.cfg.epochs + 1):
                running = trainer.running()
                if not running:
                    break
                start = time.perf_counter()
                trainer._epoch(epoch, running, on_epoch_mean)
                share = (time.perf_counter() - start) / len(running)
                for k in running:
                    trainer.folds[k].seconds += share
                    if not trainer.folds[k].running:
                        trainer._finish(k)
                if after_epoch is not None:
                    trainer = after_epoch(trainer, epoch)
            for k, fold in enumerate(trainer.folds):
                if fold.fitted is None:
                    trainer._finish(k)

    def _epoch(
        self, epoch: int, running: list[int], on_epoch_mean: Callable[[int, float], None] | None
    ) -> None:
        lrs = np.array([f.learning_rates() for f in self.folds])
        train_sum = self._train_epoch(running, lrs)
        valid_mse = self._evaluate()
        # the epoch's one host synchronisation
        train_sums, valid_losses = torch.stack([train_sum, valid_mse]).tolist()
        recorded, improved = [], []
        for k in running:
            fold = self.folds[k]
            record = EpochRecord(
                epoch, train_sums[k] / self.train.n_rows[k], valid_losses[k], float(lrs[k, 0])
            )
            if not (math.isfinite(record.train_loss) and math.isfinite(record.valid_loss)):
                self._diverged(fold, record)
                continue
            recorded.append(record.valid_loss)
            if self._end_of_epoch(fold, record):
                improved.append(k)
        if improved:
            self.best[improved] = self.params[improved]
        if on_epoch_mean is not None and recorded:
            on_epoch_mean(epoch, sum(recorded) / len(recorded))

    @staticmethod
    def _diverged(fold: _Fold, record: EpochRecord) -> None:
        """Stop the fold as Trainer.fit does; with no finite epoch at all, fail as it does."""
        fold.running = False
        fold.stop_reason = "diverged"
        fold.message = divergence_message(record, fold.stopper.best_epoch if fold.history else None)
        if not fold.history:
            raise CovidRegError(fold.message)

    def _end_of_epoch(self, fold: _Fold, record: EpochRecord) -> bool:
        """Trainer.fit's bookkeeping for one fold; True if the epoch is the fold's new best."""
        fold.history.append(record)
        improved = fold.stopper.step(record.valid_loss, record.epoch)
        if fold.scheduler is not None:
            if self.cfg.scheduler == "plateau":
                fold.scheduler.step(record.valid_loss)
            else:
                fold.scheduler.step()
        if fold.stopper.should_stop:
            fold.running = False
            fold.stop_reason = "early_stopping"
        return improved

    def _train_epoch(self, running: list[int], lrs: np.ndarray) -> torch.Tensor:
        """One epoch of every running fold; returns each fold's summed batch MSE x rows [K]."""
        batches = self.batches
        is_running = np.zeros(len(self.folds), dtype=bool)
        is_running[running] = True
        step = np.arange(batches.n_steps)[:, None]
        mask = (step < batches.n_batches[None, :]) & is_running[None, :]
        self.rule.prepare(mask, self.steps[None, :] + step + 1, lrs)
        self.steps += np.where(is_running, batches.n_batches, 0)
        x, y, skip = self.train.rows(
            batches.order([f.batch_order for f in self.folds], running, self.train.y.shape[1]),
            (batches.n_steps, len(self.folds), batches.batch_size),
        )
        total = self.params.new_zeros(len(self.folds))
        batch_rows = np.where(mask, batches.host_rows, 0).tolist()
        for s in range(batches.n_steps):
            per_fold, grad = self.net.loss_and_gradient(
                x[s],
                y[s],
                None if skip is None else skip[s],
                batches.row_weight[s],
                batch_rows=batch_rows[s],
            )
            if self.l2_grad is not None:
                grad.addcmul_(self.params, self.l2_grad)
            if self.l1_grad is not None:
                grad.addcmul_(self.params.sign(), self.l1_grad)
            self.rule.update(self.params, grad, s)
            total.addcmul_(per_fold, batches.rows[s])
        return total

    @torch.no_grad()
    def _evaluate(self) -> torch.Tensor:
        """Each fold's plain validation MSE [K], no dropout."""
        pred = self.net(self.valid.x, self.valid.skip, training=False)
        return ((pred - self.valid.y).square() * self.valid_weight).sum(1)

    def _finish(self, k: int) -> None:
        """Restore fold k's best weights into its own MLP and wrap up its result."""
        fold = self.folds[k]
        self.net.copy_row_into(self.best[k], fold.model)
        result = FitResult(
            history=list(fold.history),
            best_epoch=fold.stopper.best_epoch,
            best_valid_mse=fold.stopper.best,
            stop_reason=fold.stop_reason,
            seconds=fold.seconds,
            message=fold.message,
        )
        fold.fitted = FittedModel(fold.model, result, None, fold.mean, fold.std)


class _InFoldOrder:
    """Fires the fold callbacks in fold order, as the one-after-another loop does.

    The lowest unfinished fold is reported live, epoch by epoch; a later fold's epochs so far are
    replayed when its turn comes, through a fresh EarlyStopping stepped on the same losses, so
    each ``on_epoch`` sees the stopper state the sequential loop would show.
    """

    def __init__(self, events: FoldEvents, cfg: Config, n_folds: int) -> None:
        self.events = events
        self.cfg = cfg
        self.n_folds = n_folds
        self.current = 0
        self.shown = 0
        self.stopper: EarlyStopping | None = None

    def advance(self, folds: list[_Fold]) -> None:
        events = self.events
        while self.current < self.n_folds:
            fold = folds[self.current]
            if self.stopper is None:
                self.stopper = EarlyStopping(self.cfg.patience, self.cfg.min_delta)
                if events.on_fold_start is not None:
                    events.on_fold_start(self.current + 1, self.n_folds)
            for record in fold.history[self.shown :]:
                self.stopper.step(record.valid_loss, record.epoch)
                if events.on_epoch is not None:
                    events.on_epoch(record, self.stopper)
            self.shown = len(fold.history)
            if fold.fitted is None:
                return
            if events.on_fold_fitted is not None:
                events.on_fold_fitted(self.current + 1, fold.fitted)
            self.current, self.shown, self.stopper = self.current + 1, 0, None


# --- fold groups in other processes -----------------------------------------------------------


def _can_fork() -> bool:
    """Forking a process that has torch loaded is safe on Linux; elsewhere one process."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fold_processes(cfg: Config, n_folds: int, device: torch.device, lockstep: bool) -> int:
    """How many processes train the folds: ``cfg.fold_processes``, or for 0 the available
    cores over the threads each process uses; at most one per fold. One process on a GPU,
    where forking is unavailable, and when ``lockstep`` (a per-epoch mean over every fold)."""
    if n_folds < 2 or device.type != "cpu" or lockstep or not _can_fork():
        return 1
    wanted = cfg.fold_processes
    if wanted == 0:
        wanted = available_cpus() // (cfg.threads or torch.get_num_threads())
    return max(1, min(wanted, n_folds))


def stack_size_free(model: MLP) -> bool:
    """Whether every product of ``model``'s stacked layers rounds the same in a stack of any
    number of folds. A product with a dimension of 1 (one input feature, a hidden layer of one
    unit) does not: in a stack of one fold BLAS takes its matrix-vector path there and rounds
    differently, so a fold's result would depend on how the folds are split into processes.
    (The head's one output is summed elementwise, see ``_StackedMLP._head``.)"""
    linears = _StackedMLP._linears(model)
    return all(m.in_features > 1 for m in linears) and all(m.out_features > 1 for m in linears[:-1])


def _end_with(parent: int) -> None:
    """Have the kernel end this process when its parent dies, however it dies (SIGKILL
    included), so that no fold process trains on for nobody."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _train_in_child(
    runs: list[_Fold],
    trainer: Callable[[], _BatchedTrainer],
    first_epoch: int,
    parent: int,
    results: Connection,
) -> None:
    """A forked process's work: train its folds (``trainer()`` builds their trainer) from
    ``first_epoch``, send back each one's result and best weights, then leave at once
    (``os._exit``: none of the parent's exit work, such as flushing its buffered output, runs
    twice)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        _end_with(parent)
        trainer().fit(first_epoch=first_epoch)
        outcomes = []
        for run in runs:
            assert run.fitted is not None
            state = {k: v.numpy() for k, v in run.fitted.model.state_dict().items()}
            outcomes.append((run.fitted.result, state))
        results.send(("done", outcomes))
    except CovidRegError as exc:
        results.send(("error", str(exc)))
    except BaseException:
        code = 1
        with contextlib.suppress(BaseException):
            results.send(("crash", traceback.format_exc()))
    finally:
        os._exit(code)


@dataclass
class _Group:
    process: Any  # multiprocessing's forked Process
    results: Connection
    runs: list[_Fold]
    received: bool = False


class _ForkedGroups:
    """Groups of folds, each trained by a forked process while this one trains its own.

    The children start from this process's folds as they are (models, generators, stoppers),
    so each fold trains as it would here. A child's outcome is collected whenever it arrives:
    ``poll`` after every epoch of this process (a child's error is raised at once), ``wait``
    at the end. ``share`` hands folds of this process's trainer to new children when a core
    falls idle. Leaving the ``with`` block ends any child still running.
    """

    def __init__(self, cfg: Config, groups: list[list[_Fold]], device: torch.device) -> None:
        self.groups: list[_Group] = []
        try:
            for runs in groups:
                self.start(runs, functools.partial(_BatchedTrainer, cfg, runs, device), 1)
        except BaseException:
            self.close()
            raise

    def start(
        self, runs: list[_Fold], trainer: Callable[[], _BatchedTrainer], first_epoch: int
    ) -> None:
        """Fork a child that trains ``runs`` with ``trainer()`` from ``first_epoch``."""
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_train_in_child,
            args=(runs, trainer, first_epoch, os.getpid(), sender),
            daemon=True,
        )
        process.start()
        sender.close()
        self.groups.append(_Group(process, receiver, runs))

    def busy(self) -> int:
        """Children still training (whose outcome has not arrived)."""
        return sum(not group.received for group in self.groups)

    def share(self, trainer: _BatchedTrainer, epoch: int, n_processes: int) -> _BatchedTrainer:
        """Split this process's running folds with the idle cores, after ``epoch``.

        While fewer than ``n_processes`` processes train and this one has several folds left,
        its running folds are split into consecutive groups as at the start; each group but the
        first goes on in a new child (forked from this state, so from this very epoch), and
        the trainer over the first group is returned. A fold's arithmetic is its own, so where
        it goes on changes nothing in its result.
        """
        running = trainer.running()
        idle = n_processes - 1 - self.busy()
        if idle < 1 or len(running) < 2 or epoch >= trainer.cfg.epochs:
            return trainer
        parts = np.array_split(np.array(running), min(idle + 1, len(running)))
        for part in parts[1:]:
            runs = [trainer.folds[k] for k in part]
            self.start(runs, functools.partial(trainer.subset, part.tolist()), epoch + 1)
        return trainer.subset(parts[0].tolist())

    def __enter__(self) -> _ForkedGroups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> None:
        for group in self.groups:
            if not group.received and group.results.poll():
                self._receive(group)

    def wait(self) -> None:
        for group in self.groups:
            if not group.received:
                self._receive(group)

    def close(self) -> None:
        for group in self.groups:
            if group.process.is_alive():
                group.process.terminate()
            group.process.join()
            group.results.close()

    @staticmethod
    def _receive(group: _Group) -> None:
        group.received = True
        try:
            kind, payload = group.results.recv()
        except EOFError:
            group.process.join()
            raise CovidRegError(
                f"the process training cv folds {_fold_names(group.runs)} ended without its "
                f"results (exit code {group.process.exitcode}); rerun with --fold-processes 1 "
                "to train every fold in one process"
            ) from None
        if kind == "error":
            raise CovidRegError(payload)
        if kind == "crash":
            raise RuntimeError(
                f"training cv folds {_fold_names(group.runs)} failed in its process:\n{payload}"
            )
        for run, (result, state) in zip(group.runs, payload, strict=True):
            run.model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            run.history = list(result.history)
            run.running = False
            run.fitted = FittedModel(run.model, result, None, run.mean, run.std)


def _fold_names(runs: list[_Fold]) -> str:
    return ", ".join(str(run.number) for run in runs)


def fit_folds(
    cfg: Config,
    data: LoadedData,
    folds: Folds,
    seeds: Sequence[int],
    events: FoldEvents | None = None,
) -> list[FittedModel]:
    """Train one model per (train rows, valid rows) fold, all together; fold k uses seeds[k].

    The folds are split into ``fold_processes`` groups of consecutive folds; this process
    trains the first, forked processes the others, side by side. Whenever a process is done
    while this one still trains several folds, some of them move to new processes (see
    ``_ForkedGroups.share``), so the cores stay busy to the end. A fold's result does not
    depend on its group: each fold's arithmetic is its own (batched products compute each
    fold's product alone, the same for any number of folds), its batches and dropout masks
    come from its own generators.

    Returns each fold's fitted model (best weights restored, on ``cfg.device``) in fold order.
    """
    if not supports(cfg):
        raise CovidRegError("batch_norm models cannot train their folds together")
    events = events or FoldEvents()
    device = resolve_device(cfg.device)
    runs = _build_folds(cfg, data, folds, seeds)
    for run in runs:
        run.model.to(device)
    n_processes = fold_processes(cfg, len(runs), device, events.on_epoch_mean is not None)
    if not stack_size_free(runs[0].model):
        n_processes = 1
    parts = np.array_split(np.arange(len(runs)), n_processes)
    groups = [[runs[k] for k in part] for part in parts]
    # forking in mid-training is safe only with no OpenMP thread pool in use (one thread)
    may_share = n_processes > 1 and torch.get_num_threads() == 1
    in_order = _InFoldOrder(events, cfg, len(runs))
    in_order.advance(runs)  # fold 1 starts now, as it would one after another
    with _ForkedGroups(cfg, groups[1:], device) as others:

        def after_epoch(trainer: _BatchedTrainer, epoch: int) -> _BatchedTrainer:
            others.poll()
            in_order.advance(runs)
            return others.share(trainer, epoch, n_processes) if may_share else trainer

        _BatchedTrainer(cfg, groups[0], device).fit(after_epoch, events.on_epoch_mean)
        others.wait()
    in_order.advance(runs)
    return [run.fitted for run in runs if run.fitted is not None]
