import json
from collections import Counter

import pytest

from relground.language.vocab import CAPTION_SPECIALS, PHRASE_SPECIALS, Vocabulary, tokenize

CAPTIONS = [
    "A man rides a horse .",
    "A Man in a red shirt rides a bike .",
    "Two dogs play .",
]


def test_tokenize_is_lower_split_on_single_spaces():
    assert tokenize("A Man  rides .") == ["a", "man", "", "rides", "."]
    assert tokenize("Dog") == ["dog"]


@pytest.mark.parametrize("min_freq", [1, 2, 3])
def test_build_keeps_words_by_min_freq_with_specials_first(min_freq):
    tokens = [tokenize(c) for c in CAPTIONS]
    vocab = Vocabulary.build(tokens, min_freq=min_freq)
    counts = Counter(t for ts in tokens for t in ts)
    expected_words = {w for w, n in counts.items() if n >= min_freq}
    assert vocab.itos[:2] == ["<pad>", "<unk>"]
    assert set(vocab.itos[2:]) == expected_words
    # decreasing frequency: "a" (5x) comes first
    assert vocab.itos[2] == "a"
    assert len(vocab) == 2 + len(expected_words)


def test_encode_maps_unknown_words_to_unk():
    vocab = Vocabulary.build([tokenize(c) for c in CAPTIONS], min_freq=2)
    ids = vocab.encode(["a", "rides", "zebra", "two"])
    assert ids[0] == vocab.itos.index("a") and ids[1] == vocab.itos.index("rides")
    assert ids[2] == 1 and ids[3] == 1  # unseen / below min_freq -> <unk> = 1
    assert vocab.decode(ids[:2]) == ["a", "rides"]


def test_phrase_vocabulary_has_end_token_zero():
    vocab = Vocabulary.build([["a", "man"]], specials=PHRASE_SPECIALS)
    assert vocab.itos[0] == "<end>" and vocab.itos[1] == "<unk>"
    assert vocab.encode(["<end>", "qq"]) == [0, 1]
    assert CAPTION_SPECIALS == ("<pad>", "<unk>")


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build([tokenize(c) for c in CAPTIONS], min_freq=1)
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.encode(tokenize(CAPTIONS[1])) == vocab.encode(tokenize(CAPTIONS[1]))
    assert json.loads(path.read_text())["itos"] == vocab.itos


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"words": ["a"]}))
    with pytest.raises(ValueError, match="bad.json.*itos"):
        Vocabulary.load(bad)


def test_invalid_vocabularies_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["<pad>", "<unk>", "a", "a"])
    with pytest.raises(ValueError, match="<unk>"):
        Vocabulary(["<pad>", "a"])
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build([["a"]], min_freq=0)
