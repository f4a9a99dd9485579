"""``relground benchmark``: time whole training steps of a config (real loader, and a batch already on the device).

Examples::
    relground benchmark --config flickr30k_reir.yaml --synthetic-shapes --steps 20 --json     # the paper's shapes
    relground benchmark --config synthetic.yaml --synthetic-shapes --height 128 --width 192 --proposals 20 \\
        --set model.backbone=resnet10 --set data.captions_per_image=5 --steps 5 --json                 # a CPU

With ``--json`` the last stdout line is one JSON object (``pairs_per_s``, ``step_ms``, ``data_ms``, ...).
"""
from __future__ import annotations

import json
import tempfile

from relground.cli.common import HELP_FORMATTER, add_override_argument, command_description
from relground.config import load_config
from relground.data.synthetic.shapes import SyntheticShapes, write_synthetic_shapes
from relground.engine.benchmark import (
    PAPER_ITERATIONS, PAPER_PAIRS_PER_STEP, PHASES, run_benchmark, synthetic_shapes_config,
)
from relground.engine.loader_benchmark import run_loader_benchmark

_DEFAULTS = SyntheticShapes()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="time training steps (pairs/s, ms per phase, memory)",
        description=command_description(__doc__), formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--config", required=True, help="YAML config file or shipped config name")
    add_override_argument(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each phase (default 2)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the model's training forward and losses through torch.compile(fullgraph=True) "
        "(turns model.static_shapes on)",
    )
    p.add_argument("--no-device-batch", action="store_true", help="skip the phase on a batch already on the device")
    p.add_argument("--per-pair-backbone", action="store_true",
                   help="run the backbone once per pair even when pairs share an image (the behaviour before grouping)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--synthetic-shapes", action="store_true",
                   help="write JPEGs, proposals and captions at the shapes below into a temporary folder and read them")
    p.add_argument("--images", type=int, default=_DEFAULTS.images,
                   help=f"synthetic image ids (default {_DEFAULTS.images}: a batch's images are distinct)")
    p.add_argument("--height", type=int, default=0,
                   help="image height (default 0 with --width 0: Flickr30K's size and orientation mix)")
    p.add_argument("--width", type=int, default=0, help="image width (default 0: Flickr30K's mix)")
    p.add_argument("--proposals", type=int, default=0,
                   help="proposals per image (default 0: 50-100 per image, the config's data.max_proposals kept)")
    p.add_argument("--loader-only", action="store_true",
                   help="no training step: images/s one worker of each loader (pil, torchvision, dali) supplies at "
                        "these shapes, against the 1,800 pairs/s target's demand")
    p.add_argument("--loader-batches", type=int, default=5, help="timed batches per loader with --loader-only")
    p.add_argument("--captions", type=int, default=_DEFAULTS.captions_per_image,
                   help=f"captions per image (default {_DEFAULTS.captions_per_image})")
    p.add_argument("--phrases", type=int, default=_DEFAULTS.phrases,
                   help=f"phrases per caption (default {_DEFAULTS.phrases})")
    p.set_defaults(func=run)


def run(args) -> int:
    for name in ("steps", "images", "captions", "phrases", "loader_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    for name in ("height", "width", "proposals"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}: must be >= 0 (0: Flickr30K's statistics), got {getattr(args, name)}")
    if (args.height == 0) != (args.width == 0):
        raise ValueError("--height and --width: give both (one image size) or neither (Flickr30K's mix)")
    if args.warmup < 0:
        raise ValueError(f"--warmup: must be >= 0, got {args.warmup}")
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="relground-bench-") as folder:
        if args.synthetic_shapes:
            shapes = SyntheticShapes(args.images, args.captions, args.height, args.width, args.proposals, args.phrases)
            write_synthetic_shapes(folder, shapes, seed=cfg.seed)
            cfg = synthetic_shapes_config(cfg, folder, shapes)
        if args.loader_only:
            result = run_loader_benchmark(cfg, batches=args.loader_batches)
            print(format_loader_report(result))
            if args.json:
                print(json.dumps(result, sort_keys=True))
            return 0
        result = run_benchmark(
            cfg, steps=args.steps, warmup=args.warmup, compile=args.compile, device_batch=not args.no_device_batch,
            share_maps=not args.per_pair_backbone,
        )
    print(format_report(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def format_loader_report(result: dict) -> str:
    """One row per loader: one worker's supply against the demand at the target rate."""
    lines = [f"relground benchmark --loader-only: {result['device']}; demand at {result['target_pairs_per_s']:,} "
             f"pairs/s: {result['demand_images_per_s']:.0f} images/s ({result['distinct_images_per_pair']:.2f} "
             "distinct images per pair)",
             f"{'loader':<13}{'img/s/worker':>14}{'ms/img':>9}{'CPU ms/img':>12}{'workers needed':>16}"
             f"{'(idle cores)':>14}  pipeline"]
    for name, row in result["loaders"].items():
        lines.append(f"{name:<13}{row['images_per_s_per_worker']:14.1f}{row['ms_per_image']:9.1f}"
                     f"{row['cpu_ms_per_image']:12.1f}{row['workers_needed']:16.1f}"
                     f"{row['workers_needed_idle_cores']:14.1f}  {row['pipeline']}")
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:8.1f}"


def format_report(result: dict) -> str:
    """A small table: one row per phase (loader, device batch), ms per step split by phase."""
    header = f"{'phase':<13}{'pairs/s':>9}{'step':>9}" + "".join(
        f"{n:>10}" for n in ("data", "backbone", "heads", "losses", "backward", "optim")
    ) + f"{'bb img':>8}"
    lines = [
        f"relground benchmark: {result['device']}, amp {result['amp']}, head {result['head']} ({result['backbone']}), "
        f"{result['pairs_per_step']:.0f} pairs/step, captions_per_image {result['captions_per_image']}, "
        f"compiled {result['compiled']}" + (", CUDA graphs" if result.get("cuda_graph") else ""),
        header,
    ]
    rows = [("loader", result)] + ([("device batch", result["device_batch"])] if result.get("device_batch") else [])
    for name, row in rows:
        images = row.get("backbone_images_per_step")
        lines.append(
            f"{name:<13}{row['pairs_per_s']:9.1f}{row['step_ms']:9.1f}"
            + "".join(f"{_ms(row.get(f'{n}_ms')):>10}" for n in PHASES)
            + f"{'-' if images is None else f'{images:.1f}':>8}"
        )
    for name, row in result.get("schedule_phases", {}).items():
        lines.append(f"  {name} (from iteration {row['first_iteration']:,}, {row['iterations']:,} iterations): "
                     f"{row['pairs_per_s']:.1f} pairs/s, {row['step_ms']:.1f} ms/step, "
                     f"{row['distinct_images_per_batch']:.1f} distinct images/batch")
    lines.append(f"loader {result.get('loader')}: {result.get('pipeline')}; this config's schedule "
                 f"({result.get('max_iter'):,} steps): {result.get('schedule_hours', 0):.1f} h")
    lines.append(
        f"peak memory {result['peak_memory_mb']:.0f} MB; the paper's schedule ({PAPER_ITERATIONS:,} x "
        f"{PAPER_PAIRS_PER_STEP} pairs) at the loader phase's rate: {result['paper_schedule_hours']:.1f} h"
    )
    return "\n".join(lines)
