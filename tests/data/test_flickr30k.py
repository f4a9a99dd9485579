"""Flickr30K Entities reader against an independent parse of the same files (xml.etree + regex loops)."""
from __future__ import annotations

import logging
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from relground.data.flickr30k import SkipReport, load_flickr30k
from tests.data.conftest import FLICKR_MINI
from tests.utils import needs_shared_data

PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^ \]]+)+) ([^\]]+)\]")


def expected_chain_boxes(xml_path: Path) -> dict[str, list[tuple]]:
    """Independent reading: every <bndbox> minus 1, given to every <name> of its object."""
    boxes: dict[str, list[tuple]] = {}
    for obj in ET.parse(xml_path).getroot().findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = tuple(float(box.find(t).text) - 1 for t in ("xmin", "ymin", "xmax", "ymax"))
        for name in obj.findall("name"):
            boxes.setdefault(name.text, []).append(coords)
    return boxes


def expected_phrases(root: Path, image_id: str) -> list[tuple[int, str, str, tuple, tuple | None]]:
    """(sentence line, chain, text, types, union box or None) of every marked phrase, by regex."""
    boxes = expected_chain_boxes(root / "Annotations" / f"{image_id}.xml")
    out = []
    for line_number, line in enumerate((root / "Sentences" / f"{image_id}.txt").read_text().split("\n")):
        for chain, types, text in PHRASE.findall(line):
            chain_boxes = boxes.get(chain)
            union = None
            if chain_boxes:
                union = (min(b[0] for b in chain_boxes), min(b[1] for b in chain_boxes),
                         max(b[2] for b in chain_boxes), max(b[3] for b in chain_boxes))
            out.append((line_number, chain, text, tuple(types.strip("/").split("/")), union))
    return out


def actual_phrases(image) -> list[tuple]:
    return [(s.sentence_index, p.phrase_id, p.text, p.phrase_types, p.union_box) for s in image.sentences for p in s.phrases]


def check_split_against_independent_parse(root: Path, split: str) -> int:
    images = load_flickr30k(root, split)
    ids = (root / f"{split}.txt").read_text().split()
    assert [im.image_id for im in images] == ids
    grounded = 0
    for image in images:
        expected = expected_phrases(root, image.image_id)
        assert actual_phrases(image) == expected, image.image_id
        assert image.chain_boxes == expected_chain_boxes(root / "Annotations" / f"{image.image_id}.xml")
        size = ET.parse(root / "Annotations" / f"{image.image_id}.xml").getroot().find("size")
        assert (image.width, image.height) == (int(size.find("width").text), int(size.find("height").text))
        grounded += sum(e[4] is not None for e in expected)
    return grounded


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fixture_matches_independent_parse(split):
    assert check_split_against_independent_parse(FLICKR_MINI, split) > 0


def test_words_and_spans_agree():
    for image in load_flickr30k(FLICKR_MINI, "test"):
        for sentence in image.sentences:
            assert sentence.words == sentence.text.split(" ")
            assert "[" not in sentence.text and "]" not in sentence.text
            for p in sentence.phrases:
                assert sentence.words[p.first_word_index : p.first_word_index + p.num_words] == p.text.split(" ")


def test_official_semantics_on_known_cases():
    images = {im.image_id: im for split in ("train", "val", "test") for im in load_flickr30k(FLICKR_MINI, split)}
    # 1016887272: chain 547 has seven boxes -> union; chain 554 is nobndbox only -> not grounded.
    first = images["1016887272"].sentences[0]
    climbers = first.phrases[0]
    assert (climbers.text, climbers.phrase_id, climbers.phrase_types) == ("Several climbers", "547", ("people",))
    assert climbers.union_box == (161.0, 101.0, 255.0, 453.0)
    row = first.phrases[1]
    assert (row.phrase_id, row.grounded) == ("554", False)
    # not-visual chain 0 is never grounded; a multi-type phrase keeps all its types
    all_phrases = [p for im in images.values() for s in im.sentences for p in s.phrases]
    assert any(p.phrase_id == "0" for p in all_phrases)
    assert not any(p.grounded for p in all_phrases if p.phrase_id == "0")
    assert any(len(p.phrase_types) > 1 for p in all_phrases)


def test_object_with_several_names_gives_its_box_to_each_chain():
    multi = []
    for xml in sorted((FLICKR_MINI / "Annotations").glob("*.xml")):
        for obj in ET.parse(xml).getroot().findall("object"):
            names = [n.text for n in obj.findall("name")]
            if len(names) > 1 and obj.find("bndbox") is not None:
                multi.append((xml.stem, names, tuple(float(obj.find("bndbox").find(t).text) - 1
                                                     for t in ("xmin", "ymin", "xmax", "ymax"))))
    assert multi, "the fixture must contain a multi-name object"
    images = {im.image_id: im for split in ("train", "val", "test") for im in load_flickr30k(FLICKR_MINI, split)}
    for image_id, names, box in multi:
        for name in names:
            assert box in images[image_id].chain_boxes[name]


@pytest.fixture
def broken_root(tmp_path):
    root = tmp_path / "flickr"
    shutil.copytree(FLICKR_MINI, root)
    return root


def test_broken_xml_names_the_file(broken_root):
    (broken_root / "Annotations" / "2612125121.xml").write_text("<annotation><size>")
    with pytest.raises(ValueError, match=r"2612125121\.xml: broken XML"):
        load_flickr30k(broken_root, "test")


def test_unbalanced_bracket_names_file_and_line(broken_root):
    path = broken_root / "Sentences" / "2193001254.txt"
    lines = path.read_text().split("\n")
    lines[2] = lines[2].replace("]", "", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"2193001254\.txt:3: (unbalanced|nested)"):
        load_flickr30k(broken_root, "test")


def test_stray_closing_bracket(broken_root):
    path = broken_root / "Sentences" / "2193001254.txt"
    path.write_text("A dog] runs .\n")
    with pytest.raises(ValueError, match=r"2193001254\.txt:1: unbalanced '\]'"):
        load_flickr30k(broken_root, "test")


def test_empty_caption_names_file_and_line(broken_root):
    path = broken_root / "Sentences" / "2193001254.txt"
    lines = path.read_text().split("\n")
    lines[1] = "   "
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"2193001254\.txt:2: empty caption"):
        load_flickr30k(broken_root, "test")


def test_empty_sentences_file(broken_root):
    (broken_root / "Sentences" / "2193001254.txt").write_text("")
    with pytest.raises(ValueError, match=r"2193001254\.txt: no captions"):
        load_flickr30k(broken_root, "test")


def test_box_outside_the_image(broken_root):
    path = broken_root / "Annotations" / "1016887272.xml"
    path.write_text(path.read_text().replace("<xmax>231</xmax>", "<xmax>400</xmax>", 1))
    with pytest.raises(ValueError, match=r"1016887272\.xml: <object> #0 .*outside the 333x500 image"):
        load_flickr30k(broken_root, "test")


def test_phrase_chain_missing_from_the_xml(broken_root):
    path = broken_root / "Sentences" / "1016887272.txt"
    path.write_text(path.read_text().replace("[/EN#551/other the line]", "[/EN#999999/other the line]"))
    with pytest.raises(ValueError, match=r"1016887272\.txt:1: phrase 'the line' of chain 999999 has no <object>"):
        load_flickr30k(broken_root, "test")


def test_missing_files(broken_root):
    (broken_root / "Sentences" / "2612125121.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"2612125121\.txt"):
        load_flickr30k(broken_root, "test")
    with pytest.raises(FileNotFoundError, match=r"nosplit\.txt"):
        load_flickr30k(broken_root, "nosplit")


def test_skip_invalid_reports_every_skip(broken_root, caplog):
    (broken_root / "Annotations" / "2612125121.xml").write_text("<annotation>")
    (broken_root / "Sentences" / "2193001254.txt").write_text("[/EN#1/people A man\n")
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger="relground.data.flickr30k"):
        images = load_flickr30k(broken_root, "test", skip_invalid=True, report=report)
    assert [im.image_id for im in images] == ["1016887272"]
    assert [image_id for image_id, _ in report.skipped] == ["2612125121", "2193001254"]
    assert "broken XML" in report.skipped[0][1] and "never closed" in report.skipped[1][1]
    assert "skipped 2 invalid item(s)" in caplog.text


def test_image_paths_are_found(broken_root):
    (broken_root / "Images").mkdir()
    (broken_root / "Images" / "1016887272.jpg").write_bytes(b"")
    paths = {im.image_id: im.image_path for im in load_flickr30k(broken_root, "test")}
    assert paths["1016887272"] == str(broken_root / "Images" / "1016887272.jpg")
    assert paths["2612125121"] is None


@needs_shared_data
@pytest.mark.parametrize("split, grounded", [("test", 14481), ("val", 14433)])
def test_real_split_counts_and_every_union_box(flickr_root, split, grounded):
    assert check_split_against_independent_parse(flickr_root, split) == grounded


def test_process_pool_gives_the_same_records():
    serial = load_flickr30k(FLICKR_MINI, "test", workers=0)
    pooled = load_flickr30k(FLICKR_MINI, "test", workers=2)
    assert pooled == serial  # dataclass equality: every field of every record
