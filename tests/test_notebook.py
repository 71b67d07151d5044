"""examples/hw01.ipynb, executed top to bottom by a real Jupyter kernel on the real HW01 files."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "hw01.ipynb"
EPOCHS = 300  # the notebook's epochs


def outputs(nb: Any) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def texts(nb: Any) -> str:
    """Everything the cells printed or displayed as text, without rich's colour codes."""
    parts = []
    for out in outputs(nb):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))


def test_the_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert outputs(nb) == []
    assert all(cell.get("execution_count") is None for cell in nb.cells if "source" in cell)


@pytest.mark.realdata
@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom(real_data_dir: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel (the python3 kernel runs this interpreter) imports this checkout's covidreg,
    # and writes its runs/ under tmp_path
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "COVIDREG_DATA_DIR": str(real_data_dir.resolve())}
    client = NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)

    assert [out for out in outputs(nb) if out["output_type"] == "error"] == []
    assert [out["text"] for out in outputs(nb) if out.get("name") == "stderr"] == []
    text = texts(nb)
    trained = re.search(r"valid_rmse=(\S+) best_epoch=(\d+) epochs_run=(\d+)", text)
    assert trained, text
    valid_rmse, epochs_run = float(trained[1]), int(trained[3])
    assert math.isfinite(valid_rmse) and 0.5 < valid_rmse < 2
    # the progress bar rendered in the notebook, its last state kept: every epoch run
    assert re.search(rf"train .*{epochs_run}/{EPOCHS} +train", text), text
    assert "covidreg train" in text and "valid RMSE" in text  # the summary table
    cv = re.search(r"cv_rmse=(\S+) std=(\S+)", text)
    assert cv and math.isfinite(float(cv[1])) and float(cv[2]) > 0
    scores = dict(re.findall(r"^(CovidRegressor|RidgeCV): rmse=(\S+)", text, flags=re.M))
    assert set(scores) == {"CovidRegressor", "RidgeCV"}
    assert all(0.5 < float(v) < 2 for v in scores.values())
    plots = [out for out in outputs(nb) if "image/png" in out.get("data", {})]
    assert len(plots) == 2  # the learning curve and the per-fold RMSEs
    assert (tmp_path / "runs" / "notebook-train" / "pred.csv").is_file()
    assert (tmp_path / "runs" / "notebook-cv" / "cv.csv").is_file()
