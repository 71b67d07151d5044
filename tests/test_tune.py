"""covidreg tune: search-space files, samplers, pruners, shared studies, resume, outputs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from covidreg import tune
from covidreg.cli import app
from covidreg.config import from_dict, resolve_config, to_dict
from covidreg.cv import run_cv
from covidreg.errors import CovidRegError
from covidreg.experiment import load_data

runner = CliRunner()

SMALL_SPACE = """
[fixed]
epochs = 8
patience = 0
batch_size = 16

[space.lr]
type = "float"
low = 1e-3
high = 3e-2
log = true
values = [3e-3, 3e-2]

[space.hidden]
choices = ["16", [32, 8]]

[space.weight_decay]
type = "float"
low = 1e-7
high = 1e-2
log = true
zero_below = 1e-6
values = [0.0]
"""


def write_space(tmp_path: Path, text: str = SMALL_SPACE, name: str = "search.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tune_args(files: dict[str, Path], space: Path, out: Path, *extra: str) -> list[str]:
    return [
        "tune",
        "--train-csv",
        str(files["train"]),
        "--search",
        str(space),
        "--out",
        str(out),
        "--folds",
        "1",
        *extra,
    ]


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def read_trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def load_study(out: Path, name: str = "covidreg") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=tune.open_storage(str(out / "study.journal")))


@pytest.mark.parametrize(
    ("sampler", "pruner"), [("tpe", "median"), ("random", "hyperband"), ("grid", "none")]
)
def test_each_sampler_and_pruner_writes_the_outputs(
    hw01_files: dict[str, Path], tmp_path: Path, sampler: str, pruner: str
) -> None:
    out = tmp_path / "study"
    space = write_space(tmp_path)
    args = tune_args(hw01_files, space, out, "--trials", "5", "--sampler", sampler)
    result = runner.invoke(app, [*args, "--pruner", pruner])
    assert result.exit_code == 0, result.stderr
    rows = read_trials(out)
    if sampler == "grid":  # 2 lr x 2 hidden x 1 weight_decay: every point once, then stop
        assert "the grid has 4 points" in result.stderr
        assert sorted((r["lr"], r["hidden"]) for r in rows) == [
            ("0.003", "16"),
            ("0.003", "32,8"),
            ("0.03", "16"),
            ("0.03", "32,8"),
        ]
    else:
        assert [int(r["number"]) for r in rows] == list(range(5))
    complete = [r for r in rows if r["state"] == "complete"]
    best = min(complete, key=lambda r: float(r["value"]))
    assert f"best_rmse={float(best['value']):.5f} trial={best['number']}" in result.stdout
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best trial #{best['number']}" in (out / "best.toml").read_text()
    assert resolve_config(out / "best.toml").lr == pytest.approx(float(best["lr"]))
    assert not list(out.glob(".*.tmp"))


def test_median_pruner_stops_hopeless_trials(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    space = write_space(
        tmp_path,
        "[fixed]\nepochs = 15\npatience = 0\nbatch_size = 16\n\n"
        "[space.lr]\nchoices = [3e-2, 1e-2, 1e-6]\n",
    )
    out = tmp_path / "study"
    args = tune_args(hw01_files, space, out, "--trials", "12", "--sampler", "random")
    result = runner.invoke(app, [*args, "--pruner", "median", "--seed", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    study = load_study(out)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "lr=1e-6 barely moves: the median pruner must stop it"
    assert all(t.last_step < 15 for t in pruned), "a pruned trial stops before its last epoch"
    # after the pruner's 5 startup trials, no hopeless trial runs to the end
    late_hopeless = [t for t in study.trials if t.number >= 5 and t.params["lr"] == 1e-6]
    assert late_hopeless
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in late_hopeless)
    assert result.stdout.startswith("best_rmse=") and len(result.stdout.splitlines()) == 1


def test_two_workers_share_one_journal_study(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    space = tune.load_search_space(write_space(tmp_path))
    cfg = tune.base_config(None, {"train_csv": str(hw01_files["train"]), "epochs": "25"}, space)
    plan = tune.plan_tune(
        cfg, space, n_trials=8, n_folds=1, workers=2, out=tmp_path / "study", pruner="none"
    )
    result = tune.run_tune(plan)
    trials = load_study(tmp_path / "study").trials
    assert sorted(t.number for t in trials) == list(range(8)), "none lost, none duplicated"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2, "both workers ran trials"
    assert plan.job.cfg.threads == 1, "several processes: one thread each"
    assert result.best is not None and result.best_toml is not None


def test_best_toml_trains_to_the_best_value(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = runner.invoke(app, tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3"))
    assert result.exit_code == 0, result.stderr
    best_value = float(result.stdout.split()[0].split("=")[1])
    # each trial keeps its whole config: best.toml means the same run even if defaults change
    best = load_study(out).best_trial
    assert to_dict(resolve_config(out / "best.toml")) == best.user_attrs["config"]
    trained = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(out / "best.toml"),
            "--test-csv",
            "",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert trained.exit_code == 0, trained.stderr
    # --folds 1 is train's own holdout split and seed: the same run, the same RMSE
    assert f"valid_rmse={best_value:.5f}" in trained.stdout


def test_cv_objective_is_what_covidreg_cv_reports(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """Same folds and seeds as covidreg cv (which may train them together: float rounding)."""
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "2", "-q")
    result = runner.invoke(app, [*args, "--folds", "2"])
    assert result.exit_code == 0, result.stderr
    best_value = float(result.stdout.split()[0].split("=")[1])
    cv = run_cv(resolve_config(out / "best.toml"), 2, out=tmp_path / "cv")
    assert cv.summary["valid_rmse"]["mean"] == pytest.approx(best_value, rel=1e-4)


def test_trial_values_reproduce_from_their_saved_config(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    """The CSV is read once per study: each trial must still train on its own features."""
    space = SMALL_SPACE + '\n[space.features]\nchoices = ["target_only", "all"]\n'
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path, space), out, "--trials", "3", "-q")
    assert runner.invoke(app, [*args, "--pruner", "none"]).exit_code == 0
    for trial in load_study(out).trials:
        cfg = from_dict(trial.user_attrs["config"])
        assert cfg.features != ["strong"]  # never the default preset the data was loaded with
        fresh = tune.evaluate(cfg, load_data(cfg, with_test=False), 1, 8, lambda *_: None)
        assert fresh == trial.user_attrs["fold_rmse"]


def test_rerun_resumes_and_numbering_continues(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--study", "hw01")
    assert runner.invoke(app, [*args, "--trials", "2"]).exit_code == 0
    more = runner.invoke(app, [*args, "--trials", "4"])
    assert more.exit_code == 0, more.stderr
    assert "2 of 4 trials done" in flat(more.stderr)
    again = runner.invoke(app, [*args, "--trials", "4"])  # the target is reached: nothing runs
    assert again.exit_code == 0
    numbers = [t.number for t in load_study(out, "hw01").trials]
    assert numbers == [0, 1, 2, 3]
    other_folds = runner.invoke(app, [*args, "--trials", "5", "--folds", "2"])
    assert other_folds.exit_code == 1
    assert "was run with --folds 1" in other_folds.stderr


def test_ctrl_c_keeps_trials_and_requeues_the_interrupted_one(
    hw01_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3")
    evaluate = tune.evaluate
    calls = []

    def interrupted_second_time(*a: object, **k: object) -> list[float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(tune, "evaluate", interrupted_second_time)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130
    assert "1 of 3 trials" in flat(stopped.stderr)
    assert "Run the same command to resume" in flat(stopped.stderr)
    monkeypatch.setattr(tune, "evaluate", evaluate)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.stderr
    trials = load_study(out).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].user_attrs["requeued_from"] == 1
    assert trials[2].params == trials[1].params


def test_dead_workers_trial_is_queued_again(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    journal = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=tune.open_storage(journal))
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan.set_user_attr("worker", {"host": tune._HOST, "pid": dead.pid})
    fresh = tune.claim(study, target=2, journal=journal)
    assert fresh is not None
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[0] == optuna.trial.TrialState.FAIL  # the orphan: it does not count
    assert study.trials[1].user_attrs["requeued_from"] == 0
    assert study.trials[1].system_attrs["fixed_params"] == orphan.params


def test_show_prints_the_best_trials(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = tune_args(hw01_files, write_space(tmp_path), out, "--trials", "3", "--study", "hw01")
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    (out / "best.toml").unlink()
    shown = runner.invoke(app, ["tune", "--show", "--study", "hw01", "--out", str(out)])
    assert shown.exit_code == 0, shown.stderr
    text = flat(shown.stderr)
    assert "study hw01: 3 trials (3 complete); top 3 by holdout valid RMSE" in text
    assert "lr=" in text and "hidden=" in text
    assert shown.stdout.startswith("best_rmse=")
    assert (out / "best.toml").is_file()
    missing = runner.invoke(app, ["tune", "--show", "--study", "nope", "--out", str(out)])
    assert missing.exit_code == 1
    assert "no study 'nope'" in missing.stderr and "hw01" in missing.stderr


def test_sequential_search_is_reproducible(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    values = []
    for name in ("a", "b"):
        args = tune_args(hw01_files, write_space(tmp_path), tmp_path / name, "--trials", "3")
        assert runner.invoke(app, [*args, "-q"]).exit_code == 0
        values.append([(t.params, t.value) for t in load_study(tmp_path / name).trials])
    assert values[0] == values[1]


def test_sqlite_storage_warns(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = tune_args(hw01_files, write_space(tmp_path), tmp_path / "out", "--trials", "1")
    result = runner.invoke(app, [*args, "--storage", url])
    assert result.exit_code == 0, result.stderr
    assert "SQLite is not safe for several workers" in result.stderr
    shown = runner.invoke(app, ["tune", "--show", "--storage", url, "--out", str(tmp_path / "o")])
    assert shown.exit_code == 0 and shown.stdout.startswith("best_rmse=")


BAD_SPACES = [
    ("[space.learning_rate]\ntype = 'float'\nlow = 0.1\nhigh = 1.0\n", "learning_rate"),
    ("[space.lr]\ntype = 'normal'\nlow = 0.1\nhigh = 1.0\n", "type must be float"),
    ("[space.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.01\n", "low (0.1) must be lower"),
    ("[space.lr]\ntype = 'float'\nlow = 0.0\nhigh = 0.1\nlog = true\n", "log = true needs low"),
    ("[space.lr]\ntype = 'float'\nlow = 1e-3\nhigh = 0.1\nmean = 1\n", "unknown field 'mean'"),
    ("[space.lr]\ntype = 'float'\nhigh = 0.1\n", "[space.lr] needs low"),
    ("[space.batch_size]\ntype = 'float'\nlow = 8\nhigh = 64\n", "integer key"),
    ("[space.optimizer]\ntype = 'float'\nlow = 1\nhigh = 2\n", 'use type = "categorical"'),
    ("[space.hidden]\nchoices = ['64', 'a,b']\n", "choice 'a,b' is not a valid int"),
    ("[space.optimizer]\nchoices = []\n", "[space.optimizer] needs choices"),
    ("[space.optimizer]\nchoices = ['adam', 'lbfgs']\n", "[space.optimizer] value 'lbfgs'"),
    ("[space.batch_size]\nchoices = [16, 100000]\n", "[space.batch_size] value 100000"),
    ("[fixed]\nlr = 0.1\n[space.lr]\nchoices = [0.1]\n", "'lr' is both in [fixed]"),
    ("[fixed]\nlearning_rate = 0.1\n[space.lr]\nchoices = [0.1]\n", "'learning_rate'"),
    ("[fixed]\nepochs = 5\n", "needs at least one [space"),
    ("[space.lr\n", "not valid TOML"),
    ("[spaces.lr]\nchoices = [0.1]\n", "unknown table or key 'spaces'"),
    ("[space.train_csv]\nchoices = ['a.csv']\n", "data files cannot be searched"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_bad_search_space_is_a_one_line_error(
    hw01_files: dict[str, Path], tmp_path: Path, text: str, message: str
) -> None:
    args = tune_args(hw01_files, write_space(tmp_path, text), tmp_path / "out", "--trials", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are valid"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "grid", "--search", "LR_ONLY"], "[space.lr] needs values"),
        (["--lr", "0.01"], "--lr sets 'lr', which"),
        (["--sampler", "cmaes"], "unknown sampler 'cmaes'"),
        (["--pruner", "asha"], "unknown pruner 'asha'"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--search", "MISSING"], "does not exist; pass --search"),
    ],
)
def test_bad_tune_options_are_one_line_errors(
    hw01_files: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    lr_only = write_space(tmp_path, "[space.lr]\ntype='float'\nlow=1e-3\nhigh=0.1\n", "lr.toml")
    paths = {"LR_ONLY": str(lr_only), "MISSING": str(tmp_path / "missing.toml")}
    extra = [paths.get(arg, arg) for arg in extra]
    args = tune_args(hw01_files, write_space(tmp_path), tmp_path / "out", "--trials", "1", *extra)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_search_space_values_reach_the_config() -> None:
    spec = tune.ParamSpec("weight_decay", "float", low=1e-7, high=1e-2, log=True, zero_below=1e-6)
    assert spec.config_value(5e-7) == 0.0 and spec.config_value(1e-4) == 1e-4
    hidden = tune.ParamSpec("hidden", "categorical", choices=("64", "32,8"))
    assert hidden.candidates() == [[64], [32, 8]]
    with pytest.raises(CovidRegError, match="hidden"):
        tune.ParamSpec("hidden", "categorical").config_value("a")
