"""The config layer: one typed, frozen dataclass per section and the YAML loader.

It imports no other relground layer, so every layer above can read its own section::

    from relground.config import load_config
    cfg = load_config("configs/synthetic.yaml", ["solver.max_iter=200"])
"""
from relground.config.data import DataConfig
from relground.config.loader import (
    Config,
    apply_overrides,
    find_config,
    load_config,
    load_yaml_tree,
    merge_dicts,
    parse_value,
    save_config,
    shipped_config,
    shipped_config_dirs,
)
from relground.config.model import LossConfig, ModelConfig
from relground.config.schema import from_dict, to_dict, valid_keys
from relground.config.solver import SolverConfig
from relground.config.train import TrainConfig

__all__ = [
    "Config", "DataConfig", "LossConfig", "ModelConfig", "SolverConfig", "TrainConfig",
    "apply_overrides", "find_config", "from_dict", "load_config", "load_yaml_tree", "merge_dicts",
    "parse_value", "save_config", "shipped_config", "shipped_config_dirs", "to_dict", "valid_keys",
]
