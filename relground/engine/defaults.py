"""Assembly: everything built from a :class:`~relground.config.Config` (datasets, loaders, model, ``train(cfg)``).

The bare loop (:mod:`relground.engine.trainer`) and its hooks know no ``Config``; this module reads one and
builds their parts. What a trained model needs besides its weights is gathered once from the training split into
``model_args``, a plain JSON-able dict stored in every checkpoint (so evaluation and ``Grounder`` rebuild
exactly the training vocabularies)::

    {"caption_itos": [...],           # caption vocabulary (0 = <pad>, 1 = <unk>)
     "phrase_itos": [...],            # phrase vocabulary for reconstruction (0 = <end>, 1 = <unk>)
     "class_names": [...],            # detector classes of the proposals file (labels index into it)
     "relation_categories": [...],    # relation-category names of the train relations file (C_r of them)
     "relation_class_counts": [...]}  # their train counts (BCE class weights); [] without relations

C_r is the number of categories in the train relations file (``data.relations``); it replaces
``data.num_relation_classes`` when relations are given. Typical use::

    result = train(cfg, resume=False, hooks=[])   # cfg: relground.config.Config
    result["checkpoint"]  # path of model_final.pth (or of the checkpoint written on SIGTERM/SIGINT)
    result["status"]      # "finished" | "interrupted" (then result["signal"] is the signal number)

    loader, model_args = build_train_loader(cfg)          # rank / world size from torch.distributed
    model = build_model(cfg, model_args)
    test_loader = build_loader(cfg, cfg.data.test_split, model_args, train=False)
    model, cfg, model_args = model_from_checkpoint(load_checkpoint(result["checkpoint"]))

Over 400 lines because it is the one place where a ``Config`` becomes the loop's parts (loaders, model, resume
checks, the evaluation hook), so that the trainer and its hooks never read a config.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from relground.config import Config, apply_overrides, from_dict, save_config, to_dict
from relground.config.data import DataConfig
from relground.data.collate import pad_to_buckets
from relground.data.dataset import GroundingDataset, build_dataloader, build_dataset, load_annotations
from relground.data.proposals import ProposalStore
from relground.engine import distributed as du
from relground.engine.checkpoint import (
    CheckpointError, Checkpointer, check_resumable, config_differences, find_loadable_checkpoint, warn_broken_checkpoints,
)
from relground.engine.cuda_graph import MAX_GRAPHS
from relground.engine.eval_hook import EvalHook
from relground.engine.hooks import HookBase
from relground.engine.run_folder import check_output_dir, nothing_to_resume
from relground.engine.solver import per_process_batch_size
from relground.engine.trainer import Trainer
from relground.engine.weights import check_backbone_weights, without_weight_file
from relground.evaluation.evaluator import load_twins
from relground.evaluation.inference import evaluate_model
from relground.language.glove import WordVectors, category_prior
from relground.language.relations import load_categories
from relground.language.vocab import PHRASE_SPECIALS, Vocabulary, tokenize
from relground.model.reir import ReIR
from relground.structures.records import ImageAnnotation
from relground.utils.env import intra_op_threads, resolve_amp_dtype, resolve_device, seed_all
from relground.utils.logs import close_log_file, setup_logger

GLOVE_DIM = 50  # model.word_dim of the shared GloVe 6B 50-d vectors: the caption embedding starts from them


def _phrase_token_lists(images: Sequence[ImageAnnotation]) -> list[list[str]]:
    return [tokenize(p.text) for im in images for s in im.sentences for p in s.phrases if p.grounded]


def prepare_model_args(cfg: Config, images: Optional[Sequence[ImageAnnotation]] = None) -> dict[str, Any]:
    """Vocabularies, detector classes and relation categories of the training split (see the module docstring).

    Args:
        cfg: the experiment config (``data.*`` is read).
        images: the loaded training split (read from ``data.root`` when None).

    Raises:
        FileNotFoundError: the split, proposals or relations file is missing (named).
        ValueError: ``model.loss.relation`` is on but ``data.relations`` is empty.
    """
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


def num_relation_classes(cfg: Config, model_args: dict[str, Any]) -> int:
    """C_r: the train relations file's category count, else ``data.num_relation_classes``."""
    return len(model_args["relation_categories"]) or cfg.data.num_relation_classes


def _data_config(cfg: Config, model_args: dict[str, Any], batch_size: Optional[int] = None) -> DataConfig:
    changes: dict[str, Any] = {"num_relation_classes": num_relation_classes(cfg, model_args)}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return dataclasses.replace(cfg.data, **changes)


def build_split_dataset(cfg: Config, split: str, model_args: dict[str, Any], images=None) -> GroundingDataset:
    """The :class:`~relground.data.dataset.GroundingDataset` of ``split`` with the training vocabularies.

    The category prior s_a uses GloVe vectors of the split's phrase words and the detector class words.
    """
    data = _data_config(cfg, model_args)
    images = load_annotations(data, split) if images is None else images
    words = {w for tokens in _phrase_token_lists(images) for w in tokens}
    words |= {w for name in model_args["class_names"] for w in name.split()}
    vectors = WordVectors.load(words=sorted(words))
    prior = functools.partial(category_prior, class_names=model_args["class_names"], vectors=vectors)
    return build_dataset(
        data, split, Vocabulary(model_args["caption_itos"]), Vocabulary(model_args["phrase_itos"]), prior, images=images
    )


def build_loader(
    cfg: Config,
    split: str,
    model_args: dict[str, Any],
    train: bool = False,
    batch_size: Optional[int] = None,
    images: Optional[Sequence[ImageAnnotation]] = None,
    device: Optional[torch.device] = None,
    whole_split: bool = False,
):
    """A loader over ``split`` for this process (rank and world size from ``torch.distributed``).

    Args:
        cfg: the experiment config.
        split: split name (e.g. ``cfg.data.test_split``).
        model_args: from :func:`prepare_model_args` or a checkpoint.
        train: shuffle by ``(cfg.seed, epoch)`` and drop the last incomplete batch.
        batch_size: per-process batch (default ``data.batch_size``).
        images: the loaded split (read from ``data.root`` when None).
        device: where batches are finished (a GPU decodes there); default ``train.device``.
        whole_split: every item in this process (rank 0 of 1), e.g. an evaluation run by rank 0 alone.
    """
    dataset = build_split_dataset(cfg, split, model_args, images=images)
    data = _data_config(cfg, model_args, batch_size)
    rank, world_size = (0, 1) if whole_split else (du.get_rank(), du.get_world_size())
    device_id = _cuda_index(cfg) if device is None else (device.index if device.type == "cuda" else None)
    return build_dataloader(
        data, dataset, train=train, rank=rank, world_size=world_size, seed=cfg.seed,
        device_id=device_id, distributed_order=train and cfg.train.data_order == "distributed",
    )


def _cuda_index(cfg: Config) -> Optional[int]:
    """The CUDA device index this process uses (for DALI's GPU decoding), None on CPU."""
    device = resolve_device(cfg.train.device)
    return device.index if device.type == "cuda" else None


def build_train_loader(cfg: Config):
    """The training loader of this process and the ``model_args`` gathered from the training split.

    The per-process batch is ``solver.ims_per_batch / (world size x train.accumulation_steps)`` when
    ``solver.ims_per_batch`` is set, else ``data.batch_size``.

    Returns:
        ``(loader, model_args)``.
    """
    images = load_annotations(cfg.data, cfg.data.train_split)
    model_args = prepare_model_args(cfg, images)
    batch_size = per_process_batch_size(cfg.solver, du.get_world_size(), cfg.train.accumulation_steps)
    loader = build_loader(cfg, cfg.data.train_split, model_args, train=True, batch_size=batch_size, images=images)
    return loader, model_args


def build_model(cfg: Config, model_args: dict[str, Any], word_vectors: bool = True) -> ReIR:
    """ReIR with the training vocabularies' sizes and C_r.

    Args:
        cfg: the experiment config (``model.*``).
        model_args: from :func:`prepare_model_args` or a checkpoint.
        word_vectors: start the caption embedding from GloVe when ``model.word_dim`` is 50 (the vectors'
            width); False skips the lookup (weights about to be loaded from a checkpoint).
    """
    counts = model_args["relation_class_counts"] or None
    model = ReIR(
        cfg.model,
        caption_vocab_size=len(model_args["caption_itos"]),
        phrase_vocab_size=len(model_args["phrase_itos"]),
        num_relation_classes=num_relation_classes(cfg, model_args),
        relation_class_counts=counts,
    )
    if word_vectors and cfg.model.word_dim == GLOVE_DIM:
        vocab = Vocabulary(model_args["caption_itos"])
        model.load_pretrained_word_vectors(WordVectors.load(words=vocab.itos).embedding_matrix(vocab))
    return model


def model_from_checkpoint(state: dict[str, Any], overrides: Sequence[str] = (), source: str = "checkpoint"):
    """Rebuild ``(model, cfg, model_args)`` from a checkpoint dict written by ``train`` (weights loaded).

    Args:
        state: ``relground.engine.checkpoint.load_checkpoint(path)``.
        overrides: ``key=value`` config overrides (e.g. ``data.root=...`` on another machine).

    Raises:
        ValueError: the checkpoint lacks ``config`` or ``model_args`` (not written by ``train``).
    """
    for key in ("config", "model_args"):
        if key not in state:
            raise ValueError(f"{source}: checkpoint has no {key!r} entry (was it written by relground.engine.defaults.train?)")
    cfg = from_dict(Config, state["config"], source="checkpoint config")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    # every backbone tensor is in the checkpoint: the weight file the run started from is not read
    model = build_model(without_weight_file(cfg), state["model_args"], word_vectors=False)
    load_model_weights(model, state, cfg, source=source)
    return model, cfg, state["model_args"]


# Keys a resumed run may change: where the files are, how the machine runs it, how long it trains and how
# often it logs / checkpoints. Every other key changes the model, the optimisation or the data order.
RESUMABLE_KEYS = (
    "output_dir", "name", "data.root", "data.proposals", "data.relations", "data.images", "data.num_workers",
    "model.backbone_weights",  # the checkpoint holds every backbone tensor: the file may move
    "data.loader", "data.val_split", "data.test_split", "solver.max_iter", "train.device", "train.threads",
    "train.checkpoint_period", "train.keep_checkpoints", "train.log_period", "train.progress_bar",
    "train.tensorboard", "train.max_loss", "train.eval_period",
)


def load_model_weights(model, state: dict[str, Any], cfg: Optional[Config] = None, source: str = "checkpoint") -> None:
    """``model.load_state_dict(state["model"])``; on a shape mismatch a ``ValueError`` naming the config keys that
    differ between the checkpoint's ``config`` and ``cfg`` (e.g. ``model.hidden_dim``) instead of torch's
    size-mismatch list."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        keys = []
        if cfg is not None and isinstance(state.get("config"), dict):
            try:
                saved = to_dict(from_dict(Config, state["config"], source=f"{source} config"))
            except (ValueError, KeyError, TypeError):
                saved = state["config"]
            keys = [k for k in config_differences(saved, to_dict(cfg)) if k.startswith(("model.", "data.num_relation"))]
        detail = ("; ".join(keys) if keys else str(e).splitlines()[0])
        raise ValueError(
            f"{source}: its weights do not fit the model built from the config ({detail}); use the checkpoint's own "
            "values for these keys"
        ) from None


def load_resume_checkpoint(cfg: Config) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The checkpoint a ``--resume`` of ``cfg.output_dir`` continues from, checked before anything is built or
    written: the newest that loads (newer unreadable ones are named in a warning and left on disk), whose saved
    config matches ``cfg`` except for :data:`RESUMABLE_KEYS`. ``(None, None)`` when the folder has no checkpoint.

    Raises:
        CheckpointError: checkpoints exist but none can be read (each named).
        ValueError: the saved config differs in keys a resume cannot change (every such key named with both
            values), or the run already finished at ``solver.max_iter``.
    """
    checkpointer = Checkpointer(Path(cfg.output_dir) / "checkpoints")
    path, state, broken = find_loadable_checkpoint(checkpointer)
    warn_broken_checkpoints(broken, path)
    if path is None:
        return None, None
    saved = state.get("config")
    if isinstance(saved, dict):
        try:
            saved = to_dict(from_dict(Config, saved, source=f"{path} config"))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(path, f"its saved config cannot be read: {e}") from None
        differences = config_differences(saved, to_dict(cfg), RESUMABLE_KEYS)
        if differences:
            raise ValueError(
                f"{path}: cannot resume with this config, {len(differences)} key(s) differ from the run's: "
                + "; ".join(differences)
                + ". Set them back, or train into a new output_dir (nothing was written)"
            )
    check_resumable(path, state, cfg.solver.max_iter)
    return path, state


def check_ranks_resume_alike(path: Optional[Path], state: Optional[dict[str, Any]]) -> None:
    """Every rank chose its resume checkpoint alone (before the process group existed); they must agree.

    A rank that saw another file (a run folder not shared alike, a checkpoint written while another rank looked)
    would resume at another iteration and then hang in a collective or diverge silently.

    Raises:
        ValueError: the ranks' choices differ; the message lists each rank's checkpoint.
    """
    # the file name and iteration, not the path: nodes may mount the run folder at different places
    choice = (path.name if path is not None else None, None if state is None else int(state["iteration"]))
    choices = du.all_gather_object(choice)
    if any(c != choices[0] for c in choices):
        listed = "; ".join(f"rank {r}: {c[0] or 'fresh start'}" for r, c in enumerate(choices))
        raise ValueError(f"the ranks would resume from different checkpoints ({listed}); the run folder must be one "
                         "folder every rank sees alike")


def build_eval_hook(cfg: Config, model_args: dict[str, Any], trainer: Trainer) -> EvalHook:
    """``train.eval_period``'s hook: the trained model on ``data.val_split`` (the whole split, on rank 0, under the
    training's autocast), ``model_best.pth`` by ``train.eval_metric``."""
    split = cfg.data.val_split
    loader = None

    def evaluate() -> dict[str, Any]:
        nonlocal loader
        if loader is None:  # built at the first evaluation, on rank 0 only
            loader = build_loader(cfg, split, model_args, train=False, device=trainer.device, whole_split=True)
        images = loader.dataset.images if hasattr(loader, "dataset") else load_annotations(cfg.data, split)
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model  # no DDP collectives
        return evaluate_model(model, loader, annotations=images, twins=load_twins(cfg.data.root, images),
                              progress=False, amp_dtype=resolve_amp_dtype(cfg.train.amp, trainer.device))

    return EvalHook(cfg.train.eval_period, evaluate, metric=cfg.train.eval_metric, split=split)


def check_cuda_graph(cfg: Config) -> None:
    """``train.cuda_graph``'s needs beyond :class:`~relground.config.train.TrainConfig`'s own checks (the trainer
    checks the model and optimizer again), all named at once. ``data.image_bucket: 0`` (one capture per distinct
    image size; fine when the images have one size) is warned about, not refused.

    Raises:
        ValueError: naming each setting that must change.
    """
    if not cfg.train.cuda_graph:
        return
    if cfg.data.image_bucket == 0:
        warnings.warn(f"train.cuda_graph with data.image_bucket: 0 captures a graph per distinct image size "
                      f"({MAX_GRAPHS} at most, later sizes run eagerly); 128 keeps them few", RuntimeWarning, 2)
    problems = []
    if not cfg.model.static_shapes:
        problems.append("model.static_shapes: true (the default step reads counts on the host)")
    if not cfg.data.shape_buckets:
        problems.append("data.shape_buckets: true (one graph is captured per batch shape)")
    if cfg.model.cache_features:
        problems.append("model.cache_features: false (the feature cache is a host store)")
    if not cfg.model.freeze_backbone:  # the CUDA roi_align_avg backward (trainable backbone only) calls .item()
        problems.append("model.freeze_backbone: true (a trainable backbone's RoI-pooling backward reads the host)")
    if cfg.train.compile:
        problems.append("train.compile: false (pick one: train.cuda_graph also replays backward and the optimizer "
                        "step; train.compile fuses the forward's kernels; together untested, and a recompilation "
                        "during a capture would break it)")
    if resolve_device(cfg.train.device).type != "cuda":
        problems.append(f"a CUDA device (train.device={cfg.train.device!r} resolves to the CPU here)")
    if problems:
        raise ValueError("train.cuda_graph needs " + "; ".join(problems))


def train(cfg: Config, *, resume: bool = False, hooks: Sequence[HookBase] = (),
          fresh_if_no_checkpoint: bool = False) -> dict[str, Any]:
    """Build the model and data from ``cfg``, train (resuming when asked) and return the result.

    Initialises ``torch.distributed`` when launched by torchrun, writes ``<output_dir>/config.yaml``
    (rank 0), trains, and tears the process group down.

    Args:
        cfg: a frozen :class:`relground.config.Config`.
        resume: continue from the newest checkpoint in ``cfg.output_dir`` (none there: an error, unless
            ``fresh_if_no_checkpoint``). Implied when torchrun restarted the process group (``TORCHELASTIC_RESTART_COUNT``
            > 0, after a worker died with ``--max-restarts``): the group continues from its last checkpoint, if any.
        hooks: extra hooks (e.g. periodic evaluation), run after the default ones.
        fresh_if_no_checkpoint: with ``resume``, start fresh when there is nothing to resume.

    Returns:
        :meth:`Trainer.train`'s dict plus ``config`` (path of the saved YAML).

    Raises:
        ValueError: ``cfg.output_dir`` already holds checkpoints and ``resume`` is False (nothing is
            overwritten), or a bad config / data file (named).
        FileNotFoundError: a data file is missing (named).
        FloatingPointError: a loss became NaN/inf (the last good checkpoint is kept and named).
    """
    check_cuda_graph(cfg)
    output_dir = Path(cfg.output_dir)
    check_output_dir(output_dir)
    restarted = du.restarted_by_torchrun()  # torchrun --max-restarts after a worker died: resume (fresh if none yet)
    resume, fresh_if_no_checkpoint = resume or restarted, fresh_if_no_checkpoint or restarted
    config_path = output_dir / "config.yaml"
    if not resume and Checkpointer(output_dir / "checkpoints").latest() is not None:
        raise ValueError(f"output_dir {output_dir} already holds checkpoints; resume it (--resume) or choose another folder")
    # Checked before anything is built or written: a resume that cannot work leaves the run folder as it was.
    resume_path, resume_state = load_resume_checkpoint(cfg) if resume else (None, None)
    if resume and resume_path is None and not fresh_if_no_checkpoint:
        raise ValueError(nothing_to_resume(output_dir))
    if resume_state is None:
        check_backbone_weights(cfg)  # a resumed run takes every backbone tensor from its checkpoint
    device = resolve_device(cfg.train.device)
    with intra_op_threads(cfg.train.threads if device.type == "cpu" else 0):
        du.init_distributed(device)
        try:
            check_ranks_resume_alike(resume_path, resume_state)
            logger = setup_logger(output_dir, du.get_rank())  # stderr + <output_dir>/log.txt, rank 0
            seed_all(cfg.seed)  # identical initial weights on every rank
            train_loader, model_args = build_train_loader(cfg)
            model = build_model(cfg if resume_state is None else without_weight_file(cfg), model_args)
            trainer = Trainer(
                model,
                train_loader,
                cfg.solver,
                cfg.train,
                output_dir,
                device=device,
                seed=cfg.seed,
                checkpoint_extra={"config": to_dict(cfg), "model_args": model_args},
                pad_batch=functools.partial(pad_to_buckets, image_bucket=cfg.data.image_bucket),
            )
            if cfg.train.eval_period:
                trainer.register_hooks([build_eval_hook(cfg, model_args, trainer)])
            trainer.register_hooks(hooks)
            if resume_state is not None:
                trainer.resume_from(resume_path, resume_state)
                resume_state = None  # the trainer holds its copy; free the checkpoint's tensors
            if du.is_main_process():  # only now: the resume (if any) worked
                output_dir.mkdir(parents=True, exist_ok=True)
                save_config(cfg, config_path)
            logger.info(f"train: {cfg.name}, {cfg.solver.max_iter} iterations on {du.get_world_size()} process(es), "
                        f"device {device}, run folder {output_dir}" + (f", resuming {resume_path}" if resume_path else ""))
            result = trainer.train()
            result["config"] = str(config_path)
            logger.info(f"train: {result['status']} at iteration {result['iteration']}, checkpoint {result['checkpoint']}")
            return result
        finally:
            close_log_file()
            du.destroy_distributed()
