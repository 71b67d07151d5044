"""The project's own error type: the CLI turns it into a one-line message and exit code 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CovidRegError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), explained in one line.

    The message says what is wrong, where (file, row, column or key) and how to fix it.
    """


class MissingDependency(CovidRegError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to go on."""


def did_you_mean(name: str, known: Iterable[str], limit: int = 3) -> str:
    """``did you mean X?`` (``X or Y``, the closest first) naming what in ``known`` a mistyped
    ``name`` is a letter or two from, else ``''``: a far-fetched guess would only mislead."""
    close = difflib.get_close_matches(name, list(known), n=limit, cutoff=0.8)
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"did you mean {listed}?"
