"""The MLP regressor and its weight-initialisation schemes."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from covidreg.config import Config
from covidreg.errors import CovidRegError
from covidreg.layout import Layout

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
    change from that (raw) input and adds it back: the ``delta`` target. With ``ridge_blend``
    w > 0 the prediction (before that skip) is ``(1 - w) * network + w * ridge``, a linear
    model on the standardised inputs whose weights (buffers, set by ``set_ridge``) are the
    closed-form ridge regression of the network's own training rows and target.

    Training runs in ``covidreg.engine``, on stacks of these models' weights; ``forward`` is the
    same arithmetic (``stack_forward``) for a stack of one, in inference mode (no dropout).
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        skip_index: int | None = None,
        ridge_blend: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise CovidRegError(f"unknown activation '{activation}'; use {', '.join(ACTIVATIONS)}")
        self.register_buffer("input_mean", torch.zeros(n_inputs))
        self.register_buffer("input_std", torch.ones(n_inputs))
        self.ridge_blend = ridge_blend
        if ridge_blend:  # without a blend the checkpoint keeps the layout it always had
            self.register_buffer("ridge_weight", torch.zeros(n_inputs))
            self.register_buffer("ridge_bias", torch.zeros(()))
        self.skip_index = skip_index
        self.activation = activation
        self.dropout = dropout
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden:
            layers.append(nn.Linear(width, size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def linears(self) -> list[nn.Linear]:
        """The linear layers, input first, head last."""
        return [m for m in self.body if isinstance(m, nn.Linear)] + [self.head]

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def normalize(self, x: Tensor) -> Tensor:
        """The input standardisation with the training split's statistics."""
        return (x - self.input_mean) / self.input_std

    def set_ridge(self, weight: np.ndarray, bias: float) -> None:
        """The ridge regression's weights on the standardised inputs, and its intercept."""
        self.ridge_weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.ridge_bias.fill_(bias)

    def ridge(self, z: Tensor) -> Tensor:
        """The ridge regression's prediction for standardised inputs z [..., rows, in]."""
        return torch.matmul(z, self.ridge_weight) + self.ridge_bias

    def forward(self, x: torch.Tensor, with_ridge: bool = True) -> torch.Tensor:
        """The prediction for raw inputs ``x``; ``with_ridge=False``: the network's alone."""
        layers = [(m.weight.t().unsqueeze(0), m.bias.view(1, 1, -1)) for m in self.linears()]
        activation = ACTIVATIONS[self.activation]()
        z = self.normalize(x)
        out = stack_forward(layers, z.unsqueeze(0), activation).view(-1)
        if self.ridge_blend and with_ridge:  # (1 - w) * network + w * ridge
            out = torch.lerp(out, self.ridge(z), self.ridge_blend)
        if self.skip_index is not None:
            out = out + x[:, self.skip_index]
        return out


# (layer index, the activation's output [S, rows, units]) -> dropout's scaled keep mask, or None
DropoutNoise = Callable[[int, Tensor], "Tensor | None"]
# what a backward needs of each hidden layer: its input, the activation's input and output, and
# the dropout mask (None without); then the head's input
Saved = list


def stack_forward(
    layers: list[tuple[Tensor, Tensor]],
    x: Tensor,
    activation: nn.Module,
    noise: DropoutNoise | None = None,
    saved: Saved | None = None,
) -> Tensor:
    """S MLPs at once: inputs [S, rows, in] -> outputs [S, rows, 1].

    ``layers`` holds each linear layer's weight as [S, in, out] (nn.Linear's, transposed) and
    its bias [S, 1, out]; every layer is one batched product. ``noise`` draws dropout masks;
    ``saved`` collects what the hand-written backward (``covidreg.stack``) needs.
    """
    a = x
    for i, (weight, bias) in enumerate(layers[:-1]):
        pre = torch.baddbmm(bias, a, weight)
        post = activation.forward(pre)
        mask = None if noise is None else noise(i, post)
        if saved is not None:
            saved.append((a, pre, post, mask))
        a = post if mask is None else post * mask
    if saved is not None:
        saved.append(a)
    weight, bias = layers[-1]
    return torch.baddbmm(bias, a, weight)


def skip_index_for(cfg: Config, layout: Layout, feature_names: list[str]) -> int | None:
    """Position of the last known day's tested_positive (``tested_positive_d2`` for 3-day
    windows) for the delta target, which needs that feature."""
    if cfg.target != "delta":
        return None
    base = layout.last_known
    if base not in feature_names:
        raise CovidRegError(
            f"target 'delta' predicts the change from {base}, but the feature set does not "
            f"include it; add {base} to --features or use --target level"
        )
    return feature_names.index(base)


def build_model(cfg: Config, layout: Layout, feature_names: list[str]) -> MLP:
    """An MLP for ``feature_names`` with ``cfg``'s architecture, initialised by ``cfg.init``."""
    model = MLP(
        n_inputs=len(feature_names),
        hidden=list(cfg.hidden),
        activation=cfg.activation,
        dropout=cfg.dropout,
        skip_index=skip_index_for(cfg, layout, feature_names),
        ridge_blend=cfg.ridge_blend,
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
    """What a symmetric init does to the hidden units (allowed: people try it to see it fail)."""
    if cfg.init not in ("zeros", "constant") or not cfg.hidden:
        return None  # without hidden units there is no symmetry to break
    same = f"init '{cfg.init}' gives every hidden unit of a layer the same weights"
    if cfg.bias_init in ("zeros", "constant"):
        return (
            f"{same} and bias_init '{cfg.bias_init}' the same bias: the units receive the same "
            "gradients and stay identical (the symmetry is never broken), so each layer "
            "behaves like one unit"
        )
    return (
        f"{same}: only their random default biases tell them apart, so the symmetry is broken "
        "by the biases alone (with bias_init zeros or constant the units would stay identical)"
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def rmse(mse: float) -> float:
    return math.sqrt(mse) if mse >= 0 else float("nan")
