"""Synthetic grounding benchmark: drawn shapes + captions + noisy detector proposals, Flickr30K Entities layout.

``relground data synth --out DIR --images N --seed S`` writes::

    DIR/Images/<id>.jpg           N square RGB images (``--image-size`` pixels, default 128), JPEG quality 90
    DIR/Annotations/<id>.xml      PASCAL-VOC-like, as Flickr30K Entities: raw coords = 0-based box + 1
    DIR/Sentences/<id>.txt        1-3 captions, phrases marked ``[/EN#<chain>/<type> words]``
    DIR/train.txt val.txt test.txt   image ids, 80/10/10 split by image
    DIR/proposals.h5              one proposal store for all splits (``relground.data.proposals`` format)
    DIR/twins.json                {image_id: [chain ids of the two identical twins]} for the evaluator's
                                  ``twin`` / ``no_twin`` groups (``relground.evaluation.evaluator.load_twins``)
    DIR/synthetic.json            generation arguments + the measured properties printed by the CLI (no timing)

Image ids are 7-digit numbers (``1000000 + index``); chain ids are unique over the dataset
(``10 * (index + 1) + k``) like the real release.

**Phrase types** (the ``/<type>`` of the markup): the canonical shape name of the object (``circle``, ``square``,
``triangle``, ``star``, ``cross``, ``diamond``), so per-type accuracy is per shape; ``scene`` for the box-less
phrases "the picture", "the image", ... (XML ``<scene>1</scene><nobndbox>0</nobndbox>``, never evaluated).
Every drawn object has its own chain and box in the XML whether or not a caption mentions it; the two copies of
a twin pair also carry the chain of a plural phrase ("two red circles") when a caption uses one, so that
phrase's ground truth is the union of both boxes (multi-name objects, as in the real data).

The benchmark exercises what ReIR claims to fix:

* **Localisation noise.** Each object gets a cluster of proposals. For an "easy" object the cluster surrounds a
  tight box (IoU >= 0.75); for a "hard" one (``HARD_OBJECT_SHARE``) it surrounds a shifted, partial or oversized
  core box with IoU in [0.32, 0.48], and no proposal reaches IoU 0.5, so only box refinement can ground it. The
  cluster's members overlap each other with IoU >= 0.6, and they are jittered around the object so a box feature
  sees the object off-centre: exactly what self-taught regression (anchor = best box, neighbours with IoU >= 0.6
  regressed towards it) can learn from the easy objects and apply to the hard ones. Background boxes and group
  boxes (two objects at once) are added as distractors.
* **Semantic ambiguity.** Most images hold an identical twin pair (same shape, colour and size); a caption tells
  the twins apart only through a spatial relation to a unique reference object ("the red circle to the left of
  the blue square"), which holds for one twin and whose opposite holds for the other. All other objects have a
  unique (shape, colour).
* **Noisy detector labels.** ``LABEL_NOISE`` of the object proposals carry a wrong shape name; background boxes
  carry a random one. ``class_names`` are the shape words, so a GloVe category prior is meaningful.
* **Varied captions.** Sentence frames (``FRAMES``), shape/colour synonyms GloVe knows, determiners, size
  adjectives and several phrasings per relation. Only frames whose relation SceneGraphParser attaches to the two
  annotated phrases are used; horizontal phrasings ("to the left of") come out as a two-hop chain through the
  entity "the left", which ``relground.language.relations`` folds into one relation, vertical ones ("above",
  "beneath") as one edge.

**Multi-relation images (opt-in: ``generate_synthetic(..., multi_relation=P)``, ``relground data synth
--multi-relation P``).** Without the option a caption relates a phrase to one other phrase: in the demo's
1000-image benchmark (seed 0) 420 of the 433 related test phrases have a single related phrase, so learned and
uniform VOGN edge weights cannot differ. With probability ``P`` an image is a multi-relation image instead: its
identical objects (``TWIN_IMAGE_SHARE`` of the images, as before) are a *triple* placed so that a copy is picked
out by two relations to two unique references together and by neither alone (each holds for two copies; the
copy it excludes lies strictly on the opposite side), and every caption that states relations relates its
subject to two phrases ("the red circle above the blue square sits to the left of the green star", ``FRAMES
["multi"]``; the parser attaches both relations to the subject in about 97% of them). A star of two relations
has one phrase related to two others among three, so ``P = 1`` (recommended) gives a third of the related
phrases (``multi_related_test_share``: 0.333 on the generator's own relations, 0.329 = 163 / 495 by the parser
on the test split at 1000 images, seed 0), and about a quarter of the grounded phrases need both relations
(``conjunction_phrase_share``); ``P = 0.5`` gives about 0.17 (the other images keep their twin pairs and
single-relation captions). ``twins.json`` then lists a triple's three chains,
the twin properties count its copies as twins, the appearance-only accuracy guesses one of three, and the plural
phrase reads "three / the three / all three". At ``P = 0`` (the default) no number is drawn for the option and
the output is byte-identical to the generator's before it existed (tests/data/test_synthetic_default_anchor.py).

The properties are measured on the written boxes and proposals (not on the sampling intentions) and returned
by :func:`generate_synthetic`. Each image is drawn from its own ``numpy`` generator seeded with
``(seed, index)``, so the output is byte-identical for a seed whatever the number of worker processes.

Modules, by concern: ``vocabulary`` (words, frames, knobs), ``scene`` (placing and drawing the objects),
``captions`` (marked-up captions), ``detector`` (the simulated proposals), ``layout`` (one image written in the
Flickr30K Entities layout), ``generate`` (the whole benchmark). The random draws of one image happen in
``layout.generate_image`` in a fixed order: twins (and, with the option, multi-relation), placement, hardness,
captions, proposals, drawing.
"""
from __future__ import annotations

from relground.data.catalog import TWINS_FILE
from relground.data.synthetic.generate import format_properties, generate_synthetic
from relground.data.synthetic.vocabulary import (
    BIG_ABOVE, BIG_WORDS, CAPTIONS_PER_IMAGE, COLOURS, FIRST_IMAGE_ID, FRAMES, HARD_OBJECT_SHARE, JPEG_QUALITY,
    LABEL_NOISE, MAX_IMAGE_SIZE, MIN_GAP, MIN_IMAGE_SIZE, MIN_IMAGES, OBJECTS_PER_IMAGE, OPPOSITE, RELATIONS,
    SCENE_PHRASES, SHAPE_WORDS, SHAPES, SIZE_RANGE, SMALL_BELOW, SMALL_WORDS, TWIN_IMAGE_SHARE, relation_holds,
)

__all__ = [
    "BIG_ABOVE", "BIG_WORDS", "CAPTIONS_PER_IMAGE", "COLOURS", "FIRST_IMAGE_ID", "FRAMES", "HARD_OBJECT_SHARE",
    "JPEG_QUALITY", "LABEL_NOISE", "MAX_IMAGE_SIZE", "MIN_GAP", "MIN_IMAGE_SIZE", "MIN_IMAGES", "OBJECTS_PER_IMAGE",
    "OPPOSITE", "RELATIONS", "SCENE_PHRASES", "SHAPE_WORDS", "SHAPES", "SIZE_RANGE", "SMALL_BELOW", "SMALL_WORDS",
    "TWIN_IMAGE_SHARE", "TWINS_FILE", "format_properties", "generate_synthetic", "relation_holds",
]
