"""The README stays true to the code: its config reference is the generated one."""

from __future__ import annotations

from pathlib import Path

from covidreg.config import config_reference

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- config:start -->", "<!-- config:end -->"


def readme_section(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    assert start in text and end in text, f"README.md lacks the {start} ... {end} markers"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_config_reference_matches_the_config() -> None:
    assert readme_section(START, END) == config_reference().strip(), (
        "README.md's config reference is stale: run `make docs`"
    )


def test_readme_lists_every_command() -> None:
    import typer.main

    from covidreg.cli import app

    text = (ROOT / "README.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"covidreg {name}" in text, f"README.md does not show `covidreg {name}`"
