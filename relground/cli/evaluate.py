"""``relground evaluate``: score a trained model, or a predictions file, with the grounding metrics.

Two modes:

* model: ``relground evaluate --checkpoint K [--config C] [--split test] [--device auto] [--batch-size B] [--json]``
  runs the model over the split in batches (on the GPU when there is one, bf16 autocast there; a progress bar, or
  log lines without a terminal) and reports the fused, stage-1 and stage-2 metrics, the proposal upper bound of
  the top-M it used, and the throughput; the text output names the split, the checkpoint and its iteration;
* file: ``relground evaluate --dataset flickr30k --root DIR --split test --predictions P.json [--json]`` scores a
  list of ``{"image_id", "sentence_index", "first_word_index", "box"}`` (original pixels) against the split.

``--plot PNG`` draws accuracy vs IoU threshold; ``--output FILE`` also writes the metrics JSON there.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from relground.cli.common import HELP_FORMATTER, add_override_argument, command_description
from relground.config.data import DATASETS
from relground.data.proposals import ProposalStore
from relground.data.catalog import load_split
from relground.engine.predictor import TrainedModel
from relground.evaluation.evaluator import evaluate_predictions, format_metrics, load_twins
from relground.evaluation.predictions import load_predictions
from relground.evaluation.visualize import plot_accuracy_vs_iou
from relground.utils.logs import setup_logger


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Acc / PointIt / accuracy vs IoU of a checkpoint or a predictions file",
        description=command_description(__doc__), formatter_class=HELP_FORMATTER,
    )
    model = p.add_argument_group("model mode")
    model.add_argument("--config", help="YAML config the checkpoint was trained with (default: the one stored in it)")
    model.add_argument("--checkpoint", help="checkpoint file (model_final.pth) or a training output folder")
    model.add_argument("--device", default="auto",
                       help="where the model runs: auto (CUDA when available, else cpu), cpu, cuda, cuda:1 ...")
    model.add_argument("--batch-size", type=int, default=None,
                       help="(image, caption) pairs per batch (default: data.batch_size of the config)")
    add_override_argument(model)
    files = p.add_argument_group("file mode")
    files.add_argument("--predictions", help="predictions JSON: list of {image_id, sentence_index, first_word_index, box}")
    files.add_argument("--dataset", choices=DATASETS, help="dataset of the predictions")
    files.add_argument("--root", help="dataset root (Flickr30K Entities layout, or the text_objseg folder)")
    files.add_argument("--proposals", help="proposals HDF5: also report the proposal upper bound")
    files.add_argument("--top-m", type=int, default=None, help="upper bound over the first M proposals only")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    p.add_argument("--output", help="also write the metrics JSON to this file")
    p.add_argument("--plot", help="write accuracy vs IoU threshold (PNG) here")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.predictions is not None and args.checkpoint is not None:
        raise ValueError("give either --checkpoint (model mode) or --predictions (file mode), not both")
    if args.predictions is not None:
        metrics = evaluate_file(args)
    elif args.checkpoint is not None:
        metrics = evaluate_checkpoint(args)
    else:
        raise ValueError("give --checkpoint (model mode) or --predictions with --dataset and --root (file mode)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    if args.plot:
        curves = {"fused": metrics["acc_at_iou"]}
        means = {"fused": metrics["mean_iou"]}
        for stage in ("stage1", "stage2"):
            if stage in metrics:
                curves[stage], means[stage] = metrics[stage]["acc_at_iou"], metrics[stage]["mean_iou"]
        plot_accuracy_vs_iou(curves, args.plot, mean_ious=means)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(_header(metrics) + format_metrics(metrics))
    return 0


def _header(metrics: dict) -> str:
    """What was evaluated, and how fast: the lines above the metrics in the text output."""
    if "checkpoint" not in metrics:
        return f"split {metrics['split']} of {metrics.get('dataset', '?')}\n"
    speed = metrics["throughput"]
    return (
        f"split {metrics['split']}  checkpoint {metrics['checkpoint']}  iteration {metrics['iteration']}\n"
        f"device {metrics['device']}  {speed['pairs']} pairs, {speed['images']} images in {speed['seconds']:.1f} s "
        f"({speed['pairs_per_s']:.1f} pairs/s, {speed['images_per_s']:.1f} images/s)\n"
    )


def evaluate_file(args) -> dict:
    """File mode: score ``--predictions`` against ``--split`` of ``--dataset`` under ``--root``."""
    for flag, value in (("--dataset", args.dataset), ("--root", args.root)):
        if value is None:
            raise ValueError(f"{flag} is required with --predictions")
    if args.top_m is not None and args.top_m <= 0:
        raise ValueError(f"--top-m: must be positive, got {args.top_m}")
    predictions = load_predictions(args.predictions)
    images = load_split(args.dataset, args.root, args.split)
    proposals = None
    if args.proposals:
        store = ProposalStore(args.proposals)
        proposals = {im.image_id: store[im.image_id].boxes for im in images if im.image_id in store}
    metrics = evaluate_predictions(
        images, predictions, proposals=proposals, top_m=args.top_m, twins=load_twins(args.root, images)
    )
    # Entries that match no evaluated phrase (wrong split, not-grounded phrase, typo in a key) are reported too.
    metrics["unused_predictions"] = len(predictions) - metrics["predicted"]
    return {"dataset": args.dataset, "split": args.split, **metrics}


def evaluate_checkpoint(args) -> dict:
    """Model mode: rebuild the model from ``--checkpoint`` (+ ``--config``) and evaluate it on ``--split``."""
    setup_logger()  # progress lines on stderr where no bar shows
    if args.device != "auto" and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here (use --device cpu, or auto)")
    trained = TrainedModel.from_checkpoint(args.checkpoint, config=args.config, overrides=args.overrides,
                                           device=args.device)
    metrics, predictions = trained.evaluate(args.split, return_predictions=True, progress=True,
                                            batch_size=args.batch_size)
    return {"split": args.split, "checkpoint": str(trained.checkpoint), "iteration": trained.iteration,
            "device": str(trained.device), **metrics, "throughput": predictions.throughput()}
