"""The command line: thin Typer commands over the library.

Each command resolves its config (defaults -> --config -> flags), calls one library function and
turns the project's own errors into a one-line message with exit code 1. torch, numpy and pandas
are imported inside the commands, so ``covidreg --help`` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from covidreg import __version__
from covidreg.config import FIELDS, Config, field_kind, is_list, resolve_config
from covidreg.errors import CovidRegError, RunInterrupted, did_you_mean

app = typer.Typer(
    name="covidreg",
    help="Train, validate and tune regressors on the NTU ML HW1 COVID-19 data (2021, 2022, "
    "2023 and files of the same shape), reproducibly and fast.",
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


def _config_parameter(name: str, as_text: bool = False) -> inspect.Parameter:
    """One ``--flag`` for one Config field, its help and default taken from the field.

    ``as_text``: every key (bools too) takes text, for ``compare``'s lists of values."""
    flag = "--" + name.replace("_", "-")
    help_text = f"{FIELDS[name].metadata['help']} [dim]\\[default: {_default_text(name)}][/dim]"
    panel = _PANELS[FIELDS[name].metadata["group"]]
    if field_kind(name) is bool and not is_list(name) and not as_text:
        option = typer.Option(
            f"{flag}/--no-{flag[2:]}", help=help_text, rich_help_panel=panel, show_default=False
        )
        annotation: Any = Annotated[Optional[bool], option]  # noqa: UP045 - Typer reads it
    else:
        # Values arrive as text and are parsed by resolve_config, so a bad value is a one-line
        # error naming the key (exit 1), the same as a bad value in a TOML file.
        if as_text:
            metavar = "V1;V2" if is_list(name) else "V1,V2"
        else:
            metavar = "LIST" if is_list(name) else _METAVARS[field_kind(name)]
        option = typer.Option(
            flag, help=help_text, rich_help_panel=panel, show_default=False, metavar=metavar
        )
        annotation = Annotated[Optional[str], option]  # noqa: UP045 - Typer reads it
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def with_config_options(
    func: Callable[..., Any] | None = None, *, as_text: bool = False
) -> Callable[..., Any]:
    """Give a command one option per config key; they reach it as the ``overrides`` dict.

    train, cv and tune share this one declaration, so their options cannot drift apart;
    ``compare`` takes them ``as_text`` (lists of values to compare).
    """
    if func is None:
        return functools.partial(with_config_options, as_text=as_text)
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in FIELDS if name in kwargs}
        return func(overrides=overrides, **kwargs)

    params = own + [_config_parameter(name, as_text) for name in FIELDS]
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
    except RunInterrupted as exc:  # a train run: what it saved and how to go on
        print(f"interrupted: {exc}", file=sys.stderr)
        raise typer.Exit(130) from None
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
SeedsOpt = Annotated[
    int,
    typer.Option(
        help="Repeat the run with seeds seed, seed+1, ... and report mean ± std (how much is "
        "luck); the test predictions are averaged over the seeds.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the result line (for scripts).")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the run that --out already holds (removed once the inputs are checked); "
        "without it such an --out is refused.",
    ),
]


def warn_ignored_by_resume(given: list[str]) -> None:
    """One warning line for each option that --resume ignores (the run's saved config rules)."""
    from covidreg import progress

    for name in given:
        flag = "--" + name.replace("_", "-")
        progress.warn(f"{flag} is ignored with --resume: the run goes on with its saved config")


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
    """Train, validate and tune regressors on the NTU ML HW1 COVID-19 data, every edition."""


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
    seeds: SeedsOpt = 1,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train one MLP on a train/valid split, early-stopping on the valid rows; predict the test CSV.

    The network is blended with a ridge regression fitted on its training rows (--ridge-blend).

    Example: [bold]covidreg train --config configs/sample.toml --lr 3e-3 --out runs/try1[/bold]
    """
    from covidreg import progress

    with user_errors():
        if resume is not None:
            options = {"config": config, "out": out, **overrides}
            given = [name for name, value in options.items() if value is not None]
            given += [name for name, on in (("seeds", seeds != 1), ("overwrite", overwrite)) if on]
            _resume(resume, given, quiet)
            return
        cfg = resolve_config(config, overrides)
        from covidreg.experiment import check_train_inputs, run_train
        from covidreg.model import init_warning

        if seeds < 1:
            fail(f"--seeds must be 1 or more, got {seeds}")
        warning = init_warning(cfg)
        if warning and not quiet:
            progress.warn(warning)

        if seeds == 1:
            with progress.epoch_display(quiet, cfg.epochs) as display:
                result = run_train(
                    cfg,
                    out,
                    on_epoch=display.on_epoch,
                    on_start=display.on_start,
                    overwrite=overwrite,
                )
            progress.train_summary(result, quiet)
            return
        from covidreg.crossval import FoldEvents
        from covidreg.seeds import train_seeds

        data = check_train_inputs(cfg)
        with progress.fold_display(quiet, cfg.epochs, label="seed") as display:
            events = FoldEvents(display.on_fold_start, display.on_epoch)
            repeated = train_seeds(
                cfg, seeds, out, "runs", events, data, display.on_start, overwrite
            )
        progress.seeds_summary(repeated, quiet)


def _resume(run_dir: Path, given: list[str], quiet: bool) -> None:
    """``train --resume``: the interrupted run (--seeds too) goes on with its saved config;
    each option in ``given`` is ignored, with a warning."""
    from covidreg import progress
    from covidreg.experiment import SEEDS_STATE, load_training_state, resume_train

    state = load_training_state(run_dir)
    warn_ignored_by_resume(given)
    epochs = int(state["config"]["epochs"])
    if state["kind"] != SEEDS_STATE:
        with progress.epoch_display(quiet, epochs) as display:
            result = resume_train(run_dir, display.on_epoch, display.on_start_resume, state)
        progress.train_summary(result, quiet)
        return
    from covidreg.crossval import FoldEvents
    from covidreg.seeds import resume_seeds

    with progress.fold_display(quiet, epochs, label="seed") as display:
        events = FoldEvents(display.on_fold_start, display.on_epoch)
        repeated = resume_seeds(run_dir, state, events, display.on_start)
    progress.seeds_summary(repeated, quiet)


@app.command()
@with_config_options
def cv(
    folds: Annotated[int, typer.Option(help="Number of folds (2 .. number of rows).")] = 5,
    protocol: Annotated[
        str,
        typer.Option(
            help="What the folds are: auto (--folds folds of --split), blocked, random, "
            "interleaved, or a temporal hold-out as the Results page scores: future (each "
            "state's last 14 windows) or past (its first 14), one fold each.",
        ),
    ] = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    predict: Annotated[
        bool,
        typer.Option("--predict", help="Also write the fold-ensemble pred.csv for the test CSV."),
    ] = False,
    seeds: SeedsOpt = 1,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """K-fold cross-validation: per-fold RMSE, mean ± std, and the persistence/ridge baselines.

    Each fold trains as train does, early-stopping on its training rows' blocked tail.
    Its validation rows are only scored (--stop-on auto; valid stops on them instead).

    Example: [bold]covidreg cv --folds 5 --config configs/sample.toml --split interleaved[/bold],
    [bold]covidreg cv --protocol future[/bold]
    """
    from covidreg import progress

    with user_errors():
        cfg = resolve_config(config, overrides)
        from covidreg.api import displayed_cv
        from covidreg.crossval import check_cv_inputs

        if seeds < 1:
            fail(f"--seeds must be 1 or more, got {seeds}")

        if seeds == 1:
            result = displayed_cv(
                cfg, folds, out, predict, quiet, overwrite=overwrite, protocol=protocol
            )
            progress.cv_summary(result, quiet)
            return
        from covidreg.seeds import repeat_over_seeds

        def run_one(seed_cfg: Config, seed_out: Path, data: Any) -> tuple[float, Any]:
            result = displayed_cv(
                seed_cfg, folds, seed_out, predict, quiet, data, protocol=protocol
            )
            if not quiet:  # each seed's line on stderr: the one result line is the seeds'
                progress.cv_summary(result, quiet=True, result_line=False)
            return result.summary["valid_rmse"]["mean"], result

        repeated = repeat_over_seeds(
            cfg,
            seeds,
            out,
            "runs",
            "cv",
            run_one,
            lambda c: check_cv_inputs(c, folds, predict, protocol),
            overwrite,
        )
        progress.seeds_summary(repeated, quiet)


@app.command()
@with_config_options(as_text=True)
def compare(
    config: ConfigOpt = None,
    out: OutOpt = None,
    folds: Annotated[
        Optional[int],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="Cross-validate each variant on this many folds (of --split) instead of one "
            "holdout; compare.csv then has the mean valid_rmse and valid_rmse_std.",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(help="With --folds: each variant's folds with seeds seed, seed+1, ..."),
    ] = 1,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train config variants side by side: the grid of the values given to each key.

    Values are comma-separated; a list key's values are separated by ';' (--hidden "16;32,8").
    Each variant trains on the same split with the same seed as [bold]covidreg train[/bold]
    with that value (the same bits). Writes compare.csv and curves.png (spread.png with
    --folds).

    Example: [bold]covidreg compare --lr 1e-4,1e-3,1e-2 --optimizer sgd,adam[/bold]
    """
    from covidreg import progress

    with user_errors():
        from covidreg.compare import make_variants, run_compare

        variants, keys, warnings = make_variants(config, overrides)
        if not quiet:
            for warning in warnings:
                progress.warn(warning)
        with progress.variant_display(quiet) as display:
            result = run_compare(
                variants,
                keys,
                out,
                n_folds=folds,
                n_seeds=seeds,
                on_start=display.on_start,
                on_done=display.on_done,
                overwrite=overwrite,
            )
        progress.compare_summary(result, quiet)


@app.command("lr-find")
@with_config_options
def lr_find(
    start_lr: Annotated[float, typer.Option(help="The first learning rate tried.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="The last learning rate tried.")] = 10.0,
    steps: Annotated[
        int, typer.Option(help="Mini-batches over which the rate grows from start to end.")
    ] = 100,
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """The learning-rate range test: suggest a rate for this config (Smith 2015, as fastai).

    The rate grows exponentially per mini-batch on the training split; the smoothed loss is
    recorded until it diverges. Suggests the rate --lr auto takes (fastai's valley) and shows
    the steepest descent and the minimum / 10 beside it. Writes lr_find.csv, lr_find.json and
    lr_find.png; a later train is unchanged.

    Example: [bold]covidreg lr-find --optimizer sgd --start-lr 1e-6 --end-lr 1[/bold]
    """
    from covidreg import progress

    with user_errors():
        cfg = resolve_config(config, overrides)
        from covidreg.lr_find import run_lr_find

        result = run_lr_find(cfg, start_lr, end_lr, steps, out, overwrite=overwrite)
        progress.lr_find_summary(result, quiet)


@app.command("predict")
def predict_command(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="A model.pt, a train run directory, or a cv run directory (fold ensemble).",
            show_default=False,
        ),
    ],
    test_csv: Annotated[
        str,
        typer.Option(
            help="CSV to predict (test format; a training-format file is also scored); auto: "
            "the test file of the model's edition in the data directory ($COVIDREG_DATA_DIR, "
            "else data/).",
        ),
    ] = "auto",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write id,tested_positive.")
    ] = Path("pred.csv"),
    quiet: QuietOpt = False,
) -> None:
    """Predict a CSV with a trained model or a cv fold ensemble; score it if it has the target.

    Example: [bold]covidreg predict --model runs/<run>/ --out pred.csv[/bold]
    """
    from covidreg import progress

    with user_errors():
        from covidreg.inference import run_predict

        result = run_predict(model, test_csv, out)
        progress.predict_summary(result, quiet)


@app.command()
@with_config_options
def tune(
    trials: Annotated[
        int,
        typer.Option(
            help="Run until the study holds this many trials (complete, pruned or failed, "
            "earlier runs' included): the same command again resumes an interrupted study.",
        ),
    ] = 50,
    sampler: Annotated[
        str,
        typer.Option(help="tpe (Bayesian), random, or grid (the search file's values=[...])."),
    ] = "tpe",
    pruner: Annotated[
        str, typer.Option(help="Stop poor trials early: median, hyperband or none.")
    ] = "median",
    folds: Annotated[
        int,
        typer.Option(help="Objective: mean valid RMSE over this many folds; 1: one holdout split."),
    ] = 5,
    workers: Annotated[
        Optional[int],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="Processes on this machine sharing the study (one thread each); default: one "
            "per available CPU core, at most one per trial left to run (one with an SQLite "
            "--storage).",
            show_default=False,
        ),
    ] = None,
    storage: Annotated[
        Optional[str],  # noqa: UP045 - Typer reads it
        typer.Option(
            metavar="URL",
            help="Where the study lives: an SQLAlchemy URL (postgresql://user@host/db) for "
            "several machines, or a journal file path; default: <out>/study.journal.",
            show_default=False,
        ),
    ] = None,
    study: Annotated[
        str, typer.Option(help="Study name; running again with the same name resumes it.")
    ] = "covidreg",
    search: Annotated[
        Optional[Path],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="Search space TOML: \\[space.<key>] tables and \\[fixed] keys; default: the "
            "one shipped with covidreg (covidreg/tune/search.toml).",
            show_default=False,
        ),
    ] = None,
    show: Annotated[
        bool,
        typer.Option("--show", help="Only show the study's best trials and write its outputs."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace what --out holds (another run, or this study's outputs and journal) "
            "with a new study; without it another run there is refused.",
        ),
    ] = False,
    config: ConfigOpt = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045 - Typer reads it
        typer.Option(
            "--out",
            "-o",
            help="Directory for the study's outputs (and its journal); default runs/tune-<study>/.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Search hyperparameters with Optuna; write best.toml, trials.csv and history.png.

    The config flags set what is not searched (they override the search file's \\[fixed]).

    Example: [bold]covidreg tune --trials 50 --workers 2 --study hw01[/bold]
    """
    from covidreg import progress

    with user_errors():
        from covidreg.tune.reports import show_study
        from covidreg.tune.space import base_config, load_search_space
        from covidreg.tune.study import TuneInterrupted, plan_tune, run_tune

        if show:
            result = show_study(study, storage, out)
        else:
            space = load_search_space(search)
            cfg = base_config(config, overrides, space)
            plan = plan_tune(
                cfg,
                space,
                study_name=study,
                n_trials=trials,
                n_folds=folds,
                sampler=sampler,
                pruner=pruner,
                workers=workers,
                storage=storage,
                out=out,
                overwrite=overwrite,
            )
            if not quiet:
                for warning in plan.warnings:
                    progress.warn(warning)
            try:
                with progress.trial_display(quiet) as display:
                    result = run_tune(plan, display.on_start, display.on_progress)
            except TuneInterrupted as exc:
                progress.tune_interrupted(exc)
                raise typer.Exit(130) from None
        progress.tune_summary(result, quiet)


@app.command("config")
@with_config_options
def config_command(
    config: ConfigOpt = None,
    changed: Annotated[
        bool, typer.Option("--changed", help="Show only the keys that differ from the defaults.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Print the resolved config (defaults -> --config -> flags) as TOML, without running.

    Example: [bold]covidreg config --config configs/sample.toml --lr 0.01 > mine.toml[/bold]
    """
    from covidreg.config import to_toml

    with user_errors():
        print(to_toml(resolve_config(config, overrides), only_changed=changed), end="")


# the keys the layout display reads (without --rank)
_LAYOUT_KEYS = ("train_csv", "test_csv", "edition")


@app.command()
@with_config_options
def features(
    rank: Annotated[
        bool,
        typer.Option(
            "--rank",
            help="Rank the daily columns (each over its days) by what they add on blocked "
            "validation: the permutation importance of the config's model trained on every "
            "daily column, one model per fold. Writes rank.csv, rank.json and rank.png.",
        ),
    ] = False,
    folds: Annotated[
        Optional[int],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="--rank: the blocked folds. [dim]\\[default: 5][/dim]", show_default=False
        ),
    ] = None,
    repeats: Annotated[
        Optional[int],  # noqa: UP045 - Typer reads it
        typer.Option(
            help="--rank: permutations of each column on each fold. [dim]\\[default: 5][/dim]",
            show_default=False,
        ),
    ] = None,
    states: Annotated[
        bool,
        typer.Option(
            "--states", help="--rank: the model also sees the state one-hots, ranked as one group."
        ),
    ] = False,
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Show a training file's layout and feature names; with --rank, rank its daily columns.

    The layout, its day order, the feature presets and every feature name; --rank ranks the
    daily columns by what they add on blocked validation. Without --rank only --train-csv,
    --test-csv and --edition (and a --config's) are read.

    Example: [bold]covidreg features --train-csv data/covid.train.csv[/bold]

    Example: [bold]covidreg features --rank --folds 5 --out runs/rank[/bold]
    """
    with user_errors():
        if not rank:
            given = {
                "--folds": folds is not None,
                "--repeats": repeats is not None,
                "--states": states,
                "--out": out is not None,
                "--overwrite": overwrite,
                "--quiet": quiet,
            }
            given.update({"--" + k.replace("_", "-"): v is not None for k, v in overrides.items()})
            for flag, was_given in given.items():
                if was_given and flag[2:].replace("-", "_") not in _LAYOUT_KEYS:
                    fail(
                        f"{flag} applies only with --rank: add --rank, or leave {flag} out to "
                        "see the layout"
                    )
            _show_layout(resolve_config(config, overrides))
            return
        from covidreg import progress
        from covidreg.importance import DEFAULT_FOLDS, DEFAULT_REPEATS, ignored_settings

        cfg = resolve_config(config, overrides)
        if not quiet:
            for note in ignored_settings(cfg):
                progress.warn(note)
        n_folds = DEFAULT_FOLDS if folds is None else folds
        n_repeats = DEFAULT_REPEATS if repeats is None else repeats
        from covidreg.api import displayed_rank

        result = displayed_rank(cfg, n_folds, n_repeats, states, out, quiet, overwrite)
        progress.rank_summary(result, quiet)


def _show_layout(cfg: Config) -> None:
    """``covidreg features``: the training file's layout, day order, presets and names."""
    from covidreg.config import config_from
    from covidreg.datadir import resolve_paths
    from covidreg.experiment import load_data
    from covidreg.layout import PRESET_HELP
    from covidreg.schema import describe_files

    train, test = resolve_paths(cfg.train_csv, cfg.test_csv, cfg.edition)
    if cfg.test_csv == "auto" and not Path(test).is_file():
        test = ""  # the layout and day order need no test file
    # every input column: a preset the layout lacks is shown as not available, not an error
    values = {"train_csv": train, "test_csv": test, "edition": cfg.edition, "features": ["all"]}
    data = load_data(config_from(None, values))
    layout = data.layout
    for line in describe_files(data.train, data.test):
        print(line)
    print()
    for name in PRESET_HELP:
        try:
            names = layout.preset(name)
        except CovidRegError as exc:
            print(f"{name}: not available ({exc})")
            continue
        print(f"{name} ({len(names)}): {','.join(names)}")
    print(f"\nfeature names: {','.join(layout.feature_names)}")


@app.command()
def fetch(
    edition: Annotated[
        str,
        typer.Option(
            "--edition",
            "-e",
            help="Which year's files: 2021 (ml2021spring-hw1), 2022 or 2023 (whose files are "
            "covid_train.csv and covid_test.csv); auto: the edition already in the data "
            "directory, else the one a --from folder holds, else 2021.",
        ),
    ] = "auto",
    dest: Annotated[
        Optional[Path],  # noqa: UP045 - Typer reads it
        typer.Option(
            "--dest",
            "-d",
            help="Directory to put the training and test files in (default: $COVIDREG_DATA_DIR, "
            "else data/).",
            show_default=False,
        ),
    ] = None,
    url_base: Annotated[
        Optional[str],  # noqa: UP045 - Typer reads it
        typer.Option(
            "--url-base",
            metavar="URL",
            help="Download from this mirror instead of Google Drive: it serves the two files "
            "under their names, e.g. URL/covid.train.csv and URL/covid.test.csv.",
            show_default=False,
        ),
    ] = None,
    from_dir: Annotated[
        Optional[Path],  # noqa: UP045 - Typer reads it
        typer.Option(
            "--from",
            metavar="DIR",
            help="Copy the two files from this folder (e.g. an unzipped Kaggle download) "
            "instead of downloading them.",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Refuse a file whose sha256 is not the published one; --no-verify accepts "
            "modified copies.",
        ),
    ] = True,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "-f",
            help="Fetch the files again even if verified copies are there (a file of another "
            "edition is never replaced).",
        ),
    ] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Fetch only when the edition's training file is not there; a file there is "
            "used as it is, unchecked (make train).",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Download an edition's HW01 files into data/ and check their sha256.

    From the course's Google Drive copies, a mirror (--url-base) or a local folder (--from).

    Verified files already there are kept; --force fetches them again.

    Example: [bold]covidreg fetch --edition 2022 --from ~/Downloads/ml2022spring-hw1[/bold]
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from covidreg.datadir import data_dir
    from covidreg.fetch import fetch_files, source_from
    from covidreg.progress import err_console, out_console

    bars = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        disable=quiet,
    )
    tasks: dict[str, Any] = {}

    def on_progress(name: str, done: int, total: int | None) -> None:
        if not tasks:  # the bars start with the first transfer: none when all is present
            bars.start()
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done, total=total)

    with user_errors():
        source = source_from(url_base, from_dir)
        try:
            files = fetch_files(
                data_dir() if dest is None else dest,
                source,
                verify,
                force,
                on_progress,
                edition,
                if_missing,
            )
        finally:
            if tasks:
                bars.stop()
    for file in files:
        out_console.print(file.summary(), markup=False, style=None if file.verified else "yellow")


def _leave(code: int) -> NoReturn:
    """End the process once its output is flushed, without the interpreter's teardown: every file
    is written and closed and every child process joined by then, and tearing down torch,
    pandas and matplotlib took about half a second of a ``covidreg train``."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def usage_message(exc: Any, args: list[str]) -> str:
    """A usage error in one line: an unknown option with only the options it is close to (the
    parser offers any it finds faintly alike); a compare flag of a true/false key given no
    value, as such (the parser took the next option for its value)."""
    missing = _valueless_compare_flag(args)
    if missing is not None:
        return f"{missing} takes values in compare: {missing} true (or true,false to compare both)"
    possibilities = getattr(exc, "possibilities", None)
    if possibilities is None:
        return exc.format_message()
    hint = did_you_mean(exc.option_name, possibilities)
    return exc.message + (f"; {hint}" if hint else "")


def _valueless_compare_flag(args: list[str]) -> str | None:
    """The first ``--<bool key>`` of a ``compare`` command line that another option follows."""
    if not args or args[0] != "compare":
        return None
    for flag, following in zip(args, [*args[1:], "--"], strict=True):
        name = flag[2:].replace("-", "_")
        is_bool = flag.startswith("--") and name in FIELDS and field_kind(name) is bool
        if is_bool and following.startswith("-") and following != "-":
            return flag
    return None


def main() -> None:
    """Entry point: usage errors (an unknown option, a bad number) are one line, exit code 1."""
    try:
        from typer._click.exceptions import UsageError  # Typer >= 0.25 has its own click
    except ImportError:  # pragma: no cover - older Typer runs on click itself
        from click.exceptions import UsageError

    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        if not exc.format_message():  # no arguments: the help was shown
            _leave(0)
        command = exc.ctx.command_path if exc.ctx else "covidreg"
        print(
            f"error: {usage_message(exc, sys.argv[1:])} (see '{command} --help')", file=sys.stderr
        )
        _leave(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _leave(130)
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _leave(0)
    _leave(code if isinstance(code, int) else 0)
