"""A study's outputs: best.toml, trials.csv, history.png, and the rows ``--show`` prints."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from covidreg import artifacts
from covidreg.config import from_dict, to_toml
from covidreg.errors import CovidRegError
from covidreg.tune.storage import (
    ABANDONED,
    ATTR_DATA,
    ATTR_FOLDS,
    JOURNAL_FILE,
    is_url,
    open_storage,
    storage_label,
    study_run_dir,
)

TOP_TRIALS = 10


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    fold_std: float | None
    params: dict[str, Any]
    seconds: float | None
    error: str

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRow:
        folds = trial.user_attrs.get("fold_rmse")
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),
            value=trial.value if trial.values else None,
            fold_std=float(np.std(folds, ddof=1)) if folds and len(folds) > 1 else None,
            params=dict(trial.user_attrs.get("values") or trial.params),
            seconds=seconds,
            error=str(trial.user_attrs.get("error") or trial.user_attrs.get(ABANDONED, "")),
        )


@dataclass
class TuneResult:
    run_dir: Path
    study_name: str
    storage: str
    n_folds: int
    trials: list[TrialRow]
    best: TrialRow | None
    best_toml: Path | None
    plot: Path | None
    trials_csv: Path
    target: int | None = None
    data: dict[str, Any] | None = None  # the data set the study runs on; None: not recorded

    @property
    def top(self) -> list[TrialRow]:
        ranked = sorted((t for t in self.trials if t.state == "complete"), key=lambda t: t.value)
        return ranked[:TOP_TRIALS]

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def data_label(record: dict[str, Any] | None) -> str:
    """A study's data set for messages: the training file, its layout and sha256."""
    if record is None:
        return "not recorded (a study begun before covidreg recorded its data set)"
    return f"{record['train_csv']} ({record['layout']}, sha256 {record['sha256'][:12]})"


def _load_existing(study_name: str, storage: str) -> optuna.Study:
    if not is_url(storage) and not Path(storage).is_file():
        raise CovidRegError(
            f"no study storage at {storage}; run covidreg tune first, or pass --storage / --out"
        )
    backend = open_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        there = ", ".join(names) if names else "none"
        raise CovidRegError(
            f"no study '{study_name}' in {storage_label(storage)} (studies there: {there})"
        ) from None


def show_study(
    study_name: str,
    storage: str | None = None,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    run_dir: Path | None = None,
    target: int | None = None,
) -> TuneResult:
    """``covidreg tune --show``: read a study and (re)write best.toml, trials.csv, history.png.

    ``run_dir`` and ``target``: a study just run (its run directory and number of trials)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = run_dir if run_dir is not None else study_run_dir(study_name, out, runs_dir)
    storage = storage or str(run_dir / JOURNAL_FILE)
    study = _load_existing(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    n_folds = int(study.user_attrs.get(ATTR_FOLDS, 0))
    data = study.user_attrs.get(ATTR_DATA)
    rows = [TrialRow.of(t) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    best_toml = None
    if best is not None:
        best_toml = run_dir / "best.toml"
        artifacts.write_text(best_toml, best_config_toml(best, study_name, n_folds, data))
    trials_csv = run_dir / "trials.csv"
    write_trials_csv(trials_csv, rows)
    plot = run_dir / "history.png" if trials else None
    if plot is not None:
        plot_history(plot, trials, f"study {study_name}: {objective_name(n_folds)}")
    return TuneResult(
        run_dir=run_dir,
        study_name=study_name,
        storage=storage_label(storage),
        n_folds=n_folds,
        trials=rows,
        best=None if best is None else TrialRow.of(best),
        best_toml=best_toml,
        plot=plot,
        trials_csv=trials_csv,
        target=target,
        data=data,
    )


def objective_name(n_folds: int) -> str:
    if n_folds == 1:
        return "holdout valid RMSE"
    return f"cv RMSE ({n_folds} folds)" if n_folds else "valid RMSE"


def best_config_toml(
    best: FrozenTrial, study_name: str, n_folds: int, data: dict[str, Any] | None = None
) -> str:
    """The best trial's config as a TOML file that ``covidreg train --config`` reads."""
    cfg = from_dict(best.user_attrs.get("config", {}), f"trial {best.number}")
    header = (
        f"# covidreg tune, study '{study_name}': best trial #{best.number}, "
        f"{objective_name(n_folds)} {best.value:.5f}\n"
        f"# data: {data_label(data)}\n"
        "# Only the keys that differ from the defaults; use: covidreg train --config best.toml\n"
    )
    return header + to_toml(cfg, only_changed=True)


def write_trials_csv(path: Path, rows: list[TrialRow]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row.params))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "fold_std", *keys, "seconds", "error"])
    for row in rows:
        params = [_plain(row.params.get(k, "")) for k in keys]
        seconds = "" if row.seconds is None else round(row.seconds, 3)
        value, fold_std = _plain(row.value), _plain(row.fold_std)
        writer.writerow([row.number, row.state, value, fold_std, *params, seconds, row.error])
    artifacts.write_text(path, buffer.getvalue())


def _plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else value


def plot_history(path: Path, trials: list[FrozenTrial], title: str) -> None:
    """Value per complete trial and the best so far; pruned and failed trials as marks.

    A pruned trial's last value is the RMSE of the folds it had seen, not comparable with the
    objective, so it is shown only as a tick on the trial axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    complete = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        numbers, values = zip(*complete, strict=True)
        ax.scatter(numbers, values, s=16, color="C0", label="complete", zorder=3)
        ax.step(numbers, np.minimum.accumulate(values), where="post", color="C3", label="best")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    along_axis = ax.get_xaxis_transform()  # x in trials, y in axes fraction
    for state, y, marker, color in (
        (TrialState.PRUNED, 0.03, "|", "grey"),
        (TrialState.FAIL, 0.97, "x", "C3"),
    ):
        numbers = [t.number for t in trials if t.state == state]
        if numbers:
            label = state.name.lower().replace("fail", "failed")
            ax.scatter(
                numbers,
                [y] * len(numbers),
                transform=along_axis,
                marker=marker,
                s=30,
                color=color,
                label=label,
            )
    if trials:
        ax.legend(fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    artifacts.write_bytes(path, buffer.getvalue())
