"""Options and helpers shared by the experiment commands (``demo``, ``ablation``)."""
from __future__ import annotations

from relground.experiments.demo import DEFAULT_THREADS
from relground.utils.env import intra_op_threads


def add_experiment_arguments(parser, applies_to: str, json_line: str) -> None:
    """``--config``, ``--method-from``, ``--set``, ``--threads`` and ``--json``: the options every synthetic
    experiment takes."""
    parser.add_argument("--config", default=None,
                        help="base config: a YAML file or a shipped config name (default: synthetic.yaml)")
    parser.add_argument("--method-from", default=None, metavar="CONFIG",
                        help="train the method switches of this config (e.g. flickr30k_reir.yaml) at the base "
                             "config's scale (relground.config.method); all of them, top_k and loss.lambda_reg "
                             "included, as the config sets them")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override for {applies_to}, repeatable")
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
