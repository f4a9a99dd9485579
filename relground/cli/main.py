"""``relground`` command: one subcommand per job, each defined in its own module.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). The work itself lives in the package
(``relground.engine``, ``relground.experiments``, ``relground.api``, ...); these modules parse and print.
"""
from __future__ import annotations

import argparse
import sys

from relground.cli import ablation, benchmark, data, demo, evaluate, ground, info, train
from relground.utils.errors import MissingEntryError, WriteError

SUBCOMMANDS = {"data": data, "train": train, "evaluate": evaluate, "ground": ground, "demo": demo,
               "ablation": ablation, "info": info, "benchmark": benchmark}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relground",
        description="Relation-aware Instance Refinement (ReIR) for weakly supervised visual grounding.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:  # user errors: one clear line, no traceback
        print(f"relground {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return 2


# Bad input (a file, a config value, a checkpoint): the readers and loaders raise these with a message naming the
# file and what was expected (ValueError covers CheckpointError, UnicodeDecodeError and json's errors; the OSErrors
# a path that cannot be opened). Anything else, a bare KeyError included, is a bug or an environment
# problem and keeps its traceback; a full disk during an atomic write (WriteError) is named in one line.
USER_ERRORS = (ValueError, MissingEntryError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               WriteError)


def error_message(exc: BaseException) -> str:
    """The one-line message of a user error."""
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
