"""resolve_config: defaults -> TOML file -> overrides, and every rejection naming its key."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from covidreg.config import (
    CHOICES,
    FIELDS,
    SECTIONS,
    Config,
    config_from,
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
    ("typo", "hint"),
    [
        ("epoch", "did you mean epochs?"),
        ("hiden", "did you mean hidden?"),
        ("batchsize", "did you mean batch_size?"),
        ("init_men", "did you mean init_mean or init_mode?"),
        ("learning_rate", "valid keys: " + ", ".join(FIELDS)),  # no key is a letter or two away
    ],
)
def test_a_mistyped_key_gets_did_you_mean_as_a_mistyped_flag_does(
    typo: str, hint: str, tmp_path: Path
) -> None:
    path = write_toml(tmp_path, f"{typo} = 3\n")
    with pytest.raises(CovidRegError) as info:
        resolve_config(path)
    assert str(info.value) == f"unknown config key '{typo}' in {path}; {hint}"
    with pytest.raises(CovidRegError) as info:
        config_from({typo: 3})
    assert str(info.value) == f"unknown config key '{typo}' in the config dict; {hint}"


# --- [section] tables ---------------------------------------------------------------------------


def test_sections_named_as_the_headings_hold_their_keys(tmp_path: Path) -> None:
    cfg = every_field_changed()
    # a run's config.toml with its "# train" headings written as [train] tables
    text = to_toml(cfg)
    for section in SECTIONS:
        text = text.replace(f"# {section}\n", f"[{section}]\n")
    assert "[train]\nlr = " not in text and "[train]\noptimizer = " in text
    assert resolve_config(write_toml(tmp_path, text)) == cfg
    mixed = "epochs = 7\n[model]\nhidden = [8, 4]\n[train]\nlr = 0.01\n"
    assert resolve_config(write_toml(tmp_path, mixed)) == Config(epochs=7, hidden=[8, 4], lr=0.01)
    assert config_from({"train": {"lr": 0.01}, "epochs": 7}) == Config(epochs=7, lr=0.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[data]\nlr = 0.1\n",
            "config key 'lr' in [data] of {path} belongs in [train]; move it there",
        ),
        (
            "[training]\nepochs = 5\n",
            "unknown config section [training] in {path} (the sections are [data], [model], "
            "[train] and [run]); its key 'epochs' belongs in [train]",
        ),
        (
            "[trian]\n",
            "unknown config section [trian] in {path} (the sections are [data], [model], "
            "[train] and [run]); did you mean [train]?",
        ),
        (
            "[hyper]\nbogus = 1\n",
            "unknown config section [hyper] in {path} (the sections are [data], [model], "
            "[train] and [run])",
        ),
        (
            "[train]\nepoch = 5\n",
            "unknown config key 'epoch' in [train] of {path}; did you mean epochs?",
        ),
        (
            '[train]\nepochs = "ten"\n',
            "config key 'epochs' in [train] of {path} must be int, got 'ten'",
        ),
        (
            "lr = 0.1\n[train]\nlr = 0.2\n",
            "config key 'lr' in {path} is given twice (at the top and in [train]); keep one",
        ),
    ],
    ids=[
        "wrong-section",
        "unknown-section",
        "mistyped-section",
        "foreign-table",
        "unknown-key",
        "wrong-type",
        "twice",
    ],
)
def test_a_key_out_of_its_section_is_one_line_naming_where_it_belongs(
    text: str, message: str, tmp_path: Path
) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(CovidRegError) as info:
        resolve_config(path)
    assert str(info.value) == message.format(path=path)


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
    assert str(info.value).startswith(f"config file {path} (--config) does not exist")


def test_missing_config_file_from_python_names_no_flag(tmp_path: Path) -> None:
    from covidreg.config import config_from

    path = tmp_path / "nope.toml"
    with pytest.raises(CovidRegError) as info:
        config_from(path)
    assert str(info.value) == f"config file {path} does not exist; pass the path of a .toml file"


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


# --- every value of every key: accepted and runs, or refused in one line ------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from covidreg.config import MAX_SEED, is_list, validate  # noqa: E402

_SPECIAL_INTS = [-(2**63), -1, 0, MAX_SEED, MAX_SEED + 1, 2**31, 2**63, 10**30]
_SPECIAL_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1e-320, 0.0, 1.0]


def _text_values(key: str, small: bool) -> st.SearchStrategy[str]:
    """Command-line text for ``key``: values near its edges, some of them bad. ``small``: the
    accepted ones train in a moment (few epochs, narrow layers, one thread)."""
    kind = field_kind(key)
    if key in ("train_csv", "test_csv"):
        return st.sampled_from(["", "nope.csv", ".", "a\0b.csv", "covid.test.csv"])
    if key in CHOICES:
        return st.sampled_from([*CHOICES[key], "bogus", ""])
    if kind is bool:
        return st.sampled_from(["true", "false", "maybe", "2"])
    if key == "features":
        return st.lists(
            st.sampled_from(["strong", "all", "cli_d1", "tested_positive_d2", "nope", ""]),
            min_size=1,
            max_size=3,
        ).map(",".join)
    if key == "hidden":
        sizes = st.integers(-2, 12) | st.sampled_from([10**6, 2**31])
        return st.lists(sizes, min_size=0, max_size=3).map(lambda h: ",".join(map(str, h)))
    if kind is int:
        high = {"threads": 2, "epochs": 6, "seed": 50}.get(key, 40) if small else 10**6
        ints = st.integers(-3, high) | st.sampled_from(_SPECIAL_INTS)
        return (ints.map(str) | st.sampled_from(["1.5", "x", ""])) if not small else ints.map(str)
    floats = st.floats(-2, 2) | st.sampled_from(_SPECIAL_FLOATS)
    if key == "lr":
        floats = st.floats(1e-6, 0.1) | st.sampled_from(_SPECIAL_FLOATS)
    text = floats.map(repr) | st.sampled_from(["1e400", "x", "", "auto" if key == "lr" else "1"])
    return text


@pytest.mark.parametrize("key", list(FIELDS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_value_of_every_key_is_checked_or_refused_by_name(key: str, data: Any) -> None:
    """The config check alone, over many values: it accepts a value or raises CovidRegError
    naming the key, never numpy's, torch's or Python's own exception."""
    text = data.draw(_text_values(key, small=False))
    try:
        cfg = resolve_config(None, {key: text})
    except CovidRegError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    validate(cfg)
    value = getattr(cfg, key)
    assert config_from(None, {key: value}) == cfg  # the same value from Python is the same
    if field_kind(key) in (int, float) and not is_list(key) and value != "auto":
        assert math.isfinite(value)


def _run_dir_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_value_is_accepted_and_runs_or_refused_in_one_line_leaving_nothing(
    data: Any, hw01_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any key with any value through ``covidreg train``: it trains (exit 0, a model written)
    or is refused in one line (exit 1, no traceback) and leaves no file behind."""
    from typer.testing import CliRunner

    from covidreg.cli import app
    from tests.conftest import train_args

    key = data.draw(st.sampled_from(list(FIELDS)), label="key")
    text = data.draw(_text_values(key, small=True), label="value")
    work = tmp_path_factory.mktemp("fuzz")
    out = work / "run"
    args = [*train_args(hw01_files, out, "--epochs", "3", "-q", "--checkpoint-every", "2")]
    flag = "--" + key.replace("_", "-")
    if key in ("train_csv", "test_csv") and text == "covid.test.csv":
        text = str(hw01_files["test"])  # a test file as the training file, or as itself
    if field_kind(key) is bool:  # a switch on the command line: --normalize / --no-normalize
        args += [flag if text == "true" else "--no-" + flag[2:]]
    else:
        args += [f"{flag}={text}"]
    result = CliRunner().invoke(app, args)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    if result.exit_code == 0:
        assert (out / "model.pt").is_file()
        assert result.stdout.count("\n") == 1 and result.stdout.startswith("valid_rmse=")
    else:
        assert result.exit_code == 1, output
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, output
        assert _run_dir_files(work) == set(), "a refused value leaves no file"
