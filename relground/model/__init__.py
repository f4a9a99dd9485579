"""The ReIR network: configuration, frozen backbone, box and phrase features, two-stage matching, VOGN."""

from relground.config.model import LossConfig, ModelConfig
from relground.model.reir import ReIR, ReIROutput

__all__ = ["LossConfig", "ModelConfig", "ReIR", "ReIROutput"]
