"""One typed configuration: every default lives here; TOML files and CLI flags override it.

Precedence is defaults -> ``--config`` TOML file -> CLI flags. ``resolve_config`` applies it and
rejects unknown keys, wrong types and out-of-range values by name. This module imports only the
standard library, so the CLI can show ``--help`` without loading torch or pandas.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from covidreg.algorithms import OPTIMIZER_NAMES
from covidreg.datadir import AUTO, DATA_DIR_ENV, EDITION_NAMES
from covidreg.errors import CovidRegError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Split = Literal["blocked", "random", "interleaved"]
Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "selu"]
InitScheme = Literal[
    "default",
    "uniform",
    "normal",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "trunc_normal",
    "zeros",
    "constant",
]
BiasInit = Literal["default", "zeros", "constant"]
SchedulerName = Literal["none", "step", "exponential", "cosine", "plateau"]
Target = Literal["level", "delta"]
Device = Literal["auto", "cpu", "cuda"]
StopOn = Literal["auto", "valid", "train_tail"]
# lr = "auto": each model's learning rate comes from the range test on its own training rows
AUTO_LR = "auto"
# the bounds of the range test that lr = "auto" runs (the lr-find command's defaults)
AUTO_START, AUTO_END, AUTO_STEPS = 1e-7, 10.0, 100
# purge = "auto": the windows that share a day with a validation window (D - 1 on each side)
AUTO_PURGE = "auto"
#: Keys that take "auto" besides a number.
AUTO_KEYS = ("lr", "purge", "ridge_alpha")
# ridge_alpha = "auto": each model's penalty chosen by leave-one-out on its own training rows
AUTO_ALPHA = "auto"


def _opt(default: Any, help: str, group: str) -> Any:
    """A config field with its help text (shown by the CLI) and its section of the reference."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "group": group})
    return field(default=default, metadata={"help": help, "group": group})


@dataclass
class Config:
    """Every setting of a run. The defaults are the project's recommended setup."""

    # --- data ---
    train_csv: str = _opt(
        AUTO,
        "Training CSV (an HW01 file of any edition, with target); auto: the one in the data "
        f"directory (${DATA_DIR_ENV}, else data/).",
        "data",
    )
    test_csv: str = _opt(
        AUTO,
        "Test CSV to predict (HW01 file, no target, of the training file's layout); auto: the "
        "one in the data directory; '' skips it.",
        "data",
    )
    edition: str = _opt(
        AUTO,
        "Which edition's files auto paths name (2021, 2022, 2023; auto: whichever is in the "
        "data directory), and the edition the training file must be.",
        "data",
    )
    features: list[str] = _opt(
        ["strong"],
        "Feature preset (all, target_only, strong, strong_states) or comma-separated names "
        "such as cli_d1,tested_positive_d2.",
        "data",
    )
    split: str = _opt(
        "blocked",
        "Validation split: blocked (whole stretches of days per state, in the day order "
        "recovered from the rows, neighbours purged; "
        "honest), random or interleaved (every k-th row, as the course sample code; both leak).",
        "data",
    )
    valid_ratio: float = _opt(0.2, "Fraction of rows held out for validation.", "data")
    purge: int = _opt(
        AUTO_PURGE,
        "Blocked split: windows dropped from training on each side of a validation block, or "
        "auto: the D - 1 that share a day with it (2 for the 3-day windows of 2021, 4 for the "
        "5-day windows of 2022). Any other window sharing a day with a validation window is "
        "dropped too.",
        "data",
    )
    normalize: bool = _opt(
        True,
        "Standardise continuous features with statistics fitted on the training split.",
        "data",
    )
    target: str = _opt(
        "delta",
        "What the network predicts: level (tested_positive of the window's last day) or delta "
        "(its change from the last known day's tested_positive, tested_positive_d2 in 3-day "
        "windows, added back by a skip connection).",
        "data",
    )
    # --- model ---
    hidden: list[int] = _opt([16], "Hidden layer sizes, e.g. 64 or 64,16.", "model")
    activation: str = _opt(
        "relu", "Activation: relu, leaky_relu, tanh, sigmoid, gelu, selu.", "model"
    )
    dropout: float = _opt(0.0, "Dropout probability after each hidden activation.", "model")
    ridge_blend: float = _opt(
        0.5,
        "Weight w of a closed-form ridge regression (alpha 1) fitted on the network's own "
        "standardised training rows and target: the model predicts (1 - w) * network + "
        "w * ridge. Early stopping watches the network alone; the valid RMSE is the blend's. "
        "0: the network alone, 1: the ridge alone.",
        "model",
    )
    ridge_alpha: float = _opt(
        1.0,
        "Penalty of the ridge_blend's ridge regression on the standardised inputs, or auto: "
        "for each model the one of 1e-3 ... 1e3 (13 values, two a decade) with the lowest "
        "closed-form leave-one-out error on the model's own training rows, as scikit-learn's "
        "RidgeCV chooses it.",
        "model",
    )
    batch_norm: bool = _opt(
        False,
        "Batch normalisation before each hidden activation: not supported by the training "
        "engine (kept so that configs and checkpoints that set it false still load).",
        "model",
    )
    init: str = _opt(
        "default",
        "Weight init: default (PyTorch's), uniform, normal, xavier_uniform, xavier_normal, "
        "kaiming_uniform, kaiming_normal, orthogonal, trunc_normal, zeros, constant.",
        "model",
    )
    init_a: float = _opt(-0.05, "uniform init: lower bound a.", "model")
    init_b: float = _opt(0.05, "uniform init: upper bound b.", "model")
    init_mean: float = _opt(0.0, "normal / trunc_normal init: mean.", "model")
    init_std: float = _opt(0.02, "normal / trunc_normal init: standard deviation.", "model")
    init_mode: str = _opt("fan_in", "kaiming init: mode, fan_in or fan_out.", "model")
    init_gain: float = _opt(
        0.0, "xavier / orthogonal init: gain; 0 means calculate_gain(activation).", "model"
    )
    init_value: float = _opt(0.0, "constant init: the weight value.", "model")
    bias_init: str = _opt("default", "Bias init: default (PyTorch's), zeros or constant.", "model")
    bias_value: float = _opt(0.01, "constant bias init: the bias value.", "model")
    # --- optimisation ---
    optimizer: str = _opt(
        "adam", "Optimizer (torch.optim's algorithm): " + ", ".join(OPTIMIZER_NAMES) + ".", "train"
    )
    lr: float = _opt(
        1e-3,
        "Learning rate, or auto: the rate the range test (covidreg lr-find) suggests, found on "
        "each model's own training rows before it trains.",
        "train",
    )
    weight_decay: float = _opt(0.0, "Optimizer weight decay (decoupled for adamw).", "train")
    momentum: float = _opt(0.9, "Momentum (sgd, rmsprop).", "train")
    nesterov: bool = _opt(False, "Nesterov momentum (sgd).", "train")
    output_lr: float = _opt(
        0.0, "Separate learning rate for the output layer; 0 means the same as lr.", "train"
    )
    l2: float = _opt(
        0.0,
        "Explicit L2 penalty added to the training loss (never to the reported losses).",
        "train",
    )
    l1: float = _opt(
        0.0,
        "Explicit L1 penalty added to the training loss (never to the reported losses).",
        "train",
    )
    scheduler: str = _opt(
        "none", "LR scheduler: none, step, exponential, cosine, plateau (on valid loss).", "train"
    )
    step_size: int = _opt(500, "step scheduler: epochs between decays.", "train")
    gamma: float = _opt(0.5, "step / exponential / plateau scheduler: decay factor.", "train")
    plateau_patience: int = _opt(50, "plateau scheduler: epochs without improvement.", "train")
    min_lr: float = _opt(0.0, "cosine / plateau scheduler: lowest learning rate.", "train")
    epochs: int = _opt(3000, "Maximum number of epochs.", "train")
    batch_size: int = _opt(64, "Mini-batch size.", "train")
    patience: int = _opt(
        300, "Early stopping: epochs without improvement before stopping; 0 disables.", "train"
    )
    min_delta: float = _opt(
        0.0, "Early stopping: an improvement means best - current > min_delta.", "train"
    )
    stop_on: str = _opt(
        "auto",
        "Rows that early stopping and the best epoch are chosen on: valid (the validation rows, "
        "as the course code does: their RMSE is then the best of many epochs, optimistic), "
        "train_tail (the last valid_ratio of each state's training days, purged; the "
        "validation rows are only scored, an honest estimate), or auto: valid for a holdout "
        "(train, --seeds, compare, tune --folds 1), train_tail for cv folds (cv, compare "
        "--folds, tune), whose RMSE then estimates what train does on unseen days.",
        "train",
    )
    # --- reproducibility and hardware ---
    seed: int = _opt(42, "Seed for Python, NumPy and torch (CPU and CUDA).", "run")
    deterministic: bool = _opt(
        True, "Deterministic algorithms (bit-identical reruns); off allows faster kernels.", "run"
    )
    device: str = _opt("auto", "Device: auto (cuda when available), cpu or cuda.", "run")
    threads: int = _opt(
        1,
        "CPU threads for torch's kernels; 1 is fastest for networks this small (more threads "
        "only add synchronisation); 0 keeps torch's default.",
        "run",
    )
    stack_size: int = _opt(
        5,
        "Most models trained together as one stack (cv folds, --seeds runs, a tune trial's "
        "folds), in groups of consecutive models. A model's bits depend on the stack it trains "
        "in, so this is a setting, never the number of cores.",
        "run",
    )
    fold_processes: int = _opt(
        0,
        "cv, --seeds: processes that train the stacks side by side on the CPU (Linux), each "
        "with `threads` threads. They only schedule the stacks: the results are the same for "
        "any number. 0: one per available CPU core, at most one per stack.",
        "run",
    )
    flush_denormal: bool = _opt(
        True,
        "Flush subnormal floats (below 1.2e-38) to zero on the CPU. The momentum of a weight "
        "whose gradient stays zero (a one-hot state absent from the batches) decays into "
        "them, and every operation on one is many times slower; values that small are below "
        "the precision of any weight they would be added to.",
        "run",
    )
    checkpoint_every: int = _opt(
        50, "Save a resumable training state every N epochs (0: never).", "run"
    )
    tensorboard: bool = _opt(
        False,
        "Write TensorBoard event files into the run directory (tensorboard/): each epoch's "
        "train loss, valid loss and learning rate; tune trials' hyperparameters and RMSE. "
        "Needs the tensorboard package (covidreg's tensorboard extra).",
        "run",
    )


CHOICES: dict[str, tuple[str, ...]] = {
    "split": typing.get_args(Split),
    "target": typing.get_args(Target),
    "activation": typing.get_args(Activation),
    "init": typing.get_args(InitScheme),
    "init_mode": ("fan_in", "fan_out"),
    "bias_init": typing.get_args(BiasInit),
    "optimizer": OPTIMIZER_NAMES,
    "scheduler": typing.get_args(SchedulerName),
    "device": typing.get_args(Device),
    "stop_on": typing.get_args(StopOn),
    "edition": (AUTO, *EDITION_NAMES),
}

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_TYPES: dict[str, Any] = typing.get_type_hints(Config)
#: The config's sections (its fields' groups, the headings of a run's config.toml), in order.
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.metadata["group"] for f in FIELDS.values()))


def field_kind(name: str) -> type:
    """The scalar or element type of a config key: int, float, bool or str."""
    tp = _TYPES[name]
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is list else tp


def is_list(name: str) -> bool:
    return typing.get_origin(_TYPES[name]) is list


def _where(source: str) -> str:
    return f" in {source}" if source else ""


def coerce_value(name: str, value: Any, source: str = "", parse_text: bool = False) -> Any:
    """Check one value against its key's type; ``parse_text`` parses strings (CLI flags)."""
    if name not in FIELDS:
        hint = did_you_mean(name, FIELDS) or f"valid keys: {', '.join(FIELDS)}"
        raise CovidRegError(f"unknown config key '{name}'{_where(source)}; {hint}")
    kind = field_kind(name)
    if is_list(name):
        items = (
            value.split(",") if isinstance(value, str) and (parse_text or kind is str) else value
        )
        if not isinstance(items, list) or not items:
            raise CovidRegError(
                f"config key '{name}'{_where(source)} must be a non-empty list of {kind.__name__}"
            )
        return [_coerce_scalar(name, kind, v, source, parse_text) for v in items]
    return _coerce_scalar(name, kind, value, source, parse_text)


def _coerce_scalar(name: str, kind: type, value: Any, source: str, parse_text: bool) -> Any:
    what = (
        f"{'a number' if kind is float else 'an integer'} or auto"
        if name in AUTO_KEYS
        else kind.__name__
    )
    bad = CovidRegError(f"config key '{name}'{_where(source)} must be {what}, got {value!r}")
    if name in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and kind is not str and parse_text:
        value = value.strip()
        try:
            if kind is bool:
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return kind(value)
        except ValueError:
            raise bad from None
    if kind is str:
        if not isinstance(value, str):
            raise bad
        return value.strip()
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    raise bad  # pragma: no cover - every field kind is handled above


def load_toml(path: str | Path, given_as: str = "") -> dict[str, Any]:
    """Read a config TOML file into a flat dict of checked values; ``given_as`` is how the
    user named it (``--config``), for the message when it is not there."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        where = f" ({given_as})" if given_as else ""
        raise CovidRegError(f"config file {path}{where} {what}; pass the path of a .toml file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CovidRegError(f"config file {path} is not valid TOML: {exc}") from None
    return checked_values(raw, str(path))


def checked_values(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The flat dict of checked values of a config file (or dict) from ``source``. Its keys
    stand at the top, or in tables named by the config's sections (``[train]``, as the headings
    of a run's config.toml name them), each holding keys of its own section."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, dict) and name not in FIELDS:
            entries, where = _section_keys(name, value, source), _in_section(name, source)
        else:
            entries, where = {name: value}, source
        for key, entry in entries.items():
            if key in values:
                raise CovidRegError(
                    f"config key '{key}'{_where(source)} is given twice (at the top and in "
                    f"[{FIELDS[key].metadata['group']}]); keep one"
                )
            values[key] = coerce_value(key, _python_value(entry), where)
    return values


def _in_section(section: str, source: str) -> str:
    return f"[{section}]" + (f" of {source}" if source else "")


def _section_keys(section: str, table: dict[str, Any], source: str) -> dict[str, Any]:
    """The keys of table ``[section]``, which must be a section holding its own keys."""
    belongs = {key: FIELDS[key].metadata["group"] for key in table if key in FIELDS}
    if section not in SECTIONS:
        tables = [f"[{s}]" for s in SECTIONS]
        known = [f"its key '{key}' belongs in [{group}]" for key, group in belongs.items()]
        hint = known[0] if known else did_you_mean(f"[{section}]", tables)
        raise CovidRegError(
            f"unknown config section [{section}]{_where(source)} (the sections are "
            f"{', '.join(tables[:-1])} and {tables[-1]}){'; ' + hint if hint else ''}"
        )
    for key, group in belongs.items():
        if group != section:
            raise CovidRegError(
                f"config key '{key}' in {_in_section(section, source)} belongs in [{group}]; "
                "move it there"
            )
    return table


def resolve_config(
    config_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Defaults -> TOML file -> overrides (CLI flags; None means 'not given'), then validate."""
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(load_toml(config_path, "--config"))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = coerce_value(key, value, "command-line flags", parse_text=True)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def _python_value(value: Any) -> Any:
    """A Python value as TOML would give it: tuples as lists, numpy scalars as int / float."""
    if isinstance(value, (tuple, list)):
        return [_python_value(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    # numpy's integers and floats register as numbers.Integral / numbers.Real
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def config_from(
    config: Config | str | Path | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "keyword arguments",
) -> Config:
    """The config of a call from Python: ``config`` (a Config, a TOML file or a dict), then
    ``overrides``. Values are Python values, checked as a TOML file's are (``lr=3e-3``,
    ``hidden=[32, 16]``); an unknown key or a bad value is an error naming the key."""
    if config is None:
        values: dict[str, Any] = {}
    elif isinstance(config, (Config, dict)):
        given = to_dict(config) if isinstance(config, Config) else config
        what = "the Config" if isinstance(config, Config) else "the config dict"
        values = checked_values(given, what)
    elif isinstance(config, (str, Path)):
        values = load_toml(config)
    else:
        raise CovidRegError(
            f"config must be a covidreg.Config, the path of a TOML file or a dict, got "
            f"{type(config).__name__}"
        )
    for key, value in (overrides or {}).items():
        values[key] = coerce_value(key, _python_value(value), source)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise CovidRegError(f"config key '{key}' must be {rule}, got {value!r}")


# numpy's legacy seeding and SeedSequence take unsigned 32-bit seeds
MAX_SEED = 2**32 - 1
# every other integer key fits a C int, which torch's schedulers and thread pools take
MAX_INT = 2**31 - 1
# the widest hidden layer and the most layers: more does not fit any machine's memory (a stack
# of 5 layers 8192 wide, with Adam's state, is already several GB)
MAX_WIDTH, MAX_LAYERS = 8192, 16
# init bounds: mean +- 2 std (trunc_normal) and every other init value stay finite floats
MAX_INIT = 1e6
_FINITE_FLOATS = (
    "init_a",
    "init_b",
    "init_mean",
    "init_std",
    "init_gain",
    "init_value",
    "bias_value",
)


def _in_int_range(key: str, value: int, low: int, high: int = MAX_INT) -> None:
    _require(
        value >= low, key, "a positive integer" if low else "zero or a positive integer", value
    )
    _require(value <= high, key, f"at most {high}", value)


def validate(cfg: Config) -> None:
    """Range and choice checks of every key, so no value reaches numpy or torch that they
    refuse; each error names the key, the rule and the bad value."""
    for key, choices in CHOICES.items():
        value = getattr(cfg, key)
        _require(value in choices, key, "one of " + ", ".join(choices), value)
    for key in ("train_csv", "test_csv"):
        value = getattr(cfg, key)
        _require("\0" not in value, key, "a file path (without NUL characters)", value)
    _require(cfg.train_csv != "", "train_csv", "the path of a CSV file", cfg.train_csv)
    for key in ("epochs", "batch_size", "step_size", "plateau_patience", "stack_size"):
        _in_int_range(key, getattr(cfg, key), 1)
    for key in ("patience", "checkpoint_every", "threads", "fold_processes"):
        _in_int_range(key, getattr(cfg, key), 0)
    if cfg.purge != AUTO_PURGE:
        _in_int_range("purge", cfg.purge, 0)
    _require(0 <= cfg.seed <= MAX_SEED, "seed", f"an integer in 0 .. {MAX_SEED}", cfg.seed)
    if cfg.batch_norm:
        raise CovidRegError(
            "config key 'batch_norm' is not supported: the training engine's backward covers "
            "linear layers, activations and dropout; set batch_norm = false (or drop "
            "--batch-norm)"
        )
    if cfg.lr != AUTO_LR:
        _require(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a positive number or auto", cfg.lr)
    elif cfg.output_lr != 0:
        raise CovidRegError(
            "config key 'lr' = auto finds one rate for the whole model; leave output_lr at 0 "
            "(--output-lr 0) or give lr a number"
        )
    for key in ("weight_decay", "l2", "l1", "min_delta", "min_lr", "output_lr"):
        value = getattr(cfg, key)
        _require(math.isfinite(value) and value >= 0, key, "zero or a positive number", value)
    _require(0 < cfg.valid_ratio < 1, "valid_ratio", "between 0 and 1 (exclusive)", cfg.valid_ratio)
    _require(0 <= cfg.dropout < 1, "dropout", "in [0, 1)", cfg.dropout)
    _require(0 <= cfg.ridge_blend <= 1, "ridge_blend", "in [0, 1]", cfg.ridge_blend)
    # a momentum of 1 or more never forgets a gradient: the steps grow without bound
    _require(0 <= cfg.momentum < 1, "momentum", "in [0, 1)", cfg.momentum)
    if cfg.scheduler == "plateau":  # torch's ReduceLROnPlateau needs a factor below 1
        _require(0 < cfg.gamma < 1, "gamma", "in (0, 1) with the plateau scheduler", cfg.gamma)
    if cfg.ridge_alpha != AUTO_ALPHA:
        _require(
            math.isfinite(cfg.ridge_alpha) and cfg.ridge_alpha > 0,
            "ridge_alpha",
            "a positive number or auto",
            cfg.ridge_alpha,
        )
    _require(0 < cfg.gamma <= 1, "gamma", "in (0, 1]", cfg.gamma)
    for key in _FINITE_FLOATS:
        value = getattr(cfg, key)
        _require(abs(value) <= MAX_INIT, key, f"a number in -{MAX_INIT:g} .. {MAX_INIT:g}", value)
    _require(cfg.init_std > 0, "init_std", "a positive number", cfg.init_std)
    _require(cfg.init_a < cfg.init_b, "init_a", f"lower than init_b ({cfg.init_b})", cfg.init_a)
    _require(
        0 < len(cfg.hidden) <= MAX_LAYERS and all(0 < h <= MAX_WIDTH for h in cfg.hidden),
        "hidden",
        f"1 to {MAX_LAYERS} layer sizes in 1 .. {MAX_WIDTH}",
        cfg.hidden,
    )
    if cfg.nesterov and cfg.optimizer == "sgd":
        _require(cfg.momentum > 0, "momentum", "> 0 with nesterov", cfg.momentum)
    _require(cfg.init_gain >= 0, "init_gain", "zero (automatic) or positive", cfg.init_gain)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain Python types (for checkpoints and metrics.json)."""
    return dataclasses.asdict(cfg)


# keys earlier versions saved that no longer mean anything (the engine gathers its batches in
# process, so DataLoader workers had nothing left to do)
RETIRED_KEYS = frozenset({"num_workers"})


# keys added since checkpoints were first written whose default is not what a checkpoint saved
# before them was trained with: such a checkpoint gets this value instead (its model has no
# ridge regression in it)
EARLIER_VALUES: dict[str, Any] = {"ridge_blend": 0.0}


def from_dict(values: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a config saved by ``to_dict``; keys added since are filled with defaults (or
    with ``EARLIER_VALUES``, what the saved run did without them), keys since retired are
    dropped."""
    checked = {
        key: coerce_value(key, value, source)
        for key, value in values.items()
        if key not in RETIRED_KEYS
    }
    earlier = {key: value for key, value in EARLIER_VALUES.items() if key not in checked}
    cfg = Config(**checked, **earlier)
    validate(cfg)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def show_value(value: Any) -> str:
    """A value as a flag takes it (the text ``resolve_config`` parses back to it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back to the same float
    if isinstance(value, list):
        return ",".join(show_value(v) for v in value)
    return str(value)


def to_toml(cfg: Config, only_changed: bool = False) -> str:
    """TOML text that ``resolve_config`` reads back to the same config: flat keys, as the flags
    name them, under a comment heading per section. Flat, not ``[section]`` tables, so that any
    covidreg reads it, and a key copied from it or appended to it means the same anywhere."""
    defaults = Config()
    lines = []
    group = None
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if only_changed and value == getattr(defaults, name):
            continue
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"{'' if not lines else chr(10)}# {group}")
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


_GROUP_TITLES = {
    "data": "Data",
    "model": "Model",
    "train": "Training",
    "run": "Reproducibility and hardware",
}


def config_reference() -> str:
    """The docs' config reference: every key, its flag, default and meaning (Markdown)."""
    defaults = Config()
    lines: list[str] = []
    group = None
    for name, f in FIELDS.items():
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines += ["", f"**{_GROUP_TITLES[group]}** (section `[{group}]`)", ""]
            lines += ["| key | flag | default | meaning |", "| --- | --- | --- | --- |"]
        value = getattr(defaults, name)
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        shown = "''" if shown == "" else shown
        meaning = f.metadata["help"].replace("|", "/")
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{name}` | `{flag}` | `{shown}` | {meaning} |")
    return "\n".join(lines[1:])
