"""The documentation stays true to the code: the commands it shows parse, the API reference
holds every public name, the outputs are the generated ones, and the front page stays short."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import typer.main

import covidreg
from covidreg.cli import app

try:  # the click that typer builds its commands with: its own copy in recent typer
    from typer._click.exceptions import ClickException, UsageError
except ImportError:
    from click import ClickException, UsageError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = DOCS / "generated"
FENCE = re.compile(r"^(\s*)(```|~~~)")


def build_site(site_dir: Path) -> Path:
    """``mkdocs build --strict`` of this checkout into ``site_dir`` (nothing written in it)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**_env(), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return site_dir


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def gen_outputs():  # the docs script, as a module
    spec = importlib.util.spec_from_file_location("gen_outputs", DOCS / "gen_outputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


# --- the command lines the docs show -----------------------------------------------------------


def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block of a Markdown text."""
    blocks: list[list[str]] = []
    fence = None
    for line in text.splitlines():
        found = FENCE.match(line)
        if found and fence is None:
            fence = found.group(2)
            blocks.append([])
        elif found and found.group(2) == fence:
            fence = None
        elif fence is not None:
            blocks[-1].append(line.strip())
    return blocks


def shown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *sorted(GENERATED.glob("*.txt"))]


def shown_command_lines() -> list[tuple[str, str]]:
    """(file, line) for every command line of a code block: ``$ covidreg ...`` in a transcript
    (a block or generated output with ``$ `` lines, whose other lines are output), else
    ``covidreg ...``."""
    found = []
    for path in shown_pages():
        text = path.read_text()
        blocks = [text.splitlines()] if path.suffix == ".txt" else code_blocks(text)
        for lines in blocks:
            transcript = any(line.startswith("$ ") for line in lines)
            for line in lines:
                if transcript and not line.startswith("$ "):
                    continue
                line = line.removeprefix("$ ")
                if line.startswith("covidreg "):
                    found.append((str(path.relative_to(ROOT)), line))
    return found


def parse_command_line(line: str) -> None:
    """Resolve a ``covidreg ...`` line with the CLI's click objects: the command and every option
    must exist and take the values given. Nothing runs (``--help`` is not acted on)."""
    words = shlex.split(line, comments=True)[1:]
    root = typer.main.get_command(app)
    with root.make_context("covidreg", [], resilient_parsing=True) as parent:
        name = words[0] if words else ""
        command = root.get_command(parent, name)
        if command is None:
            raise UsageError(f"no such command {name!r}")
        if "--help" in words:  # eager: it would print the help and exit
            return
        with command.make_context(name, words[1:], parent=parent):
            pass


def test_the_docs_show_command_lines() -> None:
    shown = {line.split()[1] for _, line in shown_command_lines()}
    assert shown >= {"train", "cv", "predict", "compare", "lr-find", "tune", "fetch", "features"}


@pytest.mark.parametrize(("page", "line"), shown_command_lines())
def test_every_command_line_shown_parses(page: str, line: str) -> None:
    try:
        parse_command_line(line)
    except ClickException as exc:
        pytest.fail(f"{page}: `{line}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize(
    "line",
    [
        "covidreg trian",
        "covidreg train --epoch 3",
        "covidreg cv --folds x",
        "covidreg predict --out pred.csv",  # --model is required
        "covidreg tune --trials 5 --sampler",
    ],
)
def test_a_wrong_command_line_does_not_parse(line: str) -> None:
    with pytest.raises(ClickException):
        parse_command_line(line)


def test_every_command_has_a_page() -> None:
    index = (DOCS / "commands" / "index.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"covidreg {name}" in index, f"docs/commands/index.md does not show {name}"
        if name != "config":
            assert (DOCS / "commands" / f"{name}.md").is_file(), f"no docs/commands/{name}.md"
    assert "configuration.md" in index


# --- the generated outputs ---------------------------------------------------------------------


def test_every_snippet_a_page_includes_is_generated_by_the_script() -> None:
    script = gen_outputs()
    names = {shown.name for shown in script.SHOWN} | {Path(n).stem for n in script.EXAMPLES}
    included = set()
    for path in DOCS.rglob("*.md"):
        included |= set(re.findall(r'--8<-- "generated/([\w-]+)\.txt"', path.read_text()))
    assert included, "no page includes a generated output"
    assert included <= names, f"included but not generated: {sorted(included - names)}"
    assert {f.stem for f in GENERATED.glob("*.txt")} >= included


def test_readme_outputs_are_the_generated_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = gen_outputs().README_BLOCK.finditer(readme)
    shown = {m.group("name"): m.group(0) for m in blocks}
    assert set(shown) == {"train", "cv", "train-2022"}
    for name, block in shown.items():
        generated = (GENERATED / f"{name}.txt").read_text()
        assert f"```text\n{generated}```\n" in block, f"README.md's {name} output is stale"


def test_the_help_the_docs_show_is_the_cli_help(tmp_path: Path) -> None:
    script = gen_outputs()
    env = script.environment(tmp_path)
    for name in script.COMMANDS:
        code, text = script.run([sys.executable, "-m", "covidreg", name, "--help"], tmp_path, env)
        assert code == 0
        shown = (GENERATED / f"help-{name}.txt").read_text()
        assert shown == f"$ covidreg {name} --help\n{text}\n", (
            f"docs/generated/help-{name}.txt is stale: run `make docs`"
        )


def test_readme_results_are_rows_of_the_results_page() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- results:headline -->", "<!-- /results:headline -->"
    rows = readme.split(start, 1)[1].split(end, 1)[0].strip().splitlines()
    results = (DOCS / "results.md").read_text()
    assert "<!-- results:start -->" in results and "<!-- results:end -->" in results
    table = results.split("<!-- results:start -->", 1)[1].split("<!-- results:end -->", 1)[0]
    assert len(rows) > 3
    for row in rows:
        assert row in table.splitlines(), f"README.md's row is not in docs/results.md: {row}"


def test_readme_is_at_most_200_lines() -> None:
    n_lines = len((ROOT / "README.md").read_text().splitlines())
    assert n_lines <= 200, f"README.md has {n_lines} lines"


# --- the built site ----------------------------------------------------------------------------


def inventory(site: Path) -> set[str]:
    """The object names of the site's objects.inv (Sphinx inventory v2)."""
    data = (site / "objects.inv").read_bytes()
    body = data.split(b"zlib.\n", 1)[1]
    return {line.split()[0] for line in zlib.decompress(body).decode().splitlines() if line}


def test_the_api_reference_holds_every_public_name(site: Path) -> None:
    names = inventory(site)
    public = [name for name in covidreg.__all__ if name != "__version__"]
    missing = [name for name in public if f"covidreg.{name}" not in names]
    assert not missing, f"not in the API reference: {missing}"
    page = (site / "api" / "index.html").read_text()
    for name in public:
        assert f'id="covidreg.{name}"' in page


def test_the_configuration_page_holds_every_key(site: Path) -> None:
    from covidreg.config import FIELDS

    page = (site / "configuration" / "index.html").read_text()
    assert "config-reference" not in page
    for name in FIELDS:
        assert f"<code>{name}</code>" in page, f"config key {name} is not on the page"


def test_the_site_shows_the_plots(site: Path) -> None:
    for name in ("learning_curve", "cv_curves", "compare_curves", "compare_lr", "lr_find"):
        image = site / "images" / f"{name}.png"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name}.png"
