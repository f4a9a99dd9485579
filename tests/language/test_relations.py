import argparse
import importlib.util
import json

import pytest

from relground.data.flickr30k import parse_sentence_line
from relground.structures.records import ImageAnnotation, PhraseAnnotation, RelationAnnotation, SentenceAnnotation
from relground.cli.data import run_relations
from relground.language import relations as rel

# The language extras (pyproject `language`) are absent on the GPU test machine.
requires_parser = pytest.mark.skipif(importlib.util.find_spec("sng_parser") is None,
                                     reason="SceneGraphParser / spaCy not installed")


def make_sentence(marked: str, ungrounded: tuple[str, ...] = ("0",), index: int = 0) -> SentenceAnnotation:
    """A SentenceAnnotation from Flickr30K markup; every chain except ``ungrounded`` gets a box."""
    words, phrases = parse_sentence_line(marked, "test", index)
    return SentenceAnnotation(
        sentence_index=index,
        text=" ".join(words),
        words=words,
        phrases=[
            PhraseAnnotation(first, text, chain, types, None if chain in ungrounded else (0.0, 0.0, 1.0, 1.0))
            for first, text, chain, types in phrases
        ],
    )


@pytest.fixture(scope="module")
def parser():
    return rel.load_parser()


# (marked caption, chains without a box, expected {(subject phrase, object phrase, text)})
ALIGNMENT_CASES = [
    (
        "[/EN#1/people A man] in [/EN#2/clothing a blue shirt] is riding [/EN#3/vehicles a bike] on "
        "[/EN#4/scene the street] .",
        (),
        {(0, 1, "in"), (0, 2, "riding"), (0, 3, "on")},
    ),
    # synthetic-benchmark captions: multi-word spatial prepositions become one relation
    ("[/EN#1/shapes a red circle] to the left of [/EN#2/shapes a blue square]", (), {(0, 1, "to the left of")}),
    ("[/EN#1/shapes a green triangle] is to the right of [/EN#2/shapes a big red circle]", (),
     {(0, 1, "to the right of")}),
    ("[/EN#1/shapes a blue square] below [/EN#2/shapes a red circle]", (), {(0, 1, "below")}),
    # the subject of a verb ("standing") is found for a phrasal preposition
    ("[/EN#1/people A woman] standing in front of [/EN#2/scene a building] .", (), {(0, 1, "in front of")}),
    # the object "a bike" has no box: its relation is dropped
    ("[/EN#1/people A man] in [/EN#2/clothing a blue shirt] is riding [/EN#3/vehicles a bike] .", ("3",),
     {(0, 1, "in")}),
    # "A group of people" is one phrase holding two noun chunks: the intra-phrase "of" is dropped
    ("[/EN#1/people A group of people] sit on [/EN#2/other a bench] .", (), {(0, 1, "sit on")}),
]


@requires_parser
@pytest.mark.parametrize("marked, ungrounded, expected", ALIGNMENT_CASES)
def test_alignment_on_hand_written_captions(parser, marked, ungrounded, expected):
    sentence = make_sentence(marked, ungrounded)
    parsed = rel.parse_caption(parser, sentence.text)
    assert set(rel.align_relations(sentence, parsed)) == expected


@requires_parser
def test_heads_are_whitespace_word_indices(parser):
    # "Two-year-old" and "'s" are several spaCy tokens inside one whitespace word
    caption = "A two-year-old boy 's dog sits on a rock ."
    parsed = rel.parse_caption(parser, caption)
    words = caption.split(" ")
    heads = {words[h] for h in parsed["heads"]}
    assert {"dog", "rock"} <= heads
    assert all(0 <= h < len(words) for h in parsed["heads"])


def test_normalize_relation_text():
    assert rel.normalize_relation_text("  Next   To ") == "next to"


def test_categories_threshold_on_known_counts():
    corpus = ["on"] * 7 + ["in"] * 5 + ["near"] * 3 + ["wearing"] * 5 + ["by"]
    assert rel.build_categories(corpus, min_freq=2) == [("on", 7), ("in", 5), ("wearing", 5), ("near", 3)]
    # strictly more than min_freq (paper: "> 100")
    assert rel.build_categories(corpus, min_freq=5) == [("on", 7)]
    assert rel.build_categories(corpus, min_freq=7) == []
    with pytest.raises(ValueError, match="min_freq"):
        rel.build_categories(corpus, min_freq=-1)


def _fake_images():
    """Two images whose parses are written by hand, so counts are known without spaCy."""
    s0 = make_sentence("[/EN#1/people A man] on [/EN#2/other a bench] near [/EN#3/other a tree] .", ("3",), 0)
    s1 = make_sentence("[/EN#4/people A girl] on [/EN#5/other a swing] .", (), 1)
    s2 = make_sentence("[/EN#6/people A dog] on [/EN#7/scene grass] by [/EN#8/other a ball] .", (), 0)
    images = [ImageAnnotation("img1", 10, 10, [s0, s1]), ImageAnnotation("img2", 10, 10, [s2])]
    parses = {
        s0.text: {"heads": [1, 4, 7], "relations": [[0, 1, "on"], [0, 2, "near"]]},  # tree has no box
        s1.text: {"heads": [1, 4], "relations": [[0, 1, "on"], [0, 1, "sits on"], [1, 1, "on"]]},
        s2.text: {"heads": [1, 3, 6], "relations": [[0, 1, "on"], [0, 2, "by"]]},
    }
    return images, parses


def test_build_relations_counts_merges_and_assigns_categories():
    images, parses = _fake_images()
    result = rel.build_relations(images, parses, min_freq=1)
    assert result["categories"] == [{"name": "on", "count": 3}]  # "by", "sits on" seen once (not > 1)
    img1 = result["images"]["img1"]
    assert img1["0"] == [{"subject": 0, "object": 1, "text": "on", "categories": [0]}]
    # two texts for one ordered pair -> one relation; the self-loop is dropped
    assert img1["1"] == [{"subject": 0, "object": 1, "text": "on; sits on", "categories": [0]}]
    assert result["images"]["img2"]["0"][1] == {"subject": 0, "object": 2, "text": "by", "categories": []}
    stats = result["stats"]
    # grounded: 2 + 2 + 3 phrases; in a relation: 2 + 2 + 3
    assert stats["grounded_phrases"] == 7 and stats["grounded_phrases_in_relation"] == 7
    assert stats["relations"] == 4 and stats["relations_with_category"] == 3
    # reusing categories (val / test): ids follow the given list
    reused = rel.build_relations(images, parses, categories=["by", "on"])
    assert reused["images"]["img2"]["0"][1]["categories"] == [0]
    assert reused["images"]["img1"]["0"][0]["categories"] == [1]


def test_attach_relations_round_trip_and_errors(tmp_path):
    images, parses = _fake_images()
    path = tmp_path / "relations.json"
    path.write_text(json.dumps(rel.build_relations(images, parses, min_freq=1)))
    rel.attach_relations(images, path)
    assert images[0].sentences[1].relations == [RelationAnnotation(0, 1, "on; sits on", (0,))]
    assert images[1].sentences[0].relations[1] == RelationAnnotation(0, 2, "by", ())
    with pytest.raises(FileNotFoundError, match="nope.json"):
        rel.attach_relations(images, tmp_path / "nope.json")
    other = [ImageAnnotation("img9", 1, 1, [])]
    with pytest.raises(ValueError, match="relations.json.*img9"):
        rel.attach_relations(other, path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json.*categories"):
        rel.attach_relations(images, tmp_path / "bad.json")


@requires_parser
def test_parse_cache_hit_skips_parsing(tmp_path, monkeypatch):
    captions = ["a red circle to the left of a blue square", "A dog runs on the grass .",
                "A dog runs on the grass ."]
    first, info = rel.parse_captions(captions, workers=1, cache_dir=tmp_path)
    assert not info["cache_hit"] and info["captions"] == 2
    assert first["a red circle to the left of a blue square"]["relations"] == [[0, 1, "to the left of"]]

    def no_parser():
        raise AssertionError("the parser must not be loaded on a cache hit")

    monkeypatch.setattr(rel, "load_parser", no_parser)
    # same captions (any order, with duplicates) -> the cache is read
    second, info = rel.parse_captions(list(reversed(captions)), workers=1, cache_dir=tmp_path)
    assert info["cache_hit"] and second == first
    # a changed input misses the cache and parses again
    with pytest.raises(AssertionError, match="must not be loaded"):
        rel.parse_captions(captions + ["A cat sleeps ."], workers=1, cache_dir=tmp_path)


@requires_parser
def test_worker_pool_gives_the_same_parses(tmp_path, parser):
    captions = ["A man in a blue shirt is riding a bike on the street .", "a red circle above a blue square",
                "A woman standing in front of a building ."]
    pooled, info = rel.parse_captions(captions, workers=2)
    assert info["workers"] == 2 and info["cache_file"] is None
    assert pooled == {c: rel.parse_caption(parser, c) for c in captions}


def _write_dataset(root, images):
    """A tiny dataset in the official layout: {image_id: [marked captions]}, every chain boxed."""
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for image_id, lines in images.items():
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        chains = sorted({tok.split("/")[1][3:] for line in lines for tok in line.split() if tok.startswith("[/EN#")})
        objects = "".join(
            f"<object><name>{c}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
            for c in chains
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>10</width><height>10</height><depth>3</depth></size>{objects}</annotation>"
        )


@requires_parser
def test_run_relations_cli_train_then_val(tmp_path, capsys):
    root = tmp_path / "data"
    _write_dataset(root, {
        "1": ["[/EN#1/shapes a red circle] to the left of [/EN#2/shapes a blue square]",
              "[/EN#1/shapes a red circle] above [/EN#2/shapes a blue square]"],
        "2": ["[/EN#3/shapes a green triangle] to the left of [/EN#4/shapes a red circle]"],
        "3": ["[/EN#5/shapes a blue circle] above [/EN#6/shapes a green square]"],
    })
    (root / "train.txt").write_text("1\n2\n")
    (root / "val.txt").write_text("3\n")
    train_out = tmp_path / "out" / "train.json"
    args = argparse.Namespace(root=str(root), split="train", min_freq=1, out=str(train_out), workers=1,
                              cache_dir=str(tmp_path / "cache"), categories=None, json=True)
    assert run_relations(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_categories"] == 1 and summary["relations"] == 3
    train = json.loads(train_out.read_text())
    assert train["categories"] == [{"name": "to the left of", "count": 2}]
    assert train["split"] == "train" and train["min_freq"] == 1

    val_out = tmp_path / "out" / "val.json"
    args = argparse.Namespace(**{**vars(args), "split": "val", "out": str(val_out), "categories": str(train_out),
                                 "json": False})
    assert run_relations(args) == 0
    assert "1 relation categories" in capsys.readouterr().out
    val = json.loads(val_out.read_text())
    assert [c["name"] for c in val["categories"]] == ["to the left of"]
    assert val["images"]["3"]["0"] == [{"subject": 0, "object": 1, "text": "above", "categories": []}]


@requires_parser
def test_relations_on_the_real_mini_fixture(tmp_path):
    from relground.data.flickr30k import load_flickr30k
    from tests.utils import FIXTURES

    root = FIXTURES / "flickr30k_mini"
    out = tmp_path / "train.json"
    args = argparse.Namespace(root=str(root), split="train", min_freq=0, out=str(out), workers=1,
                              cache_dir=None, categories=None, json=True)
    assert run_relations(args) == 0
    result = json.loads(out.read_text())
    images = load_flickr30k(root, "train")
    rel.attach_relations(images, out)
    grounded = linked = count = 0
    names = [c["name"] for c in result["categories"]]
    for image in images:
        for sentence in image.sentences:
            grounded += sum(p.grounded for p in sentence.phrases)
            linked += len({i for r in sentence.relations for i in (r.subject, r.object)})
            for r in sentence.relations:
                count += 1
                assert r.subject != r.object
                assert sentence.phrases[r.subject].grounded and sentence.phrases[r.object].grounded
                # min_freq 0 keeps every text: each relation has the categories of its texts
                assert [names[c] for c in r.categories] == sorted(set(r.text.split("; ")), key=names.index)
    assert count > 0 and result["stats"]["relations"] == count
    assert result["stats"]["grounded_phrases"] == grounded
    assert result["stats"]["grounded_phrases_in_relation"] == linked
