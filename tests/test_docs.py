"""The documentation stays true to the code: the commands it shows parse and, for each edition,
take its files to a submission; the API reference holds every public name; the outputs are the
generated ones; the front pages claim what the Results tables show; the built pages hold no
unreplaced snippet, empty code block or missing image, and link files, so they work from disk."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer.main

import covidreg
from covidreg.cli import app
from covidreg.datadir import FILE_NAMES
from covidreg.layout import EDITIONS

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
    page = (site / "api.html").read_text()
    for name in public:
        assert f'id="covidreg.{name}"' in page


def test_the_configuration_page_holds_every_key(site: Path) -> None:
    from covidreg.config import FIELDS

    page = (site / "configuration.html").read_text()
    assert "config-reference" not in page
    for name in FIELDS:
        assert f"<code>{name}</code>" in page, f"config key {name} is not on the page"


def test_the_site_shows_the_plots(site: Path) -> None:
    for name in ("learning_curve", "cv_curves", "compare_curves", "compare_lr", "lr_find"):
        image = site / "images" / f"{name}.png"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name}.png"


# --- the built pages: snippets replaced, code shown, images present, links to files -----------

# a snippet marker as a page shows it when it was not replaced: `--8<--` in any spacing, where
# the snippets extension reads one, at the start of a line (prose may name it mid-line)
SNIPPET_MARKER = re.compile(r"^\s*-\s*-\s*8\s*<\s*-\s*-")
PRE = re.compile(r"<pre\b[^>]*>(.*?)</pre>", re.S)
TAG_ATTRIBUTE = re.compile(r"<(img|a)\b[^>]*?\s(src|href)=\"([^\"]*)\"", re.S)


def text_of(fragment: str) -> str:
    """What a browser shows of an HTML fragment: the text, tags dropped, entities read."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def local_target(page: Path, url: str) -> Path | None:
    """The file a relative link or image of ``page`` names, None for another site's."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme or parsed.netloc or not parsed.path:
        return None
    return (page.parent / urllib.parse.unquote(parsed.path)).resolve()


def built_page_problems(site: Path) -> list[str]:
    """What no page of a built site may hold: a snippet marker left unreplaced, an empty code
    block, an image whose file is missing, a link to a folder or to no file (opened from disk,
    a folder is a directory listing)."""
    problems, site = [], site.resolve()
    # 404.html is served by a web server for any missing path, so it links from the site's root
    for page in sorted(set(site.rglob("*.html")) - {site / "404.html"}):
        name = page.relative_to(site).as_posix()
        source = page.read_text()
        for line in text_of(source).splitlines():
            if SNIPPET_MARKER.search(line):
                problems.append(f"{name}: a snippet marker was not replaced: {line.strip()!r}")
        for block in PRE.findall(source):
            if not text_of(block).strip():
                problems.append(f"{name}: an empty code block")
        for tag, _, url in TAG_ATTRIBUTE.findall(source):
            target = local_target(page, url)
            if target is None:
                continue
            if tag == "img" and not target.is_file():
                problems.append(f"{name}: image {url} is not in the site")
            elif tag == "a" and not (target.is_file() and site in target.parents):
                problems.append(f"{name}: link {url} names no file of the site")
    return problems


def test_no_built_page_shows_a_marker_an_empty_block_a_missing_image_or_a_folder_link(
    site: Path,
) -> None:
    assert built_page_problems(site) == []


# the From Python page as it was built from a spaced-out marker, with the other faults beside
BROKEN_PAGE = """<article><h1>From Python</h1>
<div class="highlight"><pre><span></span><code><span class="o">--</span><span class="mi">8</span> \
<span class="o">&lt;</span> <span class="o">--</span><span class="s2">&quot;\
docs/examples/python_api.py&quot;</span>
</code></pre></div>
<div class="highlight"><pre><span></span><code>
</code></pre></div>
<p><img alt="a plot" src="images/gone.png"><img alt="a plot" src="images/plot.png"></p>
<p><a href="getting-started/">Getting started</a> <a href="python.html#top">here</a>
<a href="https://example.org/">away</a></p></article>"""


def test_the_page_checks_find_each_fault(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "getting-started").mkdir()
    (tmp_path / "python.html").write_text(BROKEN_PAGE)
    assert built_page_problems(tmp_path) == [
        "python.html: a snippet marker was not replaced: "
        """'--8 < --"docs/examples/python_api.py"'""",
        "python.html: an empty code block",
        "python.html: image images/gone.png is not in the site",
        "python.html: link getting-started/ names no file of the site",
    ]
    for spelling in ("--8&lt;--", "-- 8 &lt;--", "  - - 8 &lt; - -", "--8&#60;--"):
        (tmp_path / "python.html").write_text(f'<pre><code>{spelling} "x.py"</code></pre>')
        assert len(built_page_problems(tmp_path)) == 1, spelling


def test_the_python_page_shows_its_examples(site: Path) -> None:
    page = (site / "python.html").read_text()
    shown = [text_of(block) for block in PRE.findall(page)]
    for name in gen_outputs().EXAMPLES:
        source = (DOCS / "examples" / name).read_text()
        block = next((b for b in shown if b.strip() == source.strip()), None)
        assert block is not None, f"python.html does not show docs/examples/{name} whole"


def test_the_site_links_html_files(site: Path) -> None:
    # use_directory_urls = false: page links name .html files, which work from disk
    page = (site / "index.html").read_text()
    links = [url for tag, _, url in TAG_ATTRIBUTE.findall(page) if tag == "a"]
    assert "getting-started.html" in links and "commands/train.html" in links
    assert not (site / "getting-started").exists()


# --- every edition, from its files to a submission ---------------------------------------------

SUBMISSION = "## From the files to a submission"


def submission_lines(edition: str) -> list[str]:
    """The command lines of Getting started's tab for ``edition`` in its submission section."""
    text = (DOCS / "getting-started.md").read_text()
    section = text.split(SUBMISSION, 1)[1].split("\n## ", 1)[0]
    assert f'=== "{edition}"' in section, f"Getting started has no {edition} tab"
    tab = section.split(f'=== "{edition}"', 1)[1].split('\n=== "', 1)[0]
    (block,) = code_blocks(tab)
    return [line for line in block if line]


@pytest.mark.parametrize("edition", list(EDITIONS))
def test_getting_started_gives_each_edition_its_commands(edition: str) -> None:
    fetch, train, cv, predict, submit = submission_lines(edition)
    assert fetch.startswith(f"covidreg fetch --edition {edition} --from ")
    assert (train, cv) == ("covidreg train", "covidreg cv --folds 5")
    assert predict.startswith("covidreg predict --model runs/<run> ")
    out = shlex.split(predict)[shlex.split(predict).index("--out") + 1]
    assert shlex.split(submit)[:7] == [
        *("kaggle", "competitions", "submit", "-c", f"ml{edition}spring-hw1"),
        *("-f", out),
    ]


def run_covidreg(line: str, cwd: Path, env: dict[str, str]) -> str:
    """A ``covidreg ...`` line as a shell runs it in ``cwd`` (``~`` is ``$HOME``); its output."""
    words = [re.sub(r"^~/", env["HOME"] + "/", w) for w in shlex.split(line, comments=True)]
    code, text = gen_outputs().run([sys.executable, "-m", "covidreg", *words[1:]], cwd, env)
    assert code == 0, f"`{line}` exited with {code}:\n{text}"
    return text


@pytest.mark.slow
@pytest.mark.parametrize("edition", list(EDITIONS))
def test_getting_started_takes_a_years_files_to_a_submission(edition: str, tmp_path: Path) -> None:
    """A student with only that year's two files, in the folder the page names, follows its
    lines literally (``runs/<run>`` being the run directory train printed) to pred.csv."""
    script = gen_outputs()
    env = script.environment(tmp_path)  # HOME is tmp_path/home
    fetch, train, cv, predict, submit = submission_lines(edition)
    folder = Path(shlex.split(fetch, comments=True)[-1].replace("~", env["HOME"], 1))
    script.write_synthetic(folder, edition, windows=24, seed=int(edition))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    # the synthetic files are not the published ones, so the sha256 check would refuse them
    run_covidreg(f"{fetch.split('#')[0]} --no-verify", checkout, env)
    assert sorted(p.name for p in (checkout / "data").iterdir()) == sorted(FILE_NAMES[edition])
    trained = run_covidreg(train, checkout, env)
    assert f"{edition} layout" in trained
    run_dir = re.search(r"run_dir=(\S+)", trained).group(1)
    assert "cv_rmse=" in run_covidreg(cv, checkout, env)
    run_covidreg(predict.replace("runs/<run>", run_dir), checkout, env)
    pred = pd.read_csv(checkout / shlex.split(submit)[6])
    test = pd.read_csv(folder / FILE_NAMES[edition][1])
    assert list(pred.columns) == ["id", "tested_positive"]
    assert pred["id"].tolist() == test["id"].tolist()
    assert np.isfinite(pred["tested_positive"]).all()


def test_the_home_pages_give_each_editions_days() -> None:
    days = ", ".join(f"{year}: {layout.n_days}" for year, layout in EDITIONS.items())
    for page in (ROOT / "README.md", DOCS / "index.md"):
        text = " ".join(page.read_text().split())
        assert f"days per window ({days})" in text, page.name


def test_the_synthetic_outputs_are_said_to_be_synthetic() -> None:
    script = gen_outputs()
    synthetic = {shown.name for shown in script.SHOWN if shown.synthetic}
    assert synthetic >= {f"{c}-{script.SYNTHETIC}" for c in ("features", "train", "cv", "predict")}
    shown_on = set()
    for path in DOCS.rglob("*.md"):
        text = path.read_text()
        for name in synthetic:
            if f'"generated/{name}.txt"' in text:
                shown_on.add(name)
                before = text.split(f'"generated/{name}.txt"', 1)[0][-400:]
                assert "synthetic files of the 2023 header" in " ".join(before.split()), (
                    f"{path.name} shows {name} without saying its files are synthetic"
                )
    assert shown_on == synthetic
    for name in ("features", "train", "cv"):
        text = (GENERATED / f"{name}-{script.SYNTHETIC}.txt").read_text()
        assert f"{script.SYNTHETIC} layout (34 states, 3 days x 18)" in text, name


def test_the_synthetic_files_are_of_the_editions_header_and_the_same_each_time(
    tmp_path: Path,
) -> None:
    script = gen_outputs()
    for folder in ("a", "b"):
        script.write_synthetic(tmp_path / folder, "2023")
    train_name, test_name = FILE_NAMES["2023"]
    for name in (train_name, test_name):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = covidreg.read_hw01(tmp_path / "a" / train_name)
    test = covidreg.read_hw01(tmp_path / "a" / test_name)
    assert covidreg.layout_of(train) == covidreg.layout_of(test) == EDITIONS["2023"]
    assert (len(train), len(test)) == (34 * 89, 34 * 29)


def test_no_output_of_a_command_that_succeeds_shows_an_error() -> None:
    for shown in gen_outputs().SHOWN:
        if shown.returncode == 0:
            text = (GENERATED / f"{shown.name}.txt").read_text()
            errors = [line for line in text.splitlines() if line.startswith("error: ")]
            assert not errors, f"docs/generated/{shown.name}.txt is stale: run `make docs`"


# --- what the front pages claim against the Results ----------------------------------------------

#: What README.md and the home page say of the default against the best peer of each row of the
#: Results summary: "leads" (lower RMSE; on a hold-out beyond the seed spread), "trails", or
#: "level" (ahead within the seed spread).
CLAIMS = {
    ("2021", "blocked 5-fold cv"): "leads",
    ("2021", "future hold-out"): "trails",
    ("2021", "past hold-out"): "trails",
    ("2022", "blocked 5-fold cv"): "leads",
    ("2022", "future hold-out"): "level",
    ("2022", "past hold-out"): "trails",
}
FIGURE = re.compile(r"(?<![\d.])\d+\.\d{4}(?!\d)")


def results_tables() -> str:
    results = (DOCS / "results.md").read_text()
    return results.split("<!-- results:start -->", 1)[1].split("<!-- results:end -->", 1)[0]


def summary_rows() -> list[list[str]]:
    """The cells of the Results summary: edition, protocol, the default's RMSE ± seeds, the
    best peer, its RMSE ± seeds, the default's record."""
    rows = []
    for line in results_tables().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in EDITIONS:
            rows.append(cells)
    return rows


def summary_verdicts() -> dict[tuple[str, str], str]:
    verdicts = {}
    for cells in summary_rows():
        default, peer = (float(c.split("±")[0]) for c in (cells[2], cells[4]))
        within = "within seeds" in cells[5]
        verdicts[(cells[0], cells[1])] = (
            "trails" if default > peer else "level" if within else "leads"
        )
    return verdicts


def prose(path: Path) -> str:
    """A page's text outside its code blocks and the headline table (tested against the
    Results rows on its own)."""
    text = path.read_text()
    text = re.sub(r"<!-- results:headline -->.*?<!-- /results:headline -->", "", text, flags=re.S)
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_the_front_pages_claim_what_the_results_show() -> None:
    assert summary_verdicts() == CLAIMS, "the Results changed: reword README.md and index.md"
    # the RMSEs of the summary, the default's and the best peers' (not their seed spreads)
    figures = {c.split("±")[0].strip() for row in summary_rows() for c in (row[2], row[4])}
    for path in (ROOT / "README.md", DOCS / "index.md"):
        text = prose(path)
        assert "beats ridge" not in text
        quoted = set(FIGURE.findall(text))
        assert quoted, f"{path.name} quotes no figure of the Results"
        assert quoted <= figures, f"{path.name} quotes {sorted(quoted - figures)}: no RMSE there"


# --- the examples --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["python_api.py", "sklearn_blocked.py"])
def test_the_examples_read_the_data_directory_of_any_edition(name: str, tmp_path: Path) -> None:
    script = gen_outputs()
    assert name in script.EXAMPLES
    data = tmp_path / "hw1-2023"
    script.write_synthetic(data, "2023", windows=24, seed=7)
    env = {**script.environment(tmp_path), "COVIDREG_DATA_DIR": str(data)}
    cwd = tmp_path / "elsewhere"  # no data/ here: only $COVIDREG_DATA_DIR names the files
    cwd.mkdir()
    code, text = script.run([sys.executable, str(DOCS / "examples" / name)], cwd, env)
    assert code == 0, text
    if name == "python_api.py":
        assert "2023 layout (34 states, 3 days x 18)" in text
        pred = pd.read_csv(cwd / "pred.csv")
        assert pred["id"].tolist() == pd.read_csv(data / FILE_NAMES["2023"][1])["id"].tolist()
    else:
        assert re.search(r"^CovidRegressor: \d\.\d{5} ± ", text, re.M), text
