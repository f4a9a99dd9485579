"""Which image loader a run uses (``data.loader``), and why: ``auto`` picks the fastest one the machine can run.

The design's loader on a GPU is DALI (``mixed`` nvJPEG decoding, resize and normalisation on the GPU); without
DALI, the ``torchvision`` loader decodes the JPEG bytes with nvJPEG and resizes on the GPU as well; on a CPU the
PIL loader decodes, resizes and normalises in the worker processes. Measured supply of each:
bench/RESULTS.md, "Feeding the GPU".
"""
from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Optional

import torch


def dali_version() -> Optional[str]:
    """The installed NVIDIA DALI's version, or None (not installed); does not import DALI's runtime."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return None
    for dist in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown version"


def choose_loader(requested: str, cuda: Optional[bool] = None, dali: Optional[str] = "") -> tuple[str, str]:
    """The loader that runs for ``data.loader = requested``, and the reason, in words.

    Args:
        requested: ``auto``, ``pil``, ``dali`` or ``torchvision``.
        cuda: a GPU is present (default ``torch.cuda.is_available()``).
        dali: the installed DALI's version, None when absent (default: :func:`dali_version`).

    Returns:
        ``(loader, reason)``; ``loader`` is never ``auto``.

    Raises:
        ValueError: ``dali`` requested but DALI is not installed (names the package to install).

    Example:
        >>> choose_loader("auto", cuda=True, dali="2.4.0")
        ('dali', 'auto: DALI 2.4.0 installed and a GPU present')
        >>> choose_loader("auto", cuda=True, dali=None)[0], choose_loader("auto", cuda=False, dali="2.4.0")[0]
        ('torchvision', 'pil')
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    dali = dali_version() if dali == "" else dali
    if requested == "auto":
        if cuda and dali:
            return "dali", f"auto: DALI {dali} installed and a GPU present"
        if cuda:
            return "torchvision", "auto: a GPU present, DALI not installed (nvJPEG through torchvision.io)"
        return "pil", "auto: no GPU (PIL in the workers)"
    if requested == "dali" and not dali:
        raise ValueError("data.loader: 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130==2.4.0), "
                         "or set data.loader=auto")
    return requested, "set in the config"
