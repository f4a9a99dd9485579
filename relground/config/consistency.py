"""Checks across config sections: a value that is valid alone but contradicts another section's key.

Each names both keys and what to set, when the config is built (file, ``--set`` or a checkpoint's config).
"""
from __future__ import annotations

from typing import Any


def check_top_k_fits(cfg: Any) -> None:
    """``model.top_k`` (K proposals kept per phrase for stage 2) cannot exceed ``data.max_proposals`` (M): the model
    would clamp K to M without a word, and a table would report a K that never ran.

    Raises:
        ValueError: naming both keys and their values.
    """
    top_k, max_proposals = cfg.model.top_k, cfg.data.max_proposals
    if top_k > max_proposals:
        raise ValueError(f"model.top_k={top_k} is larger than data.max_proposals={max_proposals} (K of the M proposals "
                         f"per image are kept for stage 2); set model.top_k <= {max_proposals}, or raise "
                         "data.max_proposals")
