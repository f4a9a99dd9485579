import dataclasses
import math

import pytest
import torch

from relground.model import LossConfig, ModelConfig, ReIR
from relground.model.matching import BoxDecoder
from tests.model.batch_factory import CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES, make_batch, tiny_config

EXPECTED_LOSSES = {
    "baseline": {"rec_s1", "rank_s1"},
    "tsd": {"rec_s1", "rec_s2", "rank_s1", "rank_s2"},
    "tsd_str": {"rec_s1", "rec_s2", "rank_s1", "rank_s2", "reg_s1", "reg_s2"},
    "tsd_str_noq": {"rec_s1", "rec_s2", "rank_s1", "rank_s2", "reg_s1", "reg_s2"},
    "tsd_vogn_rc": {"rec_s2", "rank_s1", "rank_s2", "rel"},
    "full": {"rec_s2", "rank_s1", "rank_s2", "reg_s1", "reg_s2", "rel"},
    "full_uniform": {"rec_s2", "rank_s1", "rank_s2", "reg_s1", "reg_s2", "rel"},
}


def build(cfg: ModelConfig, **kwargs) -> ReIR:
    torch.manual_seed(0)
    return ReIR(cfg, CAPTION_VOCAB, PHRASE_VOCAB, RELATION_CLASSES, **kwargs)


@pytest.mark.parametrize("preset", sorted(EXPECTED_LOSSES))
def test_presets_report_their_losses_and_weight_the_total(preset):
    cfg = tiny_config(preset, box_head="fast" if preset.startswith("tsd") else "faithful")
    model = build(cfg, relation_class_counts=[10, 200, 3, 0, 50, 7])
    batch = make_batch()
    out = model(batch, iteration=100)
    assert set(out.losses) == EXPECTED_LOSSES[preset]
    lam = {
        "rec": cfg.loss.lambda_rec,
        "reg": cfg.loss.lambda_reg,
        "rel": cfg.loss.lambda_rel,
        "rank": cfg.loss.lambda_rank,
    }
    expected = sum(lam[k.split("_")[0]] * v.item() for k, v in out.losses.items())
    assert out.total_loss.item() == pytest.approx(expected, rel=1e-6)
    assert all(torch.isfinite(v) for v in out.losses.values())
    B, P = batch.phrase_valid.shape
    assert out.boxes.shape == out.boxes_stage1.shape == (B, P, 4) and out.scores.shape == (B, P)
    assert (out.boxes_stage2 is None) == (preset == "baseline")


def test_predictions_without_regression_pick_proposals_by_the_fused_score():
    model = build(tiny_config("tsd_vogn_rc")).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    assert out.losses == {} and out.total_loss.item() == 0.0
    att1_k = torch.gather(out.attention_stage1, 2, out.topk_index.clamp(min=0))
    fused = att1_k * out.attention_stage2
    for b in range(batch.batch_size):
        for p in range(int(batch.phrase_valid[b].sum())):
            best = int(fused[b, p].argmax())
            proposal = int(out.topk_index[b, p, best])
            assert torch.equal(out.boxes[b, p], batch.proposals[b, proposal])
            assert out.scores[b, p].item() == pytest.approx(fused[b, p, best].item())
            assert torch.equal(out.boxes_stage1[b, p], batch.proposals[b, int(out.attention_stage1[b, p].argmax())])
            assert torch.equal(
                out.boxes_stage2[b, p],
                batch.proposals[b, int(out.topk_index[b, p, out.attention_stage2[b, p].argmax()])],
            )
            # top-K follows stage-1 attention
            kept = out.attention_stage1[b, p, out.topk_index[b, p]]
            assert kept.min() >= out.attention_stage1[b, p].sort(descending=True).values[kept.numel() - 1]


def test_refined_predictions_stay_inside_the_image_and_move_with_the_deltas():
    model = build(tiny_config("full")).eval()
    batch = make_batch()
    with torch.no_grad():
        torch.nn.init.normal_(model.matching.reg_out.weight, std=0.5)  # large deltas
        out = model(batch)
    h = batch.image_sizes[:, 0].float()[:, None]
    w = batch.image_sizes[:, 1].float()[:, None]
    assert (out.boxes[..., 0] >= 0).all() and (out.boxes[..., 2] <= w).all()
    assert (out.boxes[..., 1] >= 0).all() and (out.boxes[..., 3] <= h).all()
    # Stage-1 prediction = chosen proposal moved by its decoded stage-1 delta.
    decoder = BoxDecoder()
    q, _ = model.phrase_encoder(batch.words, batch.word_lengths, batch.phrase_spans, batch.phrase_valid)
    maps = model.backbone.image_maps(batch.images, batch.image_sizes, None)
    x_o = model.box_head(model.backbone, maps, batch.proposals, batch.proposal_valid, batch.image_sizes)
    with torch.no_grad():
        deltas = model.matching.deltas(q, x_o)
    b, p = 0, 1
    m = int(out.attention_stage1[b, p].argmax())
    expected = decoder(deltas[b : b + 1, p, m], batch.proposals[b : b + 1, m], batch.image_sizes[b : b + 1])
    torch.testing.assert_close(out.boxes_stage1[b, p], expected[0])
    assert not torch.equal(out.boxes_stage1[b, p], batch.proposals[b, m])


def test_stage_two_reuses_unrefined_features_before_the_refine_iteration():
    model = build(tiny_config("full", refine_start_iteration=50))
    batch = make_batch()
    before = model(batch, iteration=10).attention_stage2.detach()
    after = model(batch, iteration=60).attention_stage2.detach()
    with torch.no_grad():
        model.matching.reg_out.bias.add_(0.3)  # move every stage-1 refined box
    assert torch.allclose(model(batch, iteration=10).attention_stage2, before)  # not re-pooled yet
    assert not torch.allclose(model(batch, iteration=60).attention_stage2, after)


def test_regression_loss_starts_at_its_iteration():
    cfg = tiny_config("full", loss=dict(regression_start_iteration=30))
    model = build(cfg)
    assert "reg_s1" not in model(make_batch(), iteration=29).losses
    assert {"reg_s1", "reg_s2"} <= set(model(make_batch(), iteration=30).losses)


@pytest.mark.parametrize("head", ["faithful", "fast"])
def test_native_and_reference_paths_agree_in_float64(head):
    batch = make_batch(dtype=torch.float64)
    results = []
    for native in (True, False):
        model = build(tiny_config("full", box_head=head, native_ops=native, loss=dict(score_gap=0.0))).double()
        out = model(batch, iteration=10)
        out.total_loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.total_loss, b.total_loss)
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.attention_stage2, b.attention_stage2)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


@pytest.mark.parametrize("preset,variant", [("full", "authors"), ("full", "paper"), ("full_uniform", "authors")])
def test_gradients_reach_every_trainable_parameter_and_not_the_backbone(preset, variant):
    model = build(tiny_config(preset, vogn_variant=variant, loss=dict(score_gap=0.0)))
    out = model(make_batch(), iteration=10)
    out.total_loss.backward()
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    assert set(map(id, trainable.values())) == set(map(id, model.trainable_parameters()))
    silent = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert silent == []
    assert all(n.startswith("backbone.") for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_training_smoke_total_loss_falls_over_50_steps():
    model = build(tiny_config("full", box_head="fast", cache_features=True))
    batch = make_batch(batch_size=4, num_proposals=10)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    history = []
    for step in range(50):
        out = model(batch, iteration=step)
        assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
        optimizer.zero_grad()
        out.total_loss.backward()
        optimizer.step()
        history.append(out.total_loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, history
    assert len(model.backbone.cache) == 4  # the frozen maps were computed once per image


def test_bf16_autocast_and_channels_last_run():
    model = build(tiny_config("full", box_head="fast", channels_last=True, spatial_feature=True))
    assert model.box_head.fc.in_features == model.backbone.out_channels + 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(), iteration=10)
    assert torch.isfinite(out.total_loss) and out.total_loss.dtype == torch.float32
    out.total_loss.backward()
    assert torch.isfinite(model.matching.cls_box.weight.grad).all()


def test_pretrained_word_vectors_and_constructor_checks():
    model = build(tiny_config("baseline"))
    matrix = torch.randn(CAPTION_VOCAB, model.cfg.word_dim)
    model.load_pretrained_word_vectors(matrix)
    torch.testing.assert_close(model.phrase_encoder.embedding.weight[1:], matrix[1:])
    with pytest.raises(ValueError, match="relation_class_counts"):
        build(tiny_config("full"), relation_class_counts=[1, 2])
    with pytest.raises(ValueError, match="category_prior"):
        batch = make_batch()
        model(dataclasses.replace(batch, category_prior=batch.category_prior[:, :, :2]))


def test_config_presets_and_errors():
    assert ModelConfig.preset("tsd_str_noq").regression_uses_phrase is False
    assert ModelConfig.preset("full_uniform").vogn_weights == "uniform"
    assert ModelConfig.preset("full", top_k=3).top_k == 3
    assert ModelConfig.preset("full", loss=dict(lambda_reg=0.5)).loss.lambda_reg == 0.5
    assert ModelConfig(loss={"lambda_rel": 2.0}).loss == LossConfig(lambda_rel=2.0)
    with pytest.raises(ValueError, match="preset name"):
        ModelConfig.preset("ours")
    with pytest.raises(ValueError, match="model.box_head"):
        ModelConfig(box_head="slow")
    with pytest.raises(ValueError, match="loss.regression needs model.box_regression"):
        ModelConfig(box_regression=False)
    with pytest.raises(ValueError, match="iou_threshold"):
        LossConfig(iou_threshold=1.5)
    assert BoxDecoder().clip == pytest.approx(math.log(1000 / 16))


def test_captions_of_the_same_image_are_not_ranking_negatives():
    model = build(tiny_config("tsd"))
    batch = make_batch(batch_size=2)
    batch.meta = [{"image_id": "same"}, {"image_id": "same"}]
    out = model(batch, iteration=0)
    assert out.losses["rank_s1"].item() == 0.0 and out.losses["rank_s2"].item() == 0.0
    batch.meta = [{"image_id": "a"}, {"image_id": "b"}]
    assert model(batch, iteration=0).losses["rank_s1"].item() > 0


@pytest.mark.parametrize("pooling", ["fused", "fine"])
def test_stage_two_vector_is_pooled_with_the_chosen_attention(pooling, monkeypatch):
    import relground.model.reir as reir

    cfg = tiny_config("tsd", box_head="fast").replace(stage2_pooling=pooling)
    model = build(cfg).eval()
    batch = make_batch()
    seen = {}

    def capture(decoder, visual, targets, valid):  # the pooled vectors the reconstruction loss receives
        seen.setdefault("z", []).append(visual)
        return visual.sum() * 0.0

    monkeypatch.setattr(reir, "reconstruction_loss", capture)
    with torch.no_grad():
        out = model(batch, compute_losses=True)
        x_o = model.box_head(
            model.backbone, model.backbone.image_maps(batch.images, batch.image_sizes, None), batch.proposals,
            batch.proposal_valid, batch.image_sizes,
        )
    z2 = seen["z"][1]  # rec_s1 first, then rec_s2
    att1_k = torch.gather(out.attention_stage1, 2, out.topk_index.clamp(min=0))
    weights = att1_k * out.attention_stage2 if pooling == "fused" else out.attention_stage2
    for b in range(batch.batch_size):
        for p in range(int(batch.phrase_valid[b].sum())):
            expected = sum(weights[b, p, k] * x_o[b, out.topk_index[b, p, k]] for k in range(weights.shape[-1]))
            torch.testing.assert_close(z2[b, p], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stage2_pooling"):
        tiny_config("tsd").replace(stage2_pooling="mean")


def test_stage_two_heads_are_shared_by_default_and_separate_on_request():
    shared = build(tiny_config("tsd_str", cls_hidden=8))
    assert shared.matching_stage2 is None
    assert not any(n.startswith("matching_stage2.") for n in shared.state_dict())  # old checkpoints still load
    # Pooled by alpha^f alone, so z^f does not depend on alpha^c either.
    separate = build(tiny_config("tsd_str", cls_hidden=8, stage2_pooling="fine", share_stage_heads=False))
    names = {n for n, _ in separate.matching.named_parameters()}
    assert {n for n, _ in separate.matching_stage2.named_parameters()} == names
    batch = make_batch()
    out = separate(batch, iteration=10)
    before1, before2 = out.attention_stage1.detach(), out.attention_stage2.detach()
    with torch.no_grad():  # a change of stage 2's F_cls moves alpha^f only
        separate.matching_stage2.cls_phrase.weight.normal_()
    out = separate(batch, iteration=10)
    torch.testing.assert_close(out.attention_stage1, before1)
    assert not torch.allclose(out.attention_stage2, before2)
    # The stage-2 losses train the stage-2 heads; stage 1's F_cls only hears its own losses.
    separate.zero_grad()
    separate(batch, iteration=10).losses["rec_s2"].backward()
    assert separate.matching_stage2.cls_out.weight.grad.abs().sum() > 0
    assert separate.matching.cls_out.weight.grad is None or separate.matching.cls_out.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("preset", ["tsd_str", "full"])
def test_detached_stage_two_losses_leave_the_encoder_and_box_head_alone(preset):
    cfg = tiny_config(preset, stage2_pooling="fine", share_stage_heads=False, detach_stage2_inputs=True)
    model = build(cfg)
    out = model(make_batch(), iteration=10)
    out.losses["rec_s2"].backward()  # (rank_s2 also reaches the encoder through the sentence feature)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    heard = lambda prefix: any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))
    assert heard("matching_stage2.") and heard("decoder.")
    assert not heard("phrase_encoder.") and not heard("box_head.") and not heard("matching.")
    if preset == "full":
        assert heard("graph.")
    # Authors' default: the same loss reaches the shared encoder and box head.
    shared = build(tiny_config(preset, stage2_pooling="fine"))
    shared(make_batch(), iteration=10).losses["rec_s2"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared.box_head.parameters())


def test_isolation_options_keep_stage_two_and_regression_losses_off_the_stage_one_path():
    """separate_stage2_decoder, detach_regression_inputs and ranking_stages=(1,): what each loss may train."""
    cfg = tiny_config(
        "full", stage2_pooling="fine", share_stage_heads=False, detach_stage2_inputs=True,
        separate_stage2_decoder=True, detach_regression_inputs=True,
        loss=dict(ranking_stages=(1,), reconstruction_stages=(1, 2)),
    )
    model = build(cfg)
    out = model(make_batch(), iteration=10)
    assert "rank_s2" not in out.losses and "rank_s1" in out.losses

    def heard(loss_name: str) -> set[str]:
        model.zero_grad()
        model(make_batch(), iteration=10).losses[loss_name].backward(retain_graph=True)
        return {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    assert "decoder_stage2" in heard("rec_s2") and "decoder" not in heard("rec_s2")
    assert "decoder" in heard("rec_s1") and "decoder_stage2" not in heard("rec_s1")
    # The regression loss trains F_reg alone: not the phrase encoder or the box head the matching scores with.
    assert heard("reg_s1") == {"matching"}
    assert heard("reg_s2") <= {"matching_stage2"}  # (may select no neighbour in this tiny batch)
    # Authors' default: one decoder, and the regression gradient reaches the encoder and box head.
    shared = build(tiny_config("full"))
    assert shared.decoder_stage2 is None
    shared(make_batch(), iteration=10).losses["reg_s1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared.box_head.parameters())


@pytest.mark.parametrize("regression_input, cells", [("pooled", 1), ("grid", 4)])
def test_regression_can_read_the_pooled_box_feature_instead_of_x_o(regression_input, cells):
    cfg = tiny_config(
        "full", regression_input=regression_input, spatial_feature=True, box_input_norm=True, cls_hidden=8
    )
    model = build(cfg)
    assert model.matching.reg_box.in_features == model.backbone.out_channels * cells + 5
    assert model.box_head.fc.in_features == model.backbone.out_channels + 5  # the matching's input is unchanged
    batch = make_batch()
    out = model(batch, iteration=10)
    assert out.boxes.shape == out.boxes_stage1.shape and torch.isfinite(out.boxes).all()
    # A change of F_reg moves the refined boxes and leaves the matching's attention as it was.
    model.eval()
    before = model(batch, iteration=None, compute_losses=False)
    with torch.no_grad():
        model.matching.reg_box.weight.normal_(std=0.5)
        model.matching.reg_out.weight.normal_(std=0.1)
    after = model(batch, iteration=None, compute_losses=False)
    model.train()
    assert not torch.allclose(after.boxes_stage1, before.boxes_stage1)
    torch.testing.assert_close(after.attention_stage1, before.attention_stage1)
    model.zero_grad()
    model(batch, iteration=10).losses["reg_s1"].backward()
    assert model.matching.reg_box.weight.grad.abs().sum() > 0
    assert model.matching.cls_box.weight.grad is None or model.matching.cls_box.weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="regression_input"):
        tiny_config("full", regression_input="pixels")
    with pytest.raises(ValueError, match="regression_grid"):
        tiny_config("full", regression_input="grid", regression_grid=0)


def test_geometric_relation_options_feed_the_relation_loss_pregraph_vectors_and_box_pairs(monkeypatch):
    from relground.model.vogn import relative_geometry

    cfg = tiny_config(
        "full", box_head="fast", stage2_pooling="fine", share_stage_heads=False, refine_start_iteration=1000,
        vogn_geometry=True, relation_geometry=True,
    )
    model = build(cfg)
    assert model.relational is not None and model.relation.pair_dim == 4
    batch = make_batch()
    assert batch.relation_index.shape[0] > 0
    seen = {}
    original = model.relation.forward

    def capture(pooled, relation_index, pair_features=None, pair_weights=None):
        seen.update(pooled=pooled, pair=pair_features, weights=pair_weights)
        return original(pooled, relation_index, pair_features, pair_weights)

    monkeypatch.setattr(model.relation, "forward", capture)
    out = model(batch, iteration=10)  # before refine_start: stage 2 reads the unrefined top-K's x_o
    with torch.no_grad():
        x_o = model.box_head(
            model.backbone, model.backbone.image_maps(batch.images, batch.image_sizes, None), batch.proposals,
            batch.proposal_valid, batch.image_sizes,
        )
    att2, index = out.attention_stage2.detach(), out.topk_index
    K = att2.shape[-1]
    for r, (b, s, o) in enumerate(batch.relation_index.tolist()):
        for p in (s, o):  # F_rel reads sum_k alpha^f x_o: the features before any graph message
            z = sum(att2[b, p, k] * x_o[b, index[b, p, k]] for k in range(K) if index[b, p, k] >= 0)
            torch.testing.assert_close(seen["pooled"][b, p].detach(), z, rtol=1e-4, atol=1e-5)
        # ... and every (subject box, object box) pair's geometry, weighted alpha^f_s,k * alpha^f_o,l.
        for k in range(K):
            for l in range(K):
                j = k * K + l
                assert seen["weights"][r, j].item() == pytest.approx((att2[b, s, k] * att2[b, o, l]).item(), rel=1e-5)
                if index[b, s, k] >= 0 and index[b, o, l] >= 0:
                    expected = relative_geometry(batch.proposals[b, index[b, s, k]], batch.proposals[b, index[b, o, l]])
                    torch.testing.assert_close(seen["pair"][r, j].detach(), expected, rtol=1e-4, atol=1e-5)
    # The relation loss trains the box choice (alpha^f, through F_cls of stage 2) and the typed messages.
    model.zero_grad()
    out.losses["rel"].backward()
    heard = {}
    for name in ("matching_stage2.cls_box.weight", "relational.mlp.0.weight", "relation.pair_mlp.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all(), name
        heard[name] = grad.abs().max().item()
    # Only the geometry branch moves the box choice: with its output constant, every candidate pair says the
    # same, and the relation loss no longer reaches stage 2's F_cls or the messages (F_rel's own layers still learn).
    with torch.no_grad():
        model.relation.pair_mlp[2].weight.zero_()
    model.zero_grad()
    model(batch, iteration=10).losses["rel"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("matching_stage2.cls_box.weight", "relational.mlp.0.weight"):
        assert grads[name] is None or grads[name].abs().max() < 1e-4 * heard[name], name  # float32 rounding only
    assert grads["relation.mlp.0.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="relation_geometry needs loss.relation"):
        tiny_config("tsd_str", relation_geometry=True)
    with pytest.raises(ValueError, match="vogn_geometry needs model.vogn"):
        tiny_config("tsd_str", vogn_geometry=True)


def test_variants_are_chosen_at_construction_and_module_order_is_stable():
    """Initialisation draws random numbers in module-creation order and checkpoints key on attribute names: a
    refactor that reorders the modules or renames one changes every trained number or breaks old checkpoints."""
    from relground.model import stages

    plain = build(tiny_config("full"))
    assert plain.stage2_inputs is stages.keep_gradient and plain.regression_inputs is stages.keep_gradient
    assert plain.stage2_pooling is stages.pool_fused and plain.fine_heads is plain.matching
    every = build(
        tiny_config(
            "full", share_stage_heads=False, detach_stage2_inputs=True, detach_regression_inputs=True,
            stage2_pooling="fine", vogn_geometry=True, relation_geometry=True, separate_stage2_decoder=True,
            regression_input="grid", box_head="fast", loss={"reconstruction_stages": (1, 2)},
        )
    )
    assert every.stage2_inputs is stages.detach_all and every.regression_inputs is stages.detach_all
    assert every.stage2_pooling is stages.pool_fine and every.fine_heads is every.matching_stage2
    order = list(dict.fromkeys(name.split(".")[0] for name, _ in every.named_parameters()))
    assert order == [
        "backbone", "box_head", "phrase_encoder", "matching", "matching_stage2", "graph", "relational", "decoder",
        "decoder_stage2", "ranking", "relation",
    ]
