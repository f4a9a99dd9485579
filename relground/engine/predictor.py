"""A trained model rebuilt from its checkpoint, with its config and training vocabularies, run on dataset splits.

Example::

    from relground.engine.predictor import TrainedModel
    trained = TrainedModel.from_checkpoint("outputs/demo/full")          # a checkpoint file or a training folder
    metrics = trained.evaluate("test")                                   # relground.evaluation.evaluator metrics

A checkpoint written by :func:`relground.engine.defaults.train` holds everything needed to rebuild the model:
``model`` (state dict), ``config`` (the ``Config`` as a dict) and ``model_args`` (vocabularies, detector
class names and the model's other constructor arguments, see :mod:`relground.engine.defaults`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch

from relground.config import Config, load_config
from relground.data.dataset import load_annotations
from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.engine.defaults import build_loader, build_model, load_model_weights, model_from_checkpoint
from relground.evaluation.evaluator import load_twins
from relground.evaluation.inference import evaluate_model
from relground.structures.records import ImageAnnotation
from relground.utils.env import resolve_device


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
        device: torch device.
    """

    def __init__(
        self, model: torch.nn.Module, cfg: Config, model_args: dict[str, Any], device: Union[str, torch.device] = "cpu"
    ):
        self.device = resolve_device(str(device), "device")  # a named error for 'tpu' or a missing GPU
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.model_args = model_args
        self._annotations: dict[str, list[ImageAnnotation]] = {}

    @classmethod
    def from_checkpoint(
        cls, checkpoint, *, config=None, overrides: Sequence[str] = (), device: Union[str, torch.device] = "cpu"
    ) -> "TrainedModel":
        """Load ``checkpoint`` (file or training folder); ``config`` (YAML) replaces the stored config.

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
            model = build_model(cfg, model_args)
            load_model_weights(model, state, cfg, source=str(path))
        return cls(model, cfg, model_args, device)

    def annotations(self, split: str) -> list[ImageAnnotation]:
        """The split's images (read once; relations attached when the config names a relations file)."""
        if split not in self._annotations:
            self._annotations[split] = load_annotations(self.cfg.data, split)
        return self._annotations[split]

    def evaluate(self, split: str = "test", *, return_predictions: bool = False, progress: bool = False):
        """Metrics of the model on ``split`` (``relground.evaluation.evaluator.evaluate_model``).

        Returns:
            the metrics dict, or ``(metrics, ModelPredictions)`` when ``return_predictions`` (boxes per stage,
            ``key -> [x1, y1, x2, y2]`` in original pixels, and the proposals the model saw).
        """
        images = self.annotations(split)
        loader = build_loader(self.cfg, split, self.model_args, train=False)
        return evaluate_model(
            self.model, loader, annotations=images, twins=load_twins(self.cfg.data.root, images),
            progress=progress, return_predictions=return_predictions,
        )
