"""Load-time checks of a split that cut across files: relation categories against the model's, the proposal slots
against what the proposals file holds. Run when the dataset is built (before iteration 0), not when a batch is."""
from __future__ import annotations

import logging
from typing import Optional

from relground.data.flickr30k import SkipReport
from relground.language.relations import attach_relations
from relground.structures.records import ImageAnnotation

logger = logging.getLogger(__name__)

# data.max_proposals above both this many times the largest proposal count of any image and this many slots is
# an error (every image padded to it: a run that seems to hang); above WARN_PADDING times it, a warning (detectors
# give a varying count: the default 50 over files of 22-35 boxes is not worth a word).
ABSURD_PADDING = 10
ABSURD_SLOTS = 1000
WARN_PADDING = 2


def relation_problem(image: ImageAnnotation, num_relation_classes: int, source: Optional[str]) -> Optional[str]:
    """A relation category of ``image`` outside ``[0, num_relation_classes)`` (the model's C_r: this split's
    relations file was built with more categories than the training split's), named; or None."""
    for sentence in image.sentences:
        for relation in sentence.relations:
            outside = [c for c in relation.categories if not 0 <= c < num_relation_classes]
            if outside:
                return (f"{source or 'the relations'}: image {image.image_id!r} sentence {sentence.sentence_index}: "
                        f"relation category {outside[0]} outside the model's {num_relation_classes} relation categories "
                        "(those of the training split's relations file); build this split's file with the training "
                        "split's categories (`relground data relations --categories`)")
    return None


def check_max_proposals(max_proposals: int, most: int, source) -> None:
    """``data.max_proposals`` far above ``most`` (the largest proposal count of any image) pads every image to it:
    a warning above :data:`WARN_PADDING` times; a ``ValueError`` above :data:`ABSURD_PADDING` times and
    :data:`ABSURD_SLOTS`. Both name the key and the value to set."""
    if not most or max_proposals <= WARN_PADDING * most:
        return
    text = (f"data.max_proposals={max_proposals} but no image has more than {most} proposals in {source}: every "
            f"image is padded to {max_proposals} slots")
    if max_proposals > max(ABSURD_PADDING * most, ABSURD_SLOTS):
        raise ValueError(f"{text} ({max_proposals // most}x the work, a run that seems to hang); set "
                         f"data.max_proposals={most}")
    logger.warning("%s; set data.max_proposals=%d to save the padding", text, most)


def attach_checked_relations(images: list[ImageAnnotation], relations_file: str, split: str,
                             skip_invalid: bool) -> list[ImageAnnotation]:
    """:func:`~relground.language.relations.attach_relations`, every image checked now (indices inside the file,
    sentences that exist); with ``skip_invalid`` the images that fail are left out, counted in a warning."""
    report = SkipReport(attach_relations(images, relations_file, skip_invalid=skip_invalid))
    if not len(report):
        return images
    bad = {image_id for image_id, _ in report.skipped}
    images = [image for image in images if image.image_id not in bad]
    logger.warning("%s: %s", relations_file, report.summary())
    if not images:
        raise ValueError(f"{relations_file}: every image of split {split!r} has invalid relations; {report.summary()}")
    return images
