"""The synthetic benchmark with ``multi_relation``: phrases related to two others, identical triples that only
two relations together tell apart, and the default benchmark's properties kept.

As in ``test_synthetic.py``, everything is read back from the written files (pixels, boxes, caption text) and
the parser's relations, then compared with the generator's printed numbers.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import pytest

from relground.data.synthetic import generate_synthetic
from tests.data.test_synthetic import (
    PHRASING_TO_RELATION,
    VERBS,
    Bench,
    check_caption_variety,
    check_glove_knows_the_words,
    check_label_noise_and_class_names,
    check_layout_and_splits,
    check_localisation_noise,
    check_reads_back_through_load_flickr30k,
    holds,
    union,
)

NUM_IMAGES = 200
SEED = 7
MULTI_RELATION = 1.0  # the recommended value: every image a multi-relation image


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Bench:
    root = tmp_path_factory.mktemp("synth_multi") / "bench"
    props = generate_synthetic(root, num_images=NUM_IMAGES, seed=SEED, workers=1, multi_relation=MULTI_RELATION)
    return Bench(root, props)


def stated_relations(line: str, phrases) -> list[tuple[int, int, str]]:
    """The relations a caption states between its phrases (phrase indices), read from the text.

    Two consecutive phrases with a relation phrasing between them (verbs and commas aside) are related, the first
    being the subject; but a phrasing right after the object of a relation ("X sits R Y , R2 Z", "X R Y stands R2
    Z") is the subject's second relation.
    """
    found: list[tuple[int, int, str]] = []
    for k in range(len(phrases) - 1):
        words = [w for w in line[phrases[k][4]:phrases[k + 1][3]].split() if w not in VERBS | {","}]
        relation = PHRASING_TO_RELATION.get(" ".join(words))
        if relation is not None:
            subject = found[-1][0] if found and found[-1][1] == k else k
            found.append((subject, k + 1, relation))
    return found


def related_counts(relations_by_sentence) -> tuple[int, int]:
    """(phrases related to >= 1 other phrase of their caption, those related to >= 2), over the sentences."""
    related = multi = 0
    for relations in relations_by_sentence:
        neighbours = defaultdict(set)
        for s, o in relations:
            neighbours[s].add(o)
            neighbours[o].add(s)
        related += len(neighbours)
        multi += sum(len(n) >= 2 for n in neighbours.values())
    return related, multi


def test_default_properties_hold(bench):
    check_layout_and_splits(bench, NUM_IMAGES, [160, 20, 20])
    check_localisation_noise(bench)
    check_label_noise_and_class_names(bench)
    check_caption_variety(bench)
    check_reads_back_through_load_flickr30k(bench)


def test_glove_knows_the_words(bench):
    check_glove_knows_the_words(bench)  # "three", "all" of the triples' plural phrases too


def test_triples_are_told_apart_only_by_two_relations_together(bench):
    listed = json.loads((bench.root / "twins.json").read_text())
    triples = 0
    for image_id, chains in listed.items():
        boxes = [bench.xml[image_id][2][c][0] for c in chains]
        assert len(chains) in (2, 3) and all(len(bench.xml[image_id][2][c]) == 1 for c in chains)
        for box in boxes:
            assert sorted(bench.twins_of(image_id, box)) == sorted(b for b in boxes if b != box)
        triples += len(chains) == 3
    assert triples / NUM_IMAGES == pytest.approx(bench.props["triple_image_share"])
    assert triples >= 0.6 * NUM_IMAGES

    grounded = twin_phrases = conjunction = guessed = 0
    for image_id, line, phrase, gt in bench.grounded():
        grounded += 1
        copies = bench.twins_of(image_id, gt) if len(bench.xml[image_id][2][phrase[0]]) == 1 else []
        twin_phrases += bool(copies)
        guessed += len(copies) / (len(copies) + 1)  # a relation-blind grounder picks one of the copies
        if copies:
            assert phrase[0] in listed[image_id]
    for image_id in bench.ids:
        chains = bench.xml[image_id][2]
        for line, phrases in bench.sentences[image_id]:
            relations = stated_relations(line, phrases)
            for s, o, relation in relations:  # every stated relation holds between the two boxes
                assert holds(relation, union(chains[phrases[s][0]]), union(chains[phrases[o][0]])), line
            if len(relations) < 2:
                continue
            assert len(relations) == 2 and relations[0][0] == relations[1][0], line  # one subject, two relations
            target = union(chains[phrases[relations[0][0]][0]])
            copies = bench.twins_of(image_id, target)
            if not copies:
                continue
            (_, o1, rel1), (_, o2, rel2) = relations
            ref1, ref2 = union(chains[phrases[o1][0]]), union(chains[phrases[o2][0]])
            for copy in copies:  # the two relations together pick out the target alone ...
                assert not (holds(rel1, copy, ref1) and holds(rel2, copy, ref2)), line
            # ... and neither does alone: another copy satisfies each
            assert any(holds(rel1, c, ref1) for c in copies) and any(holds(rel2, c, ref2) for c in copies), line
            conjunction += 1
    props = bench.props
    assert twin_phrases / grounded >= 0.25
    assert twin_phrases / grounded == pytest.approx(props["twin_phrase_share"], abs=0.01)
    assert 1 - guessed / grounded == pytest.approx(props["appearance_only_upper_bound"], abs=0.01)
    assert conjunction / grounded >= 0.2
    assert conjunction / grounded == pytest.approx(props["conjunction_phrase_share"], abs=0.01)


def test_plural_phrases_cover_the_three_copies(bench):
    plural = 0
    for image_id in bench.ids:
        chains = bench.xml[image_id][2]
        for _, phrases in bench.sentences[image_id]:
            for chain, _, text, *_ in phrases:
                if chain in chains and len(chains[chain]) > 1:
                    plural += 1
                    assert (len(chains[chain]), text.split()[0]) in (
                        (2, "two"), (2, "the"), (2, "both"), (3, "three"), (3, "the"), (3, "all")), text
                    if len(chains[chain]) == 3:
                        assert text.startswith(("three ", "the three ", "all three ")), text
    assert plural > 0


def test_a_third_of_the_related_test_phrases_relate_to_two_others_by_the_parser(bench):
    """The issue's count: test split, phrases with at least one related phrase, relations as prepare_synthetic
    builds them (SceneGraphParser + relground.language.relations)."""
    pytest.importorskip("sng_parser")
    from relground.data.flickr30k import load_flickr30k
    from relground.language.relations import build_relations, parse_captions

    images = load_flickr30k(bench.root, "test", workers=0)
    parses, _ = parse_captions([s.text for im in images for s in im.sentences], workers=1)
    parsed = build_relations(images, parses, min_freq=5)
    related, multi = related_counts(
        [(r["subject"], r["object"]) for r in parsed["images"][im.image_id][str(s.sentence_index)]]
        for im in images for s in im.sentences
    )
    assert related >= 60
    assert multi / related >= 0.30
    assert multi / related == pytest.approx(bench.props["multi_related_test_share"], abs=0.03)
    assert related == pytest.approx(bench.props["related_test_phrases"], rel=0.05)

    # The same count from the captions' text agrees with the generator's exactly.
    stated = [[(s, o) for s, o, _ in stated_relations(line, phrases)]
              for im in images for line, phrases in bench.sentences[im.image_id]]
    text_related, text_multi = related_counts(stated)
    assert text_related == bench.props["related_test_phrases"]
    assert text_multi / text_related == pytest.approx(bench.props["multi_related_test_share"])


def test_option_off_keeps_the_default_and_half_mixes(tmp_path):
    off = generate_synthetic(tmp_path / "off", num_images=40, seed=0, workers=1, multi_relation=0.0)
    assert "multi_relation" not in off and "multi_related_test_share" not in off
    assert "multi_relation" not in json.loads((tmp_path / "off" / "synthetic.json").read_text())
    half = generate_synthetic(tmp_path / "half", num_images=40, seed=0, workers=2, multi_relation=0.5)
    assert 0.2 <= half["multi_relation_image_share"] <= 0.8
    assert 0 < half["multi_related_share"] < 1 / 3  # pair captions of the other images dilute it
    written = json.loads((tmp_path / "half" / "synthetic.json").read_text())
    assert written["multi_relation"] == 0.5 and written["triple_image_share"] == half["triple_image_share"]
    again = generate_synthetic(tmp_path / "again", num_images=40, seed=0, workers=1, multi_relation=0.5)
    assert (tmp_path / "again" / "Sentences" / "1000003.txt").read_text() == (
        tmp_path / "half" / "Sentences" / "1000003.txt").read_text()
    assert {k: v for k, v in again.items() if k not in ("seconds", "workers")} == {
        k: v for k, v in half.items() if k not in ("seconds", "workers")}


def test_cli_flag(tmp_path, capsys):
    from relground.cli import data

    parser = argparse.ArgumentParser()
    data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path / "s"), "--images", "20", "--seed", "1",
                              "--multi-relation", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert written["multi_relation"] == 1.0
    assert f"{written['multi_related_test_share']:.1%} of the {written['related_test_phrases']} related test " \
           "phrases relate to two or more others" in printed


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5", True])
def test_bad_multi_relation(tmp_path, value):
    with pytest.raises(ValueError, match="--multi-relation"):
        generate_synthetic(tmp_path / "out", num_images=12, multi_relation=value)
    assert not (tmp_path / "out").exists()


def test_prepare_synthetic_passes_the_option_through(tmp_path, monkeypatch):
    from relground.experiments import synthetic

    calls = []

    def fake_generate(out, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(synthetic, "generate_synthetic", fake_generate)
    for kwargs in ({}, {"multi_relation": 1.0}):
        with pytest.raises(RuntimeError, match="stop"):
            synthetic.prepare_synthetic(tmp_path, 20, seed=3, **kwargs)
    assert calls == [dict(num_images=20, seed=3, multi_relation=0.0), dict(num_images=20, seed=3, multi_relation=1.0)]

