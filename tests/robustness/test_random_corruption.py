"""Property: random byte corruptions of each input file give a named error or a result, never a crash.

For each file type, hypothesis flips a few bytes (or cuts the file) of a copy and loads it the way training and
evaluation do. Every outcome must be either

* a named error: a ``ValueError`` / ``KeyError`` / ``OSError`` (what the CLI prints as one line) whose message
  names the file, or
* a result; for the formats that carry checksums, the *identical* result: a checkpoint (torch's zip records
  carry CRC-32s, checked by ``load_checkpoint``) and the proposals HDF5 (fletcher32 on every dataset, a SHA-256
  of the class names, image sizes checked against the annotations).

Text annotations, the relations JSON, the split list and JPEG pixels have no checksum: a flipped letter or digit
is a valid, different file (a different word, box or pixel), which no reader can tell from a real edit. For them
the property is "named error or a result, never a crash" (docs/robustness.md says so).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relground.cli.main import USER_ERRORS
from relground.engine.checkpoint import load_checkpoint
from relground.engine.defaults import build_split_dataset, model_from_checkpoint
from tests.robustness.conftest import TEST_IMAGE

# Each example builds the test split's dataset (~0.3 s) or loads a checkpoint: a few examples per file type keep the
# suite fast; derandomize makes CI reproducible (the same examples every run). RELGROUND_FUZZ_EXAMPLES=200 searches
# deeper by hand.
EXAMPLES = int(os.environ.get("RELGROUND_FUZZ_EXAMPLES", "8"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

corruptions = st.one_of(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3).map(
        lambda flips: ("flip", flips)),
    st.floats(0, 1, exclude_max=True).map(lambda keep: ("truncate", keep)),
)


def corrupt(path: Path, corruption) -> None:
    data = bytearray(path.read_bytes())
    kind, arg = corruption
    if kind == "truncate":
        del data[int(len(data) * arg):]
    else:
        for position, xor in arg:
            data[int(len(data) * position)] ^= xor
    path.write_bytes(bytes(data))


def digest(value) -> str:
    """A SHA-256 over tensors (bytes, dtype, shape), arrays and plain values, nested."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            h.update(repr((v.dtype, tuple(v.shape))).encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        elif isinstance(v, np.ndarray):
            feed(torch.from_numpy(np.ascontiguousarray(v)))
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(repr(k).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
            h.update(b"]")
        elif hasattr(v, "__dataclass_fields__"):
            feed({k: getattr(v, k) for k in v.__dataclass_fields__})
        else:
            h.update(repr(v).encode())

    feed(value)
    return h.hexdigest()


def dataset_result(state, root: Path) -> str:
    """Everything the model would see of the test split read from ``root``: its items, pixels included."""
    _, cfg, model_args = model_from_checkpoint(state, [f"data.root={root}"])
    dataset = build_split_dataset(cfg, "test", model_args)
    return digest([dataset[i] for i in range(len(dataset))])


def checkpoint_result(path: Path) -> str:
    model, cfg, model_args = model_from_checkpoint(load_checkpoint(path), source=str(path))
    return digest([model.state_dict(), model_args, repr(cfg)])


@functools.cache
def _clean(run: Path, bench: Path) -> tuple[dict, str, str]:
    state = load_checkpoint(run / "checkpoints" / "model_final.pth")
    return state, dataset_result(state, bench), checkpoint_result(run / "checkpoints" / "model_final.pth")


def outcome(result_fn, file_name: str):
    """``("result", digest)`` or ``("error", message)``; any other exception fails the property (a crash)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "result", result_fn()
        except USER_ERRORS as e:
            message = str(e)
            assert file_name in message or TEST_IMAGE in message, f"error does not name {file_name}: {message!r}"
            return "error", message


# (file under the data root, whether the format is checksummed: identical result or a named error)
DATA_FILES = [
    ("proposals.h5", True),
    (f"Annotations/{TEST_IMAGE}.xml", False),
    (f"Sentences/{TEST_IMAGE}.txt", False),
    ("relations_test.json", False),
    ("test.txt", False),
    (f"Images/{TEST_IMAGE}.jpg", False),
]


@pytest.mark.parametrize("relative, checksummed", DATA_FILES, ids=[f for f, _ in DATA_FILES])
def test_random_corruption_of_a_data_file(relative, checksummed, run, bench):
    state, clean, _ = _clean(run, bench)

    @PROPERTY
    @given(corruption=corruptions)
    def check(corruption):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(shutil.copytree(bench, Path(tmp) / "data"))
            corrupt(root / relative, corruption)
            kind, value = outcome(lambda: dataset_result(state, root), Path(relative).name)
            if checksummed and kind == "result":
                assert value == clean, f"{relative}: {corruption} changed the result silently"

    check()


def test_random_corruption_of_a_checkpoint(run, bench, tmp_path):
    _, _, clean = _clean(run, bench)

    @PROPERTY
    @given(corruption=corruptions)
    def check(corruption):
        path = tmp_path / "model_final.pth"
        shutil.copy(run / "checkpoints" / "model_final.pth", path)
        corrupt(path, corruption)
        kind, value = outcome(lambda: checkpoint_result(path), path.name)
        if kind == "result":
            assert value == clean, f"checkpoint: {corruption} changed the result silently"

    check()
