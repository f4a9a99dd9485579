"""Collation of :class:`GroundingItem` s into a :class:`GroundingBatch` (shared by the PIL and DALI loaders), and
the padding of a batch to bucketed shapes (``data.shape_buckets``).

Shape buckets: a padded batch has the batch's largest phrase count P, caption length T, target length L, relation
count R, distinct-image count G and image size, so nearly every training batch has new shapes. A step captured
once per shape (``train.cuda_graph``) needs few of them: :func:`pad_to_buckets` pads P, T, L, R up to the next power
of two, G up to the next power of two but at most B, and the image sides up to a multiple of ``image_bucket``
pixels. Padding phrases, words, target tokens, relations and image rows is masked everywhere (padding phrases are
invalid, padding relations are self-loops without a category, padding image rows are computed but never read), so
the static-shape model's losses and gradients do not change (tests/engine/test_shape_buckets.py). Padding the
*image sides* does change the frozen backbone's features near the bottom and right borders, as padding to the
batch's largest image already does; ``image_bucket: 0`` leaves them at the batch's largest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from relground.config.data import IMAGE_BUCKET
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
    items: Sequence[GroundingItem],
    num_relation_classes: int = 88,
    images: Optional[Tensor] = None,
    shape_buckets: bool = False,
    image_bucket: int = IMAGE_BUCKET,
) -> GroundingBatch:
    """Pad a list of items into a :class:`GroundingBatch`.

    Args:
        items (Sequence[GroundingItem]): B items.
        num_relation_classes (int): C_r, width of ``relation_labels``. Default 88.
        images (Tensor[B, 3, H, W], optional): already padded images (DALI); default: pad the items' images
            with zeros to the largest height and width of the batch. Raw images (uint8 decoded, or JPEG bytes:
            the torchvision loader) are collated once per distinct image, ``[G, ...]`` in ``image_firsts`` order,
            for :func:`relground.data.device_decode.finish_images`.
        shape_buckets (bool): pad further, to the bucketed shapes of :func:`pad_to_buckets` (``data.shape_buckets``).
            Default False.
        image_bucket (int): with ``shape_buckets``, image sides round up to a multiple of this (pixels); 0 = the
            batch's largest image. Default 128.

    Returns:
        GroundingBatch: see ``relground/structures/batch.py``; P, T and L are the batch maxima (their buckets
        with ``shape_buckets``).
    """
    if not items:
        raise ValueError("collate_grounding: items is empty")
    b = len(items)
    codes = image_codes([it.meta.get("image_id") for it in items])
    if images is None and items[0].image.dtype == torch.uint8:
        images = _raw_images(items, codes["image_firsts"])
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
    batch = GroundingBatch(
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
        **codes,
    )
    return pad_to_buckets(batch, image_bucket) if shape_buckets else batch


def _raw_images(items: Sequence[GroundingItem], firsts: Optional[Tensor]) -> Tensor:
    """The raw images of a batch (the torchvision loader's, finished on the device), one row per *distinct* image
    (``image_firsts``; per item when the items carry no image id): uint8 ``[G, 3, H0, W0]`` zero-padded to the
    largest original size, or JPEG bytes ``[G, longest file]``."""
    rows = [items[i].image for i in firsts.tolist()] if firsts is not None else [it.image for it in items]
    if rows[0].dim() == 1:  # JPEG bytes
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    out = rows[0].new_zeros(len(rows), 3, max(r.shape[1] for r in rows), max(r.shape[2] for r in rows))
    for g, row in enumerate(rows):
        out[g, :, : row.shape[1], : row.shape[2]] = row
    return out


class GroundingCollate:
    """Picklable ``collate_fn`` (a lambda would not survive spawn-started workers); ``shape_buckets`` and
    ``image_bucket`` as in :func:`collate_grounding`."""

    def __init__(
        self, num_relation_classes: int, shape_buckets: bool = False, image_bucket: int = IMAGE_BUCKET
    ) -> None:
        self.num_relation_classes = num_relation_classes
        self.shape_buckets = shape_buckets
        self.image_bucket = image_bucket

    def __call__(self, items):
        return collate_grounding(
            items, self.num_relation_classes, shape_buckets=self.shape_buckets, image_bucket=self.image_bucket
        )


def bucket(n: int, cap: Optional[int] = None) -> int:
    """The bucket of a count: the smallest power of two >= ``n`` (0 stays 0), at most ``cap`` (when given and >= n).

    Example:
        >>> [bucket(n) for n in (0, 1, 2, 3, 5, 8, 9)], bucket(9, cap=10)
        ([0, 1, 2, 4, 8, 8, 16], 10)
    """
    if n < 0:
        raise ValueError(f"bucket: a count must be >= 0, got {n}")
    size = 0 if n == 0 else 1 << (n - 1).bit_length()
    return min(size, cap) if cap is not None and cap >= n else size


def image_side_bucket(side: int, multiple: int) -> int:
    """``side`` rounded up to a multiple of ``multiple`` pixels (``multiple`` 0: unchanged)."""
    return side if multiple <= 0 else -(-side // multiple) * multiple


def _pad(x: Tensor, sizes: Sequence[int], value: float = 0) -> Tensor:
    """``x`` padded at the end of each dimension to ``sizes`` with ``value`` (itself when nothing is missing)."""
    if tuple(x.shape) == tuple(sizes):
        return x
    out = x.new_full(tuple(sizes), value)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def pad_to_buckets(batch: GroundingBatch, image_bucket: int = IMAGE_BUCKET) -> GroundingBatch:
    """``batch`` padded to its bucketed shapes (module docstring): P, T, L, R to :func:`bucket`, G (distinct images,
    ``image_firsts``) to ``bucket(G, cap=B)``, image sides to a multiple of ``image_bucket`` (normalised float
    images only: raw uint8 images and JPEG bytes are finished on the device later). Idempotent; B and M stay.

    Padding values: phrases invalid (spans, targets and prior 0, ground truth NaN), words and target tokens 0,
    relations ``(0, 0, 0)`` with no category (a self-loop: dropped by the graph, masked in the relation loss),
    extra ``image_firsts`` repeat the first (computed, never read), image pixels 0. Runs on any device without
    reading a value on the host.

    Args:
        batch: a padded :class:`GroundingBatch` (``collate_grounding``'s).
        image_bucket: pixels; 0 = images as they are. Default 128.

    Returns:
        GroundingBatch: the same tensors where a dimension is already at its bucket, ``meta`` shared.
    """
    B, P = batch.phrase_valid.shape
    T, L, R = batch.words.shape[1], batch.phrase_targets.shape[2], batch.relation_index.shape[0]
    M = batch.proposals.shape[1]
    p, t, l, r = bucket(P), bucket(T), bucket(L), bucket(R)
    changes: dict[str, Any] = {
        "words": _pad(batch.words, (B, t)),
        "phrase_spans": _pad(batch.phrase_spans, (B, p, 2)),
        "phrase_valid": _pad(batch.phrase_valid, (B, p)),
        "phrase_targets": _pad(batch.phrase_targets, (B, p, l)),
        "category_prior": _pad(batch.category_prior, (B, p, M)),
        "gt_boxes": _pad(batch.gt_boxes, (B, p, 4), float("nan")),
        "relation_index": _pad(batch.relation_index, (r, 3)),
        "relation_labels": _pad(batch.relation_labels, (r, batch.relation_labels.shape[1])),
    }
    if batch.image_firsts is not None:
        firsts = batch.image_firsts
        g = bucket(firsts.shape[0], cap=B)
        if g != firsts.shape[0]:
            changes["image_firsts"] = torch.cat((firsts, firsts[:1].expand(g - firsts.shape[0])))
    images = batch.images
    if images.dim() == 4 and images.is_floating_point():
        h, w = (image_side_bucket(s, image_bucket) for s in images.shape[2:])
        changes["images"] = _pad(images, (B, images.shape[1], h, w))
    return dataclasses.replace(batch, **changes)
