"""Split a free caption into words and phrases for grounding: Flickr30K Entities markup, else spaCy noun chunks.

Example::

    >>> split_caption("[/EN#12/people A young man] throws [/EN#13/other a ball] .").phrases[0]
    CaptionPhrase(first_word_index=0, num_words=3, text='A young man', phrase_types=('people',))
    >>> [p.text for p in split_caption("A man throws a red ball to his dog.").phrases]   # doctest: +SKIP
    ['A man', 'a red ball', 'his dog']

(Not to be confused with :func:`relground.language.relations.parse_caption`, which parses the relations
between a caption's entities.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from relground.language.relations import spacy_pipeline

MARKUP = "[/EN#"


@dataclass(frozen=True)
class CaptionPhrase:
    """A phrase of a caption: words ``[first_word_index, first_word_index + num_words)``."""

    first_word_index: int
    num_words: int
    text: str
    phrase_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptionSplit:
    """A caption's words and phrases."""

    words: list[str]  # the caption's words; the model reads " ".join(words)
    phrases: list[CaptionPhrase]
    source: str  # "markup" or "noun_chunks"


def parse_markup(line: str, where: str = "<caption>:1") -> tuple[list[str], list[tuple[int, str, str, tuple[str, ...]]]]:
    """Split one marked-up caption into words and phrases, as the official ``get_sentence_data``.

    Args:
        line: ``[/EN#<chain>/<type>[/<type>...] words ...] ...``.
        where: named in error messages (e.g. ``"Sentences/1000.txt:3"``).

    Returns:
        tuple: ``(words, phrases)`` where each phrase is ``(first_word_index, text, chain_id, types)``.

    Raises:
        ValueError: unbalanced or nested brackets, or a malformed ``[/EN#...`` tag (names ``where``).
    """
    words: list[str] = []
    phrases = []
    current: Optional[list] = None  # [first_word, chain_id, types, words]
    for token in line.split():
        if current is None:
            if token.startswith("["):
                parts = token.split("/")
                if len(parts) < 3 or not parts[1].startswith("EN#") or not parts[1][3:]:
                    raise ValueError(f"{where}: malformed phrase tag {token!r}")
                current = [len(words), parts[1][3:], tuple(parts[2:]), []]
            elif token.endswith("]") and token != "]":
                raise ValueError(f"{where}: unbalanced ']' in {token!r} outside a phrase")
            else:
                words.append(token)
        else:
            if token.startswith("[/EN#"):
                raise ValueError(f"{where}: nested or unclosed phrase before {token!r}")
            closes = token.endswith("]")
            token = token[:-1] if closes else token
            current[3].append(token)
            words.append(token)
            if closes:
                first, chain, types, phrase_words = current
                phrases.append((first, " ".join(phrase_words), chain, types))
                current = None
    if current is not None:
        raise ValueError(f"{where}: unbalanced '[': phrase of chain {current[1]} is never closed")
    return words, phrases


def split_caption(caption: str, nlp=None) -> CaptionSplit:
    """Phrases of a caption: its Flickr30K Entities markup when present, else spaCy noun chunks.

    Args:
        caption: plain text, or marked up as ``[/EN#<chain>/<type> words ...] ...``.
        nlp: a loaded spaCy pipeline for plain captions (default: the relation parser's pipeline, so the
            words and chunks match the ones the relations were parsed with in training).

    Raises:
        ValueError: broken markup, or an empty caption.
    """
    if not caption.strip():
        raise ValueError("--caption: empty caption")
    if MARKUP in caption:
        words, phrases = parse_markup(caption)
        return CaptionSplit(
            words, [CaptionPhrase(first, len(text.split(" ")), text, types) for first, text, _, types in phrases], "markup"
        )
    doc = (nlp or spacy_pipeline())(" ".join(caption.split()))
    # spaCy tokens become the words (punctuation split off, as in Flickr30K's captions).
    words = [token.text for token in doc if not token.is_space]
    index_of = {}
    for token in doc:
        if not token.is_space:
            index_of[token.i] = len(index_of)
    phrases = []
    for chunk in doc.noun_chunks:
        positions = [index_of[t.i] for t in chunk if t.i in index_of]
        if positions:
            phrases.append(CaptionPhrase(positions[0], len(positions), " ".join(words[p] for p in positions)))
    return CaptionSplit(words, phrases, "noun_chunks")
