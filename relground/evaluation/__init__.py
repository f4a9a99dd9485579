"""Evaluation: the grounding metrics (Acc at IoU 0.5, PointIt, per-type) and their pictures."""
