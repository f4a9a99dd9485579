"""Glue from a :class:`~relground.config.Config` to data loaders and the ReIR model, and back from a checkpoint.

What a trained model needs besides its weights is gathered once from the training split into
``model_args``, a plain JSON-able dict stored in every checkpoint (so evaluation and ``Grounder`` rebuild
exactly the training vocabularies)::

    {"caption_itos": [...],           # caption vocabulary (0 = <pad>, 1 = <unk>)
     "phrase_itos": [...],            # phrase vocabulary for reconstruction (0 = <end>, 1 = <unk>)
     "class_names": [...],            # detector classes of the proposals file (labels index into it)
     "relation_categories": [...],    # relation-category names of the train relations file (C_r of them)
     "relation_class_counts": [...]}  # their train counts (BCE class weights); [] without relations

C_r is the number of categories in the train relations file (``data.relations``); it replaces
``data.num_relation_classes`` when relations are given. Typical use::

    loader, model_args = build_train_loader(cfg)          # rank / world size from torch.distributed
    model = build_model(cfg, model_args)
    test_loader = build_loader(cfg, cfg.data.test_split, model_args, train=False)
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from relground.engine import distributed as du
from relground.engine.solver import per_process_batch_size

if TYPE_CHECKING:
    from relground.config import Config
    from relground.config.data import DataConfig
    from relground.structures.records import ImageAnnotation
    from relground.model.reir import ReIR

GLOVE_DIM = 50  # model.word_dim of the shared GloVe 6B 50-d vectors: the caption embedding starts from them


def _phrase_token_lists(images: Sequence["ImageAnnotation"]) -> list[list[str]]:
    from relground.language.vocab import tokenize

    return [tokenize(p.text) for im in images for s in im.sentences for p in s.phrases if p.grounded]


def prepare_model_args(cfg: "Config", images: Optional[Sequence["ImageAnnotation"]] = None) -> dict[str, Any]:
    """Vocabularies, detector classes and relation categories of the training split (see the module docstring).

    Args:
        cfg: the experiment config (``data.*`` is read).
        images: the loaded training split (read from ``data.root`` when None).

    Raises:
        FileNotFoundError: the split, proposals or relations file is missing (named).
        ValueError: ``model.loss.relation`` is on but ``data.relations`` is empty.
    """
    from relground.data.dataset import load_annotations
    from relground.data.proposals import ProposalStore
    from relground.language.relations import load_categories
    from relground.language.vocab import PHRASE_SPECIALS, Vocabulary, tokenize

    data = cfg.data
    split = data.train_split
    images = load_annotations(data, split) if images is None else images
    captions = [tokenize(s.text) for im in images for s in im.sentences]
    caption_vocab = Vocabulary.build(captions, min_freq=data.vocab_min_freq)
    phrase_vocab = Vocabulary.build(_phrase_token_lists(images), min_freq=data.vocab_min_freq, specials=PHRASE_SPECIALS)
    proposals = ProposalStore(data.proposals_path(split))
    class_names = list(proposals.class_names)
    proposals.close()
    relations_file = data.relations_path(split)
    if relations_file:
        categories = load_categories(relations_file)
    elif cfg.model.loss.relation:
        raise ValueError(
            "model.loss.relation needs data.relations (a `relground data relations` file per split, e.g. "
            "'{root}/relations_{split}.json'); or set model.loss.relation=false"
        )
    else:
        categories = []
    return {
        "caption_itos": caption_vocab.itos,
        "phrase_itos": phrase_vocab.itos,
        "class_names": class_names,
        "relation_categories": [c["name"] for c in categories],
        "relation_class_counts": [int(c["count"]) for c in categories],
    }


def num_relation_classes(cfg: "Config", model_args: dict[str, Any]) -> int:
    """C_r: the train relations file's category count, else ``data.num_relation_classes``."""
    return len(model_args["relation_categories"]) or cfg.data.num_relation_classes


def _data_config(cfg: "Config", model_args: dict[str, Any], batch_size: Optional[int] = None) -> "DataConfig":
    changes: dict[str, Any] = {"num_relation_classes": num_relation_classes(cfg, model_args)}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return dataclasses.replace(cfg.data, **changes)


def build_dataset(cfg: "Config", split: str, model_args: dict[str, Any], images=None):
    """The :class:`~relground.data.dataset.GroundingDataset` of ``split`` with the training vocabularies.

    The category prior s_a uses GloVe vectors of the split's phrase words and the detector class words.
    """
    from relground.data.dataset import build_dataset as build_grounding_dataset
    from relground.data.dataset import load_annotations
    from relground.language.glove import WordVectors, category_prior
    from relground.language.vocab import Vocabulary

    data = _data_config(cfg, model_args)
    images = load_annotations(data, split) if images is None else images
    words = {w for tokens in _phrase_token_lists(images) for w in tokens}
    words |= {w for name in model_args["class_names"] for w in name.split()}
    vectors = WordVectors.load(words=sorted(words))
    prior = functools.partial(category_prior, class_names=model_args["class_names"], vectors=vectors)
    return build_grounding_dataset(
        data, split, Vocabulary(model_args["caption_itos"]), Vocabulary(model_args["phrase_itos"]), prior, images=images
    )


def build_loader(
    cfg: "Config",
    split: str,
    model_args: dict[str, Any],
    train: bool = False,
    batch_size: Optional[int] = None,
    images: Optional[Sequence["ImageAnnotation"]] = None,
):
    """A loader over ``split`` for this process (rank and world size from ``torch.distributed``).

    Args:
        cfg: the experiment config.
        split: split name (e.g. ``cfg.data.test_split``).
        model_args: from :func:`prepare_model_args` or a checkpoint.
        train: shuffle by ``(cfg.seed, epoch)`` and drop the last incomplete batch.
        batch_size: per-process batch (default ``data.batch_size``).
        images: the loaded split (read from ``data.root`` when None).
    """
    from relground.data.dataset import build_dataloader

    dataset = build_dataset(cfg, split, model_args, images=images)
    data = _data_config(cfg, model_args, batch_size)
    return build_dataloader(
        data, dataset, train=train, rank=du.get_rank(), world_size=du.get_world_size(), seed=cfg.seed,
        device_id=_cuda_index(cfg),
    )


def _cuda_index(cfg: "Config") -> Optional[int]:
    """The CUDA device index this process uses (for DALI's GPU decoding), None on CPU."""
    from relground.utils.env import resolve_device

    device = resolve_device(cfg.train.device)
    return device.index if device.type == "cuda" else None


def build_train_loader(cfg: "Config"):
    """The training loader of this process and the ``model_args`` gathered from the training split.

    The per-process batch is ``solver.ims_per_batch / (world size x train.accumulation_steps)`` when
    ``solver.ims_per_batch`` is set, else ``data.batch_size``.

    Returns:
        ``(loader, model_args)``.
    """
    from relground.data.dataset import load_annotations

    images = load_annotations(cfg.data, cfg.data.train_split)
    model_args = prepare_model_args(cfg, images)
    batch_size = per_process_batch_size(cfg.solver, du.get_world_size(), cfg.train.accumulation_steps)
    loader = build_loader(cfg, cfg.data.train_split, model_args, train=True, batch_size=batch_size, images=images)
    return loader, model_args


def build_model(cfg: "Config", model_args: dict[str, Any], word_vectors: bool = True) -> "ReIR":
    """ReIR with the training vocabularies' sizes and C_r.

    Args:
        cfg: the experiment config (``model.*``).
        model_args: from :func:`prepare_model_args` or a checkpoint.
        word_vectors: start the caption embedding from GloVe when ``model.word_dim`` is 50 (the vectors'
            width); False skips the lookup (weights about to be loaded from a checkpoint).
    """
    from relground.model.reir import ReIR

    counts = model_args["relation_class_counts"] or None
    model = ReIR(
        cfg.model,
        caption_vocab_size=len(model_args["caption_itos"]),
        phrase_vocab_size=len(model_args["phrase_itos"]),
        num_relation_classes=num_relation_classes(cfg, model_args),
        relation_class_counts=counts,
    )
    if word_vectors and cfg.model.word_dim == GLOVE_DIM:
        from relground.language.glove import WordVectors
        from relground.language.vocab import Vocabulary

        vocab = Vocabulary(model_args["caption_itos"])
        model.load_pretrained_word_vectors(WordVectors.load(words=vocab.itos).embedding_matrix(vocab))
    return model


def model_from_checkpoint(state: dict[str, Any], overrides: Sequence[str] = ()):
    """Rebuild ``(model, cfg, model_args)`` from a checkpoint dict written by ``train`` (weights loaded).

    Args:
        state: ``relground.engine.checkpoint.load_checkpoint(path)``.
        overrides: ``key=value`` config overrides (e.g. ``data.root=...`` on another machine).

    Raises:
        ValueError: the checkpoint lacks ``config`` or ``model_args`` (not written by ``train``).
    """
    from relground.config import Config, apply_overrides, from_dict

    for key in ("config", "model_args"):
        if key not in state:
            raise ValueError(f"checkpoint has no {key!r} entry (was it written by relground.engine.train?)")
    cfg = from_dict(Config, state["config"], source="checkpoint config")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    model = build_model(cfg, state["model_args"], word_vectors=False)
    model.load_state_dict(state["model"])
    return model, cfg, state["model_args"]
