"""Which CUDA architectures relground._C is built for, and whether a card can run them.

setup.py loads this file by path (before relground is importable; torch and the standard library only) to choose
the build's architectures; relground.ops registers check_cuda_devices to run when CUDA starts (register_card_check).

Rules (CUDA's): a cubin for sm_XY runs on a card of the same major version and a minor >= Y (sm_86 code runs on an
RTX 4090, sm_89); PTX for compute_XY is compiled by the driver for any card >= X.Y, at the first launch.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

# What a build without TORCH_CUDA_ARCH_LIST and without a visible GPU compiles for when the running torch does not say
# (torch 2.14.1+cu130's own wheel list, torch._C._cuda_getArchFlags(): sm_75 sm_80 sm_86 sm_90 sm_100 sm_120), plus
# PTX of the newest for later cards.
WHEEL_ARCH_LIST = "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
REBUILD_COMMAND = (
    "TORCH_CUDA_ARCH_LIST=<major.minor of the card, e.g. 8.9> pip install --no-build-isolation -e . "
    "(or, with the card visible, plain `pip install --no-build-isolation -e .` builds for it)"
)

_ENTRY = re.compile(r"^(\d+)\.(\d+)(\+PTX)?$")


def parse_arch_list(arch_list: str) -> list[tuple[int, int, bool]]:
    """``"8.0;9.0+PTX"`` -> ``[(8, 0, False), (9, 0, True)]`` (``True``: PTX as well as the cubin).

    Separators are ``;``, ``,`` or spaces, as torch's TORCH_CUDA_ARCH_LIST; named entries (``Ampere``) and bad
    entries raise ValueError.
    """
    entries = []
    for entry in re.split(r"[;,\s]+", arch_list.strip()):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"CUDA architecture {entry!r} is not of the form <major>.<minor>[+PTX]")
        entries.append((int(match.group(1)), int(match.group(2)), bool(match.group(3))))
    return entries


def describe(arch_list: str) -> list[str]:
    """The code in a build, as nvcc names it: ``"8.0;9.0+PTX"`` -> ``["sm_80", "sm_90", "compute_90"]``."""
    names = []
    for major, minor, ptx in parse_arch_list(arch_list):
        names.append(f"sm_{major}{minor}")
        if ptx:
            names.append(f"compute_{major}{minor}")
    return names


def runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether a card of compute ``capability`` (major, minor) can run a build for ``arch_list``."""
    for major, minor, ptx in parse_arch_list(arch_list):
        if major == capability[0] and minor <= capability[1]:
            return True
        if ptx and (major, minor) <= tuple(capability):
            return True
    return False


def unsupported_card_message(arch_list: str, capability: tuple[int, int], device_name: str, index: int) -> str | None:
    """None when the card runs the build, else the error: the card, the compiled code and the rebuild command."""
    if runs_on(arch_list, capability):
        return None
    major, minor = capability
    return (
        f"relground._C has no CUDA code for GPU {index} ({device_name}, compute capability {major}.{minor}, "
        f"sm_{major}{minor}): it was built for {' '.join(describe(arch_list)) or 'no architecture'} "
        f"(TORCH_CUDA_ARCH_LIST={arch_list!r}). Its kernels would fail with 'no kernel image is available'. "
        f"Rebuild for this card: TORCH_CUDA_ARCH_LIST={major}.{minor} pip install --no-build-isolation -e . "
        "(a build with the card visible and TORCH_CUDA_ARCH_LIST unset compiles for it; docs/install.md)."
    )


def arch_list_of_torch(arch_flags: str) -> str | None:
    """torch's own list from ``torch._C._cuda_getArchFlags()`` (``"sm_75 sm_80 ... sm_120"``), with PTX for the
    newest; None when it names no sm_ (a CPU-only torch)."""
    archs = sorted({(int(m.group(1)[:-1]), int(m.group(1)[-1])) for m in re.finditer(r"sm_(\d+)", arch_flags or "")})
    if not archs:
        return None
    return ";".join(f"{major}.{minor}" for major, minor in archs) + "+PTX"


def default_arch_list(
    environ_value: str | None, visible_capabilities: Iterable[Sequence[int]], torch_arch_flags: str | None
) -> tuple[str, str]:
    """The build's architectures and why: TORCH_CUDA_ARCH_LIST when set, else the visible GPUs' capabilities, else
    torch's own wheel list (WHEEL_ARCH_LIST when torch does not say)."""
    if environ_value and environ_value.strip():
        return environ_value.strip(), "TORCH_CUDA_ARCH_LIST"
    caps = sorted({(int(c[0]), int(c[1])) for c in visible_capabilities})
    if caps:
        return ";".join(f"{major}.{minor}" for major, minor in caps), "the visible GPU(s)"
    from_torch = arch_list_of_torch(torch_arch_flags or "")
    if from_torch:
        return from_torch, "the architectures of the running torch's own build (no GPU visible)"
    return WHEEL_ARCH_LIST, "relground's default list (no GPU visible)"


def check_cuda_devices(arch_list: str) -> None:
    """Raises RuntimeError when a visible GPU cannot run a build for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax):
    the card, the compiled code and the rebuild command, instead of "no kernel image is available" in training."""
    for index in range(torch.cuda.device_count()):
        capability = tuple(torch.cuda.get_device_capability(index))
        message = unsupported_card_message(arch_list, capability, torch.cuda.get_device_name(index), index)
        if message is not None:
            raise RuntimeError(message)


def register_card_check(build_info: Mapping[str, Any]) -> bool:
    """Queues check_cuda_devices for when CUDA starts (torch.cuda's lazy initialisation: before the first tensor
    reaches a GPU; at once if CUDA has started) for a build with CUDA kernels; returns whether it did."""
    if not build_info.get("cuda_compiled") or not build_info.get("cuda_arch_list"):
        return False
    arch_list = str(build_info["cuda_arch_list"])
    torch.cuda._lazy_call(lambda: check_cuda_devices(arch_list))
    return True
