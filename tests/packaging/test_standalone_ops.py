"""``import relground.ops`` stands alone: it loads torch, the standard library, relground's own extension/ops
modules and the plain ground-floor ``relground.structures``; nothing of the model, data, language, engine or API
layers and no other third-party package (numpy and the like only when ``import torch`` itself loads them).

Each probe runs in a fresh interpreter. The import time over ``import torch`` is measured and reported (shown
with ``pytest -s``; recorded in docs/install.md), not asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import relground

PACKAGE_ROOT = Path(relground.__file__).resolve().parents[1]  # the folder holding the relground under test
HEAVY = ("numpy", "PIL", "h5py", "yaml", "spacy", "torchvision", "matplotlib", "scipy", "pandas", "tensorboard")
ALLOWED_RELGROUND = {"relground", "relground.extension", "relground._C", "relground.ops"}
# The ground floor (docs/design.md): plain records, batch and boxes on torch and the standard library only. The
# references take the one Python box IoU from relground.structures.boxes, and the package loads all three.
ALLOWED_PREFIXES = ("relground.ops.", "relground.structures.")
ALLOWED_RELGROUND |= {"relground.structures"}

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
{statement}
t2 = time.perf_counter()
print(json.dumps({{"modules": sorted(sys.modules), "torch_s": t1 - t0, "extra_s": t2 - t1}}))
"""


def probe(statement: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)],
        cwd=PACKAGE_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded():
    baseline = probe("pass")
    with_ops = probe("import relground.ops")
    return set(baseline["modules"]), set(with_ops["modules"]), with_ops


def test_only_relground_ops_modules(loaded):
    _, modules, _ = loaded
    ours = {m for m in modules if m == "relground" or m.startswith("relground.")}
    extra = {m for m in ours if m not in ALLOWED_RELGROUND and not m.startswith(ALLOWED_PREFIXES)}
    assert not extra, f"import relground.ops loads {sorted(extra)}"
    assert "relground.ops" in ours


def test_no_heavy_third_party_module_beyond_torch(loaded):
    baseline, modules, _ = loaded
    new_top = {m.split(".")[0] for m in modules - baseline}
    assert not new_top & set(HEAVY), f"newly loaded: {sorted(new_top & set(HEAVY))}"
    third_party = new_top - set(sys.stdlib_module_names) - {"relground", "torch"}
    assert not third_party, f"import relground.ops loads third-party modules {sorted(third_party)}"
