"""``relground.api``: caption phrases (``relground.language.captions``), sliding-window proposals, and ``Grounder``
on a tiny trained checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relground.api import Grounder
from relground.data.proposals import WINDOW_FRACTIONS, sliding_windows
from relground.engine.predictor import TrainedModel
from relground.language.captions import split_caption


def test_markup_caption_uses_annotated_phrases():
    parsed = split_caption("[/EN#12/people/other A young man] throws [/EN#13/other a ball] .")
    assert parsed.source == "markup"
    assert parsed.words == ["A", "young", "man", "throws", "a", "ball", "."]
    assert [(p.first_word_index, p.num_words, p.text, p.phrase_types) for p in parsed.phrases] == [
        (0, 3, "A young man", ("people", "other")),
        (4, 2, "a ball", ("other",)),
    ]
    with pytest.raises(ValueError, match="never closed"):
        split_caption("[/EN#12/people A man throws .")
    with pytest.raises(ValueError, match="empty caption"):
        split_caption("   ")


def test_plain_caption_uses_entity_phrases():
    parsed = split_caption("A man throws a red ball to his  dog.")
    assert parsed.source == "entities"
    assert parsed.words == ["A", "man", "throws", "a", "red", "ball", "to", "his", "dog", "."]
    assert [(p.first_word_index, p.num_words, p.text) for p in parsed.phrases] == [
        (0, 2, "A man"), (3, 3, "a red ball"), (7, 2, "his dog"),
    ]
    for p in parsed.phrases:  # spans and texts agree with the word list
        assert " ".join(parsed.words[p.first_word_index : p.first_word_index + p.num_words]) == p.text


@pytest.mark.parametrize(
    "caption, expected",
    [
        # the spatial noun of "to the left of" is part of the relation, not a phrase (spaCy's noun chunks hold it)
        ("the violet cross to the left of the big blue square", ["the violet cross", "the big blue square"]),
        ("A red circle on top of a green triangle .", ["A red circle", "a green triangle"]),
        # SceneGraphParser folds "in front of" into the relation
        ("a woman standing in front of a building", ["a woman", "a building"]),
        ("Quickly !", []),
    ],
)
def test_plain_caption_phrases_are_the_relation_entities(caption, expected):
    from relground.language.relations import align_relations, load_parser, parse_caption
    from relground.structures.records import PhraseAnnotation, SentenceAnnotation

    parsed = split_caption(caption)
    assert [p.text for p in parsed.phrases] == expected
    if len(expected) == 2:  # the relation parsed from the caption joins exactly these two phrases
        phrases = [PhraseAnnotation(p.first_word_index, p.text, str(i), ("other",), (0.0, 0.0, 1.0, 1.0))
                   for i, p in enumerate(parsed.phrases)]
        sentence = SentenceAnnotation(0, " ".join(parsed.words), parsed.words, phrases)
        assert [(s, o) for s, o, _ in align_relations(sentence, parse_caption(load_parser(), sentence.text))] == [(0, 1)]


def test_phrases_given_as_spans_or_strings():
    caption = "A dog jumps over a dog on the grass ."
    words = ["A", "dog", "jumps", "over", "a", "dog", "on", "the", "grass", "."]
    by_span = split_caption(caption, [(4, 2), (7, 2)])
    assert by_span.source == "given" and by_span.words == words
    assert [(p.first_word_index, p.num_words, p.text) for p in by_span.phrases] == [(4, 2, "a dog"), (7, 2, "the grass")]
    by_text = split_caption(caption, ["THE GRASS", "a dog", "grass."])  # first occurrence, case-insensitive, spaCy words
    assert [(p.first_word_index, p.num_words) for p in by_text.phrases] == [(7, 2), (0, 2), (8, 2)]
    with pytest.raises(ValueError, match=r"phrases\[1\]: 'a cat' is not in the caption"):
        split_caption(caption, ["a dog", "a cat"])
    with pytest.raises(ValueError, match=r"phrases\[0\]: span \(9, 2\) is outside"):
        split_caption(caption, [(9, 2)])
    with pytest.raises(ValueError, match=r"phrases\[0\]: expected a string or"):
        split_caption(caption, [3])
    with pytest.raises(ValueError, match="phrases: the caption already marks"):
        split_caption("[/EN#1/people A man] runs .", ["A man"])


@pytest.mark.parametrize("width, height", [(640, 480), (101, 333)])
def test_sliding_windows_cover_the_image_on_half_window_strides(width, height):
    boxes = sliding_windows(width, height)
    assert boxes.shape == (50, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [0, 0, width, height])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    sides = np.round((boxes[:, 2] - boxes[:, 0]) / width, 4)
    for f in WINDOW_FRACTIONS:
        group = boxes[sides == round(f, 4)]
        assert len(group), f
        xs = np.unique(np.round(group[:, 0], 3))
        assert xs.min() == 0 and np.isclose(group[:, 2].max(), width, atol=1e-3)  # spans the full width
        if len(xs) > 1:
            assert np.diff(xs).max() <= f * width / 2 + 1e-3  # neighbours at most half a window apart
    with pytest.raises(ValueError, match="fractions"):
        sliding_windows(10, 10, fractions=(0.0,))


# ---------------------------------------------------------------- Grounder on the tiny demo's checkpoint


@pytest.fixture(scope="module")
def demo():
    from tests.engine.test_cli import tiny_demo

    return tiny_demo()[0]


@pytest.mark.slow
def test_grounder_matches_the_evaluation_path(demo):
    """Same image, caption and proposals: Grounder's boxes equal the evaluator's (dataset + batch) predictions."""
    from relground.data.proposals import ProposalStore

    trained = TrainedModel.from_checkpoint(demo / "full")
    _, predictions = trained.evaluate("test", return_predictions=True)
    grounder = Grounder(trained)
    store = ProposalStore(demo / "data" / "proposals.h5")
    checked = 0
    for image in trained.annotations("test"):
        lines = (demo / "data" / "Sentences" / f"{image.image_id}.txt").read_text().splitlines()
        for sentence in image.sentences:
            if not all(p.grounded for p in sentence.phrases):
                continue  # a box-less phrase would join the Grounder's graph but not the evaluation's
            phrases = grounder.ground(image.image_path, lines[sentence.sentence_index], proposals=store[image.image_id])
            assert [p.first_word_index for p in phrases] == [p.first_word_index for p in sentence.phrases]
            for p in phrases:
                expected = predictions.boxes["fused"][(image.image_id, sentence.sentence_index, p.first_word_index)]
                np.testing.assert_allclose(p.box, expected, atol=1e-3)
            checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_grounder_sliding_windows_and_no_stale_features(demo):
    from relground.data.flickr30k import load_flickr30k

    grounder = Grounder.from_checkpoint(demo / "full" / "checkpoints" / "model_final.pth")
    first, second = load_flickr30k(demo / "data", "train")[:2]
    caption = "A red circle to the left of a blue square ."
    a = grounder.ground(first.image_path, caption)
    assert [p.text for p in a] == [p.text for p in split_caption(caption).phrases]
    windows = sliding_windows(first.width, first.height)
    for p in a:
        assert np.abs(windows - np.array(p.proposal_box)).max(axis=1).min() < 1e-3
        assert 0.0 <= p.score <= 1.0
    b = grounder.ground(second.image_path, caption)
    fresh = Grounder.from_checkpoint(demo / "full").ground(second.image_path, caption)
    assert b == fresh and b != a  # the first image's cached features were not reused for the second
    assert grounder.ground(first.image_path, "Quickly !") == []  # no entity: nothing to ground
    only = grounder.ground(second.image_path, caption, phrases=["a blue square"])
    assert [(p.text, p.first_word_index) for p in only] == [("a blue square", 7)]
    spans = grounder.ground(second.image_path, caption, phrases=[(7, 3), (0, 3)])
    assert [p.text for p in spans] == ["a blue square", "A red circle"]


def test_grounder_checkpoint_errors(tmp_path):

    for missing in (tmp_path / "nowhere", tmp_path):  # no file; a folder without checkpoints
        with pytest.raises(FileNotFoundError, match=r"Grounder.from_checkpoint: path=.*is neither") as error:
            Grounder.from_checkpoint(missing)
        assert str(missing) in str(error.value) and "--" not in str(error.value)  # its own argument, not the CLI's
    torch.save({"weights": 1}, tmp_path / "not_ours.pth")
    with pytest.raises(ValueError, match="not a relground checkpoint"):
        Grounder.from_checkpoint(tmp_path / "not_ours.pth")
    torch.save({"model": {}}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="config"):
        Grounder.from_checkpoint(tmp_path / "old.pth")
