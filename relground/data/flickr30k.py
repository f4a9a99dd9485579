"""Flickr30K Entities reader (official layout), with the official parser's semantics.

Layout::

    ROOT/Annotations/<image_id>.xml   PASCAL-VOC-like objects: <name> chain ids + <bndbox> | <scene>/<nobndbox>
    ROOT/Sentences/<image_id>.txt     5 captions, phrases marked as [/EN#<chain>/<type>[/<type>...] words ...]
    ROOT/{train,val,test}.txt         image ids of each split
    ROOT/Images/<image_id>.jpg        optional

Semantics follow ``flickr30k_entities_utils.py`` (the dataset authors' parser): boxes are the raw 1-based
inclusive XML coordinates minus 1; an object with several ``<name>`` gives its box to each chain; a phrase may
carry several types; chain ``0`` is not visual. Evaluation view: a phrase is grounded iff its chain has at
least one box, and its ground truth is the union of the chain's boxes.
"""
from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from relground.language.captions import parse_markup
from relground.structures.records import Box, ImageAnnotation, PhraseAnnotation, SentenceAnnotation
from relground.utils.paths import expect_file, expect_folder

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NOT_VISUAL_CHAIN = "0"
# Official boxes may touch the border; after the -1 shift x2 <= width - 1. One pixel of slack keeps
# annotations that end exactly on the border (raw xmax = width + 1 never occurs in the release).
BOX_TOLERANCE = 1.0
# Parse in worker processes only when a split is big enough to amortise the pool start-up and there are
# enough cores: shipping the parsed records back costs about as much as parsing them, so on 2 cores a pool
# is slower than one process (train: 41 s in-process vs 105 s with 2 workers on a loaded 2-core machine).
PARALLEL_MIN_IMAGES = 2000
PARALLEL_MIN_CORES = 4
# An image id names the files Annotations/<id>.xml and Sentences/<id>.txt: no path separators or control bytes.
_SAFE_ID = re.compile(r"^[^/\\\x00-\x1f]+$")


@dataclass
class SkipReport:
    """Items a ``skip_invalid`` load left out, each with the reason (the error message)."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image_id, reason)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        head = "; ".join(f"{image_id}: {reason}" for image_id, reason in self.skipped[:5])
        more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
        return f"skipped {len(self.skipped)} invalid item(s): {head}{more}"


def union_box(boxes: list[Box]) -> Optional[Box]:
    """Smallest box containing all ``boxes`` (xyxy), ``None`` for an empty list."""
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _xml_int(element: ET.Element, tag: str, path: Path) -> int:
    child = element.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{path}: <{element.tag}> has no <{tag}>")
    try:
        value = float(child.text)
        number = int(value)
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        raise ValueError(f"{path}: <{element.tag}>/<{tag}> is not a finite number: {child.text!r}") from None
    if number != value:  # the release's coordinates are whole pixels: 110.5 would be cut to 110 silently
        raise ValueError(f"{path}: <{element.tag}>/<{tag}> is not a whole number of pixels: {child.text!r} (the "
                         "Flickr30K Entities layout stores integers; round it in the file)")
    return number


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: broken XML: {e}") from None


def read_image_size(path) -> tuple[int, int]:
    """``(width, height)`` from an annotation XML's ``<size>``."""
    path = Path(path)
    size = _parse_xml(path).find("size")
    if size is None:
        raise ValueError(f"{path}: no <size> element")
    return _xml_int(size, "width", path), _xml_int(size, "height", path)


def parse_annotation_xml(path) -> tuple[int, int, dict[str, list[Box]], set[str]]:
    """Parse ``Annotations/<id>.xml``.

    Returns:
        tuple: ``(width, height, chain_boxes, chains)`` with ``chain_boxes[chain_id]`` the 0-based xyxy boxes of
        each chain that has at least one box (scene / nobndbox objects contribute none) and ``chains`` every
        chain id named in the file.

    Raises:
        ValueError: broken XML, missing fields, an inverted box or a box outside the image (names the file
        and the object's position).
    """
    path = Path(path)
    root = _parse_xml(path)
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: no <size> element")
    width, height = _xml_int(size, "width", path), _xml_int(size, "height", path)
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: <size> must be positive, got width={width} height={height}")
    chain_boxes: dict[str, list[Box]] = {}
    chains: set[str] = set()
    for index, obj in enumerate(root.iter("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise ValueError(f"{path}: <object> #{index} has no <name>")
        chains.update(names)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            continue  # scene / nobndbox: the chain exists but has no box
        raw = [_xml_int(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")]
        box = tuple(float(v - 1) for v in raw)  # official parser: 1-based inclusive -> 0-based
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1:
            raise ValueError(f"{path}: <object> #{index} (chains {names}): inverted box {raw}")
        if x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE or y2 > height + BOX_TOLERANCE:
            raise ValueError(f"{path}: <object> #{index} (chains {names}): box {raw} outside the {width}x{height} image")
        for name in names:
            chain_boxes.setdefault(name, []).append(box)
    return width, height, chain_boxes, chains


def parse_sentence_line(line: str, path: Path, line_number: int) -> tuple[list[str], list[tuple[int, str, str, tuple[str, ...]]]]:
    """Split one marked-up caption into words and phrases, as the official ``get_sentence_data``.

    Returns:
        tuple: ``(words, phrases)`` where each phrase is ``(first_word_index, text, chain_id, types)``.

    Raises:
        ValueError: unbalanced or nested brackets, or a malformed ``[/EN#...`` tag (names file and line).
    """
    where = f"{path}:{line_number + 1}"
    words, phrases = parse_markup(line, where=where)
    for _, text, chain, _ in phrases:
        phrase_words = text.split(" ")
        if not text.strip() or "" in phrase_words:  # `[/EN#11/cross ]`: the closing bracket alone
            raise ValueError(f"{where}: empty phrase of chain {chain} (expected at least one word before its ']')")
        for word in phrase_words:
            if "[" in word or "]" in word:  # `cross]]`: the word would become `cross]`
                raise ValueError(f"{where}: stray bracket in word {word!r} of phrase {text!r} of chain {chain} "
                                 "(a doubled ']' or a '[' inside a phrase)")
    return words, phrases


def read_text_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file; ``ValueError`` naming the file and line of the first undecodable byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").split("\n")  # a leading byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: {what} is not UTF-8 text (byte {data[e.start:e.start + 1]!r} at offset "
                         f"{e.start}: {e.reason})") from None


def parse_sentences(path, chain_boxes: dict[str, list[Box]], chains: Optional[set[str]] = None) -> list[SentenceAnnotation]:
    """Parse ``Sentences/<id>.txt``; each phrase gets the union box of its chain (``None`` if it has none).

    Args:
        path (str | Path): the sentences file.
        chain_boxes (dict[str, list[Box]]): boxes per chain from the annotation XML.
        chains (set[str], optional): every chain named in the XML; when given, a phrase of another chain
            (other than the not-visual chain ``0``) is an error. The release has none (checked on all splits).
    """
    path = expect_file(path, "sentences file")
    lines = read_text_lines(path, "the sentences file")
    if lines and lines[-1].endswith("\r"):  # CRLF file: the release uses LF
        lines = [line.rstrip("\r") for line in lines]
    if lines and lines[-1] == "":  # the newline that ends the file
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: no captions (empty sentences file)")
    sentences = []
    for line_number, line in enumerate(lines):
        if not line.strip():  # the release has none; a blank line is a broken file, not a caption
            raise ValueError(f"{path}:{line_number + 1}: empty caption")
        words, phrases = parse_sentence_line(line, path, line_number)
        if chains is not None:
            for _, text, chain, _ in phrases:
                if chain != NOT_VISUAL_CHAIN and chain not in chains:
                    raise ValueError(f"{path}:{line_number + 1}: phrase {text!r} of chain {chain} has no <object> "
                                     "in the annotation XML")
        sentences.append(
            SentenceAnnotation(
                sentence_index=line_number,
                text=" ".join(words),
                words=words,
                phrases=[
                    PhraseAnnotation(first, text, chain, types, union_box(chain_boxes.get(chain, [])))
                    for first, text, chain, types in phrases
                ],
            )
        )
    return sentences


def load_image(root, image_id: str, image_path: Optional[str] = None) -> ImageAnnotation:
    """Read one image's annotation XML and sentences."""
    root = Path(root)
    xml_path = expect_file(root / "Annotations" / f"{image_id}.xml", "annotation file")
    width, height, chain_boxes, chains = parse_annotation_xml(xml_path)
    sentences = parse_sentences(root / "Sentences" / f"{image_id}.txt", chain_boxes, chains)
    return ImageAnnotation(image_id, width, height, sentences, chain_boxes, image_path)


def read_split(root, split: str, skip_invalid: bool = False, report: Optional[SkipReport] = None) -> list[str]:
    """Image ids listed in ``ROOT/<split>.txt`` (order kept).

    An id listed twice is an error naming both lines (each image would be sampled twice), or with
    ``skip_invalid`` its repeats are dropped and counted in ``report``.
    """
    path = expect_file(Path(root) / f"{split}.txt", "split list", f"split={split!r}")
    numbered = [(n + 1, line.strip()) for n, line in enumerate(read_text_lines(path, "the split list")) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: split list {split!r} is empty (expected one image id per line)")
    first_line: dict[str, int] = {}
    ids = []
    for line_number, image_id in numbered:
        if not _SAFE_ID.match(image_id):
            raise ValueError(f"{path}: split list {split!r}: {image_id!r} is not an image id (expected a file stem "
                             "such as 1000092795)")
        if image_id in first_line:
            reason = (f"{path}:{line_number}: image id {image_id!r} is listed again (first on line "
                      f"{first_line[image_id]}); each image would be sampled twice. Remove the repeat, or set "
                      "data.skip_invalid=true to drop repeats")
            if not skip_invalid:
                raise ValueError(reason)
            if report is not None:
                report.skipped.append((image_id, reason))
            continue
        first_line[image_id] = line_number
        ids.append(image_id)
    return ids


def _image_paths(root: Path) -> dict[str, str]:
    folder = root / "Images"
    if not folder.is_dir():
        return {}
    return {p.stem: str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}


def _load_one(args: tuple[str, str, Optional[str], bool, str]):
    """Worker: ``(ImageAnnotation, None)`` or, when skipping, ``(None, reason)``."""
    root, image_id, image_path, skip_invalid, split_file = args
    try:
        try:
            return load_image(root, image_id, image_path), None
        except FileNotFoundError as e:  # also name the list that asked for it (a damaged split file lists bad ids)
            raise FileNotFoundError(f"{e} (image id {image_id!r} listed in {split_file})") from None
    except (ValueError, FileNotFoundError) as e:  # ValueError: also a path of the wrong kind (a folder)
        if not skip_invalid:
            raise
        return None, str(e)


def load_flickr30k(
    root,
    split: str,
    skip_invalid: bool = False,
    report: Optional[SkipReport] = None,
    workers: Optional[int] = None,
) -> list[ImageAnnotation]:
    """Load one split of Flickr30K Entities.

    Args:
        root (str | Path): dataset root in the official layout.
        split (str): ``train``, ``val`` or ``test`` (any ``ROOT/<split>.txt`` works).
        skip_invalid (bool): leave out images whose files are missing or malformed instead of raising;
            every skipped image is logged as a warning and recorded in ``report``. Default ``False``.
        report (SkipReport, optional): filled with ``(image_id, reason)`` for each skipped image.
        workers (int, optional): parser processes; default: up to 8 when the split has at least
            ``PARALLEL_MIN_IMAGES`` images and the machine ``PARALLEL_MIN_CORES`` cores, else 0 (in-process).

    Returns:
        list[ImageAnnotation]: in the split file's order.

    Example:
        >>> images = load_flickr30k("/data/flickr30k_entities", "test")  # doctest: +SKIP
        >>> sum(p.grounded for im in images for s in im.sentences for p in s.phrases)  # doctest: +SKIP
        14481
    """
    root = expect_folder(root, "dataset root (data.root)")
    report = report if report is not None else SkipReport()
    ids = read_split(root, split, skip_invalid, report)
    paths = _image_paths(root)
    split_file = str(root / f"{split}.txt")
    jobs = [(str(root), image_id, paths.get(image_id), skip_invalid, split_file) for image_id in ids]
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(cores, 8) if len(ids) >= PARALLEL_MIN_IMAGES and cores >= PARALLEL_MIN_CORES else 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_load_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        results = [_load_one(job) for job in jobs]
    images = []
    for image_id, (image, reason) in zip(ids, results):
        if image is None:
            report.skipped.append((image_id, reason))
        else:
            images.append(image)
    if len(report):
        logger.warning("%s split %r: %s", root, split, report.summary())
    if not images:
        raise ValueError(f"{root / (split + '.txt')}: every image of split {split!r} is invalid; {report.summary()}")
    return images
