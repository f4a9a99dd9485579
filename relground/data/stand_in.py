"""Stand-in images and proposals for a real dataset's annotations: check an installation before the images arrive.

``write_stand_in`` turns a real annotation root (Flickr30K Entities layout, or the ReferItGame ``text_objseg``
files) into a root that trains and evaluates: the real annotations (linked, not copied), one smooth-noise JPEG
per image at its annotated size, and a proposals HDF5 per split in the project's format (jittered ground-truth
boxes plus random boxes, like a detector that found the objects and some clutter). ``images`` keeps the first N
images of each split (split files cut to them), so a dry run reads tens of images instead of thousands. Nothing
here is a result: the pixels are noise; the point is that every file, reader and shape on the real path works.

Output layout (``OUT``)::

    flickr30k: Annotations/ Sentences/ (links)  <split>.txt (cut)  Images/<id>.jpg  proposals_<split>.h5
    referit:   referit_{bbox,imcrop,imsize}.json (links)  referit_query_<split>.json + referit_<split>_imlist.txt
               (cut)  images/<id>.jpg  proposals_<split>.h5
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from relground.data.flickr30k import load_image, read_split
from relground.data.proposals import ProposalSet, write_proposals
from relground.data.referit import (
    BBOX_FILE, IMCROP_FILE, IMLIST_FILE, IMSIZE_FILE, QUERY_FILE, find_referit_dir, load_referit, read_json,
)
from relground.structures.records import ImageAnnotation

STAND_IN_DATASETS = ("flickr30k", "referit")
# Detector labels of the stand-in proposals: common Flickr30K head nouns, so the category prior (GloVe over the
# label words) is defined for them. Labels are random: the prior carries no information here.
STAND_IN_CLASSES = (
    "man", "woman", "person", "people", "child", "boy", "girl", "dog", "shirt", "hat", "water", "street",
    "building", "car", "grass", "tree", "ball", "bike", "table", "rock",
)
JITTER = 0.1  # ground-truth box corners move by up to 10% of the box's width / height


def smooth_noise_jpeg(path: Path, width: int, height: int, rng: np.random.Generator, quality: int = 75) -> None:
    """A ``width`` x ``height`` JPEG of upsampled noise: compresses (and decodes) like a photo, a few kB large."""
    small = rng.integers(0, 256, size=(max(1, height // 32), max(1, width // 32), 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=quality)


def stand_in_proposals(image: ImageAnnotation, num_proposals: int, rng: np.random.Generator) -> ProposalSet:
    """``num_proposals`` boxes: each ground-truth box jittered (up to ``JITTER`` of its size), then random boxes.

    Returns:
        ProposalSet: boxes [M, 4] xyxy inside the image, scores [M] in (0, 1), labels [M] over ``STAND_IN_CLASSES``.
    """
    w, h = image.width, image.height
    limit = np.array([w - 1, h - 1, w - 1, h - 1], dtype=np.float64)
    truth = [b for chain in image.chain_boxes.values() for b in chain][:num_proposals]
    boxes = []
    for box in truth:
        box = np.asarray(box, dtype=np.float64)
        size = np.maximum(box[2:] - box[:2], 1.0)
        boxes.append(box + rng.uniform(-JITTER, JITTER, 4) * np.tile(size, 2))
    while len(boxes) < num_proposals:
        x1, y1 = rng.uniform(0, [0.8 * w, 0.8 * h])
        boxes.append(np.array([x1, y1, x1 + rng.uniform(0.1, 0.6) * w, y1 + rng.uniform(0.1, 0.6) * h]))
    boxes = np.clip(np.stack(boxes), 0, limit)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])  # a clipped box never inverts
    return ProposalSet(boxes, rng.uniform(0.05, 1.0, num_proposals), rng.integers(0, len(STAND_IN_CLASSES),
                                                                                  num_proposals), w, h)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        raise FileExistsError(f"{link} exists and is not a link to {target}")
    os.symlink(target.resolve(), link)


def _flickr_split(root: Path, out: Path, split: str, images: Optional[int]) -> list[ImageAnnotation]:
    ids = read_split(root, split)[:images]
    (out / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return [load_image(root, image_id) for image_id in ids]


def _referit_split(folder: Path, out: Path, split: str, images: Optional[int]) -> list[ImageAnnotation]:
    records = load_referit(folder, split)[:images]
    keep = {image.image_id for image in records}
    queries = read_json(folder / QUERY_FILE.format(split=split))
    cut = {crop: text for crop, text in queries.items() if crop.rsplit("_", 1)[0] in keep}
    (out / QUERY_FILE.format(split=split)).write_text(json.dumps(cut))
    (out / IMLIST_FILE.format(split=split)).write_text("".join(f"{image.image_id}\n" for image in records))
    return records


def write_stand_in(
    dataset: str,
    root,
    out,
    splits: Sequence[str] = ("train", "val", "test"),
    images: Optional[int] = None,
    num_proposals: int = 50,
    seed: int = 0,
) -> dict:
    """Write a stand-in root for ``dataset``'s real annotations under ``root`` into ``out`` (see the module doc).

    Args:
        dataset: ``flickr30k`` or ``referit``.
        root: the real annotation root (Flickr30K Entities layout, or the ``text_objseg`` folder / its parent).
        out: output folder (created; an existing stand-in there is overwritten file by file).
        splits: the splits to write.
        images: keep the first N images of each split (None = all).
        num_proposals: proposals per image (M).
        seed: noise and proposals seed.

    Returns:
        dict: ``{"dataset", "out", "splits": {split: {"images", "sentences", "phrases", "proposals"}}, "bytes"}``.

    Raises:
        ValueError: unknown ``dataset`` or ``images`` < 1.
    """
    if dataset not in STAND_IN_DATASETS:
        raise ValueError(f"--dataset: stand-in data for {STAND_IN_DATASETS}, got {dataset!r}")
    if images is not None and images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset == "flickr30k":
        for sub in ("Annotations", "Sentences"):
            _link(root / sub, out / sub)
        image_dir = out / "Images"
    else:
        root = find_referit_dir(root)
        for name in (BBOX_FILE, IMCROP_FILE, IMSIZE_FILE):
            _link(root / name, out / name)
        image_dir = out / "images"
    image_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    summary: dict = {"dataset": dataset, "out": str(out), "splits": {}}
    for split in splits:
        records = (_flickr_split if dataset == "flickr30k" else _referit_split)(root, out, split, images)
        sets = {}
        for image in records:
            jpeg = image_dir / f"{image.image_id}.jpg"
            if not jpeg.is_file():  # an image shared by two splits (ReferIt's trainval) is written once
                smooth_noise_jpeg(jpeg, image.width, image.height, rng)
            sets[image.image_id] = stand_in_proposals(image, num_proposals, rng)
        write_proposals(out / f"proposals_{split}.h5", sets, STAND_IN_CLASSES)
        summary["splits"][split] = {
            "images": len(records),
            "sentences": sum(len(image.sentences) for image in records),
            "phrases": sum(len(s.phrases) for image in records for s in image.sentences),
            "proposals": num_proposals * len(records),
        }
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    return summary
