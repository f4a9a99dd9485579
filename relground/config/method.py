"""Which :class:`ModelConfig` fields are the *method*, as opposed to its sizes and schedule, and how a method moves
from one configuration's scale to another's.

The shipped configurations share one method and differ in scale (backbone, widths, word vectors, solver); the
few method switches where they differ are listed, with the measured reason, next to their keys in
``configs/synthetic.yaml`` (``tests/config/test_method_switches.py`` holds them to that). To see how a
real-data configuration's method does on the synthetic benchmark, carry it over::

    synthetic, real = load_config("configs/synthetic.yaml").model, load_config("configs/flickr30k_reir.yaml").model
    model = with_method_of(synthetic, real)           # the real-data method at the synthetic scale
    differences = method_differences(synthetic, real)   # {"top_k": (10, 5), ...}
"""
from __future__ import annotations

from typing import Any

from relground.config.model import ModelConfig

# ModelConfig fields that say what the network computes and how it is trained (sizes, the backbone, performance
# options and the schedule's iteration numbers are scale; ``cls_hidden`` counts only as "Linear or hidden layer").
MODEL_METHOD_SWITCHES = (
    "rnn_type", "decoder_rnn_type", "bidirectional", "spatial_feature", "box_input_norm", "two_stage", "top_k",
    "box_regression", "regression_uses_phrase", "vogn", "vogn_variant", "vogn_weights", "vogn_geometry",
    "relation_geometry", "score_fusion", "cls_hidden", "cls_bias", "stage2_pooling", "share_stage_heads",
    "detach_stage2_inputs", "separate_stage2_decoder", "detach_regression_inputs", "regression_input",
    "regression_grid", "phrase_norm", "box_norm", "vogn_zero_gates", "detach_refined_boxes", "softmax_epsilon",
    "empty_prior", "decoder_input", "ranking_projection", "clip_predictions", "head_init",
)
LOSS_METHOD_SWITCHES = (
    "reconstruction_stages", "ranking", "ranking_stages", "regression", "relation", "lambda_rec", "lambda_reg",
    "lambda_rel", "lambda_rank", "iou_threshold", "score_gap", "ranking_form", "relation_form",
    "regression_starts_with_refinement", "normalization", "reference_images",
)


def method_switches(model: ModelConfig) -> dict[str, Any]:
    """The method of ``model`` as ``{switch: value}`` (loss switches as ``loss.<name>``), comparable across scales:
    ``cls_hidden`` as ``"linear"`` / ``"hidden layer"``; the regression loss's start as whether it waits for the
    refinement (the paper's text: both at 7.5k) or starts at once (the authors' code)."""
    switches: dict[str, Any] = {name: getattr(model, name) for name in MODEL_METHOD_SWITCHES}
    switches["cls_hidden"] = "hidden layer" if model.cls_hidden else "linear"
    for name in LOSS_METHOD_SWITCHES:
        if name == "regression_starts_with_refinement":
            value = _regression_waits(model)
        else:
            value = getattr(model.loss, name)
        switches[f"loss.{name}"] = value
    return switches


def method_differences(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """``{switch: (value in a, value in b)}`` for every method switch where ``a`` and ``b`` differ."""
    sa, sb = method_switches(a), method_switches(b)
    return {name: (sa[name], sb[name]) for name in sa if sa[name] != sb[name]}


def with_method_of(target: ModelConfig, source: ModelConfig) -> ModelConfig:
    """``target``'s sizes and schedule with ``source``'s method switches.

    ``decoder_input: tied`` (the authors') makes the word embeddings ``target``'s ``hidden_dim`` wide (random
    init, as the authors' 1024-d ones). ``cls_hidden``: ``source``'s zero (one Linear) is kept; a hidden layer keeps ``target``'s width (or its
    ``hidden_dim`` when ``target`` has none). The regression loss starts with ``target``'s refinement when
    ``source``'s waits for its refinement, and at once otherwise.
    """
    changes = {name: getattr(source, name) for name in MODEL_METHOD_SWITCHES}
    changes["cls_hidden"] = (target.cls_hidden or target.hidden_dim) if source.cls_hidden else 0
    loss = {name: getattr(source.loss, name) for name in LOSS_METHOD_SWITCHES
            if name != "regression_starts_with_refinement"}
    loss["regression_start_iteration"] = target.refine_start_iteration if _regression_waits(source) else 0
    if source.decoder_input == "tied":  # one GRU reads z and the caption's embeddings: the words are d wide
        changes["word_dim"] = target.hidden_dim
    return target.replace(**changes, loss=loss)


def _regression_waits(model: ModelConfig) -> bool:
    start = model.loss.regression_start_iteration
    return start > 0 and start >= model.refine_start_iteration

