"""``relground train``: train ReIR from a YAML config (single process, or one per GPU under torchrun).

Examples::
    relground train --config configs/synthetic.yaml --output outputs/synth --set solver.max_iter=200
    relground train --config configs/synthetic.yaml --output outputs/synth --resume     # continue exactly
    relground train --config configs/flickr30k_reir.yaml --num-gpus 4 --set model.backbone_weights=R-101.pkl
    torchrun --nproc_per_node 4 -m relground.cli.main train --config configs/flickr30k_reir.yaml   # the same

``--num-gpus N`` starts N processes on this machine through torchrun's own launcher
(``torch.distributed.launcher.elastic_launch``, what ``torchrun --standalone --nproc_per_node N`` runs); without a
GPU they are N CPU processes over Gloo (for tests). Several nodes: torchrun on each node, or SLURM (docs/distributed.md).

Exit status: 0 when training finished, 128 + signal number when SIGTERM/SIGINT stopped it (a checkpoint
was written; ``--resume`` continues), 1 when a loss became NaN/inf, 2 for a bad config or missing file.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from relground.cli.common import HELP_FORMATTER, add_override_argument, command_description
from relground.config import load_config
from relground.engine.defaults import train
from relground.engine.weights import check_backbone_weights


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train ReIR from a YAML config", description=command_description(__doc__),
                              formatter_class=HELP_FORMATTER)
    p.add_argument("--config", required=True,
                   help="YAML config file, or a shipped config name: synthetic.yaml, flickr30k_reir.yaml, "
                        "flickr30k_reir_authors.yaml, flickr30k_reir_paper.yaml, referit_reir.yaml")
    add_override_argument(p)
    p.add_argument("--output", help="run folder (overrides output_dir of the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the run folder; stops when it has none")
    p.add_argument("--fresh-if-no-checkpoint", action="store_true",
                   help="with --resume: start a new run when the run folder does not exist or holds no checkpoint")
    p.add_argument("--num-gpus", type=int, default=1, metavar="N",
                   help="processes on this machine, one per GPU (default 1; without a GPU: N CPU processes, Gloo)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.num_gpus != 1:
        # a bad config or weight file is said once, here, not by every process
        cfg = load_config(args.config, list(args.overrides) + ([f"output_dir={args.output}"] if args.output else []))
        if not args.resume:
            check_backbone_weights(cfg)
        return launch(args.num_gpus, _train_argv(args))
    return train_here(args)


def launch(num_processes: int, argv: list[str]) -> int:
    """Run ``relground <argv>`` (without ``--num-gpus``) in ``num_processes`` local processes, as
    ``torchrun --standalone --nproc_per_node num_processes`` would. Returns rank 0's exit status.

    Raises:
        ValueError: a bad ``--num-gpus`` (named), or already inside a launched group.
    """
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if num_processes < 1:
        raise ValueError(f"--num-gpus: must be >= 1, got {num_processes}")
    if "LOCAL_RANK" in os.environ:
        raise ValueError("--num-gpus: already running under torchrun (LOCAL_RANK is set); drop --num-gpus")
    gpus = torch.cuda.device_count()
    if gpus and num_processes > gpus:
        raise ValueError(f"--num-gpus: {num_processes} processes but this machine has {gpus} GPU(s)")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=f"relground-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
    )
    try:
        results = elastic_launch(config, worker)(argv)
    except SignalException as exc:  # SIGTERM/SIGINT reached the launcher: the workers got it too and checkpointed
        print(f"relground train: stopped by {exc.sigval.name}; --resume continues", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank}: exit {f.exitcode}" for rank, f in sorted(exc.failures.items()))
        print(f"relground train: error: a process failed ({failures}); its message is above", file=sys.stderr)
        first = min(exc.failures.items())[1].exitcode
        return first if first and first > 0 else 1
    return int(results.get(0, 0) or 0)


def worker(argv: list[str]) -> int:
    """One process of :func:`launch` (module level: the launcher pickles it into each spawned process)."""
    parser = argparse.ArgumentParser(prog="relground")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        code = train_here(args)
    except (ValueError, OSError) as exc:  # as relground.cli.main: one line, no traceback
        print(f"relground train: error (rank {os.environ.get('RANK', '0')}): {exc}", file=sys.stderr)
        code = 2
    if code:  # a failed rank must fail the launch (elastic_launch reads a return value as success)
        sys.exit(code)
    return code


def _train_argv(args) -> list[str]:
    """The ``relground train`` command line of ``args`` for one process (no ``--num-gpus``)."""
    argv = ["train", "--config", args.config]
    for override in args.overrides:
        argv += ["--set", override]
    if args.output:
        argv += ["--output", args.output]
    return argv + (["--resume"] if args.resume else []) + (["--fresh-if-no-checkpoint"] if args.fresh_if_no_checkpoint else [])


def train_here(args) -> int:
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
