"""ReferItGame reader for the ``text_objseg`` split files (the GroundR / text_objseg 10k/10k split).

Files (in ``ROOT`` or ``ROOT/text_objseg``)::

    referit_query_<split>.json   {imcrop_id: [expression, ...]}
    referit_bbox.json            {imcrop_id: [xmin, ymin, xmax, ymax]}   0-based, inclusive
    referit_imcrop.json          {"<image>.jpg": [imcrop_id, ...]}
    referit_imsize.json          {"<image>.jpg": [width, height]}
    referit_<split>_imlist.txt   image names without extension
    images/<image>.jpg           optional (ReferIt_Images)

Each expression becomes one :class:`SentenceAnnotation` holding one phrase that spans all its words,
grounded to its imcrop's box.

Box convention: the bbox file's inclusive 0-based corners are kept as they are, i.e. the same convention
the Flickr30K reader produces after the official ``-1`` (``x2`` is the last covered pixel, width = x2 - x1,
so a full-image box is ``[0, 0, W - 1, H - 1]``). Both datasets are therefore evaluated identically.

Expressions are whitespace-normalised (``" ".join(text.split())``) so that ``words == text.split(" ")``;
1,374 test expressions carry doubled or trailing spaces in the release.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from relground.structures.records import ImageAnnotation, PhraseAnnotation, SentenceAnnotation
from relground.utils.jsonfile import DuplicateKeyError, load_json_strict
from relground.utils.paths import expect_file

QUERY_FILE = "referit_query_{split}.json"
BBOX_FILE = "referit_bbox.json"
IMCROP_FILE = "referit_imcrop.json"
IMSIZE_FILE = "referit_imsize.json"
IMLIST_FILE = "referit_{split}_imlist.txt"
# A ReferIt phrase has no Flickr-style type; one fixed type keeps per-type tables well defined.
PHRASE_TYPE = "referit"


def find_referit_dir(root) -> Path:
    """``root`` itself or ``root/text_objseg``, whichever holds ``referit_bbox.json``."""
    root = Path(root)
    for candidate in (root, root / "text_objseg"):
        if (candidate / BBOX_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{BBOX_FILE} not found in {root} or {root / 'text_objseg'} (ReferIt root)")


def read_json(path: Path):
    """A ReferIt JSON file; ``FileNotFoundError`` / ``ValueError`` naming it when missing, broken or not UTF-8."""
    expect_file(path, "ReferIt file")
    try:
        with open(path, encoding="utf-8") as f:
            return load_json_strict(f)  # an imcrop or image given twice is named
    except DuplicateKeyError as e:
        raise ValueError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: broken JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a text_objseg JSON file") from None


def _expect_object(data, path: Path, layout: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {layout}, got {type(data).__name__}")


def _crop_sort_key(imcrop_id: str):
    region = imcrop_id.rsplit("_", 1)[-1]
    return (int(region), imcrop_id) if region.isdigit() else (1 << 30, imcrop_id)


def load_referit(root, split: str) -> list[ImageAnnotation]:
    """Load one ReferItGame split.

    Args:
        root (str | Path): the ``text_objseg`` folder (or its parent).
        split (str): ``train``, ``val``, ``trainval``, ``test`` or ``all``.

    Returns:
        list[ImageAnnotation]: images in the split's ``imlist`` order that have at least one query; the
        ``sentence_index`` runs over the image's queries (crops by region number, then expressions in file
        order). ``chain_boxes`` maps each imcrop id to its box; ``phrase_id`` is the imcrop id.

    Raises:
        FileNotFoundError: a split file is missing.
        ValueError: a query's crop has no box, an image has no size, or a box is inverted or outside the
            image (names the file and the imcrop id).

    Example:
        >>> images = load_referit("/data/referit/text_objseg", "test")  # doctest: +SKIP
        >>> sum(len(im.sentences) for im in images)  # doctest: +SKIP
        60105
    """
    folder = find_referit_dir(root)
    queries = read_json(folder / QUERY_FILE.format(split=split))
    bboxes = read_json(folder / BBOX_FILE)
    sizes = read_json(folder / IMSIZE_FILE)
    query_path = folder / QUERY_FILE.format(split=split)
    _expect_object(queries, query_path, "{imcrop_id: [expression, ...]}")
    _expect_object(bboxes, folder / BBOX_FILE, "{imcrop_id: [xmin, ymin, xmax, ymax]}")
    _expect_object(sizes, folder / IMSIZE_FILE, '{"<image>.jpg": [width, height]}')
    if not queries:
        raise ValueError(f"{query_path}: no queries (split {split!r} is empty)")
    for imcrop_id, expressions in queries.items():
        if not isinstance(expressions, list):
            raise ValueError(f"{query_path}: imcrop {imcrop_id!r}: expected a list of expressions, got {expressions!r}")
    imlist_path = folder / IMLIST_FILE.format(split=split)
    if imlist_path.is_file():
        image_order = [line.strip() for line in imlist_path.read_text().splitlines() if line.strip()]
    else:
        image_order = []

    crops_by_image: dict[str, list[str]] = {}
    for imcrop_id in queries:
        crops_by_image.setdefault(imcrop_id.rsplit("_", 1)[0], []).append(imcrop_id)
    # Images with queries but missing from the imlist still load (appended in id order), never dropped.
    listed = set(image_order)
    order = [i for i in image_order if i in crops_by_image] + sorted(set(crops_by_image) - listed)
    images_dir = folder / "images" if (folder / "images").is_dir() else None

    images = []
    for image_id in order:
        name = f"{image_id}.jpg"
        if name not in sizes:
            raise ValueError(f"{folder / IMSIZE_FILE}: no size for image {name!r}")
        size = sizes[name]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in size)):
            raise ValueError(f"{folder / IMSIZE_FILE}: image {name!r}: expected [width, height] > 0, got {size!r}")
        width, height = (int(v) for v in size)
        chain_boxes = {}
        sentences = []
        for imcrop_id in sorted(crops_by_image[image_id], key=_crop_sort_key):
            box = _crop_box(bboxes, imcrop_id, width, height, folder / BBOX_FILE)
            chain_boxes[imcrop_id] = [box]
            for expression in queries[imcrop_id]:
                text = " ".join(str(expression).split())
                if not text:
                    raise ValueError(f"{folder / QUERY_FILE.format(split=split)}: imcrop {imcrop_id!r}: empty expression")
                words = text.split(" ")
                phrase = PhraseAnnotation(0, text, imcrop_id, (PHRASE_TYPE,), box)
                sentences.append(SentenceAnnotation(len(sentences), text, words, [phrase]))
        image_path: Optional[str] = str(images_dir / name) if images_dir is not None else None
        images.append(ImageAnnotation(image_id, width, height, sentences, chain_boxes, image_path))
    return images


def _crop_box(bboxes: dict, imcrop_id: str, width: int, height: int, path: Path) -> tuple[float, float, float, float]:
    if imcrop_id not in bboxes:
        raise ValueError(f"{path}: no box for imcrop {imcrop_id!r}")
    raw = bboxes[imcrop_id]
    if not (isinstance(raw, list) and len(raw) == 4 and all(isinstance(v, (int, float)) for v in raw)):
        raise ValueError(f"{path}: imcrop {imcrop_id!r}: box must be 4 numbers [xmin, ymin, xmax, ymax], got {raw!r}")
    x1, y1, x2, y2 = (float(v) for v in raw)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"{path}: imcrop {imcrop_id!r}: non-finite box {raw}")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{path}: imcrop {imcrop_id!r}: inverted box {raw}")
    if x1 < 0 or y1 < 0 or x2 > width - 1 or y2 > height - 1:
        raise ValueError(f"{path}: imcrop {imcrop_id!r}: box {raw} outside the {width}x{height} image")
    return (x1, y1, x2, y2)
