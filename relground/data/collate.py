"""Collation of :class:`GroundingItem` s into a :class:`GroundingBatch` (shared by the PIL and DALI loaders)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from relground.structures.batch import GroundingBatch, image_codes


@dataclass
class GroundingItem:
    """One (image, sentence) pair before collation (``P`` = grounded phrases of the sentence)."""

    image: Optional[Tensor]  # [3, h, w] float normalised; None when images come from another pipeline (DALI)
    image_size: tuple[int, int]  # (h, w) resized
    scale: float
    proposals: Tensor  # [M, 4] float resized pixels, zero rows = padding
    proposal_valid: Tensor  # [M] bool
    proposal_labels: Tensor  # [M] long
    category_prior: Tensor  # [P, M] float
    words: Tensor  # [T] long
    phrase_spans: Tensor  # [P, 2] long
    phrase_targets: list[list[int]]  # P lists of phrase-vocab ids, each ending with 0 (end)
    relations: list[tuple[int, int, tuple[int, ...]]]  # (subject, object, categories) over the P phrases
    gt_boxes: Tensor  # [P, 4] float resized pixels, NaN = unknown
    meta: dict[str, Any]


def collate_grounding(
    items: Sequence[GroundingItem], num_relation_classes: int = 88, images: Optional[Tensor] = None
) -> GroundingBatch:
    """Pad a list of items into a :class:`GroundingBatch`.

    Args:
        items (Sequence[GroundingItem]): B items.
        num_relation_classes (int): C_r, width of ``relation_labels``. Default 88.
        images (Tensor[B, 3, H, W], optional): already padded images (DALI); default: pad the items' images
            with zeros to the largest height and width of the batch.

    Returns:
        GroundingBatch: see ``relground/structures/batch.py``; P, T and L are the batch maxima.
    """
    if not items:
        raise ValueError("collate_grounding: items is empty")
    b = len(items)
    if images is None and items[0].image.dim() == 1:  # JPEG bytes (torchvision loader): [B, longest file]
        images = torch.nn.utils.rnn.pad_sequence([it.image for it in items], batch_first=True)
    if images is None:
        max_h = max(it.image.shape[1] for it in items)
        max_w = max(it.image.shape[2] for it in items)
        images = items[0].image.new_zeros(b, 3, max_h, max_w)
        for i, it in enumerate(items):
            images[i, :, : it.image.shape[1], : it.image.shape[2]] = it.image
    p = max(it.phrase_spans.shape[0] for it in items)
    t = max(it.words.numel() for it in items)
    l = max((len(tg) for it in items for tg in it.phrase_targets), default=1)
    m = items[0].proposals.shape[0]

    words = torch.zeros(b, t, dtype=torch.long)
    spans = torch.zeros(b, p, 2, dtype=torch.long)
    phrase_valid = torch.zeros(b, p, dtype=torch.bool)
    targets = torch.zeros(b, p, l, dtype=torch.long)
    prior = torch.zeros(b, p, m)
    gt = torch.full((b, p, 4), float("nan"))
    relation_index, relation_labels = [], []
    for i, it in enumerate(items):
        n = it.phrase_spans.shape[0]
        words[i, : it.words.numel()] = it.words
        spans[i, :n] = it.phrase_spans
        phrase_valid[i, :n] = True
        prior[i, :n] = it.category_prior
        gt[i, :n] = it.gt_boxes
        for k, tg in enumerate(it.phrase_targets):
            targets[i, k, : len(tg)] = torch.tensor(tg, dtype=torch.long)
        for subject, obj, categories in it.relations:
            relation_index.append((i, subject, obj))
            hot = torch.zeros(num_relation_classes)
            for c in categories:
                if not 0 <= c < num_relation_classes:
                    raise ValueError(f"relation category {c} outside [0, num_relation_classes={num_relation_classes})")
                hot[c] = 1.0
            relation_labels.append(hot)
    return GroundingBatch(
        images=images,
        image_sizes=torch.tensor([it.image_size for it in items], dtype=torch.long),
        scales=torch.tensor([it.scale for it in items], dtype=torch.float32),
        proposals=torch.stack([it.proposals for it in items]),
        proposal_valid=torch.stack([it.proposal_valid for it in items]),
        proposal_labels=torch.stack([it.proposal_labels for it in items]),
        category_prior=prior,
        words=words,
        word_lengths=torch.tensor([it.words.numel() for it in items], dtype=torch.long),
        phrase_spans=spans,
        phrase_valid=phrase_valid,
        phrase_targets=targets,
        relation_index=torch.tensor(relation_index, dtype=torch.long).reshape(-1, 3),
        relation_labels=torch.stack(relation_labels) if relation_labels else torch.zeros(0, num_relation_classes),
        gt_boxes=gt,
        meta=[it.meta for it in items],
        **image_codes([it.meta.get("image_id") for it in items]),
    )


class GroundingCollate:
    """Picklable ``collate_fn`` (a lambda would not survive spawn-started workers)."""

    def __init__(self, num_relation_classes: int) -> None:
        self.num_relation_classes = num_relation_classes

    def __call__(self, items):
        return collate_grounding(items, self.num_relation_classes)
