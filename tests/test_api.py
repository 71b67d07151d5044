"""covidreg from Python: train, cv, load and predict equal the commands, bit for bit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import covidreg
from covidreg.cli import app
from tests.conftest import FEATURE_NAMES, RUN_FILES, TARGET, train_args

runner = CliRunner()
PACKAGE = Path(covidreg.__file__).resolve().parent
QUICK = {"epochs": 12, "batch_size": 16}


def files_of(hw01_files: dict[str, Path]) -> dict[str, str]:
    return {"train_csv": str(hw01_files["train"]), "test_csv": str(hw01_files["test"])}


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV the runs write, each number read by int() or float(): a repr reads back exactly."""
    frame = pd.read_csv(path, dtype=str)
    return frame.apply(lambda c: c.map(int if c.str.fullmatch(r"-?\d+").all() else float))


def without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.fixture
def cli_run(hw01_files: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "cli"
    result = runner.invoke(app, train_args(hw01_files, out, "-q"))
    assert result.exit_code == 0, result.stderr
    return out


def test_train_equals_covidreg_train(
    hw01_files: dict[str, Path], tmp_path: Path, cli_run: Path
) -> None:
    out = tmp_path / "api"
    result = covidreg.train(**files_of(hw01_files), **QUICK, out=out, quiet=True)
    assert result.run_dir == out and {p.name for p in out.iterdir()} == RUN_FILES
    for name in ("history.csv", "pred.csv", "config.toml"):
        assert (out / name).read_bytes() == (cli_run / name).read_bytes(), name
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert without_timings(result.metrics) == without_timings(metrics)
    assert result.valid_rmse == metrics["valid_rmse"] and result.best_epoch == metrics["best_epoch"]
    pd.testing.assert_frame_equal(result.history, read_csv(cli_run / "history.csv"))
    assert result.config == covidreg.Config(**files_of(hw01_files), **QUICK)
    expected = read_csv(cli_run / "pred.csv")["tested_positive"].to_numpy()
    assert np.array_equal(result.predict(hw01_files["test"]), expected)


def test_train_takes_a_config_object_a_toml_file_or_a_dict(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = covidreg.Config(**files_of(hw01_files), **QUICK, lr=3e-3)
    toml = tmp_path / "run.toml"
    toml.write_text(f'train_csv = "{hw01_files["train"]}"\nepochs = 99\nlr = 3e-3\n')
    runs = [
        covidreg.train(cfg, out=tmp_path / "object", quiet=True),
        covidreg.train(toml, out=tmp_path / "toml", quiet=True, **QUICK, test_csv=cfg.test_csv),
        covidreg.train(
            {**files_of(hw01_files), "epochs": 12, "batch_size": 16},
            out=tmp_path / "dict",
            quiet=True,
            lr=3e-3,
        ),
    ]
    assert all(run.config == cfg for run in runs)  # the overrides win over the file
    assert len({run.valid_rmse for run in runs}) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"lrr": 1e-3},
            r"^unknown config key 'lrr' in covidreg.train\(\) arguments; did you mean lr\?$",
        ),
        ({"rate": 1e-3}, r"^unknown config key 'rate' in covidreg.train\(\) arguments; valid keys"),
        ({"epochs": "ten"}, r"^config key 'epochs' in covidreg.train\(\) arguments must be int"),
        ({"epochs": 0}, r"^config key 'epochs' must be a positive integer, got 0$"),
        ({"hidden": 16}, r"^config key 'hidden' .* must be a non-empty list of int$"),
    ],
)
def test_train_rejects_a_bad_key_or_value_by_name_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(covidreg.CovidRegError, match=message):
        covidreg.train(quiet=True, **overrides)
    assert list(tmp_path.iterdir()) == []


def test_python_values_are_checked_as_toml_values(hw01_files: dict[str, Path]) -> None:
    with pytest.raises(covidreg.CovidRegError, match=r"'lr' .* must be a number or auto"):
        covidreg.train(**files_of(hw01_files), lr="3e-3")  # a flag's text is not a float here
    with pytest.raises(covidreg.CovidRegError, match=r"must be a covidreg.Config, the path"):
        covidreg.train(42)  # type: ignore[arg-type]


def test_train_shows_progress_and_the_summary_unless_quiet(
    hw01_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    covidreg.train(**files_of(hw01_files), **QUICK, out=tmp_path / "loud")
    shown = capsys.readouterr()
    assert "covidreg train" in shown.err and "valid RMSE" in shown.err
    assert shown.out.startswith("valid_rmse=")
    covidreg.train(**files_of(hw01_files), **QUICK, out=tmp_path / "quiet", quiet=True)
    assert capsys.readouterr() == ("", "")


def test_a_symmetric_init_warns_through_warnings(
    hw01_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match="init 'zeros' gives every hidden unit of a layer"):
        out = tmp_path / "run"
        covidreg.train(**files_of(hw01_files), **QUICK, init="zeros", out=out, quiet=True)


def test_cv_equals_covidreg_cv(hw01_files: dict[str, Path], tmp_path: Path) -> None:
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    args = ["cv", "--folds", "3", "--epochs", "12", "--batch-size", "16", "--predict", "-q"]
    args += ["--train-csv", str(hw01_files["train"]), "--test-csv", str(hw01_files["test"])]
    assert runner.invoke(app, [*args, "--out", str(cli_out)]).exit_code == 0
    result = covidreg.cv(
        **files_of(hw01_files), **QUICK, folds=3, predict=True, out=api_out, quiet=True
    )
    for name in ("pred.csv", "config.toml", *(f"fold_{k}/history.csv" for k in (1, 2, 3))):
        assert (api_out / name).read_bytes() == (cli_out / name).read_bytes(), name
    table = read_csv(cli_out / "cv.csv")
    assert result.fold_rmse == table["valid_rmse"].tolist()
    summary = json.loads((cli_out / "summary.json").read_text())
    assert (result.mean, result.std) == (
        summary["valid_rmse"]["mean"],
        summary["valid_rmse"]["std"],
    )
    assert result.n_folds == 3 and result.pred_path == api_out / "pred.csv"
    pd.testing.assert_frame_equal(
        result.folds.drop(columns="seconds"), table.drop(columns="seconds")
    )
    pd.testing.assert_frame_equal(result.history(2), read_csv(cli_out / "fold_2/history.csv"))
    ensemble = read_csv(cli_out / "pred.csv")["tested_positive"].to_numpy()
    assert np.array_equal(result.predict(hw01_files["test"]), ensemble)


def test_load_and_predict_take_a_model_a_run_or_a_fold_ensemble(
    hw01_files: dict[str, Path], tmp_path: Path, cli_run: Path
) -> None:
    expected = read_csv(cli_run / "pred.csv")["tested_positive"].to_numpy()
    test_csv = hw01_files["test"]
    for path in (cli_run, cli_run / "model.pt", str(cli_run)):
        model = covidreg.load(path)
        assert len(model) == 1 and model.config.epochs == 12
        assert np.array_equal(covidreg.predict(model, test_csv), expected)
    assert np.array_equal(covidreg.predict(cli_run, test_csv), expected)
    cv_out = tmp_path / "cv"
    result = covidreg.cv(**files_of(hw01_files), **QUICK, folds=3, out=cv_out, quiet=True)
    ensemble = covidreg.load(cv_out)
    assert len(ensemble) == 3
    folds = [covidreg.predict(cv_out / f"fold_{k}", test_csv) for k in (1, 2, 3)]
    assert np.array_equal(covidreg.predict(ensemble, test_csv), np.mean(folds, axis=0))
    assert np.array_equal(covidreg.predict(result, test_csv), np.mean(folds, axis=0))


def test_predict_takes_dataframes_with_or_without_the_target(
    hw01_files: dict[str, Path], cli_run: Path
) -> None:
    expected = read_csv(cli_run / "pred.csv")
    model = covidreg.load(cli_run)
    by_name = covidreg.read_hw01(hw01_files["test"])
    assert list(by_name.columns) == list(FEATURE_NAMES) and by_name.index.name == "id"
    raw = pd.read_csv(hw01_files["test"])  # pandas names the repeated columns cli.1, cli.2...
    for frame in (by_name, raw, raw.set_index("id"), by_name.reset_index(drop=True)):
        assert np.array_equal(model.predict(frame), expected["tested_positive"].to_numpy())
    pd.testing.assert_frame_equal(covidreg.submission(model, by_name), expected)
    train = covidreg.read_hw01(hw01_files["train"])
    assert list(train.columns) == [*FEATURE_NAMES, TARGET]
    assert np.array_equal(model.predict(train), model.predict(hw01_files["train"]))
    assert np.array_equal(model.predict(train), model.predict(pd.read_csv(hw01_files["train"])))


def test_predict_rejects_frames_outside_the_schema(
    hw01_files: dict[str, Path], cli_run: Path
) -> None:
    model = covidreg.load(cli_run)
    frame = covidreg.read_hw01(hw01_files["test"])
    with pytest.raises(covidreg.CovidRegError, match=r"does not have the columns of an HW01 file"):
        model.predict(frame.drop(columns="cli_d1"))
    bad = frame.copy()
    bad.iloc[2, bad.columns.get_loc("ili_d2")] = np.nan
    with pytest.raises(covidreg.CovidRegError, match=r"row 2 \(index 2\), column 'ili_d2'"):
        model.predict(bad)
    two_states = frame.copy()
    two_states.iloc[0, :2] = 1.0
    with pytest.raises(covidreg.CovidRegError, match=r"row 0 .* the state one-hot has 2 ones"):
        model.predict(two_states)
    with pytest.raises(covidreg.CovidRegError, match=r"got ndarray"):
        model.predict(frame.to_numpy())  # type: ignore[arg-type]
    with pytest.raises(covidreg.CovidRegError, match=r"does not exist"):
        covidreg.load(cli_run / "nope")


def test_import_covidreg_loads_no_heavy_module_and_cv_stays_the_function() -> None:
    code = (
        "import sys, covidreg\n"
        "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'numpy') if m in sys.modules]\n"
        "import covidreg.crossval, covidreg.inference\n"
        "print(heavy, callable(covidreg.cv), covidreg.cv.__module__, covidreg.predict.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True", "covidreg.api", "covidreg.api"]


def test_every_public_name_resolves() -> None:
    assert set(covidreg.__all__) == {"__version__", *covidreg._EXPORTS}
    for name in covidreg.__all__:
        assert getattr(covidreg, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        covidreg.nope  # noqa: B018


# what would end the caller's process: only the command line may
_EXITS = ("sys.exit", "typer.Exit", "SystemExit", "exit", "quit")
# a spawned tune worker's entry point: its exit code is its own process's
_ENTRY_POINTS = {("tune/workers.py", "_worker_process")}


def _exit_target(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.Call):
        return node.func
    # raise SystemExit(1) is found as its call; a bare raise SystemExit here
    if isinstance(node, ast.Raise) and not isinstance(node.exc, (ast.Call, type(None))):
        return node.exc
    return None


def _exits(node: ast.AST, function: str = "<module>") -> list[tuple[str, int, str]]:
    """(innermost function, line, what) of each call or raise of an exit in ``node``."""
    found = []
    for child in ast.iter_child_nodes(node):
        target = _exit_target(child)
        if target is not None and ast.unparse(target) in _EXITS:
            found.append((function, child.lineno, ast.unparse(target)))
        inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        found += _exits(child, inner or function)
    return found


def test_nothing_but_the_command_line_ends_the_process() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "cli.py":
            continue
        for function, line, call in _exits(ast.parse(path.read_text())):
            if (relative, function) not in _ENTRY_POINTS:
                offenders.append(f"{relative}:{line} {call} in {function}")
    assert offenders == []
    # the scan finds what it looks for
    assert _exits(ast.parse("def f():\n    raise typer.Exit(1)\n")) == [("f", 2, "typer.Exit")]
    assert [c for *_, c in _exits(ast.parse("import sys\nsys.exit(2)\n"))] == ["sys.exit"]
    assert _exits(ast.parse("class A:\n    def g(self):\n        raise SystemExit\n")) == [
        ("g", 3, "SystemExit")
    ]
