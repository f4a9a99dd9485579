"""``relground data stats --json`` against counts taken independently from the files."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from tests.data.conftest import FLICKR_MINI, REFERIT_MINI, run_data_cli
from tests.utils import needs_shared_data


def stats_json(capsys, *argv) -> dict:
    assert run_data_cli(["stats", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def independent_flickr_counts(root, split) -> dict:
    ids = (root / f"{split}.txt").read_text().split()
    counts = dict(images=len(ids), sentences=0, phrases=0, grounded_phrases=0, boxes=0)
    for image_id in ids:
        chains, seen = set(), set()
        for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().findall("object"):
            box = obj.find("bndbox")
            if box is not None:
                chains.update(n.text for n in obj.findall("name"))
                seen.add(tuple(box.find(t).text for t in ("xmin", "ymin", "xmax", "ymax")))
        counts["boxes"] += len(seen)
        for line in (root / "Sentences" / f"{image_id}.txt").read_text().splitlines():
            if line.strip():
                counts["sentences"] += 1
                found = re.findall(r"\[/EN#(\d+)/", line)
                counts["phrases"] += len(found)
                counts["grounded_phrases"] += sum(c in chains for c in found)
    return counts


@pytest.mark.parametrize("dataset", ["flickr30k", "synthetic"])
def test_flickr_layout_stats(capsys, dataset):
    got = stats_json(capsys, "--dataset", dataset, "--root", str(FLICKR_MINI), "--split", "test")
    assert {k: got[k] for k in ("images", "sentences", "phrases", "grounded_phrases", "boxes")} == \
        independent_flickr_counts(FLICKR_MINI, "test")


def test_referit_stats(capsys):
    got = stats_json(capsys, "--dataset", "referit", "--root", str(REFERIT_MINI), "--split", "val")
    queries = json.loads((REFERIT_MINI / "referit_query_val.json").read_text())
    bboxes = json.loads((REFERIT_MINI / "referit_bbox.json").read_text())
    assert got["queries"] == got["sentences"] == got["grounded_phrases"] == sum(map(len, queries.values()))
    assert got["images"] == len({crop.split("_")[0] for crop in queries})
    assert got["objects"] == len(queries)
    assert got["boxes"] == len({(c.split("_")[0], tuple(bboxes[c])) for c in queries})


def test_text_output(capsys):
    assert run_data_cli(["stats", "--dataset", "flickr30k", "--root", str(FLICKR_MINI), "--split", "val"]) == 0
    assert re.search(r"grounded_phrases: \d+", capsys.readouterr().out)


@needs_shared_data
def test_real_flickr_test_stats(capsys, flickr_root):
    got = stats_json(capsys, "--dataset", "flickr30k", "--root", str(flickr_root), "--split", "test")
    assert (got["images"], got["sentences"], got["grounded_phrases"]) == (1000, 5000, 14481)


@needs_shared_data
def test_real_referit_test_stats(capsys, referit_root):
    got = stats_json(capsys, "--dataset", "referit", "--root", str(referit_root), "--split", "test")
    assert (got["images"], got["queries"], got["objects"]) == (9994, 60105, 49730)
