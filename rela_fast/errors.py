"""The one exception type for bad input: the CLI prints its message as one line and exits with 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a path, an argument, a file): the message names it and says what to do."""
