"""Random but consistent GroundingBatch objects for the model and loss tests (the data layer is not needed)."""

from __future__ import annotations

import torch

from relground.structures.batch import GroundingBatch
from relground.model import ModelConfig

CAPTION_VOCAB = 40
PHRASE_VOCAB = 25
RELATION_CLASSES = 6


def random_boxes(n: int, height: int, width: int, generator: torch.Generator, min_size: float = 12.0) -> torch.Tensor:
    """[n, 4] xyxy boxes inside a height x width image, each side >= min_size."""
    x1 = torch.rand(n, generator=generator) * (width - min_size)
    y1 = torch.rand(n, generator=generator) * (height - min_size)
    w = min_size + torch.rand(n, generator=generator) * (width - x1 - min_size)
    h = min_size + torch.rand(n, generator=generator) * (height - y1 - min_size)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=1)


def make_batch(
    batch_size: int = 3,
    num_proposals: int = 8,
    num_phrases: int = 3,
    seed: int = 0,
    height: int = 64,
    width: int = 96,
    dtype: torch.dtype = torch.float32,
    overlapping: bool = True,
) -> GroundingBatch:
    """A batch where every shape, mask and index agrees.

    Item b has ``num_proposals - b`` valid proposals (b < 2 only, so the last item may be full), ``num_phrases - b``
    valid phrases (at least 1), images of decreasing size, a relation between phrases 0 and 1 (with a category),
    and one relation without a category. Phrase 0 of item 0 has an all-zero category prior. With ``overlapping``
    every odd proposal is a slightly shifted copy of the one before (IoU > 0.6), so self-taught regression has
    neighbours to train on.
    """
    g = torch.Generator().manual_seed(seed)
    B, M, P, T, L = batch_size, num_proposals, num_phrases, 3 * num_phrases + 2, 4
    sizes = torch.tensor([[height - 8 * (b % 2), width - 16 * (b % 2)] for b in range(B)])
    images = torch.zeros(B, 3, height, width, dtype=dtype)
    proposals = torch.zeros(B, M, 4, dtype=dtype)
    proposal_valid = torch.zeros(B, M, dtype=torch.bool)
    phrase_valid = torch.zeros(B, P, dtype=torch.bool)
    words = torch.zeros(B, T, dtype=torch.long)
    word_lengths = torch.zeros(B, dtype=torch.long)
    spans = torch.zeros(B, P, 2, dtype=torch.long)
    targets = torch.zeros(B, P, L, dtype=torch.long)
    for b in range(B):
        h, w = (int(s) for s in sizes[b])
        images[b, :, :h, :w] = torch.randn(3, h, w, generator=g).to(dtype)
        n_boxes = M - min(b, 2)
        boxes = random_boxes(n_boxes, h, w, g)
        if overlapping:
            shift = 0.05 * (boxes[0::2, 2:] - boxes[0::2, :2])  # 5% of the box size: IoU ~0.8
            boxes[1::2] = (boxes[0::2] + shift.repeat(1, 2))[: boxes[1::2].shape[0]]
        proposals[b, :n_boxes] = boxes.to(dtype)
        proposal_valid[b, :n_boxes] = True
        n_phrases = max(1, P - b)
        phrase_valid[b, :n_phrases] = True
        length = 3 * n_phrases + 1
        words[b, :length] = torch.randint(1, CAPTION_VOCAB, (length,), generator=g)
        word_lengths[b] = length
        for p in range(n_phrases):
            spans[b, p] = torch.tensor([3 * p, 3 * p + 1 + p % 2])  # 1 or 2 words
            n_words = int(spans[b, p, 1] - spans[b, p, 0])
            targets[b, p, :n_words] = torch.randint(1, PHRASE_VOCAB, (n_words,), generator=g)
    prior = torch.rand(B, P, M, generator=g).to(dtype)
    prior = torch.where(torch.rand(B, P, M, generator=g) < 0.3, torch.zeros_like(prior), prior)
    prior[0, 0] = 0  # a phrase with no category match at all: the guarded row
    prior = prior * proposal_valid[:, None, :] * phrase_valid[..., None]
    relations, labels = [], []
    for b in range(B):
        if phrase_valid[b, 1]:
            relations.append((b, 0, 1))
            label = torch.zeros(RELATION_CLASSES)
            label[b % RELATION_CLASSES] = 1
            labels.append(label)
        if phrase_valid[b, 2] if P > 2 else False:
            relations.append((b, 2, 1))
            labels.append(torch.zeros(RELATION_CLASSES))  # relation text outside the kept categories
    return GroundingBatch(
        images=images,
        image_sizes=sizes,
        scales=torch.ones(B),
        proposals=proposals,
        proposal_valid=proposal_valid,
        proposal_labels=torch.randint(0, 10, (B, M), generator=g),
        category_prior=prior,
        words=words,
        word_lengths=word_lengths,
        phrase_spans=spans,
        phrase_valid=phrase_valid,
        phrase_targets=targets,
        relation_index=torch.tensor(relations, dtype=torch.long).reshape(-1, 3),
        relation_labels=torch.stack(labels).to(dtype) if labels else torch.zeros(0, RELATION_CLASSES, dtype=dtype),
        gt_boxes=torch.full((B, P, 4), float("nan"), dtype=dtype),
        meta=[{"image_id": f"img{b}", "sentence_index": 0} for b in range(B)],
    )


def tiny_config(preset: str = "full", **overrides) -> ModelConfig:
    """The small CPU configuration used by the tests (ResNet-10, d = 32)."""
    defaults = dict(
        backbone="resnet10",
        hidden_dim=32,
        word_dim=16,
        vogn_dim=16,
        ranking_dim=16,
        relation_hidden=32,
        regression_hidden=16,
        top_k=3,
        refine_start_iteration=0,
    )
    defaults.update(overrides)
    return ModelConfig.preset(preset, **defaults)
