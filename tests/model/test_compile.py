"""The static-shape training step (``model.static_shapes``): no host synchronisation in the model's or the losses'
training path, the same losses as the default step, and a whole-graph ``torch.compile`` of forward + losses +
backward (the synthetic config's and the Flickr30K config's model sections, at small widths)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from relground.config.loader import load_config
from relground.config.solver import SolverConfig
from relground.config.train import TrainConfig
from relground.data.collate import GroundingItem, collate_grounding
from relground.engine.trainer import Trainer
from relground.model import ModelConfig
from relground.model.reir import ReIR
from relground.structures.batch import image_codes
from tests.model.batch_factory import CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES, make_batch

SMALL = dict(backbone="resnet10", hidden_dim=32, word_dim=16, vogn_dim=16, ranking_dim=16, relation_hidden=32,
             regression_hidden=16, top_k=3, refine_start_iteration=0)


def section(config: str, **changes) -> ModelConfig:
    """The ``model`` section of a shipped config at small widths (ResNet-10), with ``changes``."""
    model = load_config(f"configs/{config}.yaml").model
    small = {k: v for k, v in SMALL.items() if k != "backbone" or model.backbone != "resnet10"}
    if model.cls_hidden:
        small["cls_hidden"] = 16
    return model.replace(backbone_weights=None, stride_in_1x1=False, **small, **changes)


CONFIGS = {
    # the synthetic config with its feature cache off (the cache is a host store; see test_cache_outside_step)
    "synthetic": lambda **c: section("synthetic", cache_features=False, **c),
    "flickr30k": lambda **c: section("flickr30k_reir", **c),
    # the authors' code: fused stage-2 pooling, shared heads, F_reg on x_o with gradient, one-Linear F_cls; but
    # the released code's per-item statistics and means and its tied decoder, which the static step does not have
    "flickr30k_authors": lambda **c: section(
        "flickr30k_reir_authors", phrase_norm="batch", box_norm="batch", decoder_input="projected",
        loss=dict(normalization="batch"), **c),
}


def build(cfg: ModelConfig, seed: int = 0) -> ReIR:
    torch.manual_seed(seed)
    return ReIR(cfg, CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES, relation_class_counts=[5, 1, 3, 2, 8, 4]).train()


def grouped_batch(seed: int = 0):
    """make_batch with items 0 and 2 showing the same image (an image-grouped batch), integer codes set."""
    batch = make_batch(batch_size=4, num_proposals=8, num_phrases=3, seed=seed)
    batch.images[2] = batch.images[0]
    batch.image_sizes[2] = batch.image_sizes[0]
    batch.meta[2]["image_id"] = batch.meta[0]["image_id"]
    return dataclasses.replace(batch, **image_codes([m["image_id"] for m in batch.meta]))


def train_step(model: ReIR, batch, iteration: int = 0):
    out = model(batch, iteration=iteration)
    out.total_loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_step_matches_default_step(name):
    """Masked sums instead of selections: the same losses, gradients and running statistics as the default step."""
    batch = grouped_batch()
    default, static = build(CONFIGS[name]()), build(CONFIGS[name](static_shapes=True))
    static.load_state_dict(default.state_dict())
    out_d, grads_d = train_step(default, batch)
    out_s, grads_s = train_step(static, batch)
    assert set(out_s.losses) == set(out_d.losses) and len(out_d.losses) >= 5
    for term in out_d.losses:
        torch.testing.assert_close(out_s.losses[term], out_d.losses[term], rtol=1e-4, atol=1e-5, msg=term)
    torch.testing.assert_close(out_s.boxes, out_d.boxes, rtol=1e-4, atol=1e-3)
    assert grads_s.keys() == grads_d.keys()
    for n in grads_d:
        torch.testing.assert_close(grads_s[n], grads_d[n], rtol=1e-3, atol=1e-5, msg=n)
    buffers_d = dict(default.named_buffers())
    for n, b in static.named_buffers():
        torch.testing.assert_close(b, buffers_d[n], rtol=1e-4, atol=1e-6, msg=n)


def test_static_step_without_codes_or_relations_or_labels():
    """A batch without integer codes (codes made from meta), with no labelled relation and a single valid box row."""
    cfg = CONFIGS["flickr30k"]()
    batch = make_batch(batch_size=2, num_proposals=6, num_phrases=2, seed=3)
    batch.relation_labels.zero_()  # no pair has a category: the relation term is 0
    default, static = build(cfg), build(cfg.replace(static_shapes=True))
    static.load_state_dict(default.state_dict())
    out_d, _ = train_step(default, batch)
    out_s, _ = train_step(static, batch)
    assert float(out_s.losses["rel"].detach()) == 0.0
    for term in out_d.losses:
        torch.testing.assert_close(out_s.losses[term], out_d.losses[term], rtol=1e-4, atol=1e-5, msg=term)


def _raise(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"host synchronisation in the training step: {name}")

    return fail


@contextlib.contextmanager
def no_host_reads():
    """Tensor.item / .cpu / .tolist / .nonzero / torch.nonzero / bool(tensor) raise while active."""
    patches = [(torch.Tensor, n) for n in ("item", "cpu", "tolist", "nonzero", "__bool__")] + [(torch, "nonzero")]
    saved = [(owner, n, getattr(owner, n)) for owner, n in patches]
    try:
        for owner, n in patches:
            setattr(owner, n, _raise(n))
        yield
    finally:
        for owner, n, original in saved:
            setattr(owner, n, original)


def test_patching_catches_a_host_read():
    """The patch is live: the default step (boolean-mask indexing, lengths.cpu()) trips it."""
    model = build(CONFIGS["flickr30k"]())
    with no_host_reads(), pytest.raises(AssertionError, match="host synchronisation"):
        model(grouped_batch(), iteration=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_step_reads_nothing_on_the_host(name):
    model = build(CONFIGS[name](static_shapes=True))
    batch = grouped_batch()
    batch = dataclasses.replace(batch, meta=[])  # as a compiled step sees it; the codes come with the batch
    with no_host_reads():
        out = model(batch, iteration=0)
        out.total_loss.backward()
    assert len(out.losses) >= 5


def test_collate_builds_image_codes():
    items = [
        GroundingItem(torch.zeros(3, 4, 4), (4, 4), 1.0, torch.zeros(2, 4), torch.ones(2, dtype=torch.bool),
                      torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), torch.tensor([1, 2]),
                      torch.tensor([[0, 1]]), [[3, 0]], [], torch.zeros(1, 4), {"image_id": image_id})
        for image_id in ("7", "9", "7")
    ]
    batch = collate_grounding(items, num_relation_classes=2)
    assert batch.image_index.tolist() == [0, 1, 0] and batch.image_firsts.tolist() == [0, 1]
    assert batch.image_keys[0] == batch.image_keys[2] != batch.image_keys[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fullgraph_compile_of_the_training_step(name):
    """torch.compile(fullgraph=True) traces forward + every loss (aot_eager: the whole graph and its backward are
    traced as inductor would get them, without its minutes of C++ code generation on CPU); same values as eager."""
    batch = dataclasses.replace(grouped_batch(), meta=[])
    eager, compiled = build(CONFIGS[name](static_shapes=True)), build(CONFIGS[name](static_shapes=True))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_step(backend="aot_eager")
    torch._dynamo.reset()
    out_e, grads_e = train_step(eager, batch)
    out_c, grads_c = train_step(compiled, batch)
    assert set(out_c.losses) == set(out_e.losses) and {"rel", "reg_s1", "reg_s2", "rank_s1"} <= set(out_e.losses)
    for term in out_e.losses:
        torch.testing.assert_close(out_c.losses[term], out_e.losses[term], rtol=1e-4, atol=1e-5, msg=term)
    for n in grads_e:
        torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-3, atol=1e-5, msg=n)


def test_compile_needs_static_shapes():
    with pytest.raises(ValueError, match="static_shapes"):
        build(CONFIGS["flickr30k"]()).compile_step()


@pytest.mark.slow
def test_trainer_trains_through_the_compiled_step(monkeypatch):
    """train.compile: the trainer compiles the model's step and its optimizer steps run through it."""
    calls = []
    compile_step = ReIR.compile_step

    def aot_eager_compile(self):
        compile_step(self, backend="aot_eager")  # inductor's C++ code generation takes minutes on CPU
        inner = self._compiled_step
        self._compiled_step = lambda *args: calls.append(1) or inner(*args)

    monkeypatch.setattr(ReIR, "compile_step", aot_eager_compile)
    torch._dynamo.reset()
    model = build(CONFIGS["flickr30k"](static_shapes=True))
    batches = [dataclasses.replace(grouped_batch(seed), meta=[]) for seed in (0, 1)]
    solver = SolverConfig(base_lr=0.01, max_iter=2, steps=(), warmup_iters=0)
    before = model.matching.cls_box.weight.detach().clone()
    result = Trainer(model, batches, solver, TrainConfig(device="cpu", compile=True, progress_bar=False)).train()
    assert result["status"] == "finished" and len(calls) == 2
    assert not torch.equal(model.matching.cls_box.weight, before)


def test_cache_outside_step():
    """With the feature cache (a host store) the static step takes the cached maps gathered before it: same losses."""
    cfg = section("synthetic", cache_features=True)
    batch = grouped_batch()
    default, static = build(cfg), build(cfg.replace(static_shapes=True))
    static.load_state_dict(default.state_dict())
    out_d, _ = train_step(default, batch)
    out_s, _ = train_step(static, batch)
    assert len(static.backbone.cache) == 3  # items 0 and 2 share an image
    for term in out_d.losses:
        torch.testing.assert_close(out_s.losses[term], out_d.losses[term], rtol=1e-4, atol=1e-5, msg=term)
