"""``relground data stats``: counts of one split, as text or one JSON object."""
from __future__ import annotations

import json

from relground.structures.records import ImageAnnotation


def split_stats(images: list[ImageAnnotation]) -> dict[str, int]:
    """Counts over loaded images.

    Returns:
        dict[str, int]: ``images``, ``sentences``, ``phrases`` (annotated phrase instances), ``grounded_phrases``
        (phrases whose chain has a box: the evaluated ones), ``boxes`` (distinct boxes over all chains),
        ``chains_with_boxes``.
    """
    sentences = [s for im in images for s in im.sentences]
    phrases = [p for s in sentences for p in s.phrases]
    return {
        "images": len(images),
        "sentences": len(sentences),
        "phrases": len(phrases),
        "grounded_phrases": sum(p.grounded for p in phrases),
        # An object with several <name>s appears under each chain; count each physical box once.
        "boxes": sum(len({b for boxes in im.chain_boxes.values() for b in boxes}) for im in images),
        "chains_with_boxes": sum(len(im.chain_boxes) for im in images),
    }


def load_split(dataset: str, root, split: str) -> list[ImageAnnotation]:
    """Load ``split`` of ``dataset`` (``flickr30k``, ``synthetic``: Flickr layout; ``referit``: text_objseg)."""
    if dataset in ("flickr30k", "synthetic"):
        from relground.data.flickr30k import load_flickr30k

        return load_flickr30k(root, split)
    if dataset == "referit":
        from relground.data.referit import load_referit

        return load_referit(root, split)
    raise ValueError(f"--dataset: unknown dataset {dataset!r} (flickr30k, referit, synthetic)")


def run_stats(args) -> int:
    """Print the counts of ``args.split`` of ``args.dataset`` under ``args.root``; returns the exit code."""
    stats = {"dataset": args.dataset, "split": args.split, **split_stats(load_split(args.dataset, args.root, args.split))}
    if args.dataset == "referit":
        stats["queries"] = stats["sentences"]
        stats["objects"] = stats["chains_with_boxes"]  # one chain per imcrop; some imcrops share a box
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:>18}: {value}")
    return 0
