"""The full ReIR model: 2 Gloo processes with B/2 pairs each reach the parameters of 1 process with B pairs.

Same global batches on both sides (``train.data_order=distributed``), float64, 10 steps: every loss term, the
global-batch ranking negatives and the head BatchNorms' global statistics make the two runs the same computation
up to the order of floating-point sums; so does the authors' normalisation (``loss.normalization: image``). With the authors' local negatives the runs differ, which shows the
comparison can fail.
"""
from __future__ import annotations

import pytest
import torch

from tests.distributed.conftest import SMALL_RUN, check, free_port, launch, write_spec

VARIANTS = [
    {"name": "global", "overrides": []},
    {"name": "local", "overrides": ["model.loss.ranking_negatives=local"]},
    # the authors' normalisation (per-image means x reference images); their per-item BatchNorm statistics are
    # not in it: the features are each item's alone, but the running estimates are updated per process
    {"name": "image", "overrides": ["model.loss.normalization=image"]},
]
SINGLE = [VARIANTS[0], VARIANTS[2]]


def _load(folder, name, rank):
    return torch.load(folder / f"{name}_rank{rank}.pt", weights_only=False)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_full_model_in_float64(synthetic_benchmark, tmp_path):
    one = write_spec(tmp_path / "one", synthetic_benchmark, overrides=SMALL_RUN, float64=True, variants=SINGLE)
    two = write_spec(tmp_path / "two", synthetic_benchmark, overrides=SMALL_RUN, float64=True, variants=VARIANTS)
    check(launch(one, None))
    check(launch(two, ["--nproc_per_node", "2", "--master_port", str(free_port())]))

    for variant in ("global", "image"):  # both loss normalisations (loss.normalization batch | image)
        _check_equal(tmp_path, variant)

    # The authors' per-process negatives: a different loss, hence different weights after 10 steps.
    single = _load(tmp_path / "one", "global", 0)
    local = _load(tmp_path / "two", "local", 0)["params"]
    gap = max((local[n] - p).abs().max().item() for n, p in single["params"].items() if p.is_floating_point())
    assert gap > 1e-4


def _check_equal(tmp_path, variant):
    single = _load(tmp_path / "one", variant, 0)
    assert single["result"]["iteration"] == 10
    ranks = [_load(tmp_path / "two", variant, r) for r in range(2)]
    moved = 0
    for name, expected in single["params"].items():
        if not expected.is_floating_point():
            assert all(torch.equal(r["params"][name], expected) for r in ranks), name  # num_batches_tracked
            continue
        assert expected.dtype == torch.float64
        moved += not torch.equal(expected, single["initial"][name])
        for rank in ranks:
            torch.testing.assert_close(rank["params"][name], expected, atol=1e-8, rtol=0, msg=f"{variant}: {name}")
        # running statistics are the global batch's on both ranks, not rank 0's alone
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]) or "running" not in name
    assert moved > 20  # training changed (almost) every tensor: the heads, both BatchNorms' statistics, ...
    assert any("running_mean" in n for n in single["params"])
