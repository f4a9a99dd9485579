"""Plain structures every layer shares: annotation records, the model's batch, boxes."""

from relground.structures.batch import GroundingBatch
from relground.structures.boxes import box_area, box_iou, box_iou_single
from relground.structures.records import Box, ImageAnnotation, PhraseAnnotation, RelationAnnotation, SentenceAnnotation

__all__ = [
    "Box", "GroundingBatch", "ImageAnnotation", "PhraseAnnotation", "RelationAnnotation", "SentenceAnnotation",
    "box_area", "box_iou", "box_iou_single",
]
