"""Data parallel: 2 Gloo processes on CPU reach the parameters of 1 process with the same global batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from relground.engine import distributed as du
from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.config import SolverConfig, TrainConfig
from relground.engine.trainer import Trainer
from tests.engine import ToyDataset, ToyModel, parameters_of, toy_loader

WORLD_SIZE = 2
PER_RANK_BATCH = 4
SOLVER = SolverConfig(base_lr=0.02, max_iter=6, warmup_iters=2, steps=(4,), ims_per_batch=WORLD_SIZE * PER_RANK_BATCH)


def _initial_model() -> ToyModel:
    torch.manual_seed(3)
    return ToyModel()


def _worker(rank: int, init_file: str, output: str) -> None:
    torch.set_num_threads(1)
    du.init_distributed("cpu", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        # a different init per rank on purpose: DDP must broadcast rank 0's weights
        model = _initial_model() if rank == 0 else ToyModel()
        loader = toy_loader(ToyDataset(48), PER_RANK_BATCH, rank=rank, world_size=WORLD_SIZE, seed=7)
        cfg = TrainConfig(checkpoint_period=3, log_period=3, progress_bar=False, tensorboard=False)
        trainer = Trainer(model, loader, SOLVER, cfg, output, device="cpu", seed=1)
        result = trainer.train()
        torch.save({"params": parameters_of(model), "result": result}, Path(output) / f"rank{rank}.pt")
    finally:
        du.destroy_distributed()


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    output = tmp_path / "ddp"
    output.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(output)), nprocs=WORLD_SIZE, join=True)

    single = _initial_model()
    loader = toy_loader(ToyDataset(48), PER_RANK_BATCH * WORLD_SIZE, seed=7)
    cfg = TrainConfig(progress_bar=False, tensorboard=False)
    Trainer(single, loader, SOLVER, cfg, None, device="cpu", seed=1).train()

    ranks = [torch.load(output / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    start = parameters_of(_initial_model())
    for name, expected in parameters_of(single).items():
        assert not torch.equal(expected, start[name])  # training moved it
        for rank in ranks:
            torch.testing.assert_close(rank["params"][name], expected, atol=1e-6, rtol=0)
    # rank 0 alone wrote the checkpoints, holding both ranks' RNG states; logged throughput counts both ranks
    state = load_checkpoint(Checkpointer(output / "checkpoints").latest())
    assert state["world_size"] == WORLD_SIZE and len(state["rng"]) == WORLD_SIZE
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seed + rank
    assert ranks[0]["result"]["metrics"]["iteration"] == SOLVER.max_iter


@pytest.mark.parametrize("shuffle", [True, False])
def test_resumable_sampler_skips_exactly_the_consumed_samples(shuffle):
    dataset = ToyDataset(23)
    for rank in range(3):
        sampler = du.ResumableDistributedSampler(dataset, num_replicas=3, rank=rank, shuffle=shuffle, seed=4)
        reference = torch.utils.data.DistributedSampler(dataset, num_replicas=3, rank=rank, shuffle=shuffle, seed=4)
        sampler.set_epoch(2)
        reference.set_epoch(2)
        full = list(reference)
        sampler.set_start_index(5)
        assert list(sampler) == full[5:] and len(sampler) == len(full) - 5
        sampler.set_epoch(3)  # a new epoch starts from its beginning
        reference.set_epoch(3)
        assert list(sampler) == list(reference)
    with pytest.raises(ValueError, match="start_index"):
        sampler.set_start_index(100)


def test_single_process_helpers_need_no_process_group():
    assert not du.is_distributed()
    assert (du.get_rank(), du.get_world_size(), du.is_main_process()) == (0, 1, True)
    assert du.reduce_dict_mean({"a": 2.0}) == {"a": 2.0}
    assert du.all_gather_object({"x": 1}) == [{"x": 1}]
    assert du.init_distributed("cpu", world_size=1) is False
    with pytest.raises(ValueError, match="rank"):
        du.init_distributed("cpu", rank=2, world_size=2)
