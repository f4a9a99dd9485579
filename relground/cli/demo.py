"""``relground demo``: the whole method end to end on the synthetic benchmark, on a CPU, in minutes.

Generates the benchmark, trains the full ReIR model and the coarse-matching baseline (Table 2's first row)
with the same data, schedule and seed, evaluates both on the synthetic test split, draws example
groundings and the accuracy-vs-IoU plot, and prints a results table. ``--json``: the last stdout line is
one JSON object (``accuracy``, ``baseline_accuracy``, ``upper_bound``, ``point_it``, ``seconds``, ...).

The work is :func:`relground.experiments.demo.run_demo`; this module parses and prints.
"""
from __future__ import annotations

import json

from relground.experiments.demo import DEFAULT_EXAMPLES, DEFAULT_IMAGES, DEFAULT_ITERATIONS, DEFAULT_THREADS, run_demo
from relground.utils.env import intra_op_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="synthetic benchmark: train ReIR and the baseline, evaluate, draw",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"synthetic images (default {DEFAULT_IMAGES})")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"training iterations per model (default {DEFAULT_ITERATIONS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark and of training (default 0)")
    p.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="test images to draw (default 4)")
    p.add_argument("--config", default=None, help="base config: a YAML file or a shipped config name (default: synthetic.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both models, repeatable")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.set_defaults(func=run)


def add_threads_argument(parser) -> None:
    """``--threads`` (shared with ``relground ablation``)."""
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads during the run (default {DEFAULT_THREADS}, restored afterwards)")


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


def run(args) -> int:
    return run_with_threads(args, _run)


def _run(args) -> int:
    summary = run_demo(
        args.out, images=args.images, iterations=args.iterations, seed=args.seed, examples=args.examples,
        config=args.config, overrides=args.overrides, log=progress_printer(quiet=args.json),
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"done in {summary['seconds']:.0f} s")
    return 0
