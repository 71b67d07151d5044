"""The MLP: architecture from the config, init schemes' statistics, delta target, buffers,
the inference forward."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from covidreg.config import CHOICES, Config, validate
from covidreg.errors import CovidRegError
from covidreg.model import (
    ACTIVATION_BACKWARD,
    ACTIVATIONS,
    MLP,
    build_model,
    count_parameters,
    init_linear,
    init_warning,
    rmse,
    skip_index_for,
)
from tests.conftest import LAYOUT

STRONG = [
    *(f"{n}_d{d}" for d in (1, 2, 3) for n in ("cli", "ili", "hh_cmnty_cli", "nohh_cmnty_cli")),
    "tested_positive_d1",
    "tested_positive_d2",
]
FAN_OUT, FAN_IN = 256, 512  # a layer large enough for tight statistics (131072 weights)


def config(**changes: Any) -> Config:
    return dataclasses.replace(Config(), **changes)


def initialised_layer(**changes: Any) -> torch.Tensor:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    with torch.no_grad():
        init_linear(layer, config(**changes))
    return layer.weight.detach().double()


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# --- architecture --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "shapes"),
    [([64], [(64, 14), (1, 64)]), ([64, 16], [(64, 14), (16, 64), (1, 16)])],
    ids=["64", "64,16"],
)
def test_layer_shapes(hidden: list[int], shapes: list[tuple[int, int]]) -> None:
    model = build_model(config(hidden=hidden), LAYOUT, STRONG)
    assert [tuple(layer.weight.shape) for layer in linear_layers(model)] == shapes
    assert model.head is linear_layers(model)[-1]
    out = model(torch.randn(5, 14))
    assert out.shape == (5,)
    n_params = sum(i * o + o for o, i in shapes)
    assert count_parameters(model) == n_params  # the normalisation buffers are not parameters


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
        ("gelu", nn.GELU),
        ("selu", nn.SELU),
    ],
)
def test_activation_by_name(name: str, module: type[nn.Module]) -> None:
    model = build_model(config(activation=name, hidden=[8, 4]), LAYOUT, STRONG)
    body_types = [type(m) for m in model.body]
    assert body_types == [nn.Linear, module, nn.Linear, module]
    assert torch.isfinite(model(torch.randn(3, 14))).all()


def test_every_configurable_activation_has_a_module() -> None:
    assert set(CHOICES["activation"]) == set(ACTIVATIONS)
    assert set(ACTIVATION_BACKWARD) == set(ACTIVATIONS.values())  # and a hand-written gradient


def test_unknown_activation() -> None:
    with pytest.raises(CovidRegError, match="unknown activation 'swish'"):
        MLP(3, [4], activation="swish")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_layers(dropout: float) -> None:
    model = build_model(config(hidden=[8, 4], dropout=dropout), LAYOUT, STRONG)
    per_layer: list[type[nn.Module]] = [nn.Linear, nn.ReLU]
    if dropout:
        per_layer.append(nn.Dropout)
    assert [type(m) for m in model.body] == per_layer * 2
    assert all(m.p == dropout for m in model.body if isinstance(m, nn.Dropout))
    assert model.dropout == dropout


def test_there_are_no_batch_norm_layers() -> None:
    model = build_model(config(hidden=[8, 4], batch_norm=False), LAYOUT, STRONG)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    with pytest.raises(CovidRegError, match="'batch_norm' is not supported"):
        validate(config(batch_norm=True))


def reference_forward(model: MLP, x: torch.Tensor) -> torch.Tensor:
    """The same weights in a plain nn.Sequential: Linear, activation, ..., Linear."""
    layers: list[nn.Module] = []
    for linear in model.linears():
        plain_linear = nn.Linear(linear.in_features, linear.out_features)
        plain_linear.load_state_dict(linear.state_dict())
        layers += [plain_linear, ACTIVATIONS[model.activation]()]
    plain = nn.Sequential(*layers[:-1]).eval()
    with torch.no_grad():
        z = (x - model.input_mean) / model.input_std
        out = plain(z).squeeze(-1)
        if model.ridge_blend:  # (1 - w) * network + w * (the ridge's z @ weight + bias)
            ridge = nn.Linear(len(model.input_mean), 1)
            ridge.weight.copy_(model.ridge_weight.view(1, -1))
            ridge.bias.copy_(model.ridge_bias.view(1))
            w = model.ridge_blend
            out = (1 - w) * out + w * ridge(z).squeeze(-1)
    return out if model.skip_index is None else out + x[:, model.skip_index]


@pytest.mark.parametrize(
    ("hidden", "activation", "dropout", "target", "ridge_blend"),
    [
        ([16], "relu", 0.0, "level", 0.0),
        ([16, 8], "gelu", 0.5, "delta", 0.0),
        ([], "tanh", 0.0, "delta", 0.5),
        ([1], "selu", 0.2, "level", 0.3),
        ([16], "relu", 0.0, "delta", 0.5),
    ],
)
def test_forward_is_the_plain_sequential_computation_without_dropout(
    hidden: list[int], activation: str, dropout: float, target: str, ridge_blend: float
) -> None:
    """Training runs in the engine; ``forward`` is inference: no dropout in either mode."""
    torch.manual_seed(0)
    cfg = config(
        hidden=hidden,
        activation=activation,
        dropout=dropout,
        target=target,
        ridge_blend=ridge_blend,
    )
    model = build_model(cfg, LAYOUT, STRONG)
    rng = np.random.default_rng(1)
    model.set_normalization(rng.normal(10, 3, 14), rng.uniform(0.5, 4, 14))
    if ridge_blend:
        model.set_ridge(rng.normal(0, 1, 14), 0.7)
    x = torch.randn(50, 14) * 4 + 10
    expected = reference_forward(model, x)
    for training in (True, False):
        model.train(training)
        before = torch.get_rng_state()
        with torch.no_grad():
            out = model(x)
        assert torch.equal(torch.get_rng_state(), before)  # no mask drawn
        assert out.shape == (50,)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model.train()(x), model.eval()(x))


def test_a_model_copies_and_pickles() -> None:
    torch.manual_seed(2)
    model = build_model(
        config(hidden=[16, 8], activation="leaky_relu", dropout=0.15), LAYOUT, STRONG
    )
    model.set_normalization(np.full(14, 3.0), np.full(14, 2.0))
    x = torch.randn(9, 14) * 4 + 10
    with torch.no_grad():
        expected = model(x)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert copied.body[0] is not model.body[0]
        assert copied.skip_index == model.skip_index and copied.activation == model.activation
        with torch.no_grad():
            assert torch.equal(copied(x), expected)
            copied.body[0].weight.add_(1.0)  # the copy holds its own weights
            assert not torch.equal(copied(x), expected)
            assert torch.equal(model(x), expected)


# --- init schemes --------------------------------------------------------------------------------


def test_uniform_init() -> None:
    w = initialised_layer(init="uniform", init_a=-0.3, init_b=0.7)
    assert w.min() >= -0.3 and w.max() <= 0.7
    assert w.min() < -0.29 and w.max() > 0.69
    assert abs(w.mean().item() - 0.2) < 0.005
    assert abs(w.std().item() - 1.0 / math.sqrt(12)) < 0.005


def test_normal_init() -> None:
    w = initialised_layer(init="normal", init_mean=0.1, init_std=0.3)
    assert abs(w.mean().item() - 0.1) < 0.005
    assert w.std().item() == pytest.approx(0.3, rel=0.02)
    assert w.max() > 0.1 + 3 * 0.3  # untruncated: beyond 3 std happens in 131072 draws


def test_trunc_normal_init() -> None:
    mean, std = 0.1, 0.3
    w = initialised_layer(init="trunc_normal", init_mean=mean, init_std=std)
    assert w.min() >= mean - 2 * std and w.max() <= mean + 2 * std
    assert w.min() < mean - 1.95 * std and w.max() > mean + 1.95 * std
    assert abs(w.mean().item() - mean) < 0.005
    # a normal truncated at +-2 std has std * sqrt(1 - 2*2*phi(2) / (Phi(2) - Phi(-2)))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert w.std().item() == pytest.approx(std * math.sqrt(1 - 4 * phi2 / mass), rel=0.02)


@pytest.mark.parametrize(
    ("activation", "init_gain", "gain"),
    [
        ("tanh", 0.0, nn.init.calculate_gain("tanh")),
        ("relu", 0.0, nn.init.calculate_gain("relu")),
        ("sigmoid", 0.0, 1.0),
        ("relu", 1.5, 1.5),
    ],
)
def test_xavier_uniform_init(activation: str, init_gain: float, gain: float) -> None:
    w = initialised_layer(init="xavier_uniform", activation=activation, init_gain=init_gain)
    bound = gain * math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert w.abs().max() <= bound + 1e-7
    assert w.abs().max() > 0.99 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize(("activation", "init_gain"), [("tanh", 0.0), ("selu", 0.0), ("relu", 2.0)])
def test_xavier_normal_init(activation: str, init_gain: float) -> None:
    w = initialised_layer(init="xavier_normal", activation=activation, init_gain=init_gain)
    gain = init_gain or nn.init.calculate_gain(activation)
    assert w.std().item() == pytest.approx(gain * math.sqrt(2 / (FAN_IN + FAN_OUT)), rel=0.02)
    assert abs(w.mean().item()) < 0.002


KAIMING_GAINS = [
    ("relu", math.sqrt(2.0)),
    ("gelu", math.sqrt(2.0)),
    ("leaky_relu", math.sqrt(2.0 / (1 + 0.01**2))),
    ("tanh", 5.0 / 3),
]


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize(("activation", "gain"), KAIMING_GAINS)
def test_kaiming_normal_init(activation: str, gain: float, mode: str) -> None:
    w = initialised_layer(init="kaiming_normal", activation=activation, init_mode=mode)
    fan = FAN_IN if mode == "fan_in" else FAN_OUT
    assert w.std().item() == pytest.approx(gain / math.sqrt(fan), rel=0.02)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize(("activation", "gain"), KAIMING_GAINS)
def test_kaiming_uniform_init(activation: str, gain: float, mode: str) -> None:
    w = initialised_layer(init="kaiming_uniform", activation=activation, init_mode=mode)
    fan = FAN_IN if mode == "fan_in" else FAN_OUT
    bound = gain * math.sqrt(3 / fan)
    assert w.abs().max() <= bound + 1e-7
    assert w.abs().max() > 0.99 * bound


@pytest.mark.parametrize(
    ("init_gain", "activation", "gain"), [(1.0, "relu", 1.0), (0.0, "relu", 2**0.5)]
)
def test_orthogonal_init(init_gain: float, activation: str, gain: float) -> None:
    w = initialised_layer(init="orthogonal", init_gain=init_gain, activation=activation)
    torch.testing.assert_close(
        w @ w.T, gain**2 * torch.eye(FAN_OUT, dtype=w.dtype), atol=1e-4, rtol=0
    )


def test_zeros_and_constant_init() -> None:
    assert torch.count_nonzero(initialised_layer(init="zeros")) == 0
    w = initialised_layer(init="constant", init_value=0.25)
    assert torch.all(w == 0.25)


def test_default_init_keeps_pytorchs_weights() -> None:
    torch.manual_seed(3)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    before = layer.weight.detach().clone(), layer.bias.detach().clone()
    with torch.no_grad():
        init_linear(layer, config(init="default", bias_init="default"))
    assert torch.equal(layer.weight, before[0]) and torch.equal(layer.bias, before[1])
    assert layer.weight.abs().max() <= 1 / math.sqrt(FAN_IN)


@pytest.mark.parametrize(
    ("bias_init", "expected"), [("zeros", 0.0), ("constant", 0.2)], ids=["zeros", "constant"]
)
def test_bias_init_applies_to_every_layer(bias_init: str, expected: float) -> None:
    model = build_model(config(bias_init=bias_init, bias_value=0.2, hidden=[8, 4]), LAYOUT, STRONG)
    for layer in linear_layers(model):
        assert torch.all(layer.bias == expected)


def test_init_scheme_applies_to_every_linear_layer() -> None:
    model = build_model(config(init="constant", init_value=0.125, hidden=[8, 4]), LAYOUT, STRONG)
    layers = linear_layers(model)
    assert len(layers) == 3
    for layer in layers:
        assert torch.all(layer.weight == 0.125)


@pytest.mark.parametrize("scheme", CHOICES["init"])
def test_every_configurable_scheme_is_applied(scheme: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    before = layer.weight.detach().clone()
    with torch.no_grad():
        init_linear(layer, config(init=scheme, init_value=0.5))
    assert torch.equal(layer.weight, before) == (scheme == "default")


@pytest.mark.parametrize("scheme", CHOICES["init"])
def test_init_warning_only_for_symmetric_schemes(scheme: str) -> None:
    warning = init_warning(config(init=scheme))
    if scheme in ("zeros", "constant"):
        assert warning is not None and "broken by the biases alone" in warning
        assert "stay identical (the symmetry is never broken)" in str(
            init_warning(config(init=scheme, bias_init="zeros"))
        )
        assert init_warning(config(init=scheme, hidden=[])) is None  # a linear model
    else:
        assert warning is None


@pytest.mark.parametrize(("bias_init", "identical"), [("constant", True), ("default", False)])
def test_what_the_init_warning_says_is_what_training_does(
    hw01_files: dict[str, Path], bias_init: str, identical: bool
) -> None:
    from covidreg.experiment import fit_model, load_data
    from covidreg.splits import holdout_split

    cfg = config(
        init="zeros",
        bias_init=bias_init,
        train_csv=str(hw01_files["train"]),
        test_csv="",
        epochs=20,
        batch_size=16,
        patience=0,
    )
    data = load_data(cfg)
    train_idx, valid_idx = holdout_split(data.train.order, "blocked", 0.2, 42, 2)
    fitted = fit_model(cfg, data, train_idx, valid_idx, cfg.seed)
    rows = fitted.model.linears()[0].weight.detach()
    assert bool((rows == rows[0]).all()) == identical
    assert not bool((rows == 0).all())  # the weights did move


def test_unknown_init_scheme() -> None:
    with pytest.raises(CovidRegError, match="unknown init scheme 'he'"):
        init_linear(nn.Linear(2, 2), config(init="he"))


# --- delta target --------------------------------------------------------------------------------


def test_delta_target_adds_tested_positive_d2_to_the_mlp_output() -> None:
    names = ["cli_d1", "ili_d2", "tested_positive_d2", "tested_positive_d1"]
    torch.manual_seed(4)
    level = build_model(config(target="level", hidden=[8]), LAYOUT, names)
    torch.manual_seed(4)
    delta = build_model(config(target="delta", hidden=[8]), LAYOUT, names)
    assert (level.skip_index, delta.skip_index) == (None, 2)
    mean, std = np.array([1.0, 2.0, 30.0, 29.0]), np.array([0.5, 0.4, 7.0, 6.0])
    level.set_normalization(mean, std)
    delta.set_normalization(mean, std)
    x = torch.randn(6, 4) * 5 + 20
    torch.testing.assert_close(delta(x), level(x) + x[:, 2], rtol=0, atol=1e-5)
    # the skip uses the raw value, not the standardised one
    assert not torch.allclose(delta(x), level(x) + (x[:, 2] - 30.0) / 7.0)


def test_delta_target_needs_tested_positive_d2() -> None:
    with pytest.raises(CovidRegError, match="tested_positive_d2"):
        build_model(config(target="delta"), LAYOUT, ["cli_d1", "tested_positive_d1"])
    assert skip_index_for(config(target="level"), LAYOUT, ["cli_d1"]) is None


# --- normalisation buffers -----------------------------------------------------------------------


def test_normalization_is_applied_in_forward_and_saved() -> None:
    torch.manual_seed(5)
    model = build_model(config(hidden=[8], target="level", ridge_blend=0.0), LAYOUT, STRONG)
    rng = np.random.default_rng(0)
    mean, std = rng.normal(10, 3, 14), rng.uniform(0.5, 4, 14)
    x = torch.randn(7, 14) * 4 + 10
    raw = model(x)
    model.set_normalization(mean, std)
    standardised = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
        std, dtype=torch.float32
    )
    expected = model.head(model.body(standardised)).squeeze(-1)
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(model(x), raw)
    state = model.state_dict()
    torch.testing.assert_close(state["input_mean"], torch.tensor(mean, dtype=torch.float32))
    torch.testing.assert_close(state["input_std"], torch.tensor(std, dtype=torch.float32))
    rebuilt = build_model(config(hidden=[8], target="level", ridge_blend=0.0), LAYOUT, STRONG)
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(x), model(x))
    assert "input_mean" not in dict(model.named_parameters())


def test_rmse() -> None:
    assert rmse(4.0) == 2.0
    assert rmse(0.0) == 0.0
    assert math.isnan(rmse(-1.0))
