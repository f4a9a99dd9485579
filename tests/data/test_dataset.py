"""GroundingDataset / collate_grounding / build_dataloader against loops over the records and PIL."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from relground.structures.batch import GroundingBatch
from relground.config.data import DataConfig
from relground.data.dataset import GroundingDataset, build_dataloader, build_dataset, collate_grounding
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import ProposalStore
from relground.structures.records import RelationAnnotation
from relground.language.vocab import CAPTION_SPECIALS, PHRASE_SPECIALS, Vocabulary, tokenize
from tests.data.conftest import DETECTOR_CLASSES, make_grounding_root

MIN_SIZE, MAX_SIZE, M = 64, 100, 10
CAFFE_MEAN = np.array([102.98, 115.95, 122.77])


def fake_prior(phrase_words):
    """A deterministic stand-in for glove.category_prior: any [P, C] matrix tests the gather."""
    return np.array([[(len(" ".join(w)) * (c + 3)) % 11 / 11 for c in range(len(DETECTOR_CLASSES))]
                     for w in phrase_words], dtype=np.float32).reshape(len(phrase_words), len(DETECTOR_CLASSES))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, proposals = make_grounding_root(tmp_path_factory.mktemp("ds"))
    images = load_flickr30k(root, "test")
    captions = Vocabulary.build([tokenize(s.text) for im in images for s in im.sentences], specials=CAPTION_SPECIALS)
    phrases = Vocabulary.build([tokenize(p.text) for im in images for s in im.sentences for p in s.phrases],
                               min_freq=2, specials=PHRASE_SPECIALS)
    return root, proposals, images, captions, phrases


def make_dataset(setup, **kwargs):
    root, proposals, images, captions, phrases = setup
    args = dict(max_proposals=M, min_size=MIN_SIZE, max_size=MAX_SIZE)
    args.update(kwargs)
    return GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, **args)


def test_pairs_are_sentences_with_a_grounded_phrase(setup):
    images = setup[2]
    expected = [(im.image_id, s.sentence_index) for im in images for s in im.sentences if any(p.union_box for p in s.phrases)]
    dataset = make_dataset(setup)
    assert len(dataset) == len(expected)
    assert [(dataset[i].meta["image_id"], dataset[i].meta["sentence_index"]) for i in range(len(dataset))] == expected


def pil_reference(path, pixel_format):
    """Independent reference: PIL's own (antialiased) bilinear resize, numpy normalisation, float64."""
    with Image.open(path) as im:
        w, h = im.size
        scale = min(MIN_SIZE / min(h, w), MAX_SIZE / max(h, w))
        size = (max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5)))
        rgb = np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    if pixel_format == "caffe_bgr":
        out = rgb[..., ::-1] - CAFFE_MEAN
    else:
        out = (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(out.transpose(2, 0, 1).copy()), scale


@pytest.mark.parametrize("pixel_format, unit", [("caffe_bgr", 1.0), ("torchvision", 1 / 255 / 0.224)])
def test_images_match_pil_resize_and_normalisation(setup, pixel_format, unit):
    root = setup[0]
    dataset = make_dataset(setup, pixel_format=pixel_format)
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        if item.meta["image_id"] in seen:
            continue
        seen.add(item.meta["image_id"])
        expected, scale = pil_reference(root / "Images" / f"{item.meta['image_id']}.jpg", pixel_format)
        assert item.image.shape == expected.shape and item.image_size == tuple(expected.shape[-2:])
        assert item.scale == pytest.approx(scale)
        diff = (item.image.double() - expected).abs() / unit  # in 0..255 grey levels
        # torchvision's antialiased bilinear reproduces PIL's up to rounding of the uint8 result.
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.1, (diff.max(), diff.mean())
    assert len(seen) == 3


def test_non_image_fields_against_loops(setup):
    _, proposals, images, captions, phrases = setup
    store = ProposalStore(proposals)
    batch = collate_grounding([make_dataset(setup)[i] for i in range(6)])
    assert isinstance(batch, GroundingBatch) and batch.batch_size == 6
    by_key = {(im.image_id, s.sentence_index): (im, s) for im in images for s in im.sentences}
    for b, meta in enumerate(batch.meta):
        image, sentence = by_key[(meta["image_id"], meta["sentence_index"])]
        scale = min(MIN_SIZE / min(image.height, image.width), MAX_SIZE / max(image.height, image.width))
        assert batch.scales[b].item() == pytest.approx(scale)
        assert batch.image_sizes[b].tolist() == [math.floor(image.height * scale + 0.5), math.floor(image.width * scale + 0.5)]
        stored = store[image.image_id]
        m = min(M, len(stored))
        assert batch.proposal_valid[b].tolist() == [True] * m + [False] * (M - m)
        torch.testing.assert_close(batch.proposals[b, :m], torch.from_numpy(stored.boxes[:m]) * scale)
        assert (batch.proposals[b, m:] == 0).all()
        assert batch.proposal_labels[b, :m].tolist() == stored.labels[:m].tolist()

        grounded = [p for p in sentence.phrases if p.union_box is not None]
        n = len(grounded)
        assert batch.phrase_valid[b].sum().item() == n and not batch.phrase_valid[b, n:].any()
        assert meta["first_word_index"] == [p.first_word_index for p in grounded]
        tokens = sentence.text.lower().split(" ")
        assert batch.word_lengths[b].item() == len(tokens)
        assert batch.words[b, : len(tokens)].tolist() == [captions.itos.index(t) for t in tokens]
        assert (batch.words[b, len(tokens):] == 0).all()
        prior = fake_prior([p.text.lower().split(" ") for p in grounded])
        for k, p in enumerate(grounded):
            start, end = batch.phrase_spans[b, k].tolist()
            assert tokens[start:end] == p.text.lower().split(" ")
            ids = [phrases.itos.index(w) if w in phrases.itos else 1 for w in p.text.lower().split(" ")]
            assert batch.phrase_targets[b, k, : len(ids) + 1].tolist() == ids + [0]  # 0 = end
            assert (batch.phrase_targets[b, k, len(ids):] == 0).all()
            for j in range(M):
                expected = prior[k, stored.labels[j]] if j < m else 0.0
                assert batch.category_prior[b, k, j].item() == pytest.approx(float(expected))
            torch.testing.assert_close(batch.gt_boxes[b, k], torch.tensor(p.union_box) * scale)
        assert torch.isnan(batch.gt_boxes[b, n:]).all()
    # images are zero-padded to the largest resized image
    assert list(batch.images.shape[-2:]) == batch.image_sizes.max(0).values.tolist()
    h, w = batch.image_sizes[0].tolist()
    assert (batch.images[0, :, h:, :] == 0).all() and (batch.images[0, :, :, w:] == 0).all()


def test_relations_become_index_and_multi_hot(setup):
    root, proposals, images, captions, phrases = setup
    images = [dataclasses.replace(im, sentences=[dataclasses.replace(s) for s in im.sentences]) for im in images]
    image = images[0]
    sentence = image.sentences[0]  # "[Several climbers] in [a row] ... [the rock] ... [the man] ..."
    assert not sentence.phrases[1].grounded and sentence.phrases[2].grounded and sentence.phrases[3].grounded
    sentence.relations = [
        RelationAnnotation(0, 2, "are climbing", (3, 5)),
        RelationAnnotation(3, 0, "watches", ()),
        RelationAnnotation(0, 1, "in", (1,)),  # object not grounded: dropped
    ]
    dataset = GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, max_proposals=M,
                               min_size=MIN_SIZE, max_size=MAX_SIZE, num_relation_classes=6)
    batch = collate_grounding([dataset[1], dataset[0]], num_relation_classes=6)
    # item 1 of the batch is sentence 0; phrase indices count grounded phrases only (phrase 1 is dropped)
    assert batch.relation_index.tolist() == [[1, 0, 1], [1, 2, 0]]
    assert batch.relation_labels.tolist() == [[0, 0, 0, 1, 0, 1], [0] * 6]


def test_real_glove_prior_is_gathered(setup):
    from relground.language import glove

    _, proposals, images, captions, phrases = setup
    words = {w for im in images for s in im.sentences for w in tokenize(s.text)} | {w for c in DETECTOR_CLASSES for w in c.split()}
    vectors = glove.WordVectors.load(words=words)
    prior_fn = functools.partial(glove.category_prior, class_names=DETECTOR_CLASSES, vectors=vectors)
    dataset = GroundingDataset(images, ProposalStore(proposals), captions, phrases, prior_fn, max_proposals=M,
                               min_size=MIN_SIZE, max_size=MAX_SIZE)
    item = dataset[0]
    grounded = [p for p in images[0].sentences[0].phrases if p.grounded]
    by_class = glove.category_prior([tokenize(p.text) for p in grounded], DETECTOR_CLASSES, vectors)
    expected = torch.from_numpy(by_class)[:, item.proposal_labels[: int(item.proposal_valid.sum())]]
    torch.testing.assert_close(item.category_prior[:, : expected.shape[1]], expected)
    assert (item.category_prior >= 0).all() and item.category_prior.max() > 0


def test_missing_proposals_and_images_are_named(setup, tmp_path):
    root, proposals, images, captions, phrases = setup
    from relground.data.proposals import write_proposals

    store = ProposalStore(proposals)
    partial = write_proposals(tmp_path / "partial.h5", {i: store[i] for i in store.image_ids[1:]}, store.class_names)
    missing = sorted(set(store.image_ids) - set(ProposalStore(partial).image_ids))[0]
    with pytest.raises(KeyError, match=rf"partial\.h5.*'{missing}'"):
        GroundingDataset(images, ProposalStore(partial), captions, phrases, fake_prior)
    dataset = GroundingDataset(images, store, captions, phrases, fake_prior, image_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=images[0].image_id):
        dataset[0]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="data.pixel_format"):
        DataConfig(pixel_format="rgb")
    with pytest.raises(ValueError, match="data.max_size"):
        DataConfig(min_size=800, max_size=600)
    with pytest.raises(ValueError, match="data.loader"):
        DataConfig(loader="opencv")
    assert DataConfig(root="/r").proposals_path("val") == "/r/proposals_val.h5"


def test_dataloader_shards_and_workers(setup):
    root, proposals, images, captions, phrases = setup
    cfg = DataConfig(dataset="flickr30k", root=str(root), max_proposals=M, min_size=MIN_SIZE, max_size=MAX_SIZE,
                     batch_size=4, num_workers=0)
    dataset = build_dataset(cfg, "test", captions, phrases, fake_prior)
    assert len(dataset) == len(make_dataset(setup))
    shards = []
    for rank in range(2):
        loader = build_dataloader(cfg, dataset, train=False, rank=rank, world_size=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        shards.append([(m["image_id"], m["sentence_index"]) for batch in loader for m in batch.meta])
    n, per_rank = len(dataset), math.ceil(len(dataset) / 2)
    assert len(set(shards[0]) | set(shards[1])) == n  # every pair is seen
    # DistributedSampler pads the last round by repeating pairs: the evaluator must de-duplicate by key
    assert len(shards[0]) == len(shards[1]) == per_rank
    assert len(set(shards[0]) & set(shards[1])) == 2 * per_rank - n
    serial = next(iter(build_dataloader(cfg, dataset, train=False)))
    worker_cfg = dataclasses.replace(cfg, num_workers=1)
    loader = build_dataloader(worker_cfg, dataset, train=False)
    assert loader.persistent_workers
    parallel = next(iter(loader))
    for f in dataclasses.fields(GroundingBatch):
        a, b = getattr(serial, f.name), getattr(parallel, f.name)
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, equal_nan=True)
        else:
            assert a == b
    with pytest.raises(ValueError, match="rank"):
        build_dataloader(cfg, dataset, rank=2, world_size=2)


def test_distributed_train_loader_resumes_mid_epoch_without_loading_the_skipped_batches(setup):
    """The train sampler of a rank is the torch DistributedSampler's permutation, startable part-way."""
    from relground.data.samplers import ResumableDistributedSampler

    root, proposals, images, captions, phrases = setup
    cfg = DataConfig(dataset="flickr30k", root=str(root), max_proposals=M, min_size=MIN_SIZE, max_size=MAX_SIZE,
                     batch_size=2, num_workers=0)
    dataset = build_dataset(cfg, "test", captions, phrases, fake_prior)
    loader = build_dataloader(cfg, dataset, train=True, rank=1, world_size=2, seed=3)
    assert isinstance(loader.sampler, ResumableDistributedSampler)
    reference = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    reference.set_epoch(1)
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) == list(reference)
    full = [(m["image_id"], m["sentence_index"]) for batch in loader for m in batch.meta]
    loader.sampler.set_start_index(2)  # one batch of 2 already trained on: its indices are never drawn
    assert len(loader.sampler) == len(reference) - 2
    resumed = [(m["image_id"], m["sentence_index"]) for batch in loader for m in batch.meta]
    assert resumed == full[2:]
