"""Shape buckets (``data.shape_buckets``, :func:`relground.data.collate.pad_to_buckets`): the bucketed shapes follow
the rule, and padding a batch to its buckets changes neither the static-shape model's losses nor its gradients."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from relground.data.collate import GroundingCollate, GroundingItem, bucket, collate_grounding, pad_to_buckets
from tests.model.batch_factory import RELATION_CLASSES, make_batch
from tests.model.test_compile import CONFIGS, build


def items_of(batch, share_image: bool = True) -> list[GroundingItem]:
    """The items a collate function would have received for ``make_batch``'s batch (item 2 showing item 0's image
    when ``share_image``): each unpadded, targets ending with the end token, relations with their categories."""
    if share_image:
        batch.images[2] = batch.images[0]
        batch.image_sizes[2] = batch.image_sizes[0]
        batch.meta[2]["image_id"] = batch.meta[0]["image_id"]
    items = []
    for b in range(batch.batch_size):
        n = int(batch.phrase_valid[b].sum())
        h, w = (int(s) for s in batch.image_sizes[b])
        targets = []
        for row in batch.phrase_targets[b, :n].tolist():
            words = row[: row.index(0)] if 0 in row else row
            targets.append(words + [0])
        relations = [
            (int(s), int(o), tuple(torch.nonzero(labels).flatten().tolist()))
            for (i, s, o), labels in zip(batch.relation_index.tolist(), batch.relation_labels)
            if i == b
        ]
        items.append(GroundingItem(
            image=batch.images[b, :, :h, :w], image_size=(h, w), scale=float(batch.scales[b]),
            proposals=batch.proposals[b], proposal_valid=batch.proposal_valid[b],
            proposal_labels=batch.proposal_labels[b], category_prior=batch.category_prior[b, :n],
            words=batch.words[b, : int(batch.word_lengths[b])], phrase_spans=batch.phrase_spans[b, :n],
            phrase_targets=targets, relations=relations, gt_boxes=batch.gt_boxes[b, :n], meta=dict(batch.meta[b]),
        ))
    return items


def next_power_of_two(n: int) -> int:
    return 0 if n == 0 else 2 ** math.ceil(math.log2(n))


def as_float64(batch):
    return dataclasses.replace(batch, **{
        f.name: getattr(batch, f.name).double() for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor) and getattr(batch, f.name).is_floating_point()
    })


@pytest.mark.parametrize("n", range(0, 40))
def test_bucket_is_the_next_power_of_two(n):
    assert bucket(n) == next_power_of_two(n)
    assert bucket(n, cap=10) == (min(next_power_of_two(n), 10) if n <= 10 else next_power_of_two(n))
    assert bucket(bucket(n)) == bucket(n)


@pytest.mark.parametrize("seed, phrases, batch_size", [(0, 3, 4), (1, 5, 3), (2, 2, 5)])
def test_bucketed_shapes_follow_the_rule(seed, phrases, batch_size):
    items = items_of(make_batch(batch_size=batch_size, num_proposals=7, num_phrases=phrases, seed=seed))
    plain = collate_grounding(items, RELATION_CLASSES)
    padded = collate_grounding(items, RELATION_CLASSES, shape_buckets=True, image_bucket=48)
    B, P = plain.phrase_valid.shape
    T, L, R = plain.words.shape[1], plain.phrase_targets.shape[2], plain.relation_index.shape[0]
    G, (H, W) = plain.image_firsts.shape[0], plain.images.shape[2:]
    p, t, l, r = (next_power_of_two(n) for n in (P, T, L, R))
    assert padded.phrase_valid.shape == (B, p) and padded.phrase_spans.shape == (B, p, 2)
    assert padded.words.shape == (B, t) and padded.phrase_targets.shape == (B, p, l)
    assert padded.category_prior.shape == (B, p, 7) and padded.gt_boxes.shape == (B, p, 4)
    assert padded.relation_index.shape == (r, 3) and padded.relation_labels.shape == (r, RELATION_CLASSES)
    assert padded.image_firsts.shape == (min(next_power_of_two(G), B),)
    assert padded.images.shape == (B, 3, 48 * math.ceil(H / 48), 48 * math.ceil(W / 48))
    for name in ("proposals", "proposal_valid", "word_lengths", "image_sizes", "image_index", "image_keys"):
        assert torch.equal(getattr(padded, name), getattr(plain, name)), name
    # the batch inside its padding, and the padding values
    assert torch.equal(padded.words[:, :T], plain.words) and not padded.words[:, T:].any()
    assert torch.equal(padded.phrase_valid[:, :P], plain.phrase_valid) and not padded.phrase_valid[:, P:].any()
    assert torch.equal(padded.phrase_targets[:, :P, :L], plain.phrase_targets) and not padded.phrase_targets[:, :, L:].any()
    assert torch.equal(padded.category_prior[:, :P], plain.category_prior) and not padded.category_prior[:, P:].any()
    assert padded.gt_boxes[:, P:].isnan().all()
    assert torch.equal(padded.relation_index[:R], plain.relation_index) and not padded.relation_index[R:].any()
    assert torch.equal(padded.relation_labels[:R], plain.relation_labels) and not padded.relation_labels[R:].any()
    assert torch.equal(padded.image_firsts[:G], plain.image_firsts)
    assert (padded.image_firsts[G:] == plain.image_firsts[0]).all()
    assert torch.equal(padded.images[..., :H, :W], plain.images) and not padded.images[..., H:, :].any()
    # idempotent: a bucketed batch is its own bucket, tensor for tensor
    again = pad_to_buckets(padded, image_bucket=48)
    for f in dataclasses.fields(padded):
        assert getattr(again, f.name) is getattr(padded, f.name), f.name


def test_without_buckets_the_collate_is_unchanged_and_image_bucket_0_keeps_images():
    items = items_of(make_batch(batch_size=4, num_phrases=3, seed=5))
    plain = collate_grounding(items, RELATION_CLASSES)
    assert plain.phrase_valid.shape[1] == 3 and plain.words.shape[1] == 10  # the batch maxima
    padded = GroundingCollate(RELATION_CLASSES, shape_buckets=True, image_bucket=0)(items)
    assert padded.images is plain.images or torch.equal(padded.images, plain.images)
    assert padded.phrase_valid.shape[1] == 4 and padded.words.shape[1] == 16
    assert GroundingCollate(RELATION_CLASSES)(items).words.shape == plain.words.shape


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_padding_to_the_buckets_changes_no_loss_and_no_gradient(name):
    """The static-shape model (every loss on) in float64 on one batch collated with and without buckets: the same
    losses, predictions, parameter gradients and running statistics. Every bucketed dimension grows here (P 3 -> 4,
    T 10 -> 16, L 3 -> 4, R 3 -> 4, G 3 -> 4); the images are already at their bucket (64 x 96, multiples of 32)."""
    items = items_of(make_batch(batch_size=4, num_proposals=8, num_phrases=3, seed=0))
    plain = as_float64(collate_grounding(items, RELATION_CLASSES))
    padded = as_float64(collate_grounding(items, RELATION_CLASSES, shape_buckets=True, image_bucket=32))
    P, T, L, R = 3, 10, 3, 3
    assert (plain.phrase_valid.shape[1], plain.words.shape[1], plain.phrase_targets.shape[2]) == (P, T, L)
    assert plain.relation_index.shape[0] == R and plain.image_firsts.shape[0] == 3
    assert (padded.phrase_valid.shape[1], padded.words.shape[1], padded.phrase_targets.shape[2]) == (4, 16, 4)
    assert padded.relation_index.shape[0] == 4 and padded.image_firsts.shape[0] == 4
    assert padded.images.shape == plain.images.shape

    reference = build(CONFIGS[name](static_shapes=True)).double()
    bucketed = copy.deepcopy(reference)
    results = []
    for model, batch in ((reference, plain), (bucketed, padded)):
        out = model(batch, iteration=0)
        out.total_loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (out_r, grads_r), (out_b, grads_b) = results
    assert set(out_b.losses) == set(out_r.losses) and {"rel", "reg_s1", "reg_s2", "rank_s1"} <= set(out_r.losses)
    tight = dict(rtol=1e-9, atol=1e-12)
    for term in out_r.losses:
        torch.testing.assert_close(out_b.losses[term], out_r.losses[term], **tight, msg=term)
    torch.testing.assert_close(out_b.total_loss, out_r.total_loss, **tight)
    valid = plain.phrase_valid
    torch.testing.assert_close(out_b.boxes[:, :P][valid], out_r.boxes[valid], **tight)
    assert grads_b.keys() == grads_r.keys() and len(grads_r) > 20
    for n in grads_r:
        torch.testing.assert_close(grads_b[n], grads_r[n], **tight, msg=n)
    buffers_r = dict(reference.named_buffers())
    for n, b in bucketed.named_buffers():
        torch.testing.assert_close(b, buffers_r[n], **tight, msg=n)
