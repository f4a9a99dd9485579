"""The CUDA architectures of a build (relground/ops/_cuda_arch.py, setup.py) and the check of the card when CUDA
starts (registered by relground.ops), with simulated cards: no GPU is needed."""
from __future__ import annotations

import json

import pytest
import torch

from relground.ops import _cuda_arch as cuda_arch


def test_describe_and_parse():
    assert cuda_arch.describe("7.5;8.0 8.6,12.0+PTX") == ["sm_75", "sm_80", "sm_86", "sm_120", "compute_120"]
    with pytest.raises(ValueError, match="'Ampere' is not of the form"):
        cuda_arch.parse_arch_list("8.0;Ampere")


@pytest.mark.parametrize(
    "arch_list, capability, runs",
    [
        ("9.0+PTX", (8, 0), False),  # the old default: an A100 has no code
        ("9.0+PTX", (8, 9), False),
        ("9.0+PTX", (10, 0), True),  # PTX is compiled by the driver for newer cards
        ("8.6", (8, 9), True),  # a cubin runs on a later minor of its major
        ("8.6", (9, 0), False),  # ... not on another major
        ("8.0;9.0", (8, 6), True),
        (cuda_arch.WHEEL_ARCH_LIST, (8, 9), True),
        (cuda_arch.WHEEL_ARCH_LIST, (7, 0), False),
    ],
)
def test_runs_on(arch_list, capability, runs):
    assert cuda_arch.runs_on(arch_list, capability) is runs


def test_default_arch_list_prefers_env_then_visible_card_then_torch_list():
    assert cuda_arch.default_arch_list("8.0", [(9, 0)], "sm_90") == ("8.0", "TORCH_CUDA_ARCH_LIST")
    assert cuda_arch.default_arch_list(None, [(8, 9), (8, 9)], "sm_90")[0] == "8.9"
    torch_flags = "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"  # torch 2.14.1+cu130's torch._C._cuda_getArchFlags()
    assert cuda_arch.default_arch_list("", [], torch_flags)[0] == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert cuda_arch.default_arch_list(None, [], "")[0] == cuda_arch.WHEEL_ARCH_LIST


def _simulate_card(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)


def test_card_without_code_raises_naming_card_code_and_rebuild(monkeypatch):
    queued = []
    monkeypatch.setattr(torch.cuda, "_lazy_call", lambda fn, **kw: queued.append(fn))
    assert cuda_arch.register_card_check({"cuda_compiled": True, "cuda_arch_list": "9.0+PTX"})
    assert len(queued) == 1  # runs when CUDA starts, before any tensor reaches the card
    _simulate_card(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    with pytest.raises(RuntimeError) as error:
        queued[0]()
    message = str(error.value)
    assert "GPU 0 (NVIDIA A100-SXM4-80GB, compute capability 8.0, sm_80)" in message
    assert "built for sm_90 compute_90 (TORCH_CUDA_ARCH_LIST='9.0+PTX')" in message
    assert "TORCH_CUDA_ARCH_LIST=8.0 pip install --no-build-isolation -e ." in message
    _simulate_card(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    queued[0]()  # a card with code: no error


def test_cpu_only_build_queues_no_check(monkeypatch):
    queued = []
    monkeypatch.setattr(torch.cuda, "_lazy_call", lambda fn, **kw: queued.append(fn))
    assert not cuda_arch.register_card_check({"cuda_compiled": False, "cuda_arch_list": ""})
    assert queued == []


def test_info_lists_compiled_architectures(monkeypatch, capsys):
    import relground
    from relground.cli import info

    if not relground.HAS_OPS:
        pytest.skip("relground._C not built")
    monkeypatch.setattr(relground, "build_info", lambda: {"cuda_compiled": True, "cuda_arch_list": "8.0;9.0+PTX"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _simulate_card(monkeypatch, (8, 9), "NVIDIA L40S")
    assert info.run(None) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cuda_archs"] == ["sm_80", "sm_90", "compute_90"]
    assert printed["cuda_devices"] == [{"name": "NVIDIA L40S", "capability": "8.9", "runs_relground_kernels": True}]
