"""The batch that the data layer hands to the model: one item = one (image, sentence) pair.

Every tensor is padded; masks mark real entries. Box coordinates are in the *resized* image's
pixels (xyxy, no +1); ``scales`` maps them back: original = resized / scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor


@dataclass
class GroundingBatch:
    images: Tensor  # [B, 3, H, W] float, normalised, zero-padded to the largest image
    image_sizes: Tensor  # [B, 2] long, (height, width) of each resized image before padding
    scales: Tensor  # [B] float, resize factor applied to the original image
    proposals: Tensor  # [B, M, 4] float, detector boxes in resized pixels
    proposal_valid: Tensor  # [B, M] bool
    proposal_labels: Tensor  # [B, M] long, detector class ids
    category_prior: Tensor  # [B, P, M] float >= 0, s_a: ReLU(mean_w cos(wordvec(w), wordvec(label)))
    words: Tensor  # [B, T] long, caption-vocabulary ids, 0 = padding
    word_lengths: Tensor  # [B] long
    phrase_spans: Tensor  # [B, P, 2] long, [start, end) word positions in the caption
    phrase_valid: Tensor  # [B, P] bool
    phrase_targets: Tensor  # [B, P, L] long, phrase-vocabulary ids for reconstruction, 0 = end / padding
    relation_index: Tensor  # [R, 3] long, (batch item, subject phrase, object phrase)
    relation_labels: Tensor  # [R, C_r] float multi-hot over relation categories (all-zero = no category)
    gt_boxes: Tensor  # [B, P, 4] float resized pixels, NaN where unknown; evaluation only, never a training signal
    meta: list[dict[str, Any]] = field(default_factory=list)  # image_id, sentence_index, first_word_index, types

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = False) -> "GroundingBatch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
        return GroundingBatch(**moved)

    def pin_memory(self) -> "GroundingBatch":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value.pin_memory())
        return self

