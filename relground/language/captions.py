"""Split a free caption into words and phrases for grounding: Flickr30K Entities markup, phrases given by the
caller, else the caption's entities (SceneGraphParser's, as the relations use them).

Example::

    >>> split_caption("[/EN#12/people A young man] throws [/EN#13/other a ball] .").phrases[0]
    CaptionPhrase(first_word_index=0, num_words=3, text='A young man', phrase_types=('people',))
    >>> [p.text for p in split_caption("A man throws a red ball to his dog.").phrases]
    ['A man', 'a red ball', 'his dog']

(Not to be confused with :func:`relground.language.relations.parse_caption`, which parses the relations
between a caption's entities.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

from relground.language.relations import entity_spans, load_parser

MARKUP = "[/EN#"
# A phrase given to split_caption: its words as a string, or (first_word_index, num_words).
PhraseSpec = Union[str, tuple[int, int]]


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
    source: str  # "markup", "given" (the caller's phrases) or "entities"


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


def split_caption(caption: str, phrases: Optional[Sequence[PhraseSpec]] = None, *, parser=None) -> CaptionSplit:
    """A caption's words and the phrases to ground: markup, given phrases, else the caption's entities.

    Plain text is split into words by spaCy (punctuation becomes a word, as in Flickr30K's captions) and,
    unless ``phrases`` is given, into the *entities* SceneGraphParser finds, less the spatial nouns of
    "to the left of" (:func:`relground.language.relations.entity_spans`): the phrases a model trained with
    relations grounds. "the violet cross to the left of the big blue square" gives "the violet cross" and
    "the big blue square", not "the left".

    Args:
        caption: plain text, or marked up as ``[/EN#<chain>/<type> words ...] ...`` (its phrases are used).
        phrases: the phrases to ground, in this order, instead of the entities: each a
            ``(first_word_index, num_words)`` span of the returned ``words``, or a string whose words occur
            in the caption (its first occurrence, compared without case). None = the entities.
        parser: a ``sng_parser.Parser`` (default :func:`relground.language.relations.load_parser`, the
            parser of training, so words and entities match the ones the relations were parsed with).

    Returns:
        CaptionSplit: ``words`` (list[str]), ``phrases`` (list[CaptionPhrase]) and ``source``:
        ``"markup"``, ``"given"`` or ``"entities"``.

    Raises:
        ValueError: an empty caption, broken markup, markup together with ``phrases``, or a phrase that is
            not in the caption (the message names its index in ``phrases``).

    Example:
        >>> [p.text for p in split_caption("the violet cross to the left of the big blue square").phrases]
        ['the violet cross', 'the big blue square']
        >>> [(p.first_word_index, p.num_words) for p in split_caption("a dog on a sofa .", ["sofa"]).phrases]
        [(4, 1)]
    """
    if not caption.strip():
        raise ValueError("caption: empty caption")
    if MARKUP in caption:
        if phrases is not None:
            raise ValueError("phrases: the caption already marks its phrases ([/EN#...]); pass one or the other")
        words, marked = parse_markup(caption)
        return CaptionSplit(
            words, [CaptionPhrase(first, len(text.split(" ")), text, types) for first, text, _, types in marked], "markup"
        )
    parser = parser or load_parser()
    text = " ".join(caption.split())
    if phrases is None:
        doc, spans = entity_spans(parser, text)
    else:
        doc, spans = parser.unwrapped.nlp.make_doc(text), []  # the tokenizer alone: same words, no parse
    # spaCy tokens become the words (punctuation split off, as in Flickr30K's captions).
    word_of_token = {}
    for token in doc:
        if not token.is_space:
            word_of_token[token.i] = len(word_of_token)
    words = [token.text for token in doc if not token.is_space]
    if phrases is not None:
        return CaptionSplit(words, [_given_phrase(i, spec, words, parser) for i, spec in enumerate(phrases)], "given")
    found = []
    for start, end in spans:
        positions = [word_of_token[t] for t in range(start, end) if t in word_of_token]
        if positions:
            found.append(CaptionPhrase(positions[0], len(positions), " ".join(words[p] for p in positions)))
    return CaptionSplit(words, found, "entities")


def _given_phrase(index: int, spec: PhraseSpec, words: list[str], parser) -> CaptionPhrase:
    """``phrases[index]`` of :func:`split_caption` as a span of ``words``."""
    if isinstance(spec, str):
        wanted = [t.text.lower() for t in parser.unwrapped.nlp.make_doc(" ".join(spec.split())) if not t.is_space]
        lowered = [w.lower() for w in words]
        n = len(wanted)
        first = next((i for i in range(len(words) - n + 1) if n and lowered[i : i + n] == wanted), None)
        if first is None:
            raise ValueError(f"phrases[{index}]: {spec!r} is not in the caption's words {words}")
        spec = (first, n)
    try:
        first, n = (int(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(f"phrases[{index}]: expected a string or (first_word_index, num_words), got {spec!r}") from None
    if first < 0 or n < 1 or first + n > len(words):
        raise ValueError(f"phrases[{index}]: span ({first}, {n}) is outside the caption's {len(words)} words {words}")
    return CaptionPhrase(first, n, " ".join(words[first : first + n]))
