"""MkDocs hook: the configuration page's key reference, generated from covidreg/config.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# this checkout's covidreg, whatever is installed (as mkdocstrings reads it: paths ["."])
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from covidreg.config import config_reference

    return markdown.replace(MARKER, config_reference())
