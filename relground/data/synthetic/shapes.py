"""Stand-in data at given shapes in the Flickr30K layout: noise JPEGs, XML boxes, marked-up captions, proposals
HDF5 and relations JSON, for measuring a machine (``relground benchmark --synthetic-shapes``) without a dataset.

Only the shapes matter (image size, proposals per image, captions per image, phrases and relations per caption);
the content is noise.
"""
from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from relground.data.proposals import ProposalSet, write_proposals

SYNTHETIC_CLASSES = ("person", "dog", "car", "bike", "tree", "hat")
SYNTHETIC_WORDS = "a man in a red shirt rides a small bike next to the old car under the tall tree with his dog".split()


@dataclasses.dataclass(frozen=True)
class SyntheticShapes:
    """Shapes of a ``--synthetic-shapes`` dataset (defaults: the paper's Flickr30K setting)."""

    images: int = 48  # distinct images on disk (train split)
    captions_per_image: int = 5  # Flickr30K: five
    height: int = 600
    width: int = 1000
    proposals: int = 50  # M
    phrases: int = 3  # grounded phrases per caption (Flickr30K: ~3)
    relations: int = 2  # relations per caption


def write_synthetic_shapes(root: str | Path, shapes: SyntheticShapes = SyntheticShapes(), seed: int = 0) -> Path:
    """A dataset in the Flickr30K layout (JPEGs, XML boxes, marked-up captions, proposals HDF5, relations JSON) at
    ``shapes``; content is noise, only the shapes matter. Every split lists the same images.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("Images", "Annotations", "Sentences"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    h, w, m, p = shapes.height, shapes.width, shapes.proposals, shapes.phrases
    ids = [f"{1000 + i}" for i in range(shapes.images)]
    proposal_sets = {}
    relations_of_image: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for image_id in ids:
        # Smooth noise compresses like a photo (a white-noise JPEG decodes several times slower than a real one).
        small = rng.integers(0, 256, size=(max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / "Images" / f"{image_id}.jpg", quality=90)
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


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """[n, 4] integer xyxy boxes inside an h x w image, each side at least 1/8 of the image."""
    x1 = rng.integers(0, w - w // 8, n)
    y1 = rng.integers(0, h - h // 8, n)
    x2 = np.minimum(w - 1, x1 + w // 8 + rng.integers(0, w // 2, n))
    y2 = np.minimum(h - 1, y1 + h // 8 + rng.integers(0, h // 2, n))
    return np.stack((x1, y1, x2, y2), axis=1).astype(np.float64)
