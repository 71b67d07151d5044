"""Run the commands the documentation shows and write what they print into docs/generated/.

Every command output on the site (and the two in README.md) is produced here: each command runs
on the real HW01 files of ``--data-dir`` (default ``$COVIDREG_DATA_DIR``, else ``data/``) in a
scratch directory that looks like a checkout (``data/`` and ``configs/``), with a fixed terminal
width, and its stdout and stderr, in the order printed, go to ``docs/generated/<name>.txt``
under a ``$ covidreg ...`` line. The plots the pages show are copied from the run directories
into ``docs/images/``. ``make docs`` runs it, then builds the site.

The 2023 files are not public where the docs are generated: the 2023 outputs come from
synthetic files of the 2023 header (``write_synthetic``: tests/conftest.py's random walks under
a fixed seed), in a checkout of their own whose ``data/`` holds them, and the pages say so.

    python docs/gen_outputs.py --data-dir ../shared/hw01 [--only train,cv]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's covidreg and its tests' synthetic rows

from covidreg.datadir import FILE_NAMES  # noqa: E402
from covidreg.layout import EDITIONS  # noqa: E402
from tests.conftest import synthetic_rows, write_hw01_csv  # noqa: E402

GENERATED = ROOT / "docs" / "generated"
IMAGES = ROOT / "docs" / "images"
COLUMNS = "100"
COMMANDS = ("train", "cv", "predict", "compare", "lr-find", "tune", "fetch", "features", "config")


@dataclass
class Shown:
    """One command the docs show: its snippet name, its words, what it leaves for the pages."""

    name: str
    line: str  # as shown after "$ "; "{train_run}" is the run directory of the "train" snippet
    returncode: int = 0
    images: dict[str, str] = field(default_factory=dict)  # file in the run dir -> docs/images/
    files: dict[str, str] = field(default_factory=dict)  # file in the run dir -> shown after it
    synthetic: bool = False  # runs where data/ holds synthetic files of SYNTHETIC's header


SHOWN = [
    Shown("fetch", "covidreg fetch --from ~/Downloads/ml2021spring-hw1"),
    Shown(
        "fetch-2022",
        "covidreg fetch --edition 2022 --from ~/Downloads/ml2022spring-hw1 --dest data/2022",
    ),
    Shown("features-2022", "covidreg features --train-csv data/2022/covid.train.csv"),
    Shown("train-2022", "covidreg train --train-csv data/2022/covid.train.csv"),
    Shown("cv-2022", "covidreg cv --folds 5 --train-csv data/2022/covid.train.csv"),
    Shown(
        "predict-2022",
        "covidreg predict --model {train_2022_run} --test-csv data/2022/covid.test.csv "
        "--out pred.csv",
    ),
    Shown(
        "predict-2022-layout",
        "covidreg predict --model {train_2022_run} --test-csv data/covid.test.csv --out p.csv",
        returncode=1,
    ),
    Shown("features-2023", "covidreg features", synthetic=True),
    Shown("train-2023", "covidreg train", synthetic=True),
    Shown("cv-2023", "covidreg cv --folds 5 --predict", synthetic=True),
    Shown(
        "predict-2023",
        "covidreg predict --model {train_2023_run} --out pred.csv",
        synthetic=True,
    ),
    Shown("train", "covidreg train", images={"learning_curve.png": "learning_curve.png"}),
    Shown("cv", "covidreg cv --folds 5 --predict", images={"learning_curves.png": "cv_curves.png"}),
    Shown("predict", "covidreg predict --model {train_run} --out pred.csv"),
    Shown("train-sample", "covidreg train --config configs/sample.toml"),
    Shown("train-lr-auto", "covidreg train --lr auto --quiet"),
    Shown("cv-lr-auto", "covidreg cv --folds 5 --lr auto --quiet"),
    Shown("train-diverges", "covidreg train --optimizer sgd --lr 3", returncode=1),
    Shown(
        "compare-lr",
        "covidreg compare --lr 1e-4,1e-3,1e-2,1e-1",
        images={"curves.png": "compare_curves.png"},
    ),
    Shown(
        "compare-sgd-lr",
        "covidreg compare --optimizer sgd --lr 1e-5,1e-3,0.05,0.2 --epochs 400 --patience 0",
        images={"curves.png": "compare_lr.png"},
        files={"compare.csv": "compare.csv"},
    ),
    Shown(
        "train-sgd-diverges",
        "covidreg train --optimizer sgd --lr 0.2 --epochs 400 --patience 0",
    ),
    Shown("compare-folds", "covidreg compare --optimizer sgd,adam --folds 5"),
    Shown("compare-init", "covidreg compare --init zeros,default,xavier_normal,kaiming_normal"),
    Shown(
        "lr-find-level",
        "covidreg lr-find --target level --steps 300",
        images={"lr_find.png": "lr_find.png"},
    ),
    Shown("lr-find", "covidreg lr-find"),
    Shown(
        "tune",
        "covidreg tune --trials 3 --epochs 100 --patience 20 --workers 1 --out runs/tune-demo",
        images={"history.png": "tune_history.png"},
    ),
    Shown("features", "covidreg features"),
    Shown(
        "features-rank",
        "covidreg features --rank",
        images={"rank.png": "features_rank.png"},
    ),
    Shown(
        "features-rank-2022",
        "covidreg features --rank --train-csv data/2022/covid.train.csv",
        images={"rank.png": "features_rank_2022.png"},
    ),
    Shown("config-sample", "covidreg config --config configs/sample.toml --changed"),
    *[Shown(f"help-{name}", f"covidreg {name} --help") for name in COMMANDS],
]
# Python programs under docs/examples/, run as they are shown.
EXAMPLES = ["python_api.py", "sklearn_blocked.py"]
# README.md's blocks between <!-- output:NAME --> and <!-- /output --> are these snippets.
README_BLOCK = re.compile(r"(<!-- output:(?P<name>[\w-]+) -->\n).*?(<!-- /output -->)", re.S)


def environment(workdir: Path) -> dict[str, str]:
    # the scratch checkout's data/ is the data directory, as a user's is
    dropped = ("FORCE_COLOR", "CI", "COVIDREG_DATA_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        COLUMNS=COLUMNS,
        LINES="50",
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        HOME=str(workdir / "home"),
        TERM="dumb",
    )
    return env


HW01_FILES = FILE_NAMES["2021"]
#: The edition whose outputs come from synthetic files (its real files are not public here).
SYNTHETIC = "2023"


def write_synthetic(folder: Path, edition: str, windows: int = 89, seed: int = 2023) -> None:
    """``edition``'s training and test files, of its header, with made-up values: per state
    ``windows`` training windows of consecutive days, then, past a gap that leaves no day shared
    (as in 2021), a third as many test windows; rows shuffled (as the 2022 and 2023 files are)
    under ``seed``, so the same call writes the same bytes. The defaults give about the 2023
    files' sizes (3,026 and 986 rows against 3,009 and 997)."""
    layout = EDITIONS[edition]
    n_test, gap = windows // 3, layout.n_days - 1
    per_state = windows + gap + n_test
    rows = synthetic_rows(len(layout.states), per_state, seed, layout)
    window = np.arange(len(rows)) % per_state
    rng = np.random.default_rng(seed)
    train, test = rows[window < windows], rows[window >= windows + gap]
    folder.mkdir(parents=True, exist_ok=True)
    train_name, test_name = FILE_NAMES[edition]
    write_hw01_csv(folder / train_name, rng.permutation(train), layout=layout)
    write_hw01_csv(folder / test_name, rng.permutation(test), with_target=False, layout=layout)


def scratch(data_dir: Path, data_dir_2022: Path, workdir: Path) -> None:
    """A directory that looks like a fresh checkout (data/ empty) and two Kaggle downloads."""
    (workdir / "data").mkdir(parents=True)
    (workdir / "configs").symlink_to(ROOT / "configs")
    for edition, folder in (("2021", data_dir), ("2022", data_dir_2022)):
        downloads = workdir / "home" / "Downloads" / f"ml{edition}spring-hw1"
        downloads.mkdir(parents=True)
        for name in HW01_FILES:
            (downloads / name).symlink_to(folder / name)


def run(argv: list[str], workdir: Path, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # rich pads its table titles to the width; trailing blanks only make noisy diffs
    text = "\n".join(line.rstrip() for line in done.stdout.splitlines())
    return done.returncode, text


def run_shown(shown: Shown, workdir: Path, env: dict[str, str], runs: dict[str, str]) -> str:
    line = shown.line.format(**runs)
    # as the shell does: ~ is the scratch home
    words = [re.sub(r"^~/", env["HOME"] + "/", word) for word in shlex.split(line)]
    code, text = run([sys.executable, "-m", "covidreg", *words[1:]], workdir, env)
    # the scratch directory's paths as the user sees theirs
    text = text.replace(env["HOME"], "~").replace(f"{workdir}/", "")
    if code != shown.returncode:
        sys.exit(f"`{line}` exited with {code}, expected {shown.returncode}:\n{text}")
    found = re.search(r"(?:run_dir|best_toml)=(\S+)", text)
    run_dir = workdir / found.group(1) if found else None
    if run_dir is not None and run_dir.is_file():
        run_dir = run_dir.parent
    if run_dir is not None:
        runs[f"{shown.name.replace('-', '_')}_run"] = str(run_dir.relative_to(workdir))
    for source, target in shown.images.items():
        if run_dir is None:
            sys.exit(f"`{line}` printed no run directory to take {source} from")
        shutil.copyfile(run_dir / source, IMAGES / target)
    for source, label in shown.files.items():
        text += f"\n\n$ cat {runs.get(shown.name.replace('-', '_') + '_run')}/{label}\n"
        text += (run_dir / source).read_text().rstrip()
    return f"$ {line}\n{text}\n"


def run_example(name: str, workdir: Path, env: dict[str, str]) -> str:
    code, text = run([sys.executable, str(ROOT / "docs" / "examples" / name)], workdir, env)
    if code != 0:
        sys.exit(f"docs/examples/{name} exited with {code}:\n{text}")
    return f"$ python {name}\n{text}\n"


def write_readme() -> None:
    """README.md's output blocks, from the snippets just written."""
    readme = ROOT / "README.md"

    def block(m: re.Match[str]) -> str:
        body = (GENERATED / f"{m.group('name')}.txt").read_text()
        return f"{m.group(1)}```text\n{body}```\n{m.group(3)}"

    readme.write_text(README_BLOCK.sub(block, readme.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("COVIDREG_DATA_DIR", "data"))
    )
    parser.add_argument(
        "--data-dir-2022",
        type=Path,
        default=Path(os.environ.get("COVIDREG_DATA_DIR_2022", "data/2022")),
    )
    parser.add_argument("--only", default="", help="comma-separated snippet names (debugging)")
    args = parser.parse_args()
    data_dir, data_dir_2022 = args.data_dir.resolve(), args.data_dir_2022.resolve()
    for folder, variable in ((data_dir, "DATA_DIR"), (data_dir_2022, "DATA_DIR_2022")):
        if not (folder / "covid.train.csv").is_file():
            flag = "--" + variable.lower().replace("_", "-")
            sys.exit(f"{folder} has no covid.train.csv: set {flag} or COVIDREG_{variable}")
    only = set(filter(None, args.only.split(",")))
    GENERATED.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidreg-docs-") as tmp:
        workdir, synthetic = Path(tmp) / "course", Path(tmp) / f"synthetic-{SYNTHETIC}"
        scratch(data_dir, data_dir_2022, workdir)
        env = environment(workdir)
        # a checkout whose data directory holds the synthetic files, named by $COVIDREG_DATA_DIR
        (synthetic / "home").mkdir(parents=True)
        (synthetic / "configs").symlink_to(ROOT / "configs")
        write_synthetic(synthetic / "data", SYNTHETIC)
        synthetic_env = {**environment(synthetic), "COVIDREG_DATA_DIR": str(synthetic / "data")}
        if only and "fetch" not in only:
            (workdir / "data" / "2022").mkdir()
            for name in HW01_FILES:
                (workdir / "data" / name).symlink_to(data_dir / name)
                (workdir / "data" / "2022" / name).symlink_to(data_dir_2022 / name)
        runs: dict[str, str] = {}
        for shown in SHOWN:
            if only and shown.name not in only:
                continue
            t0 = time.perf_counter()
            if shown.synthetic:
                text = run_shown(shown, synthetic, synthetic_env, runs)
            else:
                text = run_shown(shown, workdir, env, runs)
            (GENERATED / f"{shown.name}.txt").write_text(text)
            print(f"{shown.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for name in EXAMPLES:
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            (GENERATED / f"{Path(name).stem}.txt").write_text(run_example(name, workdir, env))
            print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    write_readme()
    print(f"docs/generated: {time.perf_counter() - started:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
