"""Counts of one loaded split (``relground data stats``; dataset-specific extras in ``relground.data.catalog``)."""
from __future__ import annotations

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
