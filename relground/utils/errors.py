"""Errors that mean bad input, not a bug: the command line prints them as one line, without a traceback."""
from __future__ import annotations


class MissingEntryError(KeyError):
    """A file or mapping lacks an entry the input names (an image id without proposals, ...).

    A ``KeyError`` (so ``mapping[key]`` semantics hold) whose message names the file and the missing entry;
    ``str()`` gives the message unquoted.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing entry"


class WriteError(OSError):
    """A file could not be written for lack of room (disk full, quota, ``ulimit -f``); the message names the file and
    says what was kept. Printed in one line by the command line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "write refused"
