"""``relground`` command: one subcommand per job, each defined in its own module.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). The work itself lives in the package
(``relground.engine``, ``relground.experiments``, ``relground.api``, ...); these modules parse and print.
"""
from __future__ import annotations

import argparse
import sys

from relground.cli import ablation, data, demo, evaluate, ground, info, train

SUBCOMMANDS = {"data": data, "train": train, "evaluate": evaluate, "ground": ground, "demo": demo,
               "ablation": ablation, "info": info}


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
    except (FileNotFoundError, ValueError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"relground {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
