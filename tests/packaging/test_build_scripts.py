"""The wheel's local version label and the isolation guard of setup.py; the wheel check itself (opt-in, ~15 min).

setup.py runs ``setup()`` when imported, so its helper functions are read out of the file with ``ast``.
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import relground
from tests.utils import REPO

SETUP = REPO / "setup.py"


def _setup_functions(*names: str) -> dict:
    tree = ast.parse(SETUP.read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names], type_ignores=[])
    namespace = {"os": os, "re": re, "tempfile": tempfile}
    exec(compile(module, str(SETUP), "exec"), namespace)
    return namespace


def test_local_version_label_names_torch_and_cuda_like_pytorch_scatter():
    label = _setup_functions("local_version_label")["local_version_label"]
    assert label("2.14.1", "13.0", True) == "pt214cu130"
    assert label("2.14.1+cu130", "13.0", False) == "pt214cpu"  # CUDA kernels not built
    assert label("2.13.0+cpu", None, True) == "pt213cpu"  # a CPU-only torch
    assert label("2.9.1", "12.8", True) == "pt29cu128"


def test_the_installed_version_names_the_torch_and_cuda_it_was_built_for():
    if not relground.HAS_OPS:
        pytest.skip("extension not built")
    label = _setup_functions("local_version_label")["local_version_label"]
    version = importlib.metadata.version("relground")
    built = relground.build_info()
    expected = label(built["torch_version"], torch.version.cuda, built["cuda_compiled"])
    assert version.split("+", 1)[-1] == expected, f"installed {version}, extension built as {built}"


def test_isolated_build_environments_are_recognised():
    isolated = _setup_functions("_isolated_build_env")["_isolated_build_env"]
    tmp = tempfile.gettempdir()
    assert isolated([os.path.join(tmp, "pip-build-env-abc123", "overlay", "lib")]) is not None
    assert isolated([os.path.join(tmp, "build-env-xyz", "bin")]) is not None
    assert isolated([str(Path(torch.__file__).parent), os.path.dirname(os.__file__)]) is None  # this venv


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RELGROUND_PACKAGING_CHECKS") != "1",
                    reason="builds a wheel and a fresh venv (~15 min on 2 cores); set RELGROUND_PACKAGING_CHECKS=1")
def test_the_wheel_installs_into_a_fresh_venv_and_its_ops_tests_pass():
    run = subprocess.run(["bash", "scripts/check_wheel.sh"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert re.search(r"\d+ passed", run.stdout), run.stdout[-2000:]
