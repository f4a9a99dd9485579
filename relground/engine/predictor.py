"""A trained model rebuilt from its checkpoint, with its config and training vocabularies, run on dataset splits.

Example::

    from relground.engine.predictor import TrainedModel
    trained = TrainedModel.from_checkpoint("outputs/demo/full")          # a checkpoint file or a training folder
    metrics = trained.evaluate("test")                                   # relground.evaluation.evaluator metrics

The model runs where ``device`` says (default ``auto``: CUDA when available), under bf16 autocast on a GPU
(``amp``). Every backbone tensor comes from the checkpoint: the weight file the run started from is never read,
so a checkpoint travels alone.

A checkpoint written by :func:`relground.engine.defaults.train` holds everything needed to rebuild the model:
``model`` (state dict), ``config`` (the ``Config`` as a dict) and ``model_args`` (vocabularies, detector
class names and the model's other constructor arguments, see :mod:`relground.engine.defaults`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch

from relground.config import Config, load_config
from relground.data.dataset import load_annotations
from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.engine.defaults import build_loader, build_model, load_model_weights, model_from_checkpoint
from relground.engine.weights import without_weight_file
from relground.evaluation.evaluator import load_twins
from relground.evaluation.inference import evaluate_model
from relground.structures.records import ImageAnnotation
from relground.utils.env import resolve_amp_dtype, resolve_device


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a training output folder (its newest checkpoint).

    Raises:
        FileNotFoundError: no such file, or a folder without any checkpoint.
    """
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            latest = Checkpointer(folder).latest()
            if latest is not None:
                return latest
    raise FileNotFoundError(f"--checkpoint: no checkpoint file at {path}")


class TrainedModel:
    """A model rebuilt from a checkpoint with its config and training vocabularies, evaluated on dataset splits.

    Args:
        model: the ``ReIR`` (weights loaded).
        cfg: its ``relground.config.Config``.
        model_args: vocabularies and class names (:mod:`relground.engine.defaults`).
        device: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:<i>``.
        amp: autocast precision as ``train.amp``: ``auto`` (bf16 on a GPU, fp32 on the CPU), ``bf16``, ``fp16``,
            ``fp32``.
        checkpoint: the file it was loaded from; ``iteration``: the training iteration of that checkpoint.
    """

    def __init__(
        self, model: torch.nn.Module, cfg: Config, model_args: dict[str, Any],
        device: Union[str, torch.device] = "auto", *, amp: str = "auto",
        checkpoint: Optional[Path] = None, iteration: Optional[int] = None,
    ):
        self.device = resolve_device(device, "device") if isinstance(device, str) else torch.device(device)
        self.amp_dtype = resolve_amp_dtype(amp, self.device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.model_args = model_args
        self.checkpoint = checkpoint
        self.iteration = iteration
        self._annotations: dict[str, list[ImageAnnotation]] = {}

    @classmethod
    def from_checkpoint(
        cls, checkpoint, *, config=None, overrides: Sequence[str] = (), device: Union[str, torch.device] = "auto",
        amp: str = "auto",
    ) -> "TrainedModel":
        """Load ``checkpoint`` (file or training folder); ``config`` (YAML) replaces the stored config.
        ``device`` and ``amp``: see the class.

        Raises:
            FileNotFoundError: no checkpoint there.
            ValueError: not a relground checkpoint, or one without ``config`` / ``model_args``.
        """
        resolve_device(str(device), "device")  # before the (slow) load
        path = resolve_checkpoint(checkpoint)
        state = load_checkpoint(path, map_location="cpu")  # CheckpointError (ValueError) naming a damaged file
        if config is None:
            model, cfg, model_args = model_from_checkpoint(state, overrides, source=str(path))
        else:
            if "model_args" not in state:
                raise ValueError(f"{checkpoint}: checkpoint has no 'model_args' entry (was it written by train?)")
            cfg, model_args = load_config(config, overrides), state["model_args"]
            model = build_model(without_weight_file(cfg), model_args, word_vectors=False)
            load_model_weights(model, state, cfg, source=str(path))
        iteration = state.get("iteration")
        return cls(model, cfg, model_args, device, amp=amp, checkpoint=path,
                   iteration=int(iteration) if iteration is not None else None)

    def annotations(self, split: str) -> list[ImageAnnotation]:
        """The split's images (read once; relations attached when the config names a relations file)."""
        if split not in self._annotations:
            self._annotations[split] = load_annotations(self.cfg.data, split)
        return self._annotations[split]

    def evaluate(
        self, split: str = "test", *, return_predictions: bool = False, progress: bool = False,
        batch_size: Optional[int] = None,
    ):
        """Metrics of the model on ``split`` (``relground.evaluation.evaluator.evaluate_model``), in batches of
        ``batch_size`` pairs (default ``data.batch_size``) on :attr:`device`.

        Returns:
            the metrics dict, or ``(metrics, ModelPredictions)`` when ``return_predictions`` (boxes per stage,
            ``key -> [x1, y1, x2, y2]`` in original pixels, the proposals the model saw, and the run's
            :meth:`~relground.evaluation.inference.ModelPredictions.throughput`).
        """
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"--batch-size: must be >= 1, got {batch_size}")
        images = self.annotations(split)
        # the whole split in this process, batches finished on the model's device
        loader = build_loader(self.cfg, split, self.model_args, train=False, batch_size=batch_size, images=images,
                              device=self.device, whole_split=True)
        return evaluate_model(
            self.model, loader, annotations=images, twins=load_twins(self.cfg.data.root, images),
            progress=progress, return_predictions=return_predictions, amp_dtype=self.amp_dtype,
        )
