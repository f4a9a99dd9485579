"""Image-grouped batches: every pair once an epoch, c captions of an image together, and the model's backbone run
once per distinct image with the same outputs as the per-pair computation."""
import copy
from collections import Counter
from dataclasses import replace

import pytest
import torch

from relground.data.samplers import ImageGroupedBatchSampler
from relground.model.reir import ReIR
from tests.model.batch_factory import CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES, make_batch, tiny_config


def _images_of(pairs_per_image: list[int]) -> list[int]:
    """The image key of each dataset index, pairs of one image not adjacent (as a real split's order need not be)."""
    keys = [image for image, count in enumerate(pairs_per_image) for _ in range(count)]
    return keys[::2] + keys[1::2]


def test_every_pair_once_an_epoch_and_exactly_batch_over_c_images_a_batch():
    image_of = _images_of([5] * 12)  # Flickr30K: five captions per image
    sampler = ImageGroupedBatchSampler(image_of, batch_size=10, captions_per_image=5, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    assert sorted(i for b in batches for i in b) == list(range(60))
    for batch in batches:
        counts = Counter(image_of[i] for i in batch)
        assert len(batch) == 10 and len(counts) == 2 and set(counts.values()) == {5}


def test_uneven_images_fill_exact_batches_with_at_most_c_pairs_per_chunk():
    image_of = _images_of([5, 3, 1, 7, 2, 6, 4, 4])  # 32 pairs
    sampler = ImageGroupedBatchSampler(image_of, batch_size=6, captions_per_image=2, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [6] * 5  # 32 // 6, the incomplete tail dropped
    assert len(set(i for b in batches for i in b)) == 30
    # Fewer distinct images than pairs: grouping works even when images hold an odd number of captions.
    assert sum(len({image_of[i] for i in b}) for b in batches) < 30


def test_order_depends_on_seed_and_epoch_only():
    image_of = _images_of([5] * 20)
    a = ImageGroupedBatchSampler(image_of, 10, 5, seed=1)
    b = ImageGroupedBatchSampler(image_of, 10, 5, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert a.sampler is a  # DataStream calls set_epoch through loader.batch_sampler.sampler


def test_ranks_split_the_batches_disjointly_with_equal_counts():
    image_of = _images_of([5] * 14)  # 7 batches of 10: 3 per rank, one left out
    shards = [list(ImageGroupedBatchSampler(image_of, 10, 5, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    items = [i for shard in shards for b in shard for i in b]
    assert len(items) == len(set(items)) == 60
    whole = list(ImageGroupedBatchSampler(image_of, 10, 5, seed=2))
    assert shards[0] == whole[0:6:2] and shards[1] == whole[1:6:2]


def test_data_config_validates_captions_per_image():
    from relground.config.data import DataConfig

    with pytest.raises(ValueError, match="captions_per_image"):
        DataConfig(captions_per_image=0)
    assert DataConfig(captions_per_image=5, loader="dali").captions_per_image == 5  # DALI groups too (issue 23)


def _grouped_batch(images: int, captions: int):
    """``images * captions`` pairs: each image repeated for ``captions`` different captions (ids shared)."""
    per_image = make_batch(batch_size=images, num_proposals=8, num_phrases=3, seed=0, dtype=torch.float64)
    per_caption = make_batch(batch_size=images * captions, num_proposals=8, num_phrases=3, seed=1, dtype=torch.float64)
    image_of = torch.arange(images).repeat_interleave(captions)  # [B]
    return replace(
        per_caption,
        images=per_image.images[image_of],
        image_sizes=per_image.image_sizes[image_of],
        proposals=per_image.proposals[image_of],
        proposal_valid=per_image.proposal_valid[image_of],
        proposal_labels=per_image.proposal_labels[image_of],
        category_prior=per_caption.category_prior * per_image.proposal_valid[image_of][:, None, :],
        meta=[{"image_id": f"img{int(i)}", "sentence_index": n} for n, i in enumerate(image_of)],
    )


@pytest.mark.parametrize("box_head", ["fast", "faithful"])
def test_c5_runs_the_backbone_on_pairs_over_5_images_with_per_pair_outputs(box_head):
    torch.manual_seed(0)
    model = ReIR(tiny_config("full", box_head=box_head), CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES).double()
    model.train()  # float64: the two computations differ only in summation order, far below the tolerance
    batch = _grouped_batch(images=2, captions=5)  # 10 pairs
    reference = copy.deepcopy(model)  # a training step updates BatchNorm running statistics: compare fresh copies
    reference.backbone.share_maps = False  # the per-pair computation: every item through the backbone
    seen: list[int] = []
    for m in (model, reference):
        maps_of = m.backbone._maps_of
        m.backbone._maps_of = lambda images, maps_of=maps_of: (seen.append(images.shape[0]), maps_of(images))[1]

    state = torch.random.get_rng_state()
    grouped = model(batch, iteration=10)
    assert seen == [2]  # pairs / 5 images, one pass

    seen.clear()
    torch.random.set_rng_state(state)
    per_pair = reference(batch, iteration=10)
    assert seen == [10]
    for name in ("boxes", "scores", "boxes_stage1", "attention_stage1", "attention_stage2"):
        torch.testing.assert_close(getattr(grouped, name), getattr(per_pair, name), rtol=1e-9, atol=1e-9)
    assert grouped.losses.keys() == per_pair.losses.keys()
    for name in grouped.losses:
        torch.testing.assert_close(grouped.losses[name], per_pair.losses[name], rtol=1e-9, atol=1e-12)
