"""Trainer: lr schedule vs. the paper, gradient accumulation, NaN guard, logs, autocast, checkpoint files."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.utils.io import atomic_torch_save
from relground.engine.hooks import HookBase
from relground.config import SolverConfig, TrainConfig
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.engine.trainer import DataStream, Trainer
from tests.engine import ToyDataset, ToyModel, collate_toy, parameters_of, toy_loader

QUIET = dict(progress_bar=False, tensorboard=False)


def paper_lr(t: int) -> float:
    """Hand computation of the paper's schedule (Sec. 4.1): lr 1e-3, 500 linear warm-up iterations from
    1e-3 x lr (detectron2's factor), x0.1 at 32k and at 40k."""
    warm = 1e-3 + (1 - 1e-3) * t / 500 if t < 500 else 1.0
    decay = 1.0 if t < 32_000 else (0.1 if t < 40_000 else 0.01)
    return 1e-3 * warm * decay


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_lr_schedule_matches_paper():
    cfg = SolverConfig()  # defaults are the paper's recipe
    assert (cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.max_iter) == (1e-3, 0.9, 5e-4, 80_000)
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for t in range(40_002):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()  # no optimizer.step(): only the schedule is under test
    for t in (0, 1, 250, 499, 500, 501, 31_999, 32_000, 32_001, 39_999, 40_000, 40_001):
        assert seen[t] == pytest.approx(paper_lr(t), rel=1e-9), t
    assert all(a == pytest.approx(paper_lr(t), rel=1e-9) for t, a in enumerate(seen))
    assert seen[32_000] == pytest.approx(seen[31_999] * 0.1, rel=1e-9)


def test_optimizer_is_fused_sgd_with_paper_hyperparameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[0].bias.requires_grad_(False)  # frozen parameters are not optimised
    optimizer = build_optimizer(SolverConfig(), model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["fused"]  # fused kernels exist for CPU float tensors in this torch
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays == {id(model[0].weight): 5e-4, id(model[1].weight): 0.0, id(model[1].bias): 0.0}


def _train(model, loader, solver, cfg, output_dir=None, seed=0):
    trainer = Trainer(model, loader, solver, cfg, output_dir, device="cpu", seed=seed)
    return trainer, trainer.train()


def test_trainer_logs_the_lr_of_each_step_with_warmup_and_decay():
    solver = SolverConfig(base_lr=0.1, max_iter=12, warmup_iters=4, warmup_factor=0.25, steps=(6, 9), gamma=0.5)
    trainer = Trainer(ToyModel(), toy_loader(ToyDataset(32), 4), solver, TrainConfig(accumulation_steps=2, **QUIET), device="cpu")
    lrs = []

    class Record(HookBase):
        def after_step(self):
            lrs.append(self.trainer.step_metrics["lr"])

    trainer.register_hooks([Record()])
    trainer.train()
    expected = [0.1 * (0.25 + 0.75 * min(t, 4) / 4) * 0.5 ** ((t >= 6) + (t >= 9)) for t in range(12)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_gradient_accumulation_equals_larger_batch():
    solver = SolverConfig(base_lr=0.05, max_iter=6, warmup_iters=2, steps=(4,))
    dataset = ToyDataset(48)
    torch.manual_seed(1)
    reference = ToyModel()
    accumulated = ToyModel()
    accumulated.load_state_dict(reference.state_dict())
    _train(reference, toy_loader(dataset, 8), solver, TrainConfig(**QUIET))
    _train(accumulated, toy_loader(dataset, 4), solver, TrainConfig(accumulation_steps=2, **QUIET))
    start = ToyModel()
    moved = False
    for name, value in parameters_of(reference).items():
        torch.testing.assert_close(parameters_of(accumulated)[name], value, atol=1e-12, rtol=1e-12)
        moved |= not torch.equal(value, parameters_of(start)[name])
    assert moved


def test_nan_guard_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    solver = SolverConfig(base_lr=0.01, max_iter=20, warmup_iters=0)
    cfg = TrainConfig(checkpoint_period=2, keep_checkpoints=2, **QUIET)
    model = ToyModel(nan_at=7)
    trainer = Trainer(model, toy_loader(ToyDataset(32), 4), solver, cfg, tmp_path, device="cpu")
    snapshots = {}  # completed iterations -> parameters

    class Snapshot(HookBase):
        def after_step(self):
            snapshots[self.trainer.iteration] = parameters_of(model)

    trainer.register_hooks([Snapshot()])
    with pytest.raises(FloatingPointError, match=r"loss 'mse' is nan at iteration 7") as info:
        trainer.train()
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert str(checkpoints.latest()) in str(info.value)
    assert [it for it, _ in checkpoints.periodic_checkpoints()] == [4, 6]
    assert not (tmp_path / "checkpoints" / "model_final.pth").exists()
    state = load_checkpoint(checkpoints.latest())
    assert state["iteration"] == 6
    assert max(snapshots) == 7  # iterations 0..6 ran; iteration 7 stopped before its optimizer step
    for name, value in parameters_of(model).items():
        assert torch.equal(value, snapshots[7][name])
        assert torch.equal(state["model"][name], snapshots[6][name])
        assert torch.isfinite(value).all()


def test_checkpointer_refuses_non_finite_state_and_prunes(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    good = {"model": {"w": torch.ones(3)}}
    for it in (1, 2, 3):
        checkpointer.save(good, it)
    assert [it for it, _ in checkpointer.periodic_checkpoints()] == [2, 3]
    with pytest.raises(FloatingPointError, match="'w'"):
        checkpointer.save({"model": {"w": torch.tensor([1.0, float("inf")])}}, 4)
    assert checkpointer.latest().name == "model_0000003.pth"
    (tmp_path / ".tmp-model_0000004.pth.abc").write_bytes(b"half")  # what a kill mid-write leaves
    assert checkpointer.latest().name == "model_0000003.pth"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    atomic_torch_save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        load_checkpoint(tmp_path / "list.pth")


def test_metrics_csv_and_tensorboard_log_every_loss_lr_and_throughput(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    solver = SolverConfig(base_lr=0.01, max_iter=6, warmup_iters=0)
    cfg = TrainConfig(log_period=2, checkpoint_period=100, progress_bar=False, tensorboard=True)
    trainer, result = _train(ToyModel(), toy_loader(ToyDataset(32), 4), solver, cfg, tmp_path)
    assert result["status"] == "finished" and result["iteration"] == 6
    assert result["checkpoint"].endswith("model_final.pth")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    for column in ("total_loss", "loss/mse", "loss/l1", "lr", "images_per_s", "time_per_iter"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    # total = mse + 0.5 l1 holds for the window means too
    for r in rows:
        assert float(r["total_loss"]) == pytest.approx(float(r["loss/mse"]) + 0.5 * float(r["loss/l1"]), rel=1e-9)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/mse", "loss/l1", "train/total_loss", "train/lr", "train/images_per_s"} <= tags
    assert [e.step for e in events.Scalars("loss/mse")] == [2, 4, 6]


def test_autocast_bf16_fp16_with_grad_scaler_and_fp32_default():
    solver = SolverConfig(base_lr=0.01, max_iter=2, warmup_iters=0)
    model = ToyModel()
    model.float()
    dataset = ToyDataset(16)
    dataset.x, dataset.y = dataset.x.float(), dataset.y.float()
    _train(model, toy_loader(dataset, 4), solver, TrainConfig(amp="bf16", **QUIET))
    assert model.seen_dtypes == [torch.bfloat16, torch.bfloat16]
    model.seen_dtypes.clear()
    trainer, _ = _train(model, toy_loader(dataset, 4), solver, TrainConfig(**QUIET))  # auto on CPU = fp32
    assert trainer.amp_dtype is None and model.seen_dtypes == [torch.float32, torch.float32]
    assert not trainer.scaler.is_enabled()
    model.seen_dtypes.clear()
    trainer, _ = _train(model, toy_loader(dataset, 4), solver, TrainConfig(amp="fp16", **QUIET))
    assert model.seen_dtypes == [torch.float16, torch.float16] and trainer.scaler.is_enabled()
    assert trainer.state_dict()["scaler"]["scale"] == trainer.scaler.get_scale()  # resumed with the checkpoint


def test_batch_size_must_match_ims_per_batch():
    solver = SolverConfig(max_iter=1, ims_per_batch=16)
    trainer = Trainer(ToyModel(), toy_loader(ToyDataset(16), 4), solver, TrainConfig(**QUIET), device="cpu")
    with pytest.raises(ValueError, match=r"solver.ims_per_batch=16 needs 16 items .* yields 4"):
        trainer.train()


@pytest.mark.parametrize("sampler", ["resumable", "random_with_generator"])
@pytest.mark.parametrize("consumed", [3, 8, 11])  # mid-epoch, at the epoch boundary, in the second epoch
def test_data_stream_resumes_at_the_same_batch(sampler, consumed):
    dataset = ToyDataset(34)  # 8 batches of 4 per epoch (drop_last)

    def make_loader():
        if sampler == "resumable":
            return toy_loader(dataset, 4, seed=3)
        # the data layer's single-process loader: RandomSampler driven by the loader's own generator
        generator = torch.Generator().manual_seed(3)
        return torch.utils.data.DataLoader(
            dataset, batch_size=4, shuffle=True, drop_last=True, collate_fn=collate_toy, generator=generator
        )

    running = DataStream(make_loader())
    for _ in range(consumed):
        next(running)
    resumed = DataStream(make_loader())
    resumed.load_state_dict(running.state_dict())
    for _ in range(12):  # crosses at least one epoch boundary
        a, b = next(running), next(resumed)
        assert torch.equal(a.x, b.x)
    assert resumed.state_dict()["epoch"] == running.state_dict()["epoch"] >= 1
    assert not torch.equal(next(DataStream(make_loader())).x, dataset.x[:4])  # the order really is shuffled


def test_train_from_config_runs_reir_on_synthetic_data_and_rebuilds_from_checkpoint(tmp_path):
    """``train(cfg)`` through engine/defaults.py with the real data, language and model layers (tiny and short)."""
    from relground.config import load_config
    from relground.data.flickr30k import load_flickr30k
    from relground.data.proposals import ProposalStore
    from relground.data.synthetic import generate_synthetic
    from relground.engine.defaults import model_from_checkpoint, train
    from relground.language.vocab import tokenize
    from tests.utils import REPO

    data = tmp_path / "synth"
    generate_synthetic(data, num_images=10, seed=0, image_size=64, workers=1)
    overrides = [
        f"data.root={data}", "data.relations=", "model.loss.relation=false", "model.vogn=false",
        "model.vogn_geometry=false", "model.relation_geometry=false",
        "data.min_size=64", "data.max_size=64", "model.hidden_dim=16", "model.vogn_dim=8", "model.ranking_dim=8",
        "model.relation_hidden=8", "model.regression_hidden=8", "model.refine_start_iteration=1",
        "solver.ims_per_batch=2", "solver.max_iter=3", "solver.warmup_iters=1", "solver.steps=[2]",
        "train.log_period=1", "train.checkpoint_period=2", "train.progress_bar=false", f"output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(REPO / "configs" / "synthetic.yaml", overrides)
    assert cfg.train.threads == 1

    class ThreadProbe(HookBase):  # train.threads holds during the steps and is undone afterwards
        seen: set[int] = set()

        def before_step(self) -> None:
            self.seen.add(torch.get_num_threads())

    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train(cfg, hooks=[ThreadProbe()])
        assert ThreadProbe.seen == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)
    assert result["status"] == "finished" and result["iteration"] == 3
    assert {"loss/rec_s2", "loss/rank_s1", "loss/reg_s1"} <= set(result["metrics"])
    assert load_config(result["config"]) == cfg  # the saved config.yaml rebuilds the run's config

    state = load_checkpoint(result["checkpoint"])
    args = state["model_args"]
    train_images = load_flickr30k(data, "train")
    caption_words = {w for im in train_images for s in im.sentences for w in tokenize(s.text)}
    assert set(args["caption_itos"][2:]) == caption_words and args["caption_itos"][:2] == ["<pad>", "<unk>"]
    assert args["class_names"] == ProposalStore(data / "proposals.h5").class_names
    assert args["relation_categories"] == []
    model, rebuilt_cfg, _ = model_from_checkpoint(state)
    assert rebuilt_cfg == cfg
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name])


def test_max_loss_guard_stops_a_diverging_run_at_once(tmp_path):
    solver = SolverConfig(base_lr=0.01, max_iter=20, warmup_iters=0)
    cfg = TrainConfig(checkpoint_period=2, max_loss=1e6, **QUIET)
    model = ToyModel(blow_up_at=5)  # finite but 1e12 times too large from iteration 5
    trainer = Trainer(model, toy_loader(ToyDataset(32), 4), solver, cfg, tmp_path, device="cpu")
    with pytest.raises(FloatingPointError, match=r"loss 'mse' is .*e\+\d+, above train.max_loss=1e\+06 at iteration 5"):
        trainer.train()
    state = load_checkpoint(Checkpointer(tmp_path / "checkpoints").latest())
    assert state["iteration"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    # Without the limit the same run takes more optimizer steps on the huge loss until it turns inf.
    with pytest.raises(FloatingPointError, match=r"is (inf|nan) at iteration") as info:
        _train(ToyModel(blow_up_at=5), toy_loader(ToyDataset(32), 4), solver, TrainConfig(**QUIET))
    assert int(str(info.value).split(" at iteration ")[1].split(";")[0]) > 5
    with pytest.raises(ValueError, match="train.max_loss"):
        TrainConfig(max_loss=0.0)
