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


def _pieces_worker(rank: int, init_file: str, output: str) -> None:
    """Each rank: its half of a batch through the global BatchNorm and the global ranking loss."""
    from relground.losses.ranking import global_ranking_loss
    from relground.model.layers import masked_batch_norm

    torch.set_num_threads(1)
    du.init_distributed("cpu", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        x, valid, norm, image, text, keys = _pieces_inputs()
        half = slice(rank * 3, rank * 3 + 3)
        x_r = x[half].detach().requires_grad_()
        out = masked_batch_norm(norm, x_r, valid[half])
        (out * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        result = {"bn_out": out.detach(), "bn_grad": x_r.grad, "bn_weight_grad": norm.weight.grad,
                  "running_mean": norm.running_mean, "running_var": norm.running_var}
        for form in ("hinge", "contrastive"):
            image_r, text_r = image[half].detach().requires_grad_(), text[half].detach().requires_grad_()
            loss = global_ranking_loss(image_r, text_r, 0.5, keys[half], form=form)
            loss.backward()
            result[form] = (loss.detach(), image_r.grad, text_r.grad)
        torch.save(result, Path(output) / f"pieces{rank}.pt")
    finally:
        du.destroy_distributed()


def _pieces_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 4, generator=g, dtype=torch.float64) * 3 + 1  # 6 items x 5 rows, half padding
    valid = torch.rand(6, 5, generator=g) > 0.5
    norm = torch.nn.BatchNorm1d(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-1, 1, generator=g)
    image = torch.randn(6, 8, generator=g, dtype=torch.float64)
    text = torch.randn(6, 8, generator=g, dtype=torch.float64)
    keys = torch.tensor([11, 11, 12, 13, 12, 14])  # images 11 and 12 on both ranks: masked across ranks
    return x, valid, norm, image, text, keys


def test_global_batch_norm_and_ranking_loss_match_one_process_on_the_whole_batch(tmp_path):
    """Two ranks x 3 items against the single-process functions on all 6: values, gradients, running statistics."""
    from relground.losses.ranking import RankingEmbedding, contrastive_ranking_loss, ranking_loss

    mp.spawn(_pieces_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"pieces{r}.pt") for r in range(WORLD_SIZE)]

    x, valid, norm, image, text, keys = _pieces_inputs()
    x = x.requires_grad_()
    rows = x[valid]
    expected = torch.zeros_like(x)
    expected[valid] = norm(rows)  # nn.BatchNorm1d on every valid row of the global batch
    (expected * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(torch.cat([r["bn_out"] for r in ranks]), expected.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat([r["bn_grad"] for r in ranks]), x.grad, atol=1e-12, rtol=0)
    # the affine parameters' gradients add up over ranks (the model's losses carry the world-size factor that turns
    # DDP's average into this sum)
    torch.testing.assert_close(ranks[0]["bn_weight_grad"] + ranks[1]["bn_weight_grad"], norm.weight.grad)
    for rank in ranks:  # both ranks hold the global running statistics (unbiased variance, momentum 0.1)
        torch.testing.assert_close(rank["running_mean"], norm.running_mean, atol=1e-12, rtol=0)
        torch.testing.assert_close(rank["running_var"], norm.running_var, atol=1e-12, rtol=0)

    negatives = keys[:, None] != keys[None, :]
    for form, reference in (("hinge", ranking_loss), ("contrastive", contrastive_ranking_loss)):
        image_1, text_1 = image.clone().requires_grad_(), text.clone().requires_grad_()
        loss = reference(image_1 @ text_1.T * 0.5, negative_mask=negatives)
        loss.backward()
        # each rank returns world size x its share: the mean over ranks is the loss of the whole batch
        torch.testing.assert_close((ranks[0][form][0] + ranks[1][form][0]) / 2, loss.detach(), atol=1e-12, rtol=0)
        # per-rank gradients (before DDP's average) are world size x the single-process gradient of its rows
        got_image = torch.cat([r[form][1] for r in ranks]) / WORLD_SIZE
        got_text = torch.cat([r[form][2] for r in ranks]) / WORLD_SIZE
        torch.testing.assert_close(got_image, image_1.grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(got_text, text_1.grad, atol=1e-12, rtol=0)
    assert RankingEmbedding(4, 4, 8).scale == 1 / 8 ** 0.5
