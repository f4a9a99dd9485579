"""The dataset catalog: every dataset relground knows, and what the rest of the code needs to know about it.

One :class:`DatasetEntry` per name: its annotation reader, its statistics, its on-disk layout (where the
images are, how image sizes are read when converting proposals) and its evaluation metadata (the twins
file of the synthetic benchmark). Code that depends on the dataset asks the catalog instead of switching on
the name::

    images = load_split("referit", root, "test")              # the dataset's reader
    stats = dataset_entry("referit").stats(images)            # its counts
    sizes = image_sizes_from_root(root)                      # proposal conversion: sizes by layout

Which names exist is written twice on purpose: ``relground.config.data.DATASETS`` (the config layer validates
``data.dataset`` and must not import ``relground.data``: it sits on a lower floor) and :data:`CATALOG` here
(what each dataset *is*). The assertion below the catalog makes the two fail at import if they ever differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from relground.config.data import DATASETS
from relground.data.flickr30k import load_flickr30k, read_image_size
from relground.data.referit import IMSIZE_FILE, find_referit_dir, load_referit, read_json
from relground.data.stats import split_stats
from relground.structures.records import ImageAnnotation

# ``{image_id: [chain ids of the two identical twins]}``, written by the synthetic generator at the dataset root
# and read by ``relground.evaluation.evaluator.load_twins`` (the ``twin`` / ``no_twin`` groups).
TWINS_FILE = "twins.json"

ImageSizes = dict[str, tuple[int, int]]  # image id -> (width, height) pixels


def _load_flickr_layout(root, split: str, skip_invalid: bool = False) -> list[ImageAnnotation]:
    return load_flickr30k(root, split, skip_invalid=skip_invalid)


def _load_referit(root, split: str, skip_invalid: bool = False) -> list[ImageAnnotation]:
    # The text_objseg files are a handful of JSON files: nothing to skip image by image.
    return load_referit(root, split)


def _flickr_image_sizes(root: Path) -> ImageSizes:
    return {p.stem: read_image_size(p) for p in sorted((root / "Annotations").glob("*.xml"))}


def _referit_image_sizes(root: Path) -> ImageSizes:
    path = find_referit_dir(root) / IMSIZE_FILE
    sizes = read_json(path)  # named errors for a missing, broken or undecodable file
    try:
        return {Path(name).stem: (int(w), int(h)) for name, (w, h) in sizes.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f'{path}: expected {{"<image>.jpg": [width, height]}} with integer sizes') from None


def _referit_stats(images: list[ImageAnnotation]) -> dict[str, int]:
    stats = split_stats(images)
    stats["queries"] = stats["sentences"]
    stats["objects"] = stats["chains_with_boxes"]  # one chain per imcrop; some imcrops share a box
    return stats


@dataclass(frozen=True)
class DatasetEntry:
    """What relground knows about one dataset.

    Attributes:
        name (str): the ``data.dataset`` / ``--dataset`` value.
        load (Callable[[root, split, skip_invalid], list[ImageAnnotation]]): reads one split's annotations.
        stats (Callable[[list[ImageAnnotation]], dict[str, int]]): ``relground data stats`` counts of a split.
        layout (str): ``flickr30k`` (``ROOT/Annotations``, ``ROOT/Sentences``, ``ROOT/<split>.txt``) or
            ``referit`` (the ``text_objseg`` JSON files).
        images (str): folder of the image files, relative to the layout's root, where the reader finds each
            record's ``image_path`` (``data.images`` overrides it).
        image_sizes (Callable[[Path], dict[str, tuple[int, int]]]): ``(width, height)`` per image id, from the
            annotations (proposal conversion needs them).
        twins_file (str, optional): evaluation metadata at the root, ``None`` when the dataset has none.
    """

    name: str
    load: Callable[..., list[ImageAnnotation]]
    stats: Callable[[list[ImageAnnotation]], dict[str, int]]
    layout: str
    images: str
    image_sizes: Callable[[Path], ImageSizes]
    twins_file: Optional[str] = None


CATALOG: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry("flickr30k", _load_flickr_layout, split_stats, "flickr30k", "Images", _flickr_image_sizes),
        DatasetEntry("referit", _load_referit, _referit_stats, "referit", "images", _referit_image_sizes),
        DatasetEntry("synthetic", _load_flickr_layout, split_stats, "flickr30k", "Images", _flickr_image_sizes,
                     twins_file=TWINS_FILE),
    )
}
assert tuple(CATALOG) == DATASETS, f"relground.config.data.DATASETS {DATASETS} != the catalog's {tuple(CATALOG)}"


def dataset_entry(dataset: str) -> DatasetEntry:
    """The catalog entry of ``dataset``; ``ValueError`` naming the known datasets otherwise."""
    if dataset not in CATALOG:
        raise ValueError(f"--dataset: unknown dataset {dataset!r} ({', '.join(CATALOG)})")
    return CATALOG[dataset]


def load_split(dataset: str, root, split: str, skip_invalid: bool = False) -> list[ImageAnnotation]:
    """Load ``split`` of ``dataset`` under ``root`` with the dataset's reader (no relations attached).

    Args:
        dataset (str): a catalog name (``flickr30k``, ``referit``, ``synthetic``).
        root (str | Path): dataset root (Flickr30K Entities layout, or the ``text_objseg`` folder).
        split (str): split name, e.g. ``test``.
        skip_invalid (bool): Flickr layout: leave malformed images out (reported) instead of failing.

    Returns:
        list[ImageAnnotation]: in the split file's order.

    Example:
        >>> images = load_split("flickr30k", "data/flickr30k_entities", "test")  # doctest: +SKIP
        >>> len(images), images[0].sentences[0].phrases[0].union_box  # doctest: +SKIP
        (1000, (...))
    """
    return dataset_entry(dataset).load(root, split, skip_invalid=skip_invalid)


def image_sizes_from_root(root) -> ImageSizes:
    """Image sizes of a dataset root, whichever layout it has: ``ROOT/Annotations/*.xml`` (Flickr30K Entities,
    synthetic) when that folder exists, else the ReferIt ``referit_imsize.json``."""
    root = Path(root)
    layout = "flickr30k" if (root / "Annotations").is_dir() else "referit"
    return CATALOG[layout].image_sizes(root)
