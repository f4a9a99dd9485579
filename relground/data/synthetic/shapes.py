"""Stand-in data at given shapes in the Flickr30K layout: noise JPEGs, XML boxes, marked-up captions, proposals
HDF5 and relations JSON, for measuring a machine (``relground benchmark --synthetic-shapes``) without a dataset.

Only the shapes matter (image size, proposals per image, captions per image, phrases and relations per caption);
the content is noise.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from relground.data.proposals import ProposalSet, write_proposals

SYNTHETIC_CLASSES = ("person", "dog", "car", "bike", "tree", "hat")
SYNTHETIC_WORDS = "a man in a red shirt rides a small bike next to the old car under the tall tree with his dog".split()


# Flickr30K Entities' image sizes (width, height): the 12 most common of its 31,783 annotation files (88.3% of
# them), counted from /work/shared/data/flickr30k_entities/annotations.tar.xz on 2026-12-07. All images: 70.3%
# landscape, 27.9% portrait, 1.7% square; every one has a 500-pixel longer side.
FLICKR30K_SIZES = (
    ((500, 333), 6421), ((500, 375), 6247), ((333, 500), 2570), ((375, 500), 2311), ((500, 334), 1415),
    ((500, 332), 1288), ((500, 500), 540), ((332, 500), 506), ((334, 500), 483), ((500, 335), 385),
    ((500, 400), 345), ((500, 281), 315),
)
FLICKR30K_PROPOSALS = (50, 100)  # detector boxes per image, drawn uniformly in this range (M keeps the first M)
FILES_PER_SIZE = 8  # distinct JPEG renderings per size; the image ids share them as hard links (same decode cost)


@dataclasses.dataclass(frozen=True)
class SyntheticShapes:
    """Shapes of a ``--synthetic-shapes`` dataset (defaults: Flickr30K's statistics).

    ``height`` / ``width`` 0: each image's size drawn from ``FLICKR30K_SIZES`` (its share of orientations);
    given, every image has that size. ``proposals`` 0: 50-100 per image (``FLICKR30K_PROPOSALS``).
    """

    images: int = 4096  # image ids (train split): a 40-pair batch of single pairs holds ~39.7 distinct images
    captions_per_image: int = 5  # Flickr30K: five
    height: int = 0
    width: int = 0
    proposals: int = 0  # stored per image (data.max_proposals reads the first M)
    phrases: int = 3  # grounded phrases per caption (Flickr30K: ~3)
    relations: int = 2  # relations per caption

    def image_size(self, rng: np.random.Generator) -> tuple[int, int]:
        """``(height, width)`` of one image."""
        if self.height and self.width:
            return self.height, self.width
        weights = np.array([count for _, count in FLICKR30K_SIZES], dtype=np.float64)
        width, height = FLICKR30K_SIZES[int(rng.choice(len(weights), p=weights / weights.sum()))][0]
        return height, width

    def proposal_count(self, rng: np.random.Generator) -> int:
        return self.proposals or int(rng.integers(FLICKR30K_PROPOSALS[0], FLICKR30K_PROPOSALS[1] + 1))


def write_synthetic_shapes(root: str | Path, shapes: SyntheticShapes = SyntheticShapes(), seed: int = 0) -> Path:
    """A dataset in the Flickr30K layout (JPEGs, XML boxes, marked-up captions, proposals HDF5, relations JSON) at
    ``shapes``; content is noise, only the shapes matter. Every split lists the same images.

    Each image id has its own file; ids of one size share ``FILES_PER_SIZE`` renderings as hard links (a copy
    where links fail), so thousands of ids cost a few JPEG encodings while every id's file is decoded as a photo of
    its size would be.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("Images", "Annotations", "Sentences", "renderings"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    p = shapes.phrases
    ids = [f"{1000 + i}" for i in range(shapes.images)]
    proposal_sets = {}
    relations_of_image: dict[str, dict[str, list[dict[str, Any]]]] = {}
    renderings: dict[tuple[int, int, int], Path] = {}
    for image_id in ids:
        h, w = shapes.image_size(rng)
        m = shapes.proposal_count(rng)
        key = (h, w, int(rng.integers(FILES_PER_SIZE)))
        if key not in renderings:
            # Smooth noise compresses like a photo (a white-noise JPEG decodes several times slower than a real one).
            small = rng.integers(0, 256, size=(max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
            renderings[key] = root / "renderings" / f"{h}x{w}_{key[2]}.jpg"
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(renderings[key], quality=90)
        _link(renderings[key], root / "Images" / f"{image_id}.jpg")
        boxes = _random_boxes(rng, p, h, w)
        annotation = ET.Element("annotation")
        size = ET.SubElement(annotation, "size")
        for tag, value in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for chain, box in enumerate(boxes, start=1):
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = str(chain)
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, tag).text = str(int(value) + 1)  # 1-based inclusive, as Flickr30K
        ET.ElementTree(annotation).write(root / "Annotations" / f"{image_id}.xml")
        lines = []
        for _ in range(shapes.captions_per_image):
            words = [str(x) for x in rng.choice(SYNTHETIC_WORDS, size=4 * p + 2)]
            parts = []
            for k in range(p):  # "[/EN#<chain>/<type> two words] two more", chain k + 1 = box k + 1
                a, b, c, d = words[4 * k : 4 * k + 4]
                parts.append(f"[/EN#{k + 1}/people {a} {b}] {c} {d}")
            lines.append(" ".join(parts) + " .")
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        proposal_boxes = _random_boxes(rng, m, h, w).astype(np.float32)
        proposal_sets[image_id] = ProposalSet(
            proposal_boxes, rng.random(m), rng.integers(0, len(SYNTHETIC_CLASSES), m), w, h
        )
        relations_of_image[image_id] = {
            str(s): [
                {"subject": r % p, "object": (r + 1) % p, "text": "next to", "categories": [r % 2]}
                for r in range(min(shapes.relations, p - 1))
            ]
            for s in range(shapes.captions_per_image)
        }
    write_proposals(root / "proposals.h5", proposal_sets, SYNTHETIC_CLASSES)
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        relations = {
            "categories": [{"name": "next to", "count": 10}, {"name": "under", "count": 10}],
            "min_freq": 1,
            "images": relations_of_image,
            "stats": {},
            "split": split,
        }
        (root / f"relations_{split}.json").write_text(json.dumps(relations))
    return root


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """[n, 4] integer xyxy boxes inside an h x w image, each side at least 1/8 of the image."""
    x1 = rng.integers(0, w - w // 8, n)
    y1 = rng.integers(0, h - h // 8, n)
    x2 = np.minimum(w - 1, x1 + w // 8 + rng.integers(0, w // 2, n))
    y2 = np.minimum(h - 1, y1 + h // 8 + rng.integers(0, h // 2, n))
    return np.stack((x1, y1, x2, y2), axis=1).astype(np.float64)
