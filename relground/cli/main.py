"""``relground`` command: one subcommand per job, each defined in its own module.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). The work itself lives in the package
(``relground.engine``, ``relground.experiments``, ``relground.api``, ...); these modules parse and print.
"""
from __future__ import annotations

import argparse
import sys

from relground import __version__
from relground.cli import ablation, benchmark, config, data, demo, evaluate, ground, info, train
from relground.utils.errors import MissingEntryError, WriteError

SUBCOMMANDS = {"data": data, "train": train, "evaluate": evaluate, "ground": ground, "demo": demo,
               "ablation": ablation, "info": info, "benchmark": benchmark, "config": config}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relground",
        description="Relation-aware Instance Refinement (ReIR) for weakly supervised visual grounding. "
        "`relground COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"relground {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        module.register(subparsers)
    return parser


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` ran (``relground data stats`` -> its own parser)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or getattr(args, actions[0].dest, None) is None:
            return parser
        parser = actions[0].choices[getattr(args, actions[0].dest)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse hands a subcommand's unknown options up to the top-level parser, which would print its own usage;
    # the subcommand's usage says what the mistake was.
    args, unknown = parser.parse_known_args(argv)
    command = chosen_parser(parser, args)
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:  # user errors: one clear line, no traceback
        print(f"{command.prog}: error: {error_message(exc)}", file=sys.stderr)
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
