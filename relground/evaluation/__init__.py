"""Evaluation: the grounding metrics (Acc at IoU 0.5, PointIt, per-type) and their pictures."""

from relground.evaluation.evaluator import (
    ACCURACY_IOU,
    EvalPhrase,
    evaluate_predictions,
    evaluation_phrases,
    format_metrics,
    grounding_metrics,
    paired_iou,
    phrase_key,
    point_hits,
    proposal_upper_bound,
)
from relground.evaluation.inference import ModelPredictions, evaluate_model, predict
from relground.evaluation.predictions import load_predictions, save_predictions

# visualize (matplotlib) is not imported here: ``from relground.evaluation.visualize import draw_groundings``.
__all__ = [
    "ACCURACY_IOU", "EvalPhrase", "ModelPredictions",
    "evaluate_model", "evaluate_predictions", "evaluation_phrases", "format_metrics", "grounding_metrics",
    "load_predictions", "paired_iou", "phrase_key", "point_hits", "predict", "proposal_upper_bound", "save_predictions",
]
