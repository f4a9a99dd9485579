"""(image, sentence) pairs -> :class:`GroundingBatch`: the torch Dataset, its collate function and loader.

One item is one caption of one image. Only *grounded* phrases (chain with a box) are used: they are the
ones the field evaluates, and in training the model sees their words only: ``gt_boxes`` travel in the batch
for evaluation and never reach a loss.

Over 400 lines because the dataset checks every file it will read when it is built (proposals, image headers,
relation categories: a bad file stops a run before iteration 0) and those checks need its state; the checks that
do not live in :mod:`relground.data.checks`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from relground.config.data import DataConfig
from relground.data.catalog import load_split
from relground.data.aspect_grouping import build_batch_sampler
from relground.data.checks import attach_checked_relations, check_max_proposals, relation_problem
from relground.data.collate import GroundingCollate, GroundingItem, collate_grounding
from relground.data.dali import (
    DaliGroundingLoader,  # imports nvidia.dali only when a DALI loader is built
)
from relground.data.device_decode import DeviceBatches, read_image
from relground.data.flickr30k import SkipReport
from relground.data.loader_choice import choose_loader
from relground.data.proposals import ProposalStore, validate_proposals
from relground.data.samplers import ResumableDistributedSampler
from relground.data.transforms import resize_scale, resized_size, transform_image
from relground.language.vocab import tokenize
from relground.structures.records import ImageAnnotation, SentenceAnnotation
from relground.utils.errors import MissingEntryError

logger = logging.getLogger(__name__)

# A JPEG ends with the end-of-image marker FF D9; a file cut short does not (checked in this many tail bytes, so
# a few bytes of padding after the marker still pass).
JPEG_TAIL_BYTES = 4096
# How a dataset hands its images over (GroundingDataset's raw_images): None = PIL, finished in the worker.
RAW_IMAGES = (None, "decoded", "jpeg", "torchvision")

__all__ = ["GroundingDataset", "GroundingItem", "build_batch_sampler", "build_dataloader", "build_dataset",
           "collate_grounding", "load_annotations", "usable_pairs"]


def usable_pairs(images: Sequence[ImageAnnotation]) -> list[tuple[int, int]]:
    """``(image index, sentence position)`` of every sentence with at least one grounded phrase."""
    return [
        (i, j)
        for i, image in enumerate(images)
        for j, sentence in enumerate(image.sentences)
        if any(p.grounded for p in sentence.phrases)
    ]


class GroundingDataset(Dataset):
    """Dataset of (image, sentence) pairs with proposals, vocab ids, category prior and relations.

    Args:
        images (Sequence[ImageAnnotation]): a loaded split (``relations`` attached when used).
        proposals (ProposalStore | Mapping[str, ProposalSet]): detector proposals; every image must have an entry.
        caption_vocab: ``.encode(words) -> list[int]`` (0 = pad, 1 = unk).
        phrase_vocab: ``.encode(words) -> list[int]`` (0 = end / pad, 1 = unk).
        category_prior (Callable[[list[list[str]]], np.ndarray[P, C]]): phrase words -> prior over the
            detector's classes, e.g. ``functools.partial(glove.category_prior, class_names=..., vectors=...)``.
        max_proposals (int): M. Default 50.
        min_size (int), max_size (int): resize, pixels. Defaults 600 / 1000.
        pixel_format (str): ``caffe_bgr`` or ``torchvision``. Default ``caffe_bgr``.
        num_relation_classes (int): width of the relation multi-hot. Default 88.
        load_images (bool): decode images here (PIL path); ``False`` when DALI decodes them. Default True.
        raw_images (str, optional): with ``load_images``, hand over the image unresized for
            :func:`relground.data.device_decode.finish_images`: ``"decoded"`` (uint8 ``[3, H, W]``, decoded here by
            ``torchvision.io``) or ``"jpeg"`` (the file's bytes, uint8 ``[N]``, for nvJPEG); or ``"torchvision"``:
            decoded by ``torchvision.io`` and finished here (the torchvision loader without a GPU). Default None
            (PIL).
        image_dir (str, optional): folder holding ``<image_id>.jpg``; default: each record's ``image_path``.
        check_files (bool): check every image's proposals (:func:`relground.data.proposals.validate_proposals`,
            image size) and image file header (readable, complete JPEG, the annotated size) here, before any
            training starts. Default False (:func:`build_dataset` turns it on).
        skip_invalid (bool): with ``check_files``, leave out images that fail a check (counted and named in
            ``skip_report`` and a warning) instead of raising. Default False.
        relations_file (str, optional): the relations' file, named when a category is outside [0, C_r).

    Raises:
        KeyError: an image has no proposals (names the file and the image id).
        ValueError: with ``check_files``, an image or its proposals fail a check (names each file and image id).
    """

    def __init__(
        self,
        images: Sequence[ImageAnnotation],
        proposals: ProposalStore,
        caption_vocab,
        phrase_vocab,
        category_prior: Callable[[list[list[str]]], np.ndarray],
        max_proposals: int = 50,
        min_size: int = 600,
        max_size: int = 1000,
        pixel_format: str = "caffe_bgr",
        num_relation_classes: int = 88,
        load_images: bool = True,
        image_dir: Optional[str] = None,
        check_files: bool = False,
        skip_invalid: bool = False,
        raw_images: Optional[str] = None,
        relations_file: Optional[str] = None,
    ) -> None:
        if raw_images not in RAW_IMAGES:
            raise ValueError(f"raw_images: {raw_images!r} is not one of {RAW_IMAGES}")
        self.raw_images = raw_images
        self.images = list(images)
        self.proposals = proposals
        self.caption_vocab = caption_vocab
        self.phrase_vocab = phrase_vocab
        self.category_prior = category_prior
        self.max_proposals = max_proposals
        self.min_size = min_size
        self.max_size = max_size
        self.pixel_format = pixel_format
        self.num_relation_classes = num_relation_classes
        self.load_images = load_images
        self.image_dir = image_dir
        self.relations_file = relations_file
        self.most_proposals = 0  # the largest proposal count of one image (set by the file checks)
        missing = [im.image_id for im in self.images if im.image_id not in proposals]
        if missing:
            source = getattr(proposals, "path", "proposals")
            raise MissingEntryError(f"{source}: no proposals for {len(missing)} image(s), e.g. image id {missing[0]!r}")
        self.skip_report = SkipReport()
        if check_files:
            self._check_files(skip_invalid)
        self.pairs = usable_pairs(self.images)

    def _check_files(self, skip_invalid: bool) -> None:
        """Every image's proposals and image header, before training; drops (and reports) or raises."""
        problems = []
        for image in self.images:
            reason = relation_problem(image, self.num_relation_classes, self.relations_file) or self.proposal_problem(image)
            if reason is None and (self.load_images or self.image_dir or image.image_path):
                reason = image_file_problem(self.image_dir, image)
            if reason is not None:
                problems.append((image.image_id, reason))
        if not problems:
            check_max_proposals(self.max_proposals, self.most_proposals, getattr(self.proposals, "path", "proposals"))
            return
        self.skip_report.skipped.extend(problems)
        if not skip_invalid:
            raise ValueError(f"{len(problems)} of {len(self.images)} image(s) cannot be used: "
                             + self.skip_report.summary().split(": ", 1)[1]
                             + " (fix the files, or set data.skip_invalid=true to leave them out)")
        bad = {image_id for image_id, _ in problems}
        self.images = [im for im in self.images if im.image_id not in bad]
        logger.warning("%s", self.skip_report.summary())
        if not self.images:
            raise ValueError(f"every image was left out: {self.skip_report.summary()}")
        check_max_proposals(self.max_proposals, self.most_proposals, getattr(self.proposals, "path", "proposals"))

    def proposal_problem(self, image: ImageAnnotation) -> Optional[str]:
        """Why ``image``'s proposals cannot be used (named), or None."""
        source = str(getattr(self.proposals, "path", "proposals"))
        try:
            stored = self.proposals[image.image_id]  # a ProposalStore validates rows and labels as it reads
            validate_proposals(stored, image.image_id, source)
        except (ValueError, KeyError, OSError) as e:
            return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        self.most_proposals = max(self.most_proposals, len(stored))
        if (stored.width, stored.height) != (image.width, image.height):
            return (f"{source}: image {image.image_id!r}: proposals are for a {stored.width}x{stored.height} image "
                    f"but the annotation says {image.width}x{image.height}")
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, image: ImageAnnotation) -> Path:
        path = Path(self.image_dir) / f"{image.image_id}.jpg" if self.image_dir else image.image_path
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"image file not found for image id {image.image_id!r}: {path}")
        return Path(path)

    def __getitem__(self, index: int) -> GroundingItem:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[GroundingItem]:
        """The items of ``indices`` (a batch: ``DataLoader`` calls this), each distinct image decoded once.

        Items of one image share one image tensor (the same object). With ``load_images=False`` the images are
        left to another pipeline (DALI): ``image`` is None.
        """
        items = [self.item_without_image(index) for index in indices]
        if not self.load_images:
            return items
        decoded: dict[str, Tensor] = {}
        for item in items:
            image_id = item.meta["image_id"]
            if image_id not in decoded:
                decoded[image_id] = self.decode_image(self.record_of(image_id), item.image_size)
            item.image = decoded[image_id]
            if self.raw_images == "jpeg":
                item.meta["jpeg_bytes"] = item.image.numel()
        return items

    def record_of(self, image_id: str) -> ImageAnnotation:
        if getattr(self, "_record_of", None) is None:
            self._record_of = {record.image_id: record for record in self.images}
        return self._record_of[image_id]

    def item_without_image(self, index: int) -> GroundingItem:
        """Every field of pair ``index`` but the image; size and scale from the annotated size (checked against
        the file by ``check_files``, and against the decoded image by :meth:`decode_image`)."""
        image_index, sentence_position = self.pairs[index]
        record = self.images[image_index]
        scale = resize_scale(record.height, record.width, self.min_size, self.max_size)
        image_size = resized_size(record.height, record.width, scale)
        return self.build_item(record, record.sentences[sentence_position], None, image_size, scale)

    def decode_image(self, record: ImageAnnotation, image_size: tuple[int, int]) -> Tensor:
        """``record``'s image as this dataset hands it over: float32 ``[3, h, w]`` normalised (PIL, or
        ``raw_images="torchvision"``), uint8 ``[3, H, W]`` (``"decoded"``) or the file's bytes (``"jpeg"``)."""
        path = self.image_path(record)
        try:
            if self.raw_images is None:
                with Image.open(path) as pil:
                    pixels, _ = transform_image(pil.convert("RGB"), self.min_size, self.max_size, self.pixel_format)
            else:
                pixels = read_image(path, decode=self.raw_images != "jpeg")
                if self.raw_images == "torchvision":  # finished here, in the worker (no GPU to finish it)
                    pixels, _ = transform_image(pixels, self.min_size, self.max_size, self.pixel_format)
        except (OSError, SyntaxError, RuntimeError) as e:  # PIL / torchvision.io: truncated or undecodable file
            raise ValueError(f"{path}: image id {record.image_id!r}: cannot decode the image ({e})") from None
        if pixels.dim() == 3 and pixels.is_floating_point() and tuple(pixels.shape[-2:]) != tuple(image_size):
            raise ValueError(f"{path}: image id {record.image_id!r}: the image resizes to {tuple(pixels.shape[-2:])} "
                             f"pixels, not {tuple(image_size)} (its annotated size {record.width}x{record.height})")
        return pixels

    def build_item(
        self, record: ImageAnnotation, sentence: SentenceAnnotation, pixels: Optional[Tensor], image_size, scale: float
    ) -> GroundingItem:
        """Every non-image field of one pair (shared by the PIL and DALI paths)."""
        kept = [k for k, p in enumerate(sentence.phrases) if p.grounded]
        phrases = [sentence.phrases[k] for k in kept]
        position = {k: i for i, k in enumerate(kept)}  # sentence phrase index -> item phrase index

        stored = self.proposals[record.image_id]
        m = min(len(stored), self.max_proposals)
        proposals = torch.zeros(self.max_proposals, 4)
        proposals[:m] = torch.from_numpy(stored.boxes[:m]) * scale
        valid = torch.zeros(self.max_proposals, dtype=torch.bool)
        valid[:m] = True
        labels = torch.zeros(self.max_proposals, dtype=torch.long)
        labels[:m] = torch.from_numpy(stored.labels[:m])

        phrase_words = [tokenize(p.text) for p in phrases]
        prior_by_class = torch.as_tensor(np.asarray(self.category_prior(phrase_words)), dtype=torch.float32)  # [P, C]
        prior = torch.zeros(len(phrases), self.max_proposals)
        if len(phrases):
            prior[:, :m] = prior_by_class[:, labels[:m]]  # [P, m]

        words = torch.tensor(self.caption_vocab.encode(tokenize(sentence.text)), dtype=torch.long)
        spans = torch.tensor([[p.first_word_index, p.first_word_index + p.num_words] for p in phrases], dtype=torch.long)
        targets = [list(self.phrase_vocab.encode(w)) + [0] for w in phrase_words]
        relations = [
            (position[r.subject], position[r.object], tuple(r.categories))
            for r in sentence.relations
            if r.subject in position and r.object in position
        ]
        gt = torch.tensor([p.union_box for p in phrases], dtype=torch.float32).reshape(-1, 4) * scale
        meta = {
            "image_id": record.image_id,
            "sentence_index": sentence.sentence_index,
            "first_word_index": [p.first_word_index for p in phrases],
            "types": [p.phrase_types for p in phrases],
            "phrase_ids": [p.phrase_id for p in phrases],
            "original_size": (record.height, record.width),
        }
        return GroundingItem(
            pixels, tuple(int(v) for v in image_size), float(scale), proposals, valid, labels, prior, words,
            spans.reshape(-1, 2), targets, relations, gt, meta,
        )


def image_file_problem(image_dir: Optional[str], image: ImageAnnotation) -> Optional[str]:
    """Why ``image``'s file cannot be used, from its header only (no decoding), or None.

    Checks: the file exists, PIL recognises it, its size equals the annotation's ``width x height`` (the boxes
    are in annotation pixels, the scale comes from the pixels), and a JPEG ends with its end-of-image marker.
    """
    path = Path(image_dir) / f"{image.image_id}.jpg" if image_dir else image.image_path
    if path is None:
        return (f"image file not found for image id {image.image_id!r}: no {image.image_id}.jpg/.jpeg/.png in the "
                "dataset's image folder (or set data.images)")
    if not Path(path).is_file():
        return f"image file not found for image id {image.image_id!r}: {path}"
    try:
        with Image.open(path) as pil:
            size, fmt = pil.size, pil.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{path}: image id {image.image_id!r}: not a readable image ({e})"
    if tuple(size) != (image.width, image.height):
        return (f"{path}: image id {image.image_id!r}: the image is {size[0]}x{size[1]} pixels but its annotation "
                f"says {image.width}x{image.height}")
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - JPEG_TAIL_BYTES))
            if b"\xff\xd9" not in f.read():
                return f"{path}: image id {image.image_id!r}: truncated JPEG (no end-of-image marker)"
    return None


def load_annotations(cfg: DataConfig, split: str) -> list[ImageAnnotation]:
    """Read ``split`` with the dataset's reader (the catalog's) and attach relations when ``cfg.relations`` is set."""
    images = load_split(cfg.dataset, cfg.root, split, skip_invalid=cfg.skip_invalid)
    relations = cfg.relations_path(split)
    if relations:
        images = attach_checked_relations(images, relations, split, cfg.skip_invalid)
    return images


def build_dataset(cfg: DataConfig, split: str, caption_vocab, phrase_vocab, category_prior, images=None) -> GroundingDataset:
    """A :class:`GroundingDataset` for ``split`` configured by ``cfg``."""
    images = load_annotations(cfg, split) if images is None else images
    cuda = torch.cuda.is_available()
    loader, _ = choose_loader(cfg.loader, cuda=cuda)
    return GroundingDataset(
        images,
        ProposalStore(cfg.proposals_path(split)),
        caption_vocab,
        phrase_vocab,
        category_prior,
        max_proposals=cfg.max_proposals,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        pixel_format=cfg.pixel_format,
        num_relation_classes=cfg.num_relation_classes,
        load_images=loader != "dali",
        # torchvision: JPEG bytes for nvJPEG on a GPU; without one, decoded and finished in the workers.
        raw_images=("jpeg" if cuda else "torchvision") if loader == "torchvision" else None,
        image_dir=cfg.images or None,
        check_files=True,
        skip_invalid=cfg.skip_invalid,
        relations_file=cfg.relations_path(split) or None,
    )


def build_dataloader(
    cfg: DataConfig,
    dataset: GroundingDataset,
    train: bool = True,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device_id: Optional[int] = None,
    distributed_order: bool = False,
):
    """Batches of ``dataset`` for one process of ``world_size``.

    Args:
        cfg (DataConfig): batch size, workers, loader (``auto``: :func:`relground.data.loader_choice.choose_loader`).
        dataset (GroundingDataset): from :func:`build_dataset`.
        train (bool): shuffle (and drop the last incomplete batch). Default True.
        rank (int), world_size (int): this process's shard; a :class:`ResumableDistributedSampler` when
            ``world_size > 1``.
        seed (int): shuffling seed (call ``loader.sampler.set_epoch(e)`` per epoch when distributed).
        device_id (int, optional): GPU for DALI's ``mixed`` decoder and the ``torchvision`` loader's nvJPEG decode,
            resize and prefetch thread (also the PIL loader's prefetch); ``None`` = CPU.
        distributed_order (bool): the distributed sampler's ``(seed, epoch)`` order even for ``world_size`` 1 (the
            same global batches at any world size).

    Returns:
        Iterable[GroundingBatch]: a ``DataLoader``, a :class:`relground.data.dali.DaliGroundingLoader`, or a
        :class:`relground.data.device_decode.DeviceBatches` over a ``DataLoader`` (finished on ``device_id`` by a
        thread, one batch ahead); ``loader_name`` says which loader runs.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: {rank} must be in [0, world_size={world_size})")
    name, reason = choose_loader(cfg.loader, cuda=torch.cuda.is_available())  # as build_dataset chose
    if train and cfg.loader == "auto":
        print(f"relground: data loader {name} ({reason})", file=sys.stderr, flush=True)
    collate = GroundingCollate(cfg.num_relation_classes, cfg.shape_buckets and train, cfg.image_bucket)
    batch_sampler = build_batch_sampler(cfg, dataset, train, rank, world_size, seed, distributed_order,
                                        always=name == "dali")
    if name == "dali":
        loader = DaliGroundingLoader(
            dataset, cfg.batch_size, batch_sampler, num_threads=max(1, cfg.num_workers), device_id=device_id,
            seed=seed, shape_buckets=cfg.shape_buckets and train, image_bucket=cfg.image_bucket,
        )
    elif batch_sampler is not None:
        loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.num_workers, collate_fn=collate,
                            pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0)
    else:  # per pair: a RandomSampler's order (DataStream restores its generator), or the distributed (seed, epoch)
        # permutation, which a resumed run starts mid-epoch without loading the batches it already trained on
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                              drop_last=train) if world_size > 1 or distributed_order else None
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=train and sampler is None, sampler=sampler,
            num_workers=cfg.num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.num_workers > 0, drop_last=train, generator=torch.Generator().manual_seed(seed),
        )
    device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
    if name != "dali" and (device.type == "cuda" or dataset.raw_images in ("decoded", "jpeg")):
        loader = DeviceBatches(loader, dataset.min_size, dataset.max_size, dataset.pixel_format, device)
    loader.loader_name = name
    return loader
