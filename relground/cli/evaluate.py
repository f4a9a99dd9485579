"""``relground evaluate``: score a trained model, or a predictions file, with the grounding metrics.

Two modes:

* model: ``relground evaluate --config C --checkpoint K [--split test] [--json]`` runs the model over the split
  and reports the fused, stage-1 and stage-2 metrics and the proposal upper bound of the top-M it used;
* file: ``relground evaluate --dataset flickr30k --root DIR --split test --predictions P.json [--json]`` scores a
  list of ``{"image_id", "sentence_index", "first_word_index", "box"}`` (original pixels) against the split.

``--plot PNG`` draws accuracy vs IoU threshold; ``--output FILE`` also writes the metrics JSON there.
"""
from __future__ import annotations

import json
from pathlib import Path

from relground.cli.common import HELP_FORMATTER, add_override_argument, command_description
from relground.config.data import DATASETS
from relground.data.proposals import ProposalStore
from relground.data.catalog import load_split
from relground.engine.predictor import TrainedModel
from relground.evaluation.evaluator import evaluate_predictions, format_metrics, load_twins
from relground.evaluation.predictions import load_predictions
from relground.evaluation.visualize import plot_accuracy_vs_iou


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Acc / PointIt / accuracy vs IoU of a checkpoint or a predictions file",
        description=command_description(__doc__), formatter_class=HELP_FORMATTER,
    )
    model = p.add_argument_group("model mode")
    model.add_argument("--config", help="YAML config the checkpoint was trained with (default: the one stored in it)")
    model.add_argument("--checkpoint", help="checkpoint file (model_final.pth) or a training output folder")
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
        print(format_metrics(metrics))
    return 0


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
    trained = TrainedModel.from_checkpoint(args.checkpoint, config=args.config, overrides=args.overrides)
    return {"split": args.split, **trained.evaluate(args.split)}
