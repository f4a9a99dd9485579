"""``relground ablation``: the paper's Table 2 (components) and Table 3 (K) on the synthetic benchmark.

Every row is trained with ``--seeds`` seeds on the same benchmark and schedule, evaluated on its test split
(and on the validation split, which is where K is chosen), and reported as mean +- standard deviation (sample
std over seeds) of Acc, PointIt, and Acc on phrases whose object has an identical twin. Each finished run is
stored in ``OUT/runs/<row>-seed<s>/metrics.json``; a rerun with the same ``--out`` reuses them, so an
interrupted ablation continues where it stopped.

The work is :func:`relground.experiments.ablation.run_ablation`; this module parses and prints.
"""
from __future__ import annotations

import json

from relground.cli.common import (
    HELP_FORMATTER, add_experiment_arguments, command_description, progress_printer, run_with_threads,
)
from relground.experiments.ablation import DEFAULT_ITERATIONS, ROWS, run_ablation
from relground.experiments.demo import DEFAULT_IMAGES


def register(subparsers) -> None:
    p = subparsers.add_parser("ablation", help="Tables 2 and 3 on the synthetic benchmark (Markdown)",
                              description=command_description(__doc__), formatter_class=HELP_FORMATTER)
    p.add_argument("--out", default="outputs/ablation", help="output folder (default outputs/ablation)")
    p.add_argument("--seeds", type=int, default=None,
                   help="training seeds per row on one benchmark (default 3; not with --data-seeds)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"synthetic images (default {DEFAULT_IMAGES})")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"training iterations per run (default {DEFAULT_ITERATIONS})")
    benchmark = p.add_mutually_exclusive_group()
    benchmark.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic benchmark (default 0)")
    benchmark.add_argument("--data-seeds", default=None, metavar="D,D,...",
                           help="one run per row and data seed d, on the benchmark of seed d with training seed d "
                                "(data and training both varied; --seeds does not apply), e.g. 0,1,2")
    p.add_argument("--multi-relation", type=float, default=0.0, metavar="P",
                   help="the benchmark's share of multi-relation images, where a phrase relates to two others "
                        "(relground data synth --multi-relation; 1 = a third of the related phrases; default 0)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated rows to run (default all: {','.join(ROWS)})")
    add_experiment_arguments(p, applies_to="every run", json_line="one JSON object with every row")
    p.set_defaults(func=run)


def run(args) -> int:
    return run_with_threads(args, _run)


def _run(args) -> int:
    if args.seeds is not None and args.data_seeds is not None:
        raise ValueError("--seeds: not with --data-seeds (each data seed is also its run's training seed)")
    result = run_ablation(
        args.out, rows=[n.strip() for n in args.rows.split(",") if n.strip()],
        seeds=3 if args.seeds is None else args.seeds, images=args.images,
        iterations=args.iterations, data_seed=args.data_seed, data_seeds=_integers("--data-seeds", args.data_seeds),
        multi_relation=args.multi_relation,
        config=args.config, overrides=args.overrides, method_from=args.method_from,
        log=progress_printer(quiet=args.json),
    )
    table = result.pop("table")
    if args.json:
        print(json.dumps(result))
    else:
        print(table)
    return 0


def _integers(flag: str, text):
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag}: comma-separated integers expected, got {text!r}") from None
