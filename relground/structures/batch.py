"""The batch that the data layer hands to the model: one item = one (image, sentence) pair.

Every tensor is padded; masks mark real entries. Box coordinates are in the *resized* image's
pixels (xyxy, no +1); ``scales`` maps them back: original = resized / scale.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import torch
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
    # The images of the batch as integers, built on the host by the collate function so that a static-shape step
    # (model.static_shapes) never reads the string ids: None when the items carry no image_id.
    image_keys: Optional[Tensor] = None  # [B] int64, a stable hash of the image id (equal on every process)
    image_index: Optional[Tensor] = None  # [B] long, item -> its image's row among the batch's distinct images
    image_firsts: Optional[Tensor] = None  # [G] long, the first item of each distinct image (G = distinct images)

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



def image_key(image_id: str) -> int:
    """int64 key of an image id, the same in every process (a stable hash, not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(str(image_id).encode(), digest_size=8).digest(), "little", signed=True)


def image_codes(image_ids: Sequence[Optional[str]]) -> dict[str, Optional[Tensor]]:
    """``image_keys``, ``image_index`` and ``image_firsts`` of a :class:`GroundingBatch` (CPU tensors), from the
    items' image ids in batch order; all None when an id is missing.

    Example:
        >>> codes = image_codes(["a", "b", "a"])
        >>> codes["image_index"].tolist(), codes["image_firsts"].tolist()
        ([0, 1, 0], [0, 1])
    """
    if not image_ids or any(i is None for i in image_ids):
        return {"image_keys": None, "image_index": None, "image_firsts": None}
    first: dict[str, int] = {}
    for item, image_id in enumerate(image_ids):
        first.setdefault(str(image_id), item)
    rows = {image_id: row for row, image_id in enumerate(first)}
    return {
        "image_keys": torch.tensor([image_key(i) for i in image_ids], dtype=torch.int64),
        "image_index": torch.tensor([rows[str(i)] for i in image_ids], dtype=torch.long),
        "image_firsts": torch.tensor(list(first.values()), dtype=torch.long),
    }
