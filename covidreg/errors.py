"""The project's own error type: the CLI turns it into a one-line message and exit code 1."""


class CovidRegError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), explained in one line.

    The message says what is wrong, where (file, row, column or key) and how to fix it.
    """


class MissingDependency(CovidRegError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""
