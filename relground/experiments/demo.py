"""The demo: the whole method end to end on the synthetic benchmark, on a CPU, in minutes (``relground demo``).

Generates the benchmark, trains the full ReIR model and the coarse-matching baseline (Table 2's first row)
with the same data, schedule and seed, evaluates both on the synthetic test split, draws example
groundings and the accuracy-vs-IoU plot, and returns a summary (``accuracy``, ``baseline_accuracy``,
``upper_bound``, ``point_it``, ``seconds``, ...)::

    summary = run_demo("outputs/demo", log=print)
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from relground.engine.predictor import TrainedModel
from relground.evaluation.evaluator import phrase_key
from relground.evaluation.visualize import draw_groundings, plot_accuracy_vs_iou
from relground.experiments.synthetic import prepare_synthetic, synthetic_config, train_and_evaluate
from relground.utils.paths import check_can_create_folder

# Sized for < 10 minutes on 2 CPU cores (generation + 2 trainings + 2 evaluations); docs/results.md has the
# measured times. 1000 images: the decoder memorises 160 training images' phrases instead of learning to look.
DEFAULT_IMAGES = 1000
DEFAULT_ITERATIONS = 800
# One intra-op thread: the per-item image transforms and the small matrices of this model gain nothing from a
# second thread, and on a busy machine OpenMP threads spinning against other processes made the data loading
# ~10x slower (measured 1.4-1.9 s vs 0.16 s per 16-32 pairs).
DEFAULT_THREADS = 1
DEFAULT_EXAMPLES = 4
MODELS = (("full", "full"), ("baseline", "baseline"))  # (run name, ModelConfig preset)


def _silent(text: str) -> None:
    pass


def run_demo(
    out: str | Path,
    *,
    images: int = DEFAULT_IMAGES,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    examples: int = DEFAULT_EXAMPLES,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    method_from: Optional[str] = None,
    log: Callable[[str], None] = _silent,
) -> dict[str, Any]:
    """Benchmark -> train the full model and the baseline -> evaluate -> pictures, ``results.{md,json}`` in ``out``.

    Args:
        out: output folder (``data/``, ``full/``, ``baseline/``, ``examples/``, ``accuracy_vs_iou.png``).
        images: synthetic images to generate.
        iterations: training iterations per model.
        seed: seed of the benchmark and of training.
        examples: test images to draw.
        config: base config (YAML file or shipped name), None = ``synthetic.yaml``.
        overrides: ``key=value`` config overrides for both models.
        method_from: a config whose method switches both models take (e.g. ``flickr30k_reir.yaml``: the real-data
            method at the benchmark's scale; ``synthetic_config``'s ``method_from``).
        log: called with each progress line and, at the end, the results table.

    Returns:
        the summary dict (also stored in ``out/results.json`` with both models' full metrics).
    """
    for flag, value in (("--images", images), ("--iterations", iterations)):
        if value <= 0:
            raise ValueError(f"{flag}: must be positive, got {value}")
    start = time.perf_counter()
    out = check_can_create_folder(out, "--out", "choose another folder")  # before the benchmark is generated
    data = out / "data"
    props = prepare_synthetic(data, num_images=images, seed=seed)
    log(f"synthetic benchmark: {images} images in {props['seconds']:.1f} s, relations "
        f"({props['relation_categories']} categories) in {props['relation_seconds']:.1f} s -> {data}")

    results = {}
    for name, preset in MODELS:
        cfg = synthetic_config(config, data, out / name, preset=preset, iterations=iterations,
                               seed=seed, overrides=overrides, method_from=method_from)
        t0 = time.perf_counter()
        results[name] = train_and_evaluate(cfg, split="test")
        log(f"{name}: trained {iterations} iterations and evaluated in {time.perf_counter() - t0:.1f} s, "
            f"Acc {100 * results[name]['metrics']['accuracy']:.2f}%")

    full, baseline = results["full"]["metrics"], results["baseline"]["metrics"]
    plot = plot_accuracy_vs_iou(
        {"ReIR (full)": full["acc_at_iou"], "baseline": baseline["acc_at_iou"]}, out / "accuracy_vs_iou.png",
        mean_ious={"ReIR (full)": full["mean_iou"], "baseline": baseline["mean_iou"]},
        title="Synthetic test split: accuracy vs IoU threshold",
    )
    drawn = draw_examples(results["full"]["trained"], results["full"]["predictions"], out / "examples", examples)
    table = results_table({"baseline": baseline, "ReIR (full)": full})
    (out / "results.md").write_text(table + "\n")
    summary = {
        "accuracy": full["accuracy"],
        "point_it": full["point_it"],
        "mean_iou": full["mean_iou"],
        "baseline_accuracy": baseline["accuracy"],
        "baseline_point_it": baseline["point_it"],
        "upper_bound": full["upper_bound"],
        "twin_accuracy": full.get("twin", {}).get("accuracy"),
        "baseline_twin_accuracy": baseline.get("twin", {}).get("accuracy"),
        "stage1_accuracy": full.get("stage1", {}).get("accuracy"),
        "stage2_accuracy": full.get("stage2", {}).get("accuracy"),
        "test_phrases": full["count"],
        "images": images,
        "iterations": iterations,
        "seed": seed,
        "out": str(out),
        "figures": [str(plot)] + [str(p) for p in drawn],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "results.json").write_text(json.dumps({"summary": summary, "full": full, "baseline": baseline}, indent=2))
    log(table)
    log(f"figures: {plot} and {len(drawn)} examples in {out / 'examples'}")
    return summary


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def results_table(rows: dict[str, dict]) -> str:
    """A Markdown table of Acc, PointIt, mean IoU, accuracy on twin phrases and the per-stage accuracies."""
    lines = [
        "| model | Acc % | PointIt % | mean IoU % | Acc % (twins) | stage-1 Acc % | stage-2 Acc % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {_pct(m['accuracy'])} | {_pct(m['point_it'])} | {_pct(m['mean_iou'])} | "
            f"{_pct(m.get('twin', {}).get('accuracy'))} | {_pct(m.get('stage1', {}).get('accuracy'))} | "
            f"{_pct(m.get('stage2', {}).get('accuracy'))} |"
        )
    any_row = next(iter(rows.values()))
    lines.append(f"\nproposal upper bound (any proposal at IoU >= 0.5): {_pct(any_row.get('upper_bound'))}% "
                 f"of {any_row['count']} test phrases")
    return "\n".join(lines)


def draw_examples(trained: TrainedModel, predictions, folder: Path, count: int) -> list[Path]:
    """Draw the fused predictions (solid) and the ground truth (dashed) for the first ``count`` test captions."""
    written = []
    for image in trained.annotations("test"):
        if len(written) >= count:
            break
        for sentence in image.sentences:
            grounded = [p for p in sentence.phrases if p.grounded]
            keys = [phrase_key(image.image_id, sentence.sentence_index, p.first_word_index) for p in grounded]
            if not grounded or not all(k in predictions for k in keys) or image.image_path is None:
                continue
            written.append(draw_groundings(
                image.image_path, sentence.words,
                [(p.first_word_index, p.first_word_index + p.num_words) for p in grounded],
                [predictions[k] for k in keys], folder / f"{image.image_id}_{sentence.sentence_index}.png",
                dashed_boxes=[p.union_box for p in grounded], title="solid: ReIR prediction, dashed: ground truth",
            ))
            break
    return written
