"""The stack's layout and arithmetic: rate groups, rows and their views, the epoch plan, and
the hand-written backward against autograd."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from covidreg.config import Config
from covidreg.model import ACTIVATIONS, build_model, stack_forward
from covidreg.stack import EpochPlan, Stack, flatten, parameter_groups, unflatten_into
from tests.conftest import LAYOUT
from tests.test_engine import CPU, NAMES, UNEVEN, config, make_members


@pytest.mark.parametrize(
    ("output_lr", "n_linears", "expected"),
    [
        (0.0, 3, ([1e-3], [0])),
        (1e-3, 3, ([1e-3], [0])),  # equal to lr: one group
        (0.1, 3, ([1e-3, 0.1], [0, 1])),
        (0.1, 1, ([0.1], [0])),  # no hidden layer: the head is the whole model
    ],
    ids=["unset", "equal", "own", "head-only"],
)
def test_parameter_groups(
    output_lr: float, n_linears: int, expected: tuple[list[float], list[int]]
) -> None:
    assert parameter_groups(config(lr=1e-3, output_lr=output_lr), n_linears) == expected


@pytest.mark.parametrize("output_lr", [0.0, 0.1], ids=["one-group", "output-lr"])
def test_the_optimizer_sees_each_row_or_its_body_and_head(output_lr: float) -> None:
    cfg = config(hidden=[8, 4], output_lr=output_lr)
    members = make_members(cfg, UNEVEN)
    stack = Stack(cfg, members, [0, 1, 2], CPU)
    n_params = sum(p.numel() for p in members[0].model.parameters())
    assert stack.flat.shape == (3, n_params)
    head = 4 + 1
    sizes = [n_params] if not output_lr else [n_params - head, head]
    starts = [0] if not output_lr else [0, n_params - head]
    for j, (params, grads) in enumerate(zip(stack.params, stack.grads, strict=True)):
        assert [p.numel() for p in params] == sizes == [g.numel() for g in grads]
        # views of the stack's rows: an update of them is an update of the stack
        assert [p.data_ptr() for p in params] == [stack.flat[j, i].data_ptr() for i in starts]
        assert [g.data_ptr() for g in grads] == [stack.grad[j, i].data_ptr() for i in starts]
        assert torch.equal(stack.flat[j], flatten(members[j].model))
    # each layer's weight and bias are views of the same rows, in nn.Linear's layout
    for (weight, bias), linear in zip(stack.layers, members[1].model.linears(), strict=True):
        assert torch.equal(weight[1], linear.weight)
        assert torch.equal(bias[1, 0], linear.bias)


def test_flatten_and_unflatten_round_trip() -> None:
    cfg = config(hidden=[8, 4])
    torch.manual_seed(0)
    source, target = build_model(cfg, LAYOUT, NAMES), build_model(cfg, LAYOUT, NAMES)
    row = flatten(source)
    assert row.shape == (sum(p.numel() for p in source.parameters()),)
    assert not torch.equal(row, flatten(target))
    unflatten_into(row, target)
    assert torch.equal(flatten(target), row)
    for a, b in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(a, b)


def test_epoch_plan_of_uneven_members() -> None:
    cfg = config()
    stack = Stack(cfg, make_members(cfg, UNEVEN), [0, 1, 2], CPU)
    plan = EpochPlan.of(stack, 16)
    assert [(rows, width) for rows, width, _ in plan.steps] == [
        ([16, 16, 16], 16),
        ([16, 13, 16], 16),
        ([8, 0, 3], 8),
    ]
    assert [steppers.ids for _, _, steppers in plan.steps] == [[0, 1, 2], [0, 1, 2], [0, 2]]
    # each step's loss weights: 1/rows on the member's rows, 0 on padding
    assert torch.equal(plan.weight[1, 1], torch.tensor([1 / 13] * 13 + [0.0] * 3))
    assert torch.equal(plan.weight[2, 1], torch.zeros(16))
    assert torch.equal(plan.weight[2, 2], torch.tensor([1 / 3] * 3 + [0.0] * 13))
    assert torch.equal(plan.row_counts, torch.tensor([[16.0] * 3, [16, 13, 16], [8, 0, 3]]))


# --- the hand-written backward against autograd --------------------------------------------------


def autograd_step(
    stack: Stack,
    cfg: Config,
    step: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor],
    rows: list[int],
    mask_states: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Autograd's gradients of (the members' weighted batch MSEs + their penalties), on
    ``stack_forward`` over a copy of the stack's weights, with dropout masks drawn from copies
    of the members' mask generators as they were before the step."""
    x, y, skip, weight = step
    flat = stack.flat.detach().clone().requires_grad_()
    n_members = flat.shape[0]
    layers, weights, offset = [], [], 0
    for w, _ in stack.layers:  # nn.Linear's layout, one row per member
        n_out, n_in = w.shape[1:]
        matrix = flat[:, offset : offset + n_out * n_in].view(n_members, n_out, n_in)
        offset += n_out * n_in
        bias = flat[:, offset : offset + n_out].view(n_members, 1, n_out)
        offset += n_out
        layers.append((matrix.transpose(1, 2), bias))
        weights.append(matrix)
    assert offset == flat.shape[1]
    generators = [torch.Generator().set_state(state) for state in mask_states]
    keep = 1 - cfg.dropout

    def noise(layer: int, like: torch.Tensor) -> torch.Tensor | None:
        if cfg.dropout == 0:
            return None
        mask = torch.zeros_like(like)  # as nn.Dropout: keep with 1 - p, scale by 1 / (1 - p)
        for j, n in enumerate(rows):
            if n:
                mask[j, :n].bernoulli_(keep, generator=generators[j])
        return mask.div_(keep)

    out = stack_forward(layers, x, ACTIVATIONS[cfg.activation](), noise).squeeze(2)
    if skip is not None:
        out = out + skip
    mse = ((out - y).square() * weight).sum(1)
    total = mse.sum()
    if cfg.l2:
        total = total + cfg.l2 * sum(w.square().sum() for w in weights)
    if cfg.l1:
        total = total + cfg.l1 * sum(w.abs().sum() for w in weights)
    total.backward()
    assert flat.grad is not None
    return mse.detach(), flat.grad, [g.get_state() for g in generators]


def check_backward(cfg: Config, counts: tuple[int, ...]) -> None:
    members = make_members(cfg, counts)
    stack = Stack(cfg, members, list(range(len(counts))), CPU)
    with torch.no_grad():
        stack.flat[:, 3:9] = 0.0  # sign(0) = 0: the l1 gradient of a zero weight
    plan = stack.plan(cfg.batch_size)
    x, y, skip = stack.epoch_rows([m.loader.sampler.epoch_order()[0] for m in members], plan)
    assert (skip is not None) == (cfg.target == "delta")
    for s, (rows, width, _) in enumerate(plan.steps):
        step = (
            x[s, :, :width],
            y[s, :, :width],
            None if skip is None else skip[s, :, :width],
            plan.weight[s, :, :width],
        )
        before = [g.get_state() for g in stack.masks]
        stack.grad.fill_(math.nan)  # every element must be written
        loss = stack.step_gradients(*step, rows)
        expected_loss, expected, after = autograd_step(stack, cfg, step, rows, before)
        # the forward is the same function with the same masks: the losses are the same bits
        assert torch.equal(loss, expected_loss), s
        states = [g.get_state() for g in stack.masks]
        assert all(torch.equal(g, a) for g, a in zip(states, after, strict=True))
        drew = [not torch.equal(g, b) for g, b in zip(states, before, strict=True)]
        assert drew == [bool(cfg.dropout and cfg.hidden and n) for n in rows]
        # the gradients to rounding: autograd's product for a weight's gradient is the transpose
        # of the one written here, and it adds up the loss's and the penalties' parts in its own
        # order, so a sum may round differently in its last bit
        scale = expected.abs().max().item()
        torch.testing.assert_close(stack.grad, expected, rtol=1e-6, atol=1e-6 * scale)
        with torch.no_grad():  # move on, so that later steps see other weights
            stack.flat.sub_(0.05 * expected)


PENALTIES = {"no-penalty": (0.0, 0.0), "l1+l2": (0.03, 0.05)}


@pytest.mark.parametrize("counts", [(40,), UNEVEN], ids=["S=1", "S=3"])
@pytest.mark.parametrize("hidden", [[], [1], [8, 4]], ids=["linear", "1", "8-4"])
@pytest.mark.parametrize("penalty", PENALTIES.values(), ids=PENALTIES.keys())
@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_hand_written_backward_equals_autograd(
    activation: str,
    dropout: float,
    penalty: tuple[float, float],
    hidden: list[int],
    counts: tuple[int, ...],
) -> None:
    l1, l2 = penalty
    cfg = config(activation=activation, dropout=dropout, l1=l1, l2=l2, hidden=hidden)
    check_backward(cfg, counts)


@pytest.mark.parametrize(
    "changes",
    [
        {"l1": 0.03},
        {"l2": 0.05},
        {"target": "level", "activation": "tanh"},
        {"target": "level", "l1": 0.01, "dropout": 0.5, "hidden": [16, 8, 4]},
        {"normalize": False, "activation": "sigmoid", "batch_size": 29},
    ],
    ids=["l1", "l2", "level", "level-three-layers", "unnormalised-full-batch"],
)
def test_hand_written_backward_equals_autograd_in_other_setups(changes: dict[str, Any]) -> None:
    check_backward(config(**changes), UNEVEN)


def test_the_hand_written_gradient_is_not_autograds_by_accident() -> None:
    """The comparison sees a wrong gradient: a penalty the backward left out shows."""
    cfg = config(l2=0.05, hidden=[8, 4])
    members = make_members(cfg, UNEVEN)
    stack = Stack(cfg, members, [0, 1, 2], CPU)
    plan = stack.plan(cfg.batch_size)
    x, y, skip = stack.epoch_rows([m.loader.sampler.epoch_order()[0] for m in members], plan)
    rows, width, _ = plan.steps[0]
    step = (x[0, :, :width], y[0, :, :width], skip[0, :, :width], plan.weight[0, :, :width])
    before = [g.get_state() for g in stack.masks]
    stack.l2_grad = None  # a backward that forgets the penalty
    stack.step_gradients(*step, rows)
    _, expected, _ = autograd_step(stack, cfg, step, rows, before)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(stack.grad, expected, rtol=1e-6, atol=1e-6)


# --- the epochs ----------------------------------------------------------------------------------
