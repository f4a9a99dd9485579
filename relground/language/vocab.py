"""Word vocabularies: the caption vocabulary (GRU encoder input) and the phrase vocabulary (decoder output).

Both are built from the train split's tokens with a minimum frequency; rarer and unseen words map to
``<unk>``. Caption vocabulary: ``0 = <pad>``, ``1 = <unk>``. Phrase vocabulary for the reconstruction
decoder: ``0 = <end>`` (also the padding), ``1 = <unk>``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

PAD, UNK, END = "<pad>", "<unk>", "<end>"
CAPTION_SPECIALS = (PAD, UNK)  # ids 0, 1
PHRASE_SPECIALS = (END, UNK)  # ids 0, 1; the decoder's end token doubles as padding


def tokenize(text: str) -> list[str]:
    """The authors' tokeniser: ``text.lower().split(" ")`` (punctuation stays a word of its own in Flickr30K)."""
    return text.lower().split(" ")


class Vocabulary:
    """A word <-> id mapping; special tokens first, then words by decreasing frequency (ties by word).

    Args:
        itos (Sequence[str]): the words in id order; must contain ``<unk>`` and no duplicates.

    Example:
        >>> vocab = Vocabulary.build([["a", "dog"], ["a", "cat"]], min_freq=2)
        >>> vocab.itos
        ['<pad>', '<unk>', 'a']
        >>> vocab.encode(["a", "cat"])
        [2, 1]
    """

    def __init__(self, itos: Sequence[str]):
        self.itos = list(itos)
        self.stoi = {word: index for index, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            duplicates = sorted(w for w, n in Counter(self.itos).items() if n > 1)
            raise ValueError(f"itos has duplicate words: {duplicates[:5]}")
        if UNK not in self.stoi:
            raise ValueError(f"itos must contain the unknown token {UNK!r}")
        self.unk_index = self.stoi[UNK]

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, specials: Sequence[str] = CAPTION_SPECIALS
    ) -> "Vocabulary":
        """Count tokens and keep those seen at least ``min_freq`` times.

        Args:
            token_lists (Iterable[Sequence[str]]): tokenised texts (e.g. ``tokenize(caption)`` of the train split).
            min_freq (int): minimum count of a kept word; default 1 keeps every word.
            specials (Sequence[str]): tokens given the first ids; default ``("<pad>", "<unk>")``; use
                ``PHRASE_SPECIALS`` for the phrase vocabulary.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        special_set = set(specials)
        words = sorted((w for w, n in counts.items() if n >= min_freq and w not in special_set),
                       key=lambda w: (-counts[w], w))
        return cls(list(specials) + words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, words: Iterable[str]) -> list[int]:
        """Ids of ``words``; unknown words get the ``<unk>`` id."""
        return [self.stoi.get(word, self.unk_index) for word in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` (no special handling of padding)."""
        return [self.itos[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"itos": [...]}`` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"itos": self.itos}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by ``save``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file has no ``itos`` list of strings.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        with open(path) as f:
            data = json.load(f)
        itos = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise ValueError(f"{path}: field 'itos' must be a list of strings")
        return cls(itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, specials={self.itos[:2]})"
