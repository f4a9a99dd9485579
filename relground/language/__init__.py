"""The language layer: vocabularies (``vocab``), GloVe word vectors and the category prior (``glove``),
and relations between annotated phrases parsed from captions (``relations``)."""

from relground.language.captions import CaptionPhrase, CaptionSplit, parse_markup, split_caption
from relground.language.glove import WordVectors, category_prior
from relground.language.relations import (
    align_relations,
    attach_relations,
    build_relations,
    entity_spans,
    load_categories,
    load_parser,
    parse_caption,
    parse_captions,
)
from relground.language.vocab import Vocabulary, tokenize

__all__ = [
    "CaptionPhrase", "CaptionSplit", "Vocabulary", "WordVectors",
    "align_relations", "attach_relations", "build_relations", "category_prior", "entity_spans", "load_categories",
    "load_parser", "parse_caption", "parse_captions", "parse_markup", "split_caption", "tokenize",
]
