"""resolve_config: defaults -> TOML file -> overrides, and every rejection naming its key."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from covidreg.config import (
    CHOICES,
    FIELDS,
    Config,
    field_kind,
    from_dict,
    resolve_config,
    to_dict,
    to_toml,
)
from covidreg.errors import CovidRegError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_toml(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def every_field_changed() -> Config:
    """A valid config in which no field keeps its default (so a round trip covers all of them)."""
    defaults = Config()
    values: dict[str, Any] = {
        "train_csv": 'some dir/"quoted" \\ train.csv',
        "test_csv": "",
        "features": ["cli_d1", "tested_positive_d2"],
        "hidden": [64, 16],
        "valid_ratio": 1 / 3,
        "dropout": 0.1,
        "ridge_blend": 0.25,
        "ridge_alpha": 10.0,
        "init_a": -0.3,
        "init_b": 0.7,
        "init_mean": 0.01,
        "init_std": 0.3,
        "init_gain": 1.5,
        "init_value": -0.125,
        "bias_value": 0.2,
        "lr": 3e-4,
        "weight_decay": 1e-5,
        "momentum": 0.5,
        "output_lr": 0.1,
        "l2": 1e-3,
        "l1": 2e-7,
        "gamma": 0.9,
        "min_lr": 1e-6,
        "min_delta": 1e-9,
        "nesterov": True,
        "purge": 3,
    }
    for name in FIELDS:
        if name in values:
            continue
        default = getattr(defaults, name)
        if name in CHOICES:
            values[name] = next(c for c in CHOICES[name] if c != default)
        elif field_kind(name) is bool:
            values[name] = not default
        elif field_kind(name) is int:
            values[name] = default + 3
    values["batch_norm"] = False  # true is refused (the engine does not train batch norm)
    cfg = Config(**values)
    unchanged = [f for f in FIELDS if getattr(cfg, f) == getattr(defaults, f)]
    assert unchanged == ["batch_norm"]
    return cfg


# --- defaults and precedence ---------------------------------------------------------------------


def test_defaults_are_the_recommended_setup() -> None:
    cfg = resolve_config()
    assert cfg == Config()
    assert cfg.features == ["strong"]
    assert cfg.split == "blocked"
    assert cfg.valid_ratio == 0.2
    assert cfg.purge == "auto" and cfg.train_csv == cfg.test_csv == cfg.edition == "auto"
    assert cfg.hidden == [16]
    assert (cfg.optimizer, cfg.lr) == ("adam", 1e-3)
    assert (cfg.epochs, cfg.patience, cfg.batch_size) == (3000, 300, 64)
    assert cfg.target == "delta"
    assert cfg.deterministic is True


def test_list_defaults_are_not_shared_between_configs() -> None:
    first = Config()
    first.hidden.append(4)
    first.features.append("cli_d1")
    assert Config().hidden == [16]
    assert Config().features == ["strong"]


def test_file_overrides_defaults_and_overrides_win_over_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'lr = 0.01\nepochs = 5\nhidden = [4]\nsplit = "random"\n')
    cfg = resolve_config(path, {"epochs": 7, "hidden": None, "split": "interleaved"})
    assert cfg.lr == 0.01  # file
    assert cfg.epochs == 7  # override beats file
    assert cfg.hidden == [4]  # None means the flag was not given: the file's value stays
    assert cfg.split == "interleaved"
    expected = dataclasses.replace(Config(), lr=0.01, epochs=7, hidden=[4], split="interleaved")
    assert cfg == expected  # everything else keeps its default


def test_none_overrides_mean_not_given() -> None:
    assert resolve_config(None, {"lr": None, "hidden": None, "features": None}) == Config()


def test_overrides_without_file_parse_command_line_strings() -> None:
    cfg = resolve_config(
        None,
        {"hidden": "64, 16", "normalize": "false", "lr": "0.5", "features": "cli_d1,ili_d2"},
    )
    assert cfg.hidden == [64, 16]
    assert cfg.normalize is False
    assert cfg.lr == 0.5
    assert cfg.features == ["cli_d1", "ili_d2"]


def test_file_int_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    cfg = resolve_config(write_toml(tmp_path, "lr = 1\n"))
    assert cfg.lr == 1.0
    assert isinstance(cfg.lr, float)


# --- rejections ----------------------------------------------------------------------------------


def test_unknown_key_in_file_is_named_with_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "lr = 0.01\nlearning_rate = 0.1\n")
    with pytest.raises(CovidRegError, match="unknown config key 'learning_rate'") as info:
        resolve_config(path)
    assert str(path) in str(info.value)


def test_unknown_key_in_overrides_is_named() -> None:
    with pytest.raises(CovidRegError, match=r"unknown config key 'epoch'.*command-line"):
        resolve_config(None, {"epoch": 3})


@pytest.mark.parametrize(
    ("key", "toml_value"),
    [
        ("epochs", '"ten"'),
        ("epochs", "2.5"),
        ("epochs", "true"),
        ("lr", "true"),
        ("lr", '"fast"'),
        ("hidden", '"a,b"'),
        ("hidden", "[1.5]"),
        ("hidden", "[]"),
        ("hidden", "64"),
        ("features", "[]"),
        ("features", "[1, 2]"),
        ("normalize", "1"),
        ("normalize", '"maybe"'),
        ("split", "3"),
        ("seed", "[1]"),
    ],
    ids=lambda v: str(v),
)
def test_wrong_type_in_file_names_the_key(tmp_path: Path, key: str, toml_value: str) -> None:
    path = write_toml(tmp_path, f"{key} = {toml_value}\n")
    with pytest.raises(CovidRegError, match=f"config key '{key}'") as info:
        resolve_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", "ten"), ("lr", True), ("hidden", "a,b"), ("batch_size", 3.5), ("normalize", 2)],
    ids=lambda v: str(v),
)
def test_wrong_type_in_overrides_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(CovidRegError, match=f"config key '{key}'"):
        resolve_config(None, {key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", -1),
        ("batch_size", 0),
        ("step_size", 0),
        ("patience", -1),
        ("purge", -1),
        ("stack_size", 0),
        ("fold_processes", -1),
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("weight_decay", -1e-4),
        ("l2", -1.0),
        ("momentum", -0.5),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("valid_ratio", 1.0),
        ("valid_ratio", 0.0),
        ("gamma", 0.0),
        ("gamma", 1.5),
        ("init_std", 0.0),
        ("init_a", 0.05),  # equal to init_b's default: not lower
        ("hidden", [8, 0]),
        ("split", "kfold"),
        ("optimizer", "foo"),
        ("activation", "swish"),
        ("init", "he"),
        ("init_mode", "fan_avg"),
        ("scheduler", "linear"),
        ("target", "log"),
        ("device", "tpu"),
    ],
    ids=lambda v: str(v),
)
def test_out_of_range_value_names_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(CovidRegError, match=f"config key '{key}' must be") as info:
        resolve_config(None, {key: value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(CovidRegError, match="'momentum'"):
        resolve_config(None, {"optimizer": "sgd", "nesterov": True, "momentum": 0.0})
    assert resolve_config(None, {"optimizer": "sgd", "nesterov": True}).momentum == 0.9


def test_choice_error_lists_the_choices() -> None:
    with pytest.raises(CovidRegError) as info:
        resolve_config(None, {"optimizer": "foo"})
    for name in CHOICES["optimizer"]:
        assert name in str(info.value)


# --- files ---------------------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(CovidRegError, match="does not exist") as info:
        resolve_config(path)
    assert str(path) in str(info.value)


def test_config_directory(tmp_path: Path) -> None:
    with pytest.raises(CovidRegError, match="is a directory") as info:
        resolve_config(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["lr = \n", "lr = 0.1\nlr = 0.2\n", "[unclosed\n", "hidden = [1, 2\n"],
    ids=["no-value", "duplicate-key", "bad-table", "unclosed-list"],
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(CovidRegError, match="not valid TOML") as info:
        resolve_config(path)
    assert str(path) in str(info.value)


def test_non_utf8_toml(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'train_csv = "caf\xe9.csv"\n')
    with pytest.raises(CovidRegError, match="not valid TOML"):
        resolve_config(path)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("only_changed", [False, True], ids=["full", "only-changed"])
@pytest.mark.parametrize("make_cfg", [Config, every_field_changed], ids=["defaults", "all-changed"])
def test_to_toml_round_trips(tmp_path: Path, make_cfg: Any, only_changed: bool) -> None:
    cfg = make_cfg()
    path = write_toml(tmp_path, to_toml(cfg, only_changed=only_changed))
    assert resolve_config(path) == cfg


def test_to_toml_only_changed_writes_only_differences() -> None:
    cfg = dataclasses.replace(Config(), lr=0.5, hidden=[4], normalize=False)
    keys = set(tomllib.loads(to_toml(cfg, only_changed=True)))
    assert keys == {"lr", "hidden", "normalize"}
    assert tomllib.loads(to_toml(Config(), only_changed=True)) == {}
    assert set(tomllib.loads(to_toml(Config()))) == set(FIELDS)


def test_dict_round_trip_and_missing_keys_get_defaults() -> None:
    cfg = every_field_changed()
    assert from_dict(to_dict(cfg)) == cfg
    old = to_dict(cfg)
    del old["min_delta"]  # a checkpoint written before the key existed
    assert from_dict(old).min_delta == Config().min_delta
    # a checkpoint saved before ridge_blend existed holds the network alone
    del old["ridge_blend"]
    assert Config().ridge_blend > 0 and from_dict(old).ridge_blend == 0.0
    with pytest.raises(CovidRegError, match="unknown config key 'lr_decay'"):
        from_dict({"lr_decay": 0.1})


# --- the repository's config files --------------------------------------------------------------


def test_repo_sample_config_is_the_course_baseline() -> None:
    cfg = resolve_config(CONFIGS / "sample.toml")
    assert cfg.features == ["all"]
    assert cfg.split == "interleaved"
    assert cfg.valid_ratio == 0.1
    assert cfg.hidden == [64]
    assert (cfg.optimizer, cfg.lr, cfg.momentum) == ("sgd", 0.001, 0.9)
    assert (cfg.batch_size, cfg.epochs, cfg.patience) == (270, 3000, 200)


def test_repo_default_config_is_the_builtin_defaults() -> None:
    assert resolve_config(CONFIGS / "default.toml") == Config()


# --- lr = auto -----------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["auto", "AUTO", " auto "])
def test_lr_auto_from_a_flag_or_a_file_round_trips(tmp_path: Path, given: str) -> None:
    cfg = resolve_config(None, {"lr": given})
    assert cfg.lr == "auto"
    path = write_toml(tmp_path, to_toml(cfg, only_changed=True))
    assert path.read_text() == '# train\nlr = "auto"\n'
    assert resolve_config(path) == cfg


def test_a_bad_lr_says_a_number_or_auto() -> None:
    with pytest.raises(CovidRegError, match="'lr' in command-line flags must be a number or auto"):
        resolve_config(None, {"lr": "fast"})


def test_lr_auto_refuses_a_separate_output_rate() -> None:
    with pytest.raises(CovidRegError, match="leave output_lr at 0"):
        resolve_config(None, {"lr": "auto", "output_lr": "0.01"})


def test_ridge_alpha_auto_round_trips_and_a_bad_alpha_is_refused(tmp_path: Path) -> None:
    cfg = resolve_config(None, {"ridge_alpha": "auto"})
    assert cfg.ridge_alpha == "auto"
    path = write_toml(tmp_path, to_toml(cfg, only_changed=True))
    assert path.read_text() == '# model\nridge_alpha = "auto"\n'
    assert resolve_config(path) == cfg
    assert resolve_config(None, {"ridge_alpha": "10"}).ridge_alpha == 10.0
    with pytest.raises(CovidRegError, match="'ridge_alpha' must be a positive number or auto"):
        resolve_config(None, {"ridge_alpha": "0"})
    with pytest.raises(CovidRegError, match="'ridge_alpha' in command-line flags must be a number"):
        resolve_config(None, {"ridge_alpha": "loo"})


def test_config_from_takes_a_config_a_toml_file_or_a_dict_then_python_values(
    tmp_path: Path,
) -> None:
    import numpy as np

    from covidreg.config import config_from

    toml = write_toml(tmp_path, 'lr = 0.01\nhidden = [32, 8]\nfeatures = ["cli_d1", "ili_d1"]\n')
    from_file = config_from(toml)
    assert from_file == Config(lr=0.01, hidden=[32, 8], features=["cli_d1", "ili_d1"])
    assert config_from(from_file) == from_file
    assert config_from(to_dict(from_file)) == from_file
    # overrides win; tuples are lists, numpy scalars the numbers they hold, a str list splits
    cfg = config_from(
        from_file, {"hidden": (4,), "epochs": np.int64(7), "lr": np.float32(0.5), "features": "all"}
    )
    assert (cfg.hidden, cfg.epochs, cfg.lr, cfg.features) == ([4], 7, 0.5, ["all"])
    assert type(cfg.epochs) is int and type(cfg.lr) is float


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (None, {"lr": "0.01"}, r"^config key 'lr' in keyword arguments must be a number or auto"),
        (
            None,
            {"lr": "0.01"},
            r"^config key 'lr' in keyword arguments must be a number or auto, got '0.01'",
        ),
        (None, {"normalize": 1}, r"^config key 'normalize' in keyword arguments must be bool"),
        (None, {"dropout": 1.5}, r"^config key 'dropout' must be in \[0, 1\), got 1.5$"),
        ({"hidden": 16}, {}, r"^config key 'hidden' in the config dict must be a non-empty list"),
        (Config(epochs="10"), {}, r"^config key 'epochs' in the Config must be int, got '10'$"),  # type: ignore[arg-type]
        (3, {}, r"^config must be a covidreg.Config, the path of a TOML file or a dict, got int$"),
    ],
)
def test_config_from_rejects_by_name(config: Any, overrides: dict[str, Any], message: str) -> None:
    from covidreg.config import config_from

    with pytest.raises(CovidRegError, match=message):
        config_from(config, overrides)
