"""``relground train``: train ReIR from a YAML config (single process, or one per GPU under torchrun).

Examples::
    relground train --config configs/synthetic.yaml --output outputs/synth --set solver.max_iter=200
    relground train --config configs/synthetic.yaml --output outputs/synth --resume     # continue exactly
    torchrun --nproc_per_node 4 -m relground.cli.main train --config configs/flickr30k_reir.yaml

Exit status: 0 when training finished, 128 + signal number when SIGTERM/SIGINT stopped it (a checkpoint
was written; ``--resume`` continues), 1 when a loss became NaN/inf, 2 for a bad config or missing file.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from relground.config import load_config
from relground.engine.defaults import train


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train ReIR from a YAML config", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True,
                   help="YAML config file, or a shipped config name: synthetic.yaml, flickr30k_reir.yaml, "
                        "flickr30k_reir_authors.yaml, flickr30k_reir_paper.yaml, referit_reir.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. solver.max_iter=200, model.top_k=3)")
    p.add_argument("--output", help="run folder (overrides output_dir of the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the run folder; stops when it has none")
    p.add_argument("--fresh-if-no-checkpoint", action="store_true",
                   help="with --resume: start a new run when the run folder does not exist or holds no checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.overrides) + ([f"output_dir={args.output}"] if args.output else [])
    cfg = load_config(args.config, overrides)
    try:
        result = train(cfg, resume=args.resume, fresh_if_no_checkpoint=args.fresh_if_no_checkpoint)
    except FloatingPointError as exc:  # the NaN guard: a clear message, the last good checkpoint is kept
        print(f"relground train: error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # torchrun's rank; the process group is gone by now
        print(json.dumps(result, sort_keys=True))
    if result["status"] == "interrupted":  # every rank: the group agreed on the signal (SIGTERM if none is known)
        return 128 + int(result.get("signal") or signal.SIGTERM)
    return 0
