"""``train.cuda_graph`` (:mod:`relground.engine.cuda_graph`): the settings it needs are refused clearly, batches are
keyed by their bucketed shapes and schedule phase, a new phase frees the old phase's graphs, and (on a CUDA device)
graph-replayed training steps give the losses and parameters of eager steps on the same batches, directly and
through the Trainer."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import warnings
import weakref

import pytest
import torch

from relground.config import SolverConfig, TrainConfig, load_config
from relground.data.collate import collate_grounding, pad_to_buckets
from relground.engine import distributed as du
from relground.engine.cuda_graph import CudaGraphStep, check_capturable, graph_key, schedule_phase
from relground.engine.defaults import check_cuda_graph, train
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.engine.trainer import Trainer
from relground.model.stages import with_image_codes
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


READY = ["train.cuda_graph=true", "train.device=auto", "model.static_shapes=true", "data.shape_buckets=true",
         "model.cache_features=false"]  # every setting check_cuda_graph asks for (a CUDA device aside)


@pytest.mark.parametrize(
    "change, field",
    [
        (["model.freeze_backbone=false"], "model.freeze_backbone: true"),  # roi_align_avg's CUDA backward: .item()
        (["train.compile=true"], "train.compile: false"),
    ],
)
def test_config_check_refuses_a_trainable_backbone_and_compile(change, field):
    cfg = load_config("synthetic.yaml", [*READY, *change])
    with pytest.raises(ValueError, match="^train.cuda_graph needs ") as error:
        check_cuda_graph(cfg)
    assert field in str(error.value)
    ready = load_config("synthetic.yaml", READY)
    if torch.cuda.is_available():
        check_cuda_graph(ready)
    else:
        with pytest.raises(ValueError) as error:
            check_cuda_graph(ready)
        assert field not in str(error.value)  # only the missing CUDA device


def test_config_check_warns_about_unbucketed_image_sizes():
    def no_device():  # here: the only refusal left is the missing CUDA device
        return contextlib.nullcontext() if torch.cuda.is_available() else pytest.raises(ValueError, match="CUDA")

    cfg = load_config("synthetic.yaml", [*READY, "data.image_bucket=0"])
    with pytest.warns(RuntimeWarning, match="data.image_bucket: 0 captures a graph per distinct image size"):
        with no_device():
            check_cuda_graph(cfg)
    with warnings.catch_warnings(), no_device():
        warnings.simplefilter("error")  # image_bucket 128: no warning
        check_cuda_graph(load_config("synthetic.yaml", READY))


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
    with pytest.MonkeyPatch.context() as patch:  # inside a process group (the Trainer builds the step before DDP)
        patch.setattr(du, "is_distributed", lambda: True)
        with pytest.raises(ValueError, match="train.cuda_graph runs in one process"):
            check_capturable(static, build_optimizer(SOLVER, static))
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
    cfg = CONFIGS["flickr30k"](static_shapes=True)
    cfg = cfg.replace(refine_start_iteration=3, loss=dataclasses.replace(cfg.loss, regression_start_iteration=7500))
    model = build(cfg)
    phases = {it: schedule_phase(model, it) for it in (0, 2, 3, 7499, 7500, 10**6)}
    assert phases == {0: (False, False), 2: (False, False), 3: (True, False), 7499: (True, False),
                      7500: (True, True), 10**6: (True, True)}
    assert model.step_phase(None) == (True, True)  # evaluation: both on, as forward(iteration=None)
    assert schedule_phase(torch.nn.Linear(1, 1), 5) == 0  # a model without step_phase: one phase


def test_missing_image_codes_are_made_as_the_model_would():
    batch = make_batch(batch_size=3, seed=2)  # no codes; meta has ids
    assert batch.image_index is None
    coded = with_image_codes(batch)
    assert coded.image_index.tolist() == [0, 1, 2] and coded.image_firsts.tolist() == [0, 1, 2]
    assert coded.image_keys is not None and with_image_codes(coded) is coded
    anonymous = with_image_codes(dataclasses.replace(batch, meta=[]))
    assert anonymous.image_keys is None and anonymous.image_index.tolist() == [0, 1, 2]
    # items 0 and 2 show one image: the codes equal those collate_grounding makes (an independent builder)
    collated = collate_grounding(items_of(make_batch(batch_size=3, seed=2)), RELATION_CLASSES)
    assert collated.image_index.tolist() == [0, 1, 0]
    remade = with_image_codes(dataclasses.replace(collated, image_keys=None, image_index=None, image_firsts=None))
    for name in ("image_keys", "image_index", "image_firsts"):
        assert torch.equal(getattr(remade, name), getattr(collated, name)), name


# ------------------------------------------------------------------------------- the wrapper's logic (CPU)


class _Stream:
    def wait_stream(self, other):
        pass


class _Graph:
    """A stand-in for ``torch.cuda.CUDAGraph``: replay re-runs the step it "captured" on its static buffers."""

    def replay(self):
        assert self.replay_fn is not None, "replayed after reset()"
        self.replay_fn()

    def reset(self):
        self.replay_fn = None  # a real reset releases the graph and its share of the memory pool


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
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)  # a new token each call
    recorded, capturing = [], []
    original_step, original_capture = step_class._step, step_class._capture

    def recording_step(self, batch, iteration):
        values, names = original_step(self, batch, iteration)
        recorded.append((self, batch, iteration, values))
        return values, names

    def noting_capture(self, batch, iteration, key):
        capturing[:] = [self]
        if not hasattr(self, "capture_pools"):
            self.capture_pools = []
        return original_capture(self, batch, iteration, key)

    @contextlib.contextmanager
    def capture(graph, pool=None, stream=None, capture_error_mode="global"):
        assert capture_error_mode == "thread_local"
        owner = capturing[0]
        assert stream is owner.stream and isinstance(stream, _Stream)  # the warm-up's stream, the same every capture
        assert pool is owner.pool is not None  # the one shared pool
        owner.capture_pools.append(pool)
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
    assert len(step.capture_pools) == step.counts["captured"] and len(set(map(id, step.capture_pools))) == 1
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
    graphs = [entry.graph for entry in step.graphs.values()]
    step.reset()
    assert not step.graphs and step.pool is None  # the next capture opens a new pool
    assert all(graph.replay_fn is None for graph in graphs)


def test_a_new_phase_drops_the_old_phases_graphs(monkeypatch):
    """Two shapes captured before ``refine_start_iteration`` fill ``max_graphs`` = 2; the first step of the new
    phase drops both graphs (reset, their static inputs freed), so the new phase's shapes are captured rather than
    run eagerly; the losses stay those of eager steps across the change."""
    cfg = CONFIGS["flickr30k"](static_shapes=True).replace(refine_start_iteration=2)
    batches = [bucketed(0, 3), bucketed(1, 5), bucketed(2, 3), bucketed(3, 5), bucketed(4, 3)]
    eager = build(cfg)
    graphed = copy.deepcopy(eager)
    eager_losses, _, _ = _eager_steps(eager, batches, SOLVER)

    _stand_in_cuda(monkeypatch, CudaGraphStep)
    optimizer = build_optimizer(SOLVER, graphed)
    scheduler = build_lr_scheduler(SOLVER, optimizer)
    step = CudaGraphStep(graphed, optimizer, pad=PAD, warmup_steps=1, max_graphs=2)
    losses, old = [], []
    for iteration, batch in enumerate(batches):
        if iteration == 2:  # the last step of phase (False, True) has run: two graphs, the cap
            assert [key[1] for key in step.graphs] == [(False, True)] * 2
            old = [(entry.graph, weakref.ref(entry.inputs.images)) for entry in step.graphs.values()]
            first_pool = step.pool
        values, _ = step(batch, iteration)
        losses.append(values.tolist())
        scheduler.step()
    gc.collect()
    assert step.counts == {"captured": 4, "replayed": 5, "eager": 0}
    assert [key[1] for key in step.graphs] == [(True, True)] * 2
    assert all(graph.replay_fn is None and inputs() is None for graph, inputs in old)  # reset, buffers freed
    assert step.pool is not first_pool  # no graph held the old pool: the new phase's captures share a new one
    for got, want in zip(losses, eager_losses):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("operation not permitted when stream is capturing")])
def test_a_failed_capture_is_explained_but_out_of_memory_is_raised_unchanged(monkeypatch, error):
    _stand_in_cuda(monkeypatch, CudaGraphStep)

    @contextlib.contextmanager
    def failing(graph, pool=None, stream=None, capture_error_mode="global"):
        yield
        raise error

    monkeypatch.setattr(torch.cuda, "graph", failing)
    model = build(CONFIGS["flickr30k"](static_shapes=True))
    step = CudaGraphStep(model, build_optimizer(SOLVER, model), pad=PAD, warmup_steps=1)
    with pytest.raises(RuntimeError) as raised:
        step(bucketed(0, 3), 0)
    if isinstance(error, torch.OutOfMemoryError):
        assert raised.value is error
    else:
        assert type(raised.value) is RuntimeError and raised.value.__cause__ is error
        assert str(raised.value).startswith("train.cuda_graph: capturing the training step failed")
    assert not step.graphs and step.pool is None  # no graph holds the pool: the next capture opens a new one
    assert isinstance(step.optimizer.param_groups[0]["lr"], float)  # the scheduler's float is back


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
