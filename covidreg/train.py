"""The training loop: seeding, optimizers, schedulers, early stopping, one epoch, evaluation."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import optimizer as optimizer_module

from covidreg.config import Config
from covidreg.data import HW01Dataset, ShuffledBatches, gather_rows
from covidreg.errors import CovidRegError
from covidreg.model import MLP, ManualMLP

# Tests set this to train with autograd even where HandWrittenEpochs applies, to compare the two.
AUTOGRAD_ONLY = False

# --- reproducibility ----------------------------------------------------------------------------


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's kernels (0: leave torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def flushing_denormals() -> bool:
    """Whether this thread's CPU kernels flush subnormal floats to zero right now."""
    return (torch.full((1,), 2e-38) * 0.25).item() == 0.0  # 5e-39 is subnormal


@contextlib.contextmanager
def denormals_flushed(mode: bool) -> Iterator[None]:
    """Flush subnormal floats to zero (or not) in this thread's CPU kernels, then restore.

    ``torch.set_flush_denormal`` sets a processor flag for the whole thread, so it is scoped to
    the training loop: code around it keeps IEEE arithmetic.
    """
    before = flushing_denormals()
    torch.set_flush_denormal(mode)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _set_deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without its 2-second import.

    The public call also imports torch._inductor to set its flag, which only torch.compile reads
    and covidreg does not use; unless inductor is already loaded, set the ATen flag directly.
    """
    if torch.are_deterministic_algorithms_enabled() == mode:
        return
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        setter(mode)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally force deterministic kernels."""
    if deterministic:
        # cuBLAS reads this when CUDA starts: it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    _set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CovidRegError(
            "device 'cuda' requested but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


# --- optimizers and schedulers -------------------------------------------------------------------


def parameter_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """``build_optimizer``'s parameter groups, each with its learning rate.

    Without a separate output rate there is one group, "all": a fused optimizer runs one kernel
    per group and step. Otherwise "body" and "head" (the output layer, at ``cfg.output_lr``).
    """
    if cfg.output_lr in (0, cfg.lr):
        return [{"params": list(model.parameters()), "name": "all", "lr": cfg.lr}]
    head = [p for name, p in model.named_parameters() if name.startswith("head.")]
    body = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    groups = [
        {"params": body, "name": "body", "lr": cfg.lr},
        {"params": head, "name": "head", "lr": cfg.output_lr},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer``, over ``parameter_groups``."""
    groups = parameter_groups(model, cfg)
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer != "rmsprop" and _fused_supported(model):
        # One fused kernel per step instead of a Python loop over parameters: a large share of
        # a step's time on a network this small.
        common["fused"] = True
    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(
            groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **common
        ),
        "adagrad": lambda: torch.optim.Adagrad(groups, **common),
        "rmsprop": lambda: torch.optim.RMSprop(groups, momentum=cfg.momentum, **common),
        "adam": lambda: torch.optim.Adam(groups, **common),
        "adamw": lambda: torch.optim.AdamW(groups, **common),
    }
    if cfg.optimizer not in builders:
        raise CovidRegError(f"unknown optimizer '{cfg.optimizer}'; use {', '.join(builders)}")
    return builders[cfg.optimizer]()


def _fused_supported(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.dtype == torch.float32 for p in params)


StepFn = Callable[[Sequence[torch.Tensor]], None]


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter], direct: bool = True
) -> StepFn:
    """A function applying ``optimizer``'s update for gradients given in ``params`` order.

    With ``direct``, where it can, it runs the optimizer's own fused kernel on the optimizer's
    own state (``fused_kernel_step``); otherwise it sets ``.grad`` and calls
    ``optimizer.step()``. Build it again when the optimizer's state may have changed hands
    (``load_state_dict``, or the first ``step()``, which creates the state).
    """
    if direct:
        kernel = fused_kernel_step(optimizer, params)
        if kernel is not None:
            return kernel

    def public_step(grads: Sequence[torch.Tensor]) -> None:
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        optimizer.step()

    return public_step


def fused_kernel_step(
    optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]
) -> StepFn | None:
    """``optimizer.step()`` without its Python wrapper, or None where that does not apply.

    A fused optimizer's step is one kernel call, but ``step()`` wraps it in about 25-35 µs of
    Python (hooks, profiler records, regrouping the tensors by device) that matter when a whole
    training step takes about 100 µs. This calls the same kernel with the same arguments on the
    optimizer's own state tensors, so the result and ``optimizer.state_dict()`` are exactly
    what ``step()`` would give (tested against it). The hyperparameters are read from the
    param groups at every call, so schedulers still apply. It covers fused SGD, Adam, AdamW
    and Adagrad on a plain float32 setup, once their state exists, and never an optimizer
    with step hooks (they would be skipped). Callers let ``step()`` run first: it creates the
    state and tells an LR scheduler the optimizer has stepped.
    """
    hooks = [
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        # the hooks torch.optim.optimizer.register_optimizer_step_*_hook add for every optimizer
        getattr(optimizer_module, "_global_optimizer_pre_hooks", None),
        getattr(optimizer_module, "_global_optimizer_post_hooks", None),
    ]
    if any(hooks):
        return None
    position = {p: i for i, p in enumerate(params)}
    kernels: list[tuple[list[int], StepFn]] = []
    for group in optimizer.param_groups:
        plain = not any(group.get(k) for k in ("differentiable", "capturable", "foreach"))
        if not (group.get("fused") and plain) or isinstance(group.get("lr"), torch.Tensor):
            return None
        members = group["params"]
        if any(p not in position or p.dtype != torch.float32 for p in members):
            return None
        kernel = _group_kernel(optimizer, group, members)
        if kernel is None:
            return None
        kernels.append(([position[p] for p in members], kernel))
    if getattr(optimizer, "grad_scale", None) is not None:
        return None
    if len(kernels) == 1 and kernels[0][0] == list(range(len(params))):
        return kernels[0][1]

    def grouped(grads: Sequence[torch.Tensor]) -> None:
        for indices, kernel in kernels:
            kernel([grads[i] for i in indices])

    return grouped


def _group_kernel(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], members: list[nn.Parameter]
) -> StepFn | None:
    """One param group's fused kernel call, as ``torch.optim``'s ``_fused_*`` functions make it."""
    params = [p.detach() for p in members]  # the kernels update them in place, without autograd
    states = [optimizer.state.get(p, {}) for p in members]

    def state(key: str) -> list[torch.Tensor] | None:
        tensors = [one.get(key) for one in states]
        return tensors if all(isinstance(t, torch.Tensor) for t in tensors) else None

    if isinstance(optimizer, torch.optim.SGD) and hasattr(torch, "_fused_sgd_"):
        buffers = [] if group["momentum"] == 0 else state("momentum_buffer")
        if buffers is None:  # the first step creates the momentum buffers
            return None

        def sgd(grads: Sequence[torch.Tensor]) -> None:
            torch._fused_sgd_(
                params,
                grads,
                buffers,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                is_first_step=False,
            )

        return sgd
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get(
            "decoupled_weight_decay", False
        )
        kernel = getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)
        steps, exp_avgs, exp_avg_sqs = state("step"), state("exp_avg"), state("exp_avg_sq")
        max_exp_avg_sqs = state("max_exp_avg_sq") if group["amsgrad"] else []
        betas = group["betas"]
        if kernel is None or None in (steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
            return None
        if any(isinstance(b, torch.Tensor) for b in betas):
            return None

        def adam(grads: Sequence[torch.Tensor]) -> None:
            torch._foreach_add_(steps, 1)
            kernel(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                amsgrad=group["amsgrad"],
                lr=group["lr"],
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )

        return adam
    if isinstance(optimizer, torch.optim.Adagrad) and hasattr(torch, "_fused_adagrad_"):
        steps, sums = state("step"), state("sum")
        if steps is None or sums is None:
            return None

        def adagrad(grads: Sequence[torch.Tensor]) -> None:
            torch._foreach_add_(steps, 1)
            torch._fused_adagrad_(
                params,
                grads,
                sums,
                steps,
                lr=group["lr"],
                lr_decay=group["lr_decay"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )

        return adagrad
    return None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> Any:
    """The LR scheduler named by ``cfg.scheduler`` (None for 'none'); stepped once per epoch."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    if cfg.scheduler == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    raise CovidRegError(f"unknown scheduler '{cfg.scheduler}'")


# --- early stopping ------------------------------------------------------------------------------


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


# --- one epoch, evaluation -----------------------------------------------------------------------


def penalty(model: nn.Module, l1: float, l2: float) -> torch.Tensor | None:
    """Explicit L1/L2 penalty on the weight matrices; it is added to the training loss only."""
    if l1 == 0 and l2 == 0:
        return None
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    total = torch.zeros((), device=weights[0].device)
    if l2:
        total = total + l2 * sum(w.pow(2).sum() for w in weights)
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in weights)
    return total


def epoch_order(sampler: Iterable[Any]) -> tuple[torch.Tensor, list[int]]:
    """The rows of one epoch's batches back to back, and the batch sizes (the sampler moves on
    by one epoch, as iterating it would)."""
    if isinstance(sampler, ShuffledBatches):
        return sampler.epoch_order()  # what iterating it gives, without the split
    index_batches = list(sampler)
    sizes = [len(indices) for indices in index_batches]
    return torch.cat([torch.as_tensor(indices) for indices in index_batches]), sizes


def batches(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches; in-process loaders are read straight from sampler and dataset.

    With no worker processes the DataLoader would only add per-batch overhead around the same
    ``dataset[indices]`` calls, in the same order: the batches are identical either way.
    """
    if loader.num_workers > 0 or loader.batch_size is not None:
        return iter(loader)
    dataset = loader.dataset
    if not isinstance(dataset, HW01Dataset) or dataset.y is None:
        return (dataset[indices] for indices in list(loader.sampler))
    # one gather for the whole epoch, then each batch is a contiguous view of it
    order, sizes = epoch_order(loader.sampler)
    x, y = dataset[order]
    return zip(x.split(sizes), y.split(sizes), strict=True)


class AutogradEpochs:
    """Training epochs the straightforward way: ``model(x)``, ``loss.backward()``, ``step()``.

    Used for batch norm, on a GPU and with worker processes; elsewhere ``HandWrittenEpochs``
    computes the same thing faster, and the tests compare the two. Both report an epoch's
    train loss as the mean squared error over all its rows (each batch's error is kept, and
    squared and averaged once at the end), without the penalty.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        self.model, self.loader, self.optimizer = model, loader, optimizer
        self.device, self.l1, self.l2 = device, l1, l2

    def train(self) -> float:
        """One pass over the training batches; the mean plain MSE, read once per epoch."""
        model = self.model
        model.train()
        errors = []
        for x, y in batches(self.loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = model(x)
            mse = nn.functional.mse_loss(out, y)
            extra = penalty(model, self.l1, self.l2)
            loss = mse if extra is None else mse + extra
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            errors.append(out.detach() - y)
        return torch.cat(errors).square().mean().item()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return evaluate(self.model, x, y)


class HandWrittenEpochs:
    """Training epochs of an ``MLP`` on the CPU with the fewest operations per step.

    The same epochs as ``AutogradEpochs``, bit for bit (tested): the same batches in the same
    order, the same gradients (``ManualMLP``), the same optimizer kernels and the same dropout
    draws. On a network this small a step is mostly per-operation overhead, so:

    - the training rows are normalised once (the statistics do not change while training), and
      each epoch gathers its rows in one ``index_select``, in the sampler's order; the batches
      are views of that;
    - gradients are written out by hand, without autograd's graph (``ManualMLP``);
    - the optimizer's fused kernel is called directly (``fused_kernel_step``);
    - each batch's error goes into one epoch-long buffer, squared and averaged once.
    """

    def __init__(
        self,
        model: MLP,
        loader: torch.utils.data.DataLoader,
        optimizer: torch.optim.Optimizer,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        self.model, self.loader, self.optimizer, self.l1, self.l2 = model, loader, optimizer, l1, l2
        self.params = list(model.parameters())
        self.manual = ManualMLP(model)
        dataset = loader.dataset
        self.x, self.skip, self.y = self._prepare(dataset.x, dataset.y)
        self._valid: tuple[torch.Tensor, ...] | None = None
        self.step: StepFn | None = None  # made after the first step() (the fit's first step)
        self.gathered: torch.Tensor | None = None  # the epoch's rows of x, in batch order

    def _prepare(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Normalised inputs, the delta target's raw column and the target column."""
        return self.manual.normalize(x), self.manual.skip_values(x), y.unsqueeze(-1)

    def train(self) -> float:
        order, sizes = epoch_order(self.loader.sampler)
        self.gathered = gather_rows(self.x, order, self.gathered)
        xs = self.gathered.split_with_sizes(sizes)
        y = self.y.index_select(0, order)
        skips = (
            [None] * len(sizes)
            if self.skip is None
            else self.skip.index_select(0, order).split_with_sizes(sizes)
        )
        errors = torch.empty_like(y)
        manual, l1, l2 = self.manual, self.l1, self.l2
        # the first step goes through step(): it creates the optimizer's state, which the
        # direct kernel then updates in place for the rest of the fit
        step = self.step or optimizer_step(self.optimizer, self.params, direct=False)
        targets, batch_errors = y.split_with_sizes(sizes), errors.split_with_sizes(sizes)
        for x, target, skip, error in zip(xs, targets, skips, batch_errors, strict=True):
            out, saved = manual.forward(x, skip, True)
            torch.sub(out, target, out=error)
            step(manual.backward(saved, manual.loss_gradient(error), l1, l2))
            if self.step is None:
                step = self.step = optimizer_step(self.optimizer, self.params)
        return errors.square().mean().item()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``evaluate(model, x, y)``, with ``x`` normalised once for all epochs."""
        if self._valid is None or self._valid[0] is not x or self._valid[1] is not y:
            self._valid = (x, y, *self._prepare(x, y))
        _, _, xn, skip, target = self._valid
        out = self.manual.predict(xn, skip)
        return torch._C._nn.mse_loss(out, target, 1).item()  # F.mse_loss's kernel, "mean"


Epochs = AutogradEpochs | HandWrittenEpochs


def make_epochs(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    l1: float = 0.0,
    l2: float = 0.0,
) -> Epochs:
    """``HandWrittenEpochs`` where it applies (an MLP without batch norm, on the CPU, batches
    read in process from an ``HW01Dataset``), else ``AutogradEpochs``."""
    in_process = loader.num_workers == 0 and loader.batch_size is None
    dataset = loader.dataset
    if (
        isinstance(model, MLP)
        and model.supports_manual_grads
        and device.type == "cpu"
        and in_process
        and isinstance(dataset, HW01Dataset)
        and dataset.y is not None
        and not AUTOGRAD_ONLY
    ):
        return HandWrittenEpochs(model, loader, optimizer, l1, l2)
    return AutogradEpochs(model, loader, optimizer, device, l1, l2)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    l1: float = 0.0,
    l2: float = 0.0,
) -> float:
    """One pass over the training batches; returns the mean plain MSE (without the penalty)."""
    return make_epochs(model, loader, optimizer, device, l1, l2).train()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Plain MSE on a whole (small) set in eval mode; never includes a penalty."""
    model.eval()
    return nn.functional.mse_loss(model(x), y).item()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 65536) -> np.ndarray:
    model.eval()
    outputs = [model(chunk) for chunk in x.split(batch_size)]
    return torch.cat(outputs).double().cpu().numpy()


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_loss: float
    lr: float


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_valid_mse: float
    stop_reason: str  # "early_stopping", "max_epochs", "diverged"
    seconds: float
    message: str = ""


@dataclass
class TrainingState:
    """Everything the loop needs to continue exactly where it stopped."""

    epoch: int = 0  # last finished epoch
    history: list[EpochRecord] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0


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


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Trainer:
    """Owns the model, optimizer, scheduler, early stopping and generators of one training run.

    ``fit`` runs epochs until early stopping, divergence or ``cfg.epochs``; the best weights
    (lowest validation MSE) are restored at the end. ``state_dict`` captures all of it, RNG and
    generator states included, so a resumed run continues bit-identically.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        loader: torch.utils.data.DataLoader,
        x_valid: torch.Tensor,
        y_valid: torch.Tensor,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.cfg = cfg
        self.loader = loader
        self.x_valid = x_valid.to(device)
        self.y_valid = y_valid.to(device)
        self.device = device
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.stopper = EarlyStopping(cfg.patience, cfg.min_delta)
        self.state = TrainingState()

    def _epoch(self, epochs: Epochs, epoch: int) -> EpochRecord:
        lr = _current_lr(self.optimizer)
        train_loss = epochs.train()
        valid_loss = epochs.evaluate(self.x_valid, self.y_valid)
        return EpochRecord(epoch, train_loss, valid_loss, lr)

    def fit(
        self,
        on_epoch: Callable[[EpochRecord, EarlyStopping], None] | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
    ) -> FitResult:
        with denormals_flushed(self.cfg.flush_denormal):
            return self._fit(on_epoch, on_checkpoint)

    def _fit(
        self,
        on_epoch: Callable[[EpochRecord, EarlyStopping], None] | None,
        on_checkpoint: Callable[[Trainer], None] | None,
    ) -> FitResult:
        start = time.perf_counter() - self.state.seconds
        stop_reason, message = "max_epochs", ""
        # built here, after any load_state_dict: it normalises the rows with the model's
        # statistics, which stay fixed while training
        epochs = make_epochs(
            self.model, self.loader, self.optimizer, self.device, self.cfg.l1, self.cfg.l2
        )
        live_state = self.model.state_dict()  # detached views: a best-state copy clones these
        if self.stopper.should_stop:  # resumed from a state saved at the stopping epoch
            stop_reason = "early_stopping"
        for epoch in range(self.state.epoch + 1, self.cfg.epochs + 1):
            if stop_reason == "early_stopping":
                break
            record = self._epoch(epochs, epoch)
            if not (math.isfinite(record.train_loss) and math.isfinite(record.valid_loss)):
                stop_reason = "diverged"
                best = self.stopper.best_epoch if self.state.best_state is not None else None
                message = divergence_message(record, best)
                break
            self.state.history.append(record)
            if self.stopper.step(record.valid_loss, epoch):
                self.state.best_state = {k: v.clone() for k, v in live_state.items()}
            if self.scheduler is not None:
                if self.cfg.scheduler == "plateau":
                    self.scheduler.step(record.valid_loss)
                else:
                    self.scheduler.step()
            self.state.epoch = epoch
            self.state.seconds = time.perf_counter() - start
            if on_epoch is not None:
                on_epoch(record, self.stopper)
            every = self.cfg.checkpoint_every
            if on_checkpoint is not None and every and epoch % every == 0:
                on_checkpoint(self)
            if self.stopper.should_stop:
                stop_reason = "early_stopping"
                break
        if self.state.best_state is None:
            raise CovidRegError(
                message or "training produced no finite validation loss; try a lower --lr"
            )
        self.model.load_state_dict(self.state.best_state)
        return FitResult(
            history=list(self.state.history),
            best_epoch=self.stopper.best_epoch,
            best_valid_mse=self.stopper.best,
            stop_reason=stop_reason,
            seconds=time.perf_counter() - start,
            message=message,
        )

    # --- exact resume ---

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only, so ``torch.load(weights_only=True)`` reads it back."""
        sampler = self.loader.sampler
        return {
            "epoch": self.state.epoch,
            "seconds": self.state.seconds,
            "history": _history_columns(self.state.history),
            "model": _copy_state(self.model),
            "best_state": self.state.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": _python_state(),
                "batch_order": sampler.generator.get_state(),
                "loader": self.loader.generator.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainingState(
            epoch=int(state["epoch"]),
            history=_history_records(state["history"]),
            best_state=state["best_state"],
            seconds=float(state["seconds"]),
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        _set_numpy_state(rng["numpy"])
        _set_python_state(rng["python"])
        self.loader.sampler.generator.set_state(rng["batch_order"])
        self.loader.generator.set_state(rng["loader"])


def _history_columns(history: list[EpochRecord]) -> dict[str, torch.Tensor]:
    """The history as one tensor per field: a training state is saved every few epochs, and
    pickling thousands of small dicts each time cost more than the rest of it together."""
    return {
        "epoch": torch.tensor([r.epoch for r in history], dtype=torch.int64),
        "train_loss": torch.tensor([r.train_loss for r in history], dtype=torch.float64),
        "valid_loss": torch.tensor([r.valid_loss for r in history], dtype=torch.float64),
        "lr": torch.tensor([r.lr for r in history], dtype=torch.float64),
    }


def _history_records(saved: dict[str, torch.Tensor] | list[dict[str, Any]]) -> list[EpochRecord]:
    """``_history_columns`` read back (float64 holds each Python float exactly); a list of dicts
    is how earlier versions saved it."""
    if isinstance(saved, list):
        return [EpochRecord(**r) for r in saved]
    columns = [saved[k].tolist() for k in ("epoch", "train_loss", "valid_loss", "lr")]
    return [EpochRecord(*row) for row in zip(*columns, strict=True)]


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
        "name": str(name),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list[Any]) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))
