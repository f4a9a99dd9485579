"""Device, precision, seed and thread settings of a process."""
from __future__ import annotations

import contextlib
import os
import random
import re
from typing import Optional

import numpy as np
import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
DEVICE_TYPES = ("cpu", "cuda")  # the devices relground's kernels and loaders support
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(:(0|[1-9][0-9]*))?$")


def parse_device(name, key: str = "device", allow_auto: bool = False) -> torch.device | str:
    """Check a device string where it enters (a config key, a command-line flag, an API argument).

    Accepts ``cpu``, ``cuda``, ``cuda:N`` (``cpu:0`` too), a ``torch.device`` of those types and, with
    ``allow_auto``, ``auto`` (returned unchanged). Whether CUDA is present is checked later, on use
    (:func:`resolve_device`): a config written on a GPU machine still loads on a CPU one.

    Raises:
        ValueError: naming ``key``, the value and the accepted forms (instead of torch's list of every backend).
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name
    else:
        raise ValueError(f"{key}: expected a device string such as 'cpu' or 'cuda:0', got {name!r} ({type(name).__name__})")
    if allow_auto and text == "auto":
        return text
    if not _DEVICE_PATTERN.match(text):
        accepted = ("'auto', " if allow_auto else "") + "'cpu', 'cuda' or 'cuda:N' (N = 0, 1, ...)"
        raise ValueError(f"{key}: {text!r} is not a device relground can run on; use {accepted}")
    return torch.device(text)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``"auto"`` -> this process's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU.

    Raises:
        ValueError: a malformed device string, or CUDA (or that CUDA index) asked for but not available; the
            message names ``key``.
    """
    parse_device(name, key, allow_auto=True)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key} is {name!r} but CUDA is not available; use 'cpu' (or 'auto')")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(f"{key} is {name!r} (device {device.index}) but this machine has {count} CUDA device(s): "
                             f"use cuda:0 .. cuda:{count - 1}")
    return device


def resolve_amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for float32."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[amp]


@contextlib.contextmanager
def intra_op_threads(count: int):
    """``torch.set_num_threads(count)`` for the block (0 = leave it), the previous count restored afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
