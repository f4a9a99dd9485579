"""Options and helpers shared by the commands: config overrides, help text, the experiment commands' options."""
from __future__ import annotations

import argparse
import re

from relground.experiments.demo import DEFAULT_THREADS
from relground.utils.env import intra_op_threads


def add_override_argument(parser, help_text: str = "config overrides") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable; ``--cfg-options`` is the same option, mmdetection's name):
    every pair lands in ``args.overrides`` in the order given, for :func:`relground.config.load_config`."""
    parser.add_argument(
        "--set", "--cfg-options", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help=f"{help_text}: one or more key=value per --set, --set repeatable, later ones win; keys as in the "
        "YAML (case-insensitive: SOLVER.MAX_ITER=100 works), e.g. --set solver.base_lr=1e-3 model.top_k=5",
    )


def command_description(doc: str) -> str:
    """The whole module docstring of a command as its ``--help`` text (use with ``RawDescriptionHelpFormatter``):
    the reST markup (``x``, :func:`x`) dropped, the developer's note ("The work is ...") left out."""
    paragraphs = [p for p in doc.strip().split("\n\n") if not p.startswith("The work is ")]
    text = "\n\n".join(paragraphs)
    text = re.sub(r":(?:func|class|mod|meth):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return text.replace("Examples::", "Examples:").replace("::\n", ":\n")


HELP_FORMATTER = argparse.RawDescriptionHelpFormatter  # keeps the description's lines and examples as written


def add_experiment_arguments(parser, applies_to: str, json_line: str) -> None:
    """``--config``, ``--method-from``, ``--set``, ``--threads`` and ``--json``: the options every synthetic
    experiment takes."""
    parser.add_argument("--config", default=None,
                        help="base config: a YAML file or a shipped config name (default: synthetic.yaml)")
    parser.add_argument("--method-from", default=None, metavar="CONFIG",
                        help="train the method switches of this config (e.g. flickr30k_reir.yaml) at the base "
                             "config's scale (relground.config.method); all of them, top_k and loss.lambda_reg "
                             "included, as the config sets them")
    add_override_argument(parser, f"config overrides for {applies_to}")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads during the run (default {DEFAULT_THREADS}, restored afterwards)")
    parser.add_argument("--json", action="store_true", help=f"last stdout line: {json_line}")


def run_with_threads(args, body) -> int:
    """Validate ``--threads`` and run ``body(args)`` with that many torch intra-op threads."""
    if args.threads <= 0:
        raise ValueError(f"--threads: must be positive, got {args.threads}")
    with intra_op_threads(args.threads):
        return body(args)


def progress_printer(quiet: bool):
    """Progress lines on stdout, silenced with ``--json`` so that the JSON line is all a script parses."""

    def log(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    return log
