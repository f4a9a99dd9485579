"""The allowed range of every numeric config key, checked when a config is built (before anything starts).

Each section's ``__post_init__`` checks what depends on several keys; this table holds the plain bounds of
every number, one place to read them. Non-finite floats (``nan``, ``inf``) are refused earlier, for every key,
by :func:`relground.config.schema.coerce`. A numeric key missing here is a test failure
(``tests/config/test_overrides.py``): a new key gets its range when it is added.

Example::

    check_numeric_ranges(cfg)   # ValueError: config key 'solver.momentum': must be in [0, 1), got 1.5
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Interval:
    """``low <= value <= high`` (``<`` where the end is open); ``None`` = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        opening = "(" if self.low_open or self.low is None else "["
        closing = ")" if self.high_open or self.high is None else "]"
        return f"{opening}{low}, {high}{closing}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Interval(0, low_open=True)  # > 0
AT_LEAST_1 = Interval(1)
NON_NEGATIVE = Interval(0)
FRACTION = Interval(0, 1)  # [0, 1]
ANY = Interval()  # any finite value

NUMERIC_RANGES: dict[str, Interval] = {
    "seed": Interval(0, 2**32 - 1),  # numpy's seed range
    # data
    "data.max_proposals": AT_LEAST_1,
    "data.min_size": AT_LEAST_1,
    "data.max_size": AT_LEAST_1,
    "data.batch_size": AT_LEAST_1,
    "data.captions_per_image": AT_LEAST_1,
    "data.num_workers": NON_NEGATIVE,
    "data.vocab_min_freq": NON_NEGATIVE,
    "data.num_relation_classes": AT_LEAST_1,
    "data.image_bucket": NON_NEGATIVE,
    # model
    "model.spatial_scale": POSITIVE,
    "model.cache_max_images": AT_LEAST_1,
    "model.hidden_dim": AT_LEAST_1,
    "model.word_dim": AT_LEAST_1,
    "model.top_k": AT_LEAST_1,
    "model.refine_start_iteration": NON_NEGATIVE,
    "model.vogn_dim": AT_LEAST_1,
    "model.ranking_dim": AT_LEAST_1,
    "model.relation_hidden": AT_LEAST_1,
    "model.regression_hidden": AT_LEAST_1,
    "model.cls_hidden": NON_NEGATIVE,  # 0 = a linear F_cls
    "model.cls_bias": ANY,
    "model.regression_grid": AT_LEAST_1,
    "model.loss.reconstruction_stages": Interval(1, 2),
    "model.loss.ranking_stages": Interval(1, 2),
    "model.loss.lambda_rec": NON_NEGATIVE,
    "model.loss.lambda_reg": NON_NEGATIVE,
    "model.loss.lambda_rel": NON_NEGATIVE,
    "model.loss.lambda_rank": NON_NEGATIVE,
    "model.loss.regression_start_iteration": NON_NEGATIVE,
    "model.loss.iou_threshold": FRACTION,
    "model.loss.score_gap": NON_NEGATIVE,
    # solver
    "solver.base_lr": POSITIVE,
    "solver.momentum": Interval(0, 1, high_open=True),
    "solver.weight_decay": NON_NEGATIVE,
    "solver.weight_decay_norm": NON_NEGATIVE,
    "solver.ims_per_batch": AT_LEAST_1,
    "solver.max_iter": NON_NEGATIVE,
    "solver.steps": AT_LEAST_1,
    "solver.gamma": POSITIVE,
    "solver.warmup_iters": NON_NEGATIVE,
    "solver.warmup_factor": Interval(0, 1, low_open=True),
    "solver.clip_grad_norm": POSITIVE,
    # train
    "train.accumulation_steps": AT_LEAST_1,
    "train.checkpoint_period": AT_LEAST_1,
    "train.keep_checkpoints": AT_LEAST_1,
    "train.log_period": AT_LEAST_1,
    "train.threads": NON_NEGATIVE,
    "train.max_loss": POSITIVE,
    # keys that other branches of this round add (issue 21: loss normalisation, softmax; issue 22: evaluation)
    "model.loss.reference_images": AT_LEAST_1,
    "model.softmax_epsilon": NON_NEGATIVE,
    "train.eval_period": NON_NEGATIVE,  # 0 = no evaluation during training
}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_values(cfg: Any, prefix: str = ""):
    """``(dotted key, value)`` for every number of a config dataclass (each element of a tuple of numbers, under
    the tuple's key), nested sections included; ``None`` values are skipped."""
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from numeric_values(value, key + ".")
        elif is_number(value):
            yield key, value
        elif isinstance(value, (list, tuple)):
            yield from ((key, v) for v in value if is_number(v))


def check_numeric_ranges(cfg: Any) -> None:
    """Refuse a config holding a number outside its key's range (or a non-finite one).

    Raises:
        ValueError: naming the key, its range and the value.
    """
    for key, value in numeric_values(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key '{key}': must be a finite number, got {value}")
        interval = NUMERIC_RANGES.get(key)
        if interval is not None and value not in interval:
            raise ValueError(f"config key '{key}': must be in {interval}, got {value}")
