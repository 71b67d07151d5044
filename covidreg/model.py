"""The MLP regressor and its weight-initialisation schemes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from covidreg.config import Config
from covidreg.errors import CovidRegError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "selu": nn.SELU,
}
# calculate_gain / kaiming's nonlinearity for each activation (GELU is close to ReLU's gain).
_GAIN_NAME = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "gelu": "relu",
    "selu": "selu",
}
_LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default negative slope
# torch.selu is elu with these constants (ATen's SELU_ALPHA, SELU_SCALE), so its gradient is elu's.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

_aten = torch.ops.aten
# (activation module, grad wrt its output, its input, its output) -> grad wrt its input
ActivationBackward = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


def _relu_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.threshold_backward(grad, post, 0)


def _leaky_relu_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.leaky_relu_backward(grad, pre, module.negative_slope, False)


def _tanh_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.tanh_backward(grad, post)


def _sigmoid_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.sigmoid_backward(grad, post)


def _gelu_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.gelu_backward(grad, pre, approximate=module.approximate)


def _selu_backward(module: nn.Module, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    return _aten.elu_backward(grad, _SELU_ALPHA, _SELU_SCALE, 1.0, False, pre)


# The ATen kernel autograd itself runs for each activation's backward (so the hand-written
# gradients agree with autograd's bit for bit), with the module's own constants.
ACTIVATION_BACKWARD: dict[type[nn.Module], ActivationBackward] = {
    nn.ReLU: _relu_backward,
    nn.LeakyReLU: _leaky_relu_backward,
    nn.Tanh: _tanh_backward,
    nn.Sigmoid: _sigmoid_backward,
    nn.GELU: _gelu_backward,
    nn.SELU: _selu_backward,
}


class MLP(nn.Module):
    """Standardise -> hidden layers -> one output.

    The input statistics are buffers fitted on the training split, so the checkpoint carries
    them and a rebuilt model needs no other file. With ``skip_index`` the network predicts the
    change from that (raw) input and adds it back: the ``delta`` target.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        skip_index: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise CovidRegError(f"unknown activation '{activation}'; use {', '.join(ACTIVATIONS)}")
        self.register_buffer("input_mean", torch.zeros(n_inputs))
        self.register_buffer("input_std", torch.ones(n_inputs))
        self.skip_index = skip_index
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        # batch norm's backward is not written out by hand: such a model trains with autograd
        self.supports_manual_grads = not batch_norm

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body((x - self.input_mean) / self.input_std)).squeeze(-1)
        if self.skip_index is not None:
            out = out + x[:, self.skip_index]
        return out

    def loss_and_grads(
        self, x: torch.Tensor, y: torch.Tensor, l1: float = 0.0, l2: float = 0.0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The batch's plain MSE and the gradients of MSE + penalty, in ``parameters()`` order.

        Bit-identical to what autograd computes for ``mse_loss(self(x), y) + penalty`` (see
        ``ManualMLP``), with dropout drawn as ``nn.Dropout`` draws it in training mode.
        """
        manual = ManualMLP(self)
        target = y.unsqueeze(-1)
        out, saved = manual.forward(manual.normalize(x), manual.skip_values(x), self.training)
        mse = torch._C._nn.mse_loss(out, target, 1)  # F.mse_loss's kernel; 1: reduction "mean"
        grads = manual.backward(saved, manual.loss_gradient(out - target), l1, l2)
        return mse, grads


class _HiddenLayer(NamedTuple):
    """One hidden layer as the hand-written arithmetic sees it (detached tensors)."""

    weight: Tensor
    weight_t: Tensor  # a transposed view, made once: the weight is updated in place
    bias: Tensor
    forward: Callable[[Tensor], Tensor]
    activation: nn.Module
    activation_backward: ActivationBackward
    dropout: float  # 0: no dropout layer


# What the backward needs from the forward: each hidden layer's input, the activation's input and
# output and dropout's scaled keep mask (None without dropout), and the head's input.
# Plain tuples: made every step.
_LayerSaved = tuple[Tensor, Tensor, Tensor, Tensor | None]
Saved = tuple[list[_LayerSaved], Tensor]

# What these modules' forward calls, without the module's Python wrapper around it.
_ACTIVATION_KERNEL: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu,
    nn.Tanh: torch.tanh,
    nn.Sigmoid: torch.sigmoid,
    nn.SELU: torch.selu,
}


class ManualMLP:
    """An ``MLP``'s training arithmetic written out: forward, MSE gradient and backward.

    On a network this small a training step is mostly per-operation overhead, and autograd's
    share of it is the larger part. This runs the ATen kernels autograd would run, on the same
    operands in the same order, so the gradients are bit-identical to ``loss.backward()``'s,
    with no graph recorded and fewer operations:

    - the tensors are detached aliases of the model's parameters and buffers (same storage: the
      optimizer's in-place updates and ``load_state_dict`` are seen, and no ``no_grad`` context
      is needed);
    - the input normalisation is its own step (``normalize``), so a training loop can apply it
      once to all rows instead of once per batch: elementwise, the results are the same;
    - outputs and targets are columns ``[n, 1]``, so no squeeze and unsqueeze;
    - MSE's gradient is ``(out - y) * (2 / n)``, what ``mse_loss_backward`` computes, from the
      error the loop keeps anyway for the epoch's loss.

    In training mode dropout draws from the global RNG exactly as ``nn.Dropout`` does on the
    CPU (on a GPU ``nn.Dropout`` runs a fused kernel with other masks, so the training loop
    uses this on the CPU only). The penalty is ``train.penalty``'s,
    ``l2 * sum(W**2) + l1 * sum(|W|)`` over the weight matrices.
    """

    def __init__(self, model: MLP) -> None:
        if not model.supports_manual_grads:
            raise CovidRegError("hand-written gradients do not cover batch_norm; use autograd")
        modules = list(model.body)
        layers = []
        for i, linear in enumerate(modules):
            if isinstance(linear, nn.Linear):
                activation = modules[i + 1]
                after = modules[i + 2] if i + 2 < len(modules) else None
                p = after.p if isinstance(after, nn.Dropout) else 0.0
                forward = _ACTIVATION_KERNEL.get(type(activation), activation.forward)
                backward = ACTIVATION_BACKWARD[type(activation)]
                weight, bias = linear.weight.detach(), linear.bias.detach()
                layer = _HiddenLayer(weight, weight.t(), bias, forward, activation, backward, p)
                layers.append(layer)
        self.layers = layers
        self._reversed = layers[::-1]
        self.head_weight = model.head.weight.detach()
        self._head_weight_t = self.head_weight.t()
        self.head_bias = model.head.bias.detach()
        self.mean = model.input_mean.detach()
        self.std = model.input_std.detach()
        self.skip_index = model.skip_index
        self.weights = [layer.weight for layer in layers] + [self.head_weight]
        self._scales: dict[int, Tensor] = {}

    def normalize(self, x: Tensor) -> Tensor:
        """The model's input standardisation, the first operation of ``MLP.forward``."""
        return (x - self.mean) / self.std

    def skip_values(self, x: Tensor) -> Tensor | None:
        """The raw input the delta target adds back, as a column; None for the level target."""
        if self.skip_index is None:
            return None
        return x[:, self.skip_index].unsqueeze(-1)

    def forward(self, xn: Tensor, skip: Tensor | None, training: bool) -> tuple[Tensor, Saved]:
        """``MLP.forward`` on normalised inputs, op for op; the output is a column ``[n, 1]``."""
        a = xn
        saved: list[_LayerSaved] = []
        for _, weight_t, bias, forward, _, _, p in self.layers:
            pre = torch.addmm(bias, a, weight_t)  # F.linear's kernel for a 2-D input
            post = forward(pre)
            noise = None
            if p and training:
                # nn.Dropout on the CPU runs at::dropout's unfused path: these ops, this order
                noise = torch.empty_like(post).bernoulli_(1 - p).div_(1 - p)
            saved.append((a, pre, post, noise))
            a = post if noise is None else post * noise
        out = torch.addmm(self.head_bias, a, self._head_weight_t)
        if skip is not None:
            out += skip  # the delta target: no parameter gradient
        return out, (saved, a)

    def predict(self, xn: Tensor, skip: Tensor | None) -> Tensor:
        """The eval-mode output column, without keeping anything for a backward."""
        a = xn
        for _, weight_t, bias, forward, _, _, _ in self.layers:
            a = forward(torch.addmm(bias, a, weight_t))
        out = torch.addmm(self.head_bias, a, self._head_weight_t)
        if skip is not None:
            out += skip
        return out

    def loss_gradient(self, error: Tensor) -> Tensor:
        """The gradient of the batch MSE from ``out - y``: ``mse_loss_backward``'s arithmetic.

        The scale ``2 / n`` is kept as a float32 tensor per batch size: the same float a
        Python number would be rounded to inside the kernel, without wrapping it every step.
        """
        n = error.numel()
        scale = self._scales.get(n)
        if scale is None:
            scale = self._scales[n] = torch.tensor(2 / n, dtype=error.dtype, device=error.device)
        return torch.mul(error, scale)

    def backward(
        self, saved: Saved, grad_out: Tensor, l1: float = 0.0, l2: float = 0.0
    ) -> list[Tensor]:
        """Autograd's backward from the output down, the kernels of each node's formula.

        Returns the gradients in ``MLP.parameters()`` order.
        """
        layer_saved, head_inputs = saved
        grad = grad_out
        # addmm's backward for a weight used transposed (grad^T @ inputs); the bias's is the
        # sum over the rows. Collected head first, reversed at the end.
        grads = [grad.sum(0), grad.t().mm(head_inputs)]
        weight = self.head_weight
        for layer, (a, pre, post, noise) in zip(self._reversed, reversed(layer_saved), strict=True):
            grad = grad.mm(weight)
            if noise is not None:
                grad = grad * noise
            grad = layer.activation_backward(layer.activation, grad, pre, post)
            grads += (grad.sum(0), grad.t().mm(a))
            weight = layer.weight
        grads.reverse()
        if l1 or l2:
            self._add_penalty_grads(grads, l1, l2)
        return grads

    def _add_penalty_grads(self, grads: list[Tensor], l1: float, l2: float) -> None:
        """Add the penalty's gradients to the weights' (as autograd does: penalty ones first)."""
        for i, w in enumerate(self.weights):
            # abs's gradient is sign (with sign(0) = 0), pow(2)'s is 2 * W
            if l1 and l2:
                penalty_grad = w.sign() * l1 + w * (2 * l2)
            elif l1:
                penalty_grad = w.sign() * l1
            else:
                penalty_grad = w * (2 * l2)
            grads[2 * i] = penalty_grad + grads[2 * i]


def skip_index_for(cfg: Config, feature_names: list[str]) -> int | None:
    """Position of tested_positive_d2 for the delta target (which needs that feature)."""
    if cfg.target != "delta":
        return None
    if "tested_positive_d2" not in feature_names:
        raise CovidRegError(
            "target 'delta' predicts the change from tested_positive_d2, but the feature set "
            "does not include it; add tested_positive_d2 to --features or use --target level"
        )
    return feature_names.index("tested_positive_d2")


def build_model(cfg: Config, feature_names: list[str]) -> MLP:
    """An MLP for ``feature_names`` with ``cfg``'s architecture, initialised by ``cfg.init``."""
    model = MLP(
        n_inputs=len(feature_names),
        hidden=list(cfg.hidden),
        activation=cfg.activation,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        skip_index=skip_index_for(cfg, feature_names),
    )
    init_weights(model, cfg)
    return model


def _gain(cfg: Config) -> float:
    if cfg.init_gain > 0:
        return cfg.init_gain
    name = _GAIN_NAME[cfg.activation]
    return nn.init.calculate_gain(name, _LEAKY_SLOPE if name == "leaky_relu" else None)


def init_linear(layer: nn.Linear, cfg: Config) -> None:
    """Apply the weight and bias scheme named in ``cfg`` to one linear layer."""
    w = layer.weight
    scheme = cfg.init
    nonlinearity = _GAIN_NAME[cfg.activation]
    slope = _LEAKY_SLOPE if nonlinearity == "leaky_relu" else 0.0
    if scheme == "default":
        pass  # nn.Linear already holds PyTorch's kaiming_uniform(a=sqrt(5)) init
    elif scheme == "uniform":
        nn.init.uniform_(w, cfg.init_a, cfg.init_b)
    elif scheme == "normal":
        nn.init.normal_(w, cfg.init_mean, cfg.init_std)
    elif scheme == "trunc_normal":
        mean, std = cfg.init_mean, cfg.init_std
        nn.init.trunc_normal_(w, mean, std, a=mean - 2 * std, b=mean + 2 * std)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(w, gain=_gain(cfg))
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(w, gain=_gain(cfg))
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(w, a=slope, mode=cfg.init_mode, nonlinearity=nonlinearity)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(w, a=slope, mode=cfg.init_mode, nonlinearity=nonlinearity)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(w, gain=_gain(cfg))
    elif scheme == "zeros":
        nn.init.zeros_(w)
    elif scheme == "constant":
        nn.init.constant_(w, cfg.init_value)
    else:
        raise CovidRegError(f"unknown init scheme '{scheme}'")
    if cfg.bias_init == "zeros":
        nn.init.zeros_(layer.bias)
    elif cfg.bias_init == "constant":
        nn.init.constant_(layer.bias, cfg.bias_value)


def init_weights(model: nn.Module, cfg: Config) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                init_linear(module, cfg)


def init_warning(cfg: Config) -> str | None:
    """Why a symmetric init will not train well (allowed: people try it to see it fail)."""
    if cfg.init in ("zeros", "constant") and (cfg.hidden or cfg.init == "zeros"):
        return (
            f"init '{cfg.init}' gives every hidden unit the same weights: they receive the same "
            "gradients and stay identical (the symmetry is never broken), so the network "
            "behaves like one unit per layer"
        )
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def rmse(mse: float) -> float:
    return math.sqrt(mse) if mse >= 0 else float("nan")
