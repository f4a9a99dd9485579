"""``train.cuda_graph`` (:mod:`relground.engine.cuda_graph`): the settings it needs are refused clearly, batches are
keyed by their bucketed shapes and schedule phase, and (on a CUDA device) graph-replayed training steps give the
losses and parameters of eager steps on the same batches, directly and through the Trainer."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools

import pytest
import torch

from relground.config import SolverConfig, TrainConfig, load_config
from relground.data.collate import collate_grounding, pad_to_buckets
from relground.engine.cuda_graph import CudaGraphStep, check_capturable, graph_key, schedule_phase, with_image_codes
from relground.engine.defaults import check_cuda_graph, train
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.engine.trainer import Trainer
from tests.engine.test_shape_buckets import items_of
from tests.model.batch_factory import RELATION_CLASSES, make_batch
from tests.model.test_compile import CONFIGS, build

QUIET = dict(progress_bar=False, tensorboard=False)
SOLVER = SolverConfig(base_lr=0.05, max_iter=5, steps=(3,), gamma=0.5, warmup_iters=2, warmup_factor=0.25)
PAD = functools.partial(pad_to_buckets, image_bucket=32)  # the test batches' bucket: 64 x 96 images stay as they are


def bucketed(seed: int, phrases: int, batch_size: int = 4):
    items = items_of(make_batch(batch_size=batch_size, num_proposals=8, num_phrases=phrases, seed=seed))
    return collate_grounding(items, RELATION_CLASSES, shape_buckets=True, image_bucket=32)


# ---------------------------------------------------------------------------------------------- settings (CPU)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(accumulation_steps=2), "train.accumulation_steps"),
        (dict(amp="fp16"), "train.amp=fp16"),
        (dict(device="cpu"), "train.device='cpu'"),
    ],
)
def test_train_section_refuses_what_a_captured_step_cannot_do(changes, field):
    with pytest.raises(ValueError, match=f"train.cuda_graph.*{field}|{field}.*train.cuda_graph"):
        TrainConfig(cuda_graph=True, **changes)
    TrainConfig(cuda_graph=False, **changes)  # each is fine without graphs


def test_config_check_names_every_missing_setting_and_train_writes_nothing(tmp_path):
    graphs = ["train.cuda_graph=true", "train.device=auto"]  # the synthetic config trains on the CPU
    cfg = load_config("synthetic.yaml", [*graphs, f"output_dir={tmp_path / 'run'}"])
    assert cfg.model.cache_features and not cfg.model.static_shapes and not cfg.data.shape_buckets
    with pytest.raises(ValueError) as error:
        check_cuda_graph(cfg)
    message = str(error.value)
    for needed in ("model.static_shapes: true", "data.shape_buckets: true", "model.cache_features: false"):
        assert needed in message
    assert ("CUDA device" in message) == (not torch.cuda.is_available())
    with pytest.raises(ValueError, match="train.cuda_graph needs"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    fixed = load_config("synthetic.yaml", [*graphs, "model.static_shapes=true", "data.shape_buckets=true",
                                           "model.cache_features=false"])
    if torch.cuda.is_available():
        check_cuda_graph(fixed)
    else:
        with pytest.raises(ValueError, match=r"^train.cuda_graph needs a CUDA device \(train.device='auto'"):
            check_cuda_graph(fixed)


def test_default_config_has_no_graphs_and_no_buckets():
    cfg = load_config("synthetic.yaml")
    assert cfg.train.cuda_graph is False and cfg.data.shape_buckets is False and cfg.data.image_bucket == 128
    check_cuda_graph(cfg)  # nothing to check


def test_capture_needs_static_shapes_no_cache_fused_sgd_and_cuda():
    static = build(CONFIGS["flickr30k"](static_shapes=True))
    with pytest.raises(ValueError, match="model.static_shapes: true"):
        check_capturable(build(CONFIGS["flickr30k"]()), build_optimizer(SOLVER, static))
    cached = build(CONFIGS["flickr30k"](static_shapes=True, cache_features=True))
    with pytest.raises(ValueError, match="model.cache_features: false"):
        check_capturable(cached, build_optimizer(SOLVER, cached))
    foreach = torch.optim.SGD(static.trainable_parameters(), lr=0.1, momentum=0.9, foreach=True)
    with pytest.raises(ValueError, match="fused SGD"):
        check_capturable(static, foreach)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"needs a CUDA device; the model's parameters are on \['cpu'\]"):
            check_capturable(static, build_optimizer(SOLVER, static))
        with pytest.raises(ValueError, match="needs a CUDA device"):  # refused when the trainer is built
            Trainer(static, [], SOLVER, TrainConfig(cuda_graph=True, **QUIET), device="cpu")


# ---------------------------------------------------------------------------------------------- keys (CPU)


def test_batches_of_one_bucket_share_a_key_and_other_buckets_or_phases_do_not():
    a, b = bucketed(seed=0, phrases=3), bucketed(seed=1, phrases=3)  # P 3 -> 4 both, other contents
    c = bucketed(seed=0, phrases=5)  # P 5 -> 8
    assert not torch.equal(a.words, b.words)
    assert graph_key(a, (True,)) == graph_key(b, (True,))
    assert graph_key(a, (True,)) != graph_key(c, (True,))
    assert graph_key(a, (True,)) != graph_key(a, (False,))
    assert graph_key(a) != graph_key(dataclasses.replace(a, image_keys=None))  # a None field is part of the key
    assert graph_key(a) != graph_key(dataclasses.replace(a, images=a.images.double()))


def test_schedule_phase_follows_the_model_schedules():
    model = build(CONFIGS["flickr30k"](static_shapes=True).replace(refine_start_iteration=3))
    regression_start = model.cfg.loss.regression_start_iteration
    assert schedule_phase(model, 0) == (False, 0 >= regression_start)
    assert schedule_phase(model, 3)[0] and schedule_phase(model, 10**6) == (True, True)
    assert schedule_phase(torch.nn.Linear(1, 1), 5) == ()


def test_missing_image_codes_are_made_as_the_model_would():
    batch = make_batch(batch_size=3, seed=2)  # no codes; meta has ids
    assert batch.image_index is None
    coded = with_image_codes(batch)
    assert coded.image_index.tolist() == [0, 1, 2] and coded.image_firsts.tolist() == [0, 1, 2]
    assert coded.image_keys is not None and with_image_codes(coded) is coded
    anonymous = with_image_codes(dataclasses.replace(batch, meta=[]))
    assert anonymous.image_keys is None and anonymous.image_index.tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------- the wrapper's logic (CPU)


class _Stream:
    def wait_stream(self, other):
        pass


class _Graph:
    """A stand-in for ``torch.cuda.CUDAGraph``: replay re-runs the step it "captured" on its static buffers."""

    def replay(self):
        self.replay_fn()


def _stand_in_cuda(monkeypatch, step_class):
    """The ``torch.cuda`` calls of CudaGraphStep replaced for the CPU: a capture records the step (and, as a real
    capture, runs nothing: what the recording changed is undone); a replay re-runs it on the captured buffers,
    with fresh gradients and the lr read from the device tensors, and writes the captured loss tensor."""
    import relground.engine.cuda_graph as module

    monkeypatch.setattr(module, "check_capturable", lambda model, optimizer: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    recorded, capturing = [], []
    original_step, original_capture = step_class._step, step_class._capture

    def recording_step(self, batch, iteration):
        values, names = original_step(self, batch, iteration)
        recorded.append((self, batch, iteration, values))
        return values, names

    def noting_capture(self, batch, iteration, key):
        capturing[:] = [self]
        return original_capture(self, batch, iteration, key)

    @contextlib.contextmanager
    def capture(graph, capture_error_mode="global"):
        assert capture_error_mode == "thread_local"
        owner = capturing[0]
        assert all(p.grad is None for p in owner.parameters)  # backward will allocate them in the graph's pool
        before = owner._state()
        recorded.clear()
        yield
        (_, batch, iteration, values), = recorded

        def replay():
            owner.optimizer.zero_grad(set_to_none=True)  # a replay writes the gradients, it does not add to them
            with owner._tensor_lr():
                fresh, _ = original_step(owner, batch, iteration)
            values.copy_(fresh)

        graph.replay_fn = replay
        owner._restore(before)  # a capture runs nothing

    monkeypatch.setattr(step_class, "_step", recording_step)
    monkeypatch.setattr(step_class, "_capture", noting_capture)
    monkeypatch.setattr(torch.cuda, "graph", capture)


@pytest.mark.parametrize("max_graphs", [16, 1])
def test_wrapper_keys_captures_replays_and_restores_like_eager_steps(monkeypatch, max_graphs):
    """CudaGraphStep's own logic on the CPU, with the CUDA graph API stood in for (a replay re-runs the captured step
    on its static buffers): warm-up steps leave no trace, each bucket is captured once, later batches of a bucket
    are copied into its buffers, the lr the scheduler writes reaches the replayed step, and beyond ``max_graphs``
    steps run eagerly. Same losses, weights and momentum as eager steps (the replayed lr is float32)."""
    batches = [bucketed(0, 3), bucketed(1, 5), bucketed(2, 3), bucketed(3, 5), bucketed(4, 3)]
    eager = build(CONFIGS["flickr30k"](static_shapes=True))
    graphed = copy.deepcopy(eager)
    eager_losses, eager_optimizer, eager_names = _eager_steps(eager, batches, SOLVER)

    _stand_in_cuda(monkeypatch, CudaGraphStep)
    optimizer = build_optimizer(SOLVER, graphed)
    scheduler = build_lr_scheduler(SOLVER, optimizer)
    step = CudaGraphStep(graphed, optimizer, pad=PAD, warmup_steps=2, max_graphs=max_graphs)
    losses = []
    with pytest.warns(RuntimeWarning, match="run eagerly") if max_graphs == 1 else contextlib.nullcontext():
        for iteration, batch in enumerate(batches):
            values, names = step(batch, iteration)
            losses.append(values.tolist())
            assert isinstance(optimizer.param_groups[0]["lr"], float)
            scheduler.step()
    expected = {16: {"captured": 2, "replayed": 5, "eager": 0}, 1: {"captured": 1, "replayed": 3, "eager": 2}}
    assert step.counts == expected[max_graphs] and len(step.graphs) == min(2, max_graphs)
    assert names == eager_names and {"rec_s1", "rank_s1", "reg_s2", "rel"} <= set(names)
    for got, want in zip(losses, eager_losses):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    params, buffers, momentum = _state(graphed, optimizer)
    params_e, buffers_e, momentum_e = _state(eager, eager_optimizer)
    for n, p in params_e.items():
        torch.testing.assert_close(params[n], p, rtol=1e-5, atol=1e-6, msg=n)
    for n, b in buffers_e.items():
        torch.testing.assert_close(buffers[n], b, rtol=1e-5, atol=1e-6, msg=n)
    for got, want in zip(momentum, momentum_e):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    step.reset()
    assert not step.graphs


# ---------------------------------------------------------------------------------------------- replay (CUDA)


def _eager_steps(model, batches, solver):
    """The trainer's eager arithmetic (one micro-batch, fp32): losses per step, then the final state."""
    optimizer = build_optimizer(solver, model)
    scheduler = build_lr_scheduler(solver, optimizer)
    losses = []
    for iteration, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, iteration=iteration)
        names = list(out.losses)
        losses.append(torch.stack([out.total_loss.detach(), *[v.detach() for v in out.losses.values()]]).tolist())
        out.total_loss.backward()
        optimizer.step()
        scheduler.step()
    return losses, optimizer, names


def _state(model, optimizer):
    momentum = [optimizer.state[p]["momentum_buffer"] for g in optimizer.param_groups for p in g["params"]]
    return dict(model.named_parameters()), dict(model.named_buffers()), momentum


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_graph_replayed_steps_equal_eager_steps(name):
    """Five steps over batches of two buckets (P 3 -> 4 and 5 -> 8; the first bucket comes back with other
    contents): equal losses each step, parameters, running statistics and momentum after them. The lr changes
    every step (warm-up, then a decay): the replays read it from the device."""
    torch.manual_seed(0)
    batches = [bucketed(0, 3), bucketed(1, 5), bucketed(2, 3), bucketed(3, 5), bucketed(4, 3)]
    batches = [b.to("cuda") for b in batches]
    eager = build(CONFIGS[name](static_shapes=True)).cuda()
    graphed = copy.deepcopy(eager)
    eager_losses, eager_optimizer, eager_names = _eager_steps(eager, batches, SOLVER)

    optimizer = build_optimizer(SOLVER, graphed)
    scheduler = build_lr_scheduler(SOLVER, optimizer)
    step = CudaGraphStep(graphed, optimizer, pad=PAD)
    graph_losses = []
    for iteration, batch in enumerate(batches):
        values, names = step(batch, iteration)
        assert names == eager_names
        graph_losses.append(values.tolist())
        assert isinstance(optimizer.param_groups[0]["lr"], float)  # the scheduler's float, outside the graph
        scheduler.step()
    assert step.counts == {"captured": 2, "replayed": 5, "eager": 0} and len(step.graphs) == 2
    for got, expected in zip(graph_losses, eager_losses):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    params, buffers, momentum = _state(graphed, optimizer)
    params_e, buffers_e, momentum_e = _state(eager, eager_optimizer)
    for n, p in params_e.items():  # the lr is float32 in the graph (the fused kernel's tensor lr), a double eagerly
        torch.testing.assert_close(params[n], p, rtol=1e-5, atol=1e-6, msg=n)
    for n, b in buffers_e.items():
        torch.testing.assert_close(buffers[n], b, rtol=1e-5, atol=1e-6, msg=n)
    for got, expected in zip(momentum, momentum_e):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.needs_cuda
def test_cuda_graph_trainer_equals_eager_trainer():
    """The same run through the Trainer with and without train.cuda_graph (fp32): same logged losses and weights."""
    batches = [bucketed(seed, phrases) for seed, phrases in ((0, 3), (1, 5), (2, 3), (3, 5), (4, 3))]
    model = build(CONFIGS["flickr30k"](static_shapes=True))
    runs = []
    for cuda_graph in (False, True):
        trainer = Trainer(copy.deepcopy(model), batches, SOLVER,
                          TrainConfig(device="cuda", amp="fp32", cuda_graph=cuda_graph, **QUIET), pad_batch=PAD)
        result = trainer.train()
        assert result["status"] == "finished" and result["iteration"] == 5
        runs.append((trainer.step_metrics, trainer.model, trainer.graph_step))
    (metrics_e, model_e, none), (metrics_g, model_g, graph_step) = runs
    assert none is None and graph_step.counts["replayed"] == 5 and graph_step.counts["captured"] == 2
    assert metrics_g.keys() == metrics_e.keys()
    for key in metrics_e:
        if key.startswith(("loss", "total")) or key == "lr":
            assert metrics_g[key] == pytest.approx(metrics_e[key], rel=1e-5, abs=1e-6), key
    for (n, p), (_, q) in zip(model_e.named_parameters(), model_g.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
