"""``relground demo``: the whole method end to end on the synthetic benchmark, on a CPU, in minutes.

Generates the benchmark, trains the full ReIR model and the coarse-matching baseline (Table 2's first row)
with the same data, schedule and seed, evaluates both on the synthetic test split, draws example
groundings and the accuracy-vs-IoU plot, and prints a results table. ``--json``: the last stdout line is
one JSON object (``accuracy``, ``baseline_accuracy``, ``upper_bound``, ``point_it``, ``seconds``, ...).

The work is :func:`relground.experiments.demo.run_demo`; this module parses and prints.
"""
from __future__ import annotations

import json

from relground.cli.common import (
    HELP_FORMATTER, add_experiment_arguments, command_description, progress_printer, run_with_threads,
)
from relground.experiments.demo import DEFAULT_EXAMPLES, DEFAULT_IMAGES, DEFAULT_ITERATIONS, run_demo


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="synthetic benchmark: train ReIR and the baseline, evaluate, draw",
                              description=command_description(__doc__), formatter_class=HELP_FORMATTER)
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"synthetic images (default {DEFAULT_IMAGES})")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"training iterations per model (default {DEFAULT_ITERATIONS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark and of training (default 0)")
    p.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="test images to draw (default 4)")
    add_experiment_arguments(p, applies_to="both models", json_line="one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    return run_with_threads(args, _run)


def _run(args) -> int:
    summary = run_demo(
        args.out, images=args.images, iterations=args.iterations, seed=args.seed, examples=args.examples,
        config=args.config, overrides=args.overrides, method_from=args.method_from, log=progress_printer(quiet=args.json),
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"done in {summary['seconds']:.0f} s")
    return 0
