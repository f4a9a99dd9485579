"""``train(cfg)`` across "machines" and through a worker's death, on the loopback with torchrun (Gloo, CPU).

* two torchrun agents (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1) train the run of one
  process (float32: within 1e-4);
* with ``--max-restarts 1``, rank 1 SIGKILLs itself after step 6 (once: a marker file); torchrun restarts the
  group, ``train(cfg)`` resumes from the step-4 checkpoint by itself and ends where the uninterrupted run ends.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.distributed.conftest import SMALL_RUN, check, free_port, launch, write_spec

RUN = [*SMALL_RUN, "train.checkpoint_period=4"]


def _params(folder):
    return torch.load(folder / "params_rank0.pt", weights_only=False)


@pytest.fixture(scope="module")
def single_process(synthetic_benchmark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    check(launch(write_spec(folder, synthetic_benchmark, mode="train", overrides=RUN), None))
    return _params(folder)


@pytest.fixture(scope="module")
def two_nodes(synthetic_benchmark, tmp_path_factory):
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on the loopback."""
    folder = tmp_path_factory.mktemp("nodes")
    spec = write_spec(folder, synthetic_benchmark, mode="train", overrides=RUN)
    args = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "relground-test"]
    with ThreadPoolExecutor(2) as pool:
        agents = list(pool.map(lambda _: launch(spec, args), range(2)))
    for agent in agents:
        check(agent)
    return _params(folder)


@pytest.mark.slow
def test_two_nodes_on_the_loopback_match_one_process(single_process, two_nodes):
    assert single_process["result"]["iteration"] == two_nodes["result"]["iteration"] == 10
    for name, expected in single_process["params"].items():
        torch.testing.assert_close(two_nodes["params"][name], expected, atol=1e-4, rtol=0, msg=name)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_resumes_to_the_same_weights(synthetic_benchmark, tmp_path, two_nodes):
    marker = tmp_path / "killed"
    spec = write_spec(tmp_path / "run", synthetic_benchmark, mode="train", overrides=RUN,
                      kill_rank=1, kill_iteration=6, kill_marker=str(marker))
    # c10d rendezvous: each restart round gets fresh store keys (the static one hands the new group the old
    # group's addresses, and Gloo's connect fails)
    args = ["--nproc_per_node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    process = launch(spec, args)
    check(process)
    assert marker.exists()  # rank 1 did die once...
    assert re.search(r"exitcode\s*:\s*-9", process.stderr)  # ...by SIGKILL, and torchrun restarted the group
    restarted = _params(tmp_path / "run")
    assert restarted["result"]["iteration"] == 10 and restarted["result"]["status"] == "finished"
    # the same weights as the uninterrupted run of the same config and world size
    for name, expected in two_nodes["params"].items():
        torch.testing.assert_close(restarted["params"][name], expected, atol=1e-6, rtol=0, msg=name)
