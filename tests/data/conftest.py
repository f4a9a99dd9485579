"""Fixtures for the data tests: the small cuts in tests/fixtures and the real annotations, unpacked once."""
from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from relground.data.flickr30k import load_flickr30k
from relground.language.vocab import PHRASE_SPECIALS, Vocabulary, tokenize
from tests.utils import FIXTURES, REPO, SHARED_DATA

# Unpacked real annotations live outside the checkout and are shared by every test run on the machine.
CACHE = Path(os.environ.get("RELGROUND_CACHE", REPO.parent / ".cache"))
FLICKR_MINI = FIXTURES / "flickr30k_mini"
REFERIT_MINI = FIXTURES / "referit_mini"


def unpack_once(archive: Path, target: Path, extra_files: tuple[Path, ...] = ()) -> Path:
    """Unpack ``archive`` into ``target`` unless a previous run finished it (``.complete`` marker).

    A file lock serialises concurrent test processes; unpacking goes to a temporary folder renamed into place,
    so an interrupted run never leaves a half-unpacked ``target`` that looks finished.
    """
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            for extra in extra_files:
                shutil.copy(extra, staging / extra.name)
            (staging / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


@pytest.fixture(scope="session")
def flickr_root() -> Path:
    """The full Flickr30K Entities annotations (Annotations/, Sentences/, split lists)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    src = SHARED_DATA / "flickr30k_entities"
    splits = tuple(src / f"{s}.txt" for s in ("train", "val", "test"))
    return unpack_once(src / "annotations.tar.xz", CACHE / "flickr30k_entities", splits)


@pytest.fixture(scope="session")
def referit_root() -> Path:
    """The full text_objseg ReferItGame files (the folder holding referit_bbox.json)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return unpack_once(SHARED_DATA / "referit" / "text_objseg.tar.xz", CACHE / "referit") / "text_objseg"


def run_data_cli(argv: list[str]) -> int:
    """Run ``relground data <argv>`` through the real ``relground.cli.data`` parsers (no other subcommands)."""
    import argparse

    from relground.cli import data

    parser = argparse.ArgumentParser(prog="relground")
    data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


DETECTOR_CLASSES = ["man", "woman", "dog", "shirt", "water", "rock", "grass", "sky"]


def write_smooth_jpeg(path: Path, width: int, height: int, seed: int, quality: int = 90) -> None:
    """A JPEG with low-frequency content (upsampled noise), closer to a photo than white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    small.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=quality)


def make_grounding_root(tmp_path: Path, split: str = "test", proposals_per_image: int = 12):
    """Copy the Flickr fixture, add a JPEG per image (size from its XML) and a proposals file.

    Proposals are each chain's boxes plus random boxes, labels drawn over ``DETECTOR_CLASSES``.

    Returns:
        tuple: ``(root, proposals_path)``.
    """

    from relground.data.flickr30k import load_flickr30k
    from relground.data.proposals import ProposalSet, write_proposals

    root = tmp_path / "flickr"
    shutil.copytree(FLICKR_MINI, root)
    (root / "Images").mkdir()
    rng = np.random.default_rng(0)
    sets = {}
    for seed, image in enumerate(load_flickr30k(root, split)):
        write_smooth_jpeg(root / "Images" / f"{image.image_id}.jpg", image.width, image.height, seed)
        boxes = [b for chain in image.chain_boxes.values() for b in chain][:proposals_per_image]
        while len(boxes) < proposals_per_image:
            x, y = rng.uniform(0, [image.width / 2, image.height / 2])
            boxes.append((x, y, x + rng.uniform(1, image.width / 2), y + rng.uniform(1, image.height / 2)))
        n = len(boxes)
        sets[image.image_id] = ProposalSet(np.array(boxes), rng.random(n), rng.integers(0, len(DETECTOR_CLASSES), n),
                                           image.width, image.height)
    proposals = write_proposals(root / f"proposals_{split}.h5", sets, DETECTOR_CLASSES)
    return root, proposals


# One 0..255 grey level in normalised units (the smallest std), for comparing image decoders.
GREY_LEVEL = {"caffe_bgr": 1.0, "torchvision": 1 / (255 * 0.229)}


def fake_prior(phrase_words):
    """A deterministic stand-in for the category prior: [P, len(DETECTOR_CLASSES)]."""
    return np.arange(len(phrase_words) * len(DETECTOR_CLASSES), dtype=np.float32).reshape(len(phrase_words), -1) % 5


@pytest.fixture(scope="module")
def grounding_parts(tmp_path_factory):
    """(images, proposals file, caption vocabulary, phrase vocabulary) of a small JPEG grounding root."""
    root, proposals = make_grounding_root(tmp_path_factory.mktemp("grounding"))
    images = load_flickr30k(root, "test")
    captions = Vocabulary.build([tokenize(s.text) for im in images for s in im.sentences])
    phrases = Vocabulary.build([tokenize(p.text) for im in images for s in im.sentences for p in s.phrases],
                               specials=PHRASE_SPECIALS)
    return images, proposals, captions, phrases
