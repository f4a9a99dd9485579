"""Simulated detector proposals of one synthetic image: clusters around objects, background and group boxes.

See the package docstring (localisation noise, noisy labels) for what these boxes exercise.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from relground.data.proposals import ProposalSet
from relground.data.synthetic.scene import SceneObject
from relground.data.synthetic.vocabulary import LABEL_NOISE, SHAPES
from relground.structures.boxes import box_iou, box_iou_single


def iou_matrix(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU on numpy xyxy boxes: ``np[N, 4] x np[M, 4] -> np[N, M]`` float64 (``relground.structures.boxes``)."""
    as_tensor = lambda b: torch.from_numpy(np.asarray(b, dtype=np.float64).reshape(-1, 4))  # noqa: E731
    return box_iou(as_tensor(boxes1), as_tensor(boxes2)).numpy()


def _clip(box: np.ndarray, size: int) -> np.ndarray:
    return np.clip(box, 0.0, float(size))


def _jitter(rng: np.random.Generator, box: np.ndarray, shift: float, scale: tuple[float, float],
            size: int) -> np.ndarray:
    """Move the centre by up to ``shift`` x side and rescale each side by a factor in ``scale``."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2 + rng.uniform(-shift, shift) * w
    cy = (box[1] + box[3]) / 2 + rng.uniform(-shift, shift) * h
    w, h = w * rng.uniform(*scale), h * rng.uniform(*scale)
    return _clip(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), size)


def _sample(rng, make, accept, tries: int = 200) -> Optional[np.ndarray]:
    for _ in range(tries):
        box = make()
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 and accept(box):
            return box
    return None



def _hard_core(rng: np.random.Generator, gt: np.ndarray, size: int) -> np.ndarray:
    """A shifted, partial or oversized box with IoU in [0.32, 0.48] to ``gt``: the detector's best guess."""
    w, h = gt[2] - gt[0], gt[3] - gt[1]

    def make():
        mode = rng.integers(3)
        if mode == 0:  # shifted: the object sits off-centre in the box
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.45)
            box = gt + np.array([np.cos(angle) * w, np.sin(angle) * h] * 2) * dist
            return _clip(box, size)
        if mode == 1:  # partial: covers a corner region of the object
            fw, fh = rng.uniform(0.5, 0.8, size=2)
            x1 = gt[0] + rng.uniform(0, 1 - fw) * w
            y1 = gt[1] + rng.uniform(0, 1 - fh) * h
            return np.array([x1, y1, x1 + fw * w, y1 + fh * h])
        bw, bh = np.array([w, h]) * rng.uniform(1.35, 1.8, size=2)  # oversized: the object is small in a loose box
        x1 = gt[0] - rng.uniform(0, bw - w)
        y1 = gt[1] - rng.uniform(0, bh - h)
        return _clip(np.array([x1, y1, x1 + bw, y1 + bh]), size)

    box = _sample(rng, make, lambda b: 0.32 <= box_iou_single(b, gt) <= 0.48, tries=1000)
    assert box is not None, "hard core box sampling failed"  # IoU window is wide: never happens in practice
    return box


def _object_proposals(rng: np.random.Generator, gt: np.ndarray, hard: bool, size: int) -> tuple[list, list]:
    """A cluster of boxes around one object and their scores (see the module docstring)."""
    gt = gt.astype(np.float64)
    if hard:
        core = _hard_core(rng, gt, size)
        core_score = rng.uniform(0.6, 0.95)
        ok_gt = lambda b: box_iou_single(b, gt) < 0.5  # noqa: E731 - nothing may reach the 0.5 threshold
    else:
        core = _sample(rng, lambda: _jitter(rng, gt, 0.06, (0.92, 1.08), size), lambda b: box_iou_single(b, gt) >= 0.75)
        core = gt.copy() if core is None else core
        core_score = rng.uniform(0.75, 0.98)
        ok_gt = lambda b: True  # noqa: E731
    boxes, scores = [core], [core_score]
    for _ in range(int(rng.integers(2, 5))):  # neighbours: what self-taught regression pulls to the anchor
        box = _sample(
            rng,
            lambda: _jitter(rng, core, 0.12, (0.85, 1.15), size),
            lambda b: 0.6 <= box_iou_single(b, core) <= 0.93 and ok_gt(b),
        )
        if box is not None:
            boxes.append(box)
            scores.append(rng.uniform(0.4, 0.85))
    if rng.random() < 0.5:  # a loose distractor on the object: part of it or a too-big box
        box = _sample(
            rng,
            lambda: _jitter(rng, gt, 0.35, (0.5, 1.9), size),
            lambda b: 0.15 <= box_iou_single(b, gt) < 0.45,
        )
        if box is not None:
            boxes.append(box)
            scores.append(rng.uniform(0.2, 0.6))
    return boxes, scores


def image_proposals(rng: np.random.Generator, objects: list[SceneObject], size: int) -> tuple[ProposalSet, int, int]:
    """All proposals of an image, sorted by score. Returns (proposals, object proposals, wrongly labelled ones)."""
    gts = np.stack([o.box for o in objects]).astype(np.float64)
    boxes, scores, labels, owner = [], [], [], []
    for k, obj in enumerate(objects):
        b, s = _object_proposals(rng, obj.box, obj.hard, size)
        true = SHAPES.index(obj.shape)
        for box, score in zip(b, s):
            label = true
            if rng.random() < LABEL_NOISE:  # the detector confuses the shape
                label = int(rng.choice([i for i in range(len(SHAPES)) if i != true]))
            boxes.append(box), scores.append(score), labels.append(label), owner.append(k)

    def background_box() -> np.ndarray:
        w, h = rng.uniform(0.1, 0.35, size=2) * size
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        return np.array([x1, y1, x1 + w, y1 + h])

    for _ in range(int(rng.integers(3, 7))):  # background: boxes over no object
        box = _sample(rng, background_box, lambda b: iou_matrix(b, gts).max() < 0.2)
        if box is not None:
            boxes.append(box), scores.append(rng.uniform(0.05, 0.5)), labels.append(int(rng.integers(len(SHAPES))))
            owner.append(-1)
    for _ in range(int(rng.integers(1, 3))):  # groups: one box around two objects
        i, j = rng.choice(len(objects), size=2, replace=False)
        union = np.concatenate([np.minimum(gts[i, :2], gts[j, :2]), np.maximum(gts[i, 2:], gts[j, 2:])])
        boxes.append(_jitter(rng, union, 0.04, (0.95, 1.08), size))
        scores.append(rng.uniform(0.1, 0.55)), labels.append(int(rng.integers(len(SHAPES)))), owner.append(-1)

    boxes_np = np.stack(boxes)
    owner_np = np.array(owner)
    # A hard object keeps its promise: drop any box of another cluster or the background reaching IoU 0.5 on it.
    hard = np.array([o.hard for o in objects])
    iou = iou_matrix(boxes_np, gts)  # [M, N]
    keep = ~((iou >= 0.5) & hard[None, :]).any(axis=1)
    order = np.argsort(-np.array(scores)[keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    labels_np = np.array(labels, dtype=np.int64)
    is_object = owner_np[sel] >= 0
    true_labels = np.array([SHAPES.index(objects[k].shape) if k >= 0 else -1 for k in owner_np[sel]])
    wrong = int((labels_np[sel][is_object] != true_labels[is_object]).sum())
    scores_np = np.array(scores, dtype=np.float32)
    return ProposalSet(boxes_np[sel], scores_np[sel], labels_np[sel], size, size), int(is_object.sum()), wrong
