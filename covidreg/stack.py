"""A stack of S MLPs of one architecture as tensors, and one training step's arithmetic.

Row j of one [S, P] tensor holds member j's parameters back to back; each layer's weight
[S, out, in] and bias [S, 1, out] are views of it, so a layer of every member is one batched
product. A step's gradients are written out by hand, without recording a graph: the operations'
backward formulas (the activations' through ATen's own backward kernels) on the stacked
operands, equal to autograd's to float rounding (tested for every activation, dropout and
penalty). Measured on a default ``covidreg train`` step: 31 us for the gradients by hand, about
six times that through autograd over the same forward.

``engine`` trains stacks; this module only knows their layout and arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from covidreg.config import Config
from covidreg.loaders import gather_rows
from covidreg.model import ACTIVATION_BACKWARD, ACTIVATIONS, MLP, stack_forward
from covidreg.schema import Arrays


class Rows(Protocol):
    """What a stack takes of each member: its model, its rows and its dropout masks."""

    model: MLP
    train: Arrays
    valid: Arrays
    dropout_masks: torch.Generator


def parameter_groups(cfg: Config, n_linears: int) -> tuple[list[float], list[int]]:
    """The learning rate of each rate group, and the group of each optimizer parameter: one
    group for the whole model, or the body's and the head's (at ``output_lr``) when it differs.
    """
    if cfg.output_lr in (0, cfg.lr):
        return [cfg.lr], [0]
    if n_linears == 1:  # no hidden layer: the head is the whole model
        return [cfg.output_lr], [0]
    return [cfg.lr, cfg.output_lr], [0, 1]


def _pad(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack per-member tensors of different lengths into [S, length, ...], zero-padded."""
    out = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
    for j, row in enumerate(rows):
        out[j, : len(row)] = row
    return out


@dataclass
class _Side:
    """The train or valid rows of the running members, padded: [S, rows, ...]."""

    x: torch.Tensor  # standardised with each member's own statistics
    y: torch.Tensor
    skip: torch.Tensor | None  # the raw tested_positive_d2 of the delta target
    n_rows: list[int]

    @classmethod
    def of(cls, arrays: list[Arrays], models: list[MLP], device: torch.device) -> _Side:
        length = max(len(a) for a in arrays)
        raw = [torch.from_numpy(a.x) for a in arrays]
        x = [m.normalize(r) for r, m in zip(raw, models, strict=True)]
        skip_index = models[0].skip_index
        skip = None if skip_index is None else _pad([r[:, skip_index] for r in raw], length)
        return cls(
            x=_pad(x, length).to(device),
            y=_pad([torch.from_numpy(a.y) for a in arrays], length).to(device),
            skip=None if skip is None else skip.to(device),
            n_rows=[len(a) for a in arrays],
        )

    def row_weights(self) -> torch.Tensor:
        """1/n on each member's rows, 0 on its padding: a weighted sum is the member's mean."""
        n = torch.tensor(self.n_rows, device=self.y.device)
        is_row = torch.arange(self.y.shape[1], device=self.y.device)[None, :] < n[:, None]
        return is_row / n[:, None].float()


def _model_params(model: MLP) -> list[torch.Tensor]:
    """A model's weights and biases, input layer first: the order of a stack row."""
    return [t for m in model.linears() for t in (m.weight, m.bias)]


def flatten(model: MLP) -> torch.Tensor:
    """The model's parameters as one row [P]."""
    return torch.cat([t.detach().reshape(-1) for t in _model_params(model)])


def unflatten_into(row: torch.Tensor, model: MLP) -> None:
    """Load a row made by ``flatten`` (or trained in a stack) back into the model."""
    params = _model_params(model)
    with torch.no_grad():
        for target, value in zip(params, row.split([t.numel() for t in params]), strict=True):
            target.copy_(value.view_as(target))


@dataclass
class Steppers:
    """The members that step at one step: their ids, parameters and gradients."""

    ids: list[int]
    params: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]]


@dataclass
class EpochPlan:
    """Each step's rows per member (0: no batch there), its width (the most rows), the
    members that step, each row's loss weight (1/rows, 0 on padding), and the row counts."""

    batch_size: int
    steps: list[tuple[list[int], int, Steppers]]
    weight: torch.Tensor  # [steps, S, batch]
    row_counts: torch.Tensor  # [steps, S]

    @classmethod
    def of(cls, stack: Stack, batch: int) -> EpochPlan:
        n_rows = np.array(stack.train.n_rows)
        n_steps = int(max(-(-n_rows // batch)))
        rows = np.clip(n_rows[None, :] - batch * np.arange(n_steps)[:, None], 0, batch)
        counts = torch.from_numpy(rows)
        is_row = torch.arange(batch)[None, None, :] < counts[:, :, None]
        weight = is_row / counts.clamp(min=1)[:, :, None].float()
        device = stack.flat.device
        steppers: dict[tuple[int, ...], Steppers] = {}
        steps = []
        for step_rows in rows.tolist():
            active = tuple(j for j, n in enumerate(step_rows) if n)
            if active not in steppers:
                steppers[active] = Steppers(
                    [stack.ids[j] for j in active],
                    [stack.params[j] for j in active],
                    [stack.grads[j] for j in active],
                )
            steps.append((step_rows, max(step_rows), steppers[active]))
        return cls(batch, steps, weight.to(device), counts.float().to(device))


class Stack:
    """The running members' weights as one [S, P] tensor, their rows, and one step's arithmetic.

    Row j holds member j's parameters back to back (``flatten``); each layer's weight
    [S, out, in] and bias [S, 1, out] are views of it. The optimizer sees each member's row as
    its one parameter (or the body's and the head's parts, for a separate ``output_lr``):
    torch.optim's algorithms are elementwise, so that is the update of its separate tensors.
    """

    def __init__(self, cfg: Config, members: list[Rows], ids: list[int], device: torch.device):
        self.cfg = cfg
        self.ids = ids  # the member (index into the engine's members) of each row
        models = [members[k].model for k in ids]
        self.flat = torch.stack([flatten(m) for m in models]).to(device)
        self.grad = torch.zeros_like(self.flat)
        n_members = len(ids)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # weight [S, out, in], bias
        self.grad_layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # the same views of grad
        offset = 0
        for linear in models[0].linears():
            n_out, n_in = linear.weight.shape
            for tensor, views in ((self.flat, self.layers), (self.grad, self.grad_layers)):
                weight = tensor[:, offset : offset + n_out * n_in].view(n_members, n_out, n_in)
                start = offset + n_out * n_in
                views.append((weight, tensor[:, start : start + n_out].view(n_members, 1, n_out)))
            offset += n_out * n_in + n_out
        # the forward's operands: each weight as [S, in, out] (views: they follow the updates)
        self.forward_layers = [(w.transpose(1, 2), b) for w, b in self.layers]
        rates, _ = parameter_groups(cfg, len(self.layers))
        head = self.layers[-1][0][0].numel() + 1
        cut = [offset] if len(rates) == 1 else [offset - head, head]
        self.params = [list(self.flat[j].split(cut)) for j in range(n_members)]
        self.grads = [list(self.grad[j].split(cut)) for j in range(n_members)]
        # the penalties' domain: 1 for the elements of weight matrices, 0 for biases
        is_weight = torch.cat(
            [
                torch.full((t.numel(),), float(i % 2 == 0))
                for i, t in enumerate(_model_params(models[0]))
            ]
        ).to(device)
        self.l2_grad = 2 * cfg.l2 * is_weight if cfg.l2 else None
        self.l1_grad = cfg.l1 * is_weight if cfg.l1 else None
        self.activation = ACTIVATIONS[cfg.activation]()
        self.activation_backward = ACTIVATION_BACKWARD[type(self.activation)]
        self.train = _Side.of([members[k].train for k in ids], models, device)
        self.valid = _Side.of([members[k].valid for k in ids], models, device)
        self.valid_weight = self.valid.row_weights()
        self.masks = [members[k].dropout_masks for k in ids]
        self._plan: EpochPlan | None = None
        self._gathered: torch.Tensor | None = None  # the epoch's rows, rewritten every epoch

    def plan(self, batch_size: int) -> EpochPlan:
        """Which rows each member has at each step of an epoch (the same every epoch)."""
        if self._plan is None:
            self._plan = EpochPlan.of(self, batch_size)
        return self._plan

    def epoch_rows(
        self, orders: list[torch.Tensor], plan: EpochPlan
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x [steps, S, batch, features], y and skip [steps, S, batch] of one epoch: member j's
        rows in the order ``orders[j]`` (its sampler's), gathered at once."""
        n_members, length = self.train.y.shape
        n_steps, batch = len(plan.steps), plan.batch_size
        index = torch.zeros(n_members, n_steps * batch, dtype=torch.long)
        for j, order in enumerate(orders):
            index[j, : len(order)] = order + j * length
        index = index.view(n_members, n_steps, batch).transpose(0, 1).reshape(-1)
        index = index.to(self.flat.device)
        shape = (n_steps, n_members, batch)
        self._gathered = gather_rows(
            self.train.x.view(n_members * length, -1), index, self._gathered
        )
        x = self._gathered.view(*shape, -1)
        y = self.train.y.view(-1).index_select(0, index).view(shape)
        if self.train.skip is None:
            return x, y, None
        return x, y, self.train.skip.view(-1).index_select(0, index).view(shape)

    def epoch_step(
        self,
        epoch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        plan: EpochPlan,
        s: int,
    ) -> torch.Tensor:
        """``step_gradients`` on step ``s`` of an epoch that ``epoch_rows`` gathered."""
        x, y, skip = epoch
        rows, width, _ = plan.steps[s]
        return self.step_gradients(
            x[s, :, :width],
            y[s, :, :width],
            None if skip is None else skip[s, :, :width],
            plan.weight[s, :, :width],
            rows,
        )

    # --- forward and backward ---

    def _noise(self, batch_rows: list[int]) -> Callable[[int, torch.Tensor], torch.Tensor | None]:
        keep = 1 - self.cfg.dropout

        def draw(layer: int, like: torch.Tensor) -> torch.Tensor | None:
            if self.cfg.dropout == 0:
                return None
            noise = torch.zeros_like(like)  # padding rows: 0 (their gradients weigh 0 anyway)
            for j, rows in enumerate(batch_rows):
                if rows:
                    noise[j, :rows].bernoulli_(keep, generator=self.masks[j])
            return noise.div_(keep)

        return draw

    def step_gradients(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        skip: torch.Tensor | None,
        weight: torch.Tensor,
        batch_rows: list[int],
    ) -> torch.Tensor:
        """One step: each member's weighted batch MSE [S]; the gradients of (MSE + penalty)
        go into ``grad`` [S, P]. The kernels autograd's backward runs for this forward, in its
        order, without a graph; the penalties' are 2 * l2 * W and l1 * sign(W)."""
        saved: list[Any] = []
        layers = self.forward_layers
        out = stack_forward(layers, x, self.activation, self._noise(batch_rows), saved)
        if skip is not None:
            out = out + skip.unsqueeze(2)
        diff = out - y.unsqueeze(2)
        w = weight.unsqueeze(2)
        loss = (diff.square() * w).sum((1, 2))
        grad = w * (diff * 2)  # mul's, square's and sub's backward: [S, rows, 1]
        for i in range(len(layers) - 1, -1, -1):
            inputs = saved[-1] if i == len(layers) - 1 else saved[i][0]
            if i < len(layers) - 1:
                _, pre, post, mask = saved[i]
                grad = torch.bmm(grad, self.layers[i + 1][0])
                if mask is not None:
                    grad = grad * mask
                grad = self.activation_backward(self.activation, grad, pre, post)
            grad_weight, grad_bias = self.grad_layers[i]
            torch.bmm(grad.transpose(1, 2), inputs, out=grad_weight)
            torch.sum(grad, 1, keepdim=True, out=grad_bias)
        if self.l2_grad is not None:
            self.grad.addcmul_(self.flat, self.l2_grad)
        if self.l1_grad is not None:
            self.grad.addcmul_(self.flat.sign(), self.l1_grad)
        return loss

    @torch.no_grad()
    def valid_mse(self) -> torch.Tensor:
        """Each member's plain validation MSE [S], no dropout."""
        out = stack_forward(self.forward_layers, self.valid.x, self.activation).squeeze(2)
        if self.valid.skip is not None:
            out = out + self.valid.skip
        return ((out - self.valid.y).square() * self.valid_weight).sum(1)
