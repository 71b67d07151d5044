"""The command line: thin Typer commands over the library.

Each command resolves its config (defaults -> --config -> flags), calls one library function and
turns the project's own errors into a one-line message with exit code 1. torch, numpy and pandas
are imported inside the commands, so ``covidreg --help`` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from covidreg import __version__
from covidreg.config import FIELDS, Config, field_kind, is_list, resolve_config
from covidreg.errors import CovidRegError

app = typer.Typer(
    name="covidreg",
    help="Train, validate and tune regressors on the ML2021 Spring HW1 COVID-19 data, "
    "reproducibly and fast.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

_PANELS = {"data": "Data", "model": "Model", "train": "Training", "run": "Reproducibility"}
_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}


def _default_text(name: str) -> str:
    value = getattr(Config(), name)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def _config_parameter(name: str) -> inspect.Parameter:
    """One ``--flag`` for one Config field, its help and default taken from the field."""
    flag = "--" + name.replace("_", "-")
    help_text = f"{FIELDS[name].metadata['help']} [dim]\\[default: {_default_text(name)}][/dim]"
    panel = _PANELS[FIELDS[name].metadata["group"]]
    if field_kind(name) is bool and not is_list(name):
        option = typer.Option(
            f"{flag}/--no-{flag[2:]}", help=help_text, rich_help_panel=panel, show_default=False
        )
        annotation: Any = Annotated[Optional[bool], option]  # noqa: UP045 - Typer reads it
    else:
        # Values arrive as text and are parsed by resolve_config, so a bad value is a one-line
        # error naming the key (exit 1), the same as a bad value in a TOML file.
        metavar = "LIST" if is_list(name) else _METAVARS[field_kind(name)]
        option = typer.Option(
            flag, help=help_text, rich_help_panel=panel, show_default=False, metavar=metavar
        )
        annotation = Annotated[Optional[str], option]  # noqa: UP045 - Typer reads it
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def with_config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one option per config key; they reach it as the ``overrides`` dict.

    train, cv and tune share this one declaration, so their options cannot drift apart.
    """
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in FIELDS if name in kwargs}
        return func(overrides=overrides, **kwargs)

    params = own + [_config_parameter(name) for name in FIELDS]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def fail(message: str) -> None:
    """Print a one-line error to stderr (no traceback) and exit with code 1."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except CovidRegError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - Typer reads it
    typer.Option(
        "--config",
        "-c",
        help="TOML file with config keys that differ from the defaults (configs/*.toml).",
        show_default=False,
    ),
]
OutOpt = Annotated[
    Optional[Path],  # noqa: UP045 - Typer reads it
    typer.Option(
        "--out",
        "-o",
        help="Run directory to write; default: a new runs/<time>-<name>/.",
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the result line (for scripts).")
]


def _version_callback(value: bool) -> None:
    if value:
        print(f"covidreg {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Train, validate and tune regressors on the ML2021 Spring HW1 COVID-19 data."""


@app.command()
@with_config_options
def train(
    config: ConfigOpt = None,
    out: OutOpt = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="Continue the interrupted run in this directory (other options are ignored: "
            "the run's saved config is used).",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train one MLP with a train/valid split, early stopping and test predictions.

    Example: [bold]covidreg train --config configs/sample.toml --lr 3e-3 --out runs/try1[/bold]
    """
    from covidreg import progress

    with user_errors():
        if resume is not None:
            from covidreg.experiment import resume_train

            with progress.epoch_display(quiet) as display:
                result = resume_train(resume, display.on_epoch, display.on_start_resume)
        else:
            cfg = resolve_config(config, overrides)
            from covidreg.experiment import run_train
            from covidreg.model import init_warning

            warning = init_warning(cfg)
            if warning and not quiet:
                progress.warn(warning)
            with progress.epoch_display(quiet, cfg.epochs) as display:
                result = run_train(cfg, out, on_epoch=display.on_epoch, on_start=display.on_start)
        progress.train_summary(result, quiet)


@app.command()
def features() -> None:
    """List the feature presets and every feature name.

    Example: [bold]covidreg features[/bold]
    """
    from covidreg.data import FEATURE_NAMES, PRESETS

    for name, names in PRESETS.items():
        print(f"{name} ({len(names)}): {','.join(names)}")
    print(f"\nfeature names: {','.join(FEATURE_NAMES)}")


def main() -> None:
    app()
