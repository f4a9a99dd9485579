"""Speed of the batched box ops (pairwise_iou, topk_select, self_taught_targets) against the per-image loops a
user writes today with torchvision / PyTorch, in the same run.

pytest-benchmark mode (CPU cases; the GPU cases run only when CUDA is available)::

    pytest bench/bench_batched_ops.py --benchmark-only

bench/conftest.py prints the speedup of each op over its baseline (the per-image loop) at the end.

Script mode, prints a table of median times and speedups (torch.utils.benchmark timers)::

    python bench/bench_batched_ops.py [--cpu-only]

Shape (from the issue): B=40 images, P=4 phrases, M=50 proposals, float32, k=5.
  * pairwise_iou: [B, M, 4] x [B, M, 4] -> [B, M, M]; baseline ``torchvision.ops.box_iou`` per image.
  * topk_select: [B*P, M] scores with padded rows; baseline ``torch.topk`` per row on the masked scores.
  * self_taught_targets: baseline a per-image loop of argmax + ``box_iou`` + ``BoxCoder.encode_single``.
Targets: >= 5x on CPU, >= 10x on GPU (one kernel launch per call). The batched pure-PyTorch references
(``relground/ops/_reference.py``) are timed too, as a second, stronger baseline.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

if __name__ == "__main__":  # script mode: import the checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relground.ops import pairwise_iou, self_taught_targets, topk_select
from relground.ops._reference import (
    _pairwise_iou_reference,
    _self_taught_targets_reference,
    _topk_select_reference,
)

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
IOU_THRESHOLD, SCORE_GAP, K = 0.6, 0.1, 5


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    device: str
    images: int = 40  # B
    phrases: int = 4  # P
    proposals: int = 50  # M
    dtype: torch.dtype = torch.float32


CPU_CASES = [Case("cpu-fp32", "cpu")]
GPU_CASES = [Case("cuda-fp32", "cuda")]


def make_inputs(case: Case, seed: int = 0) -> dict[str, torch.Tensor]:
    """Detection-like proposals (clustered, so IoU >= 0.6 pairs exist), attention scores and a padding mask."""
    g = torch.Generator().manual_seed(seed)
    B, P, M = case.images, case.phrases, case.proposals
    centres = torch.rand(B, 8, 2, generator=g) * 500
    pick = torch.randint(0, 8, (B, M), generator=g)
    xy = torch.gather(centres, 1, pick[..., None].expand(B, M, 2)) + torch.randn(B, M, 2, generator=g) * 10
    wh = 30 + torch.rand(B, M, 2, generator=g) * 100
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)  # [B, M, 4] xyxy pixels
    scores = torch.rand(B, P, M, generator=g).softmax(-1)  # [B, P, M]
    counts = torch.randint(M // 2, M + 1, (B, 1), generator=g)
    valid = torch.arange(M)[None] < counts  # [B, M], real proposals first
    tensors = {"boxes": boxes.to(case.dtype), "scores": scores.to(case.dtype), "valid": valid}
    return {k: v.to(case.device) for k, v in tensors.items()}


# ---- the per-image loops a user would write today ------------------------------------------------------
def loop_pairwise_iou(boxes):
    return torch.stack([torchvision.ops.box_iou(b, b) for b in boxes])  # [B, M, M]


def loop_topk_select(scores, valid):
    rows_scores, rows_valid = scores.flatten(0, 1), valid.repeat_interleave(scores.shape[1], 0)  # [B*P, M]
    outputs = [torch.topk(s.masked_fill(~v, -math.inf), K) for s, v in zip(rows_scores, rows_valid)]
    return torch.stack([o.values for o in outputs]), torch.stack([o.indices for o in outputs])


def loop_self_taught_targets(boxes, scores, valid, coder=BoxCoder(WEIGHTS)):
    B, P, M = scores.shape
    deltas, selected, weight, anchor = [], [], [], []
    for b in range(B):
        masked = scores[b].masked_fill(~valid[b], -math.inf)  # [P, M]
        a = masked.argmax(1)  # [P]
        anchor_boxes = boxes[b, a]  # [P, 4]
        iou = torchvision.ops.box_iou(anchor_boxes, boxes[b])  # [P, M]
        identical = (anchor_boxes[:, None] == boxes[b][None]).all(-1)  # [P, M]
        sel = (iou >= IOU_THRESHOLD) & valid[b][None] & ~identical
        sel[torch.arange(P), a] = False
        d = coder.encode_single(anchor_boxes.repeat_interleave(M, 0), boxes[b].repeat(P, 1)).view(P, M, 4)
        deltas.append(torch.where(sel[..., None], d, torch.zeros_like(d)))
        selected.append(sel)
        weight.append((sel & (masked.gather(1, a[:, None]) - scores[b] >= SCORE_GAP)).to(scores.dtype))
        anchor.append(a)
    return torch.stack(deltas), torch.stack(selected), torch.stack(weight), torch.stack(anchor)


# ---- what is timed: name -> (op, per-image loop, batched pure-PyTorch reference) --------------------------
CALLS = {
    "pairwise_iou": (
        lambda x: pairwise_iou(x["boxes"], x["boxes"]),
        lambda x: loop_pairwise_iou(x["boxes"]),
        lambda x: _pairwise_iou_reference(x["boxes"], x["boxes"]),
    ),
    "topk_select": (
        lambda x: topk_select(x["scores"].flatten(0, 1), K, x["valid"].repeat_interleave(x["scores"].shape[1], 0)),
        lambda x: loop_topk_select(x["scores"], x["valid"]),
        lambda x: _topk_select_reference(
            x["scores"].flatten(0, 1), K, x["valid"].repeat_interleave(x["scores"].shape[1], 0)
        ),
    ),
    "self_taught_targets": (
        lambda x: self_taught_targets(x["boxes"], x["scores"], IOU_THRESHOLD, SCORE_GAP, WEIGHTS, x["valid"]),
        lambda x: loop_self_taught_targets(x["boxes"], x["scores"], x["valid"]),
        lambda x: _self_taught_targets_reference(x["boxes"], x["scores"], IOU_THRESHOLD, SCORE_GAP, WEIGHTS,
                                                 x["valid"]),
    ),
}
IMPLS = ("op", "loop", "reference")


def check_same_results(name: str, inputs) -> None:
    """The timed implementations must agree (else the ratio compares different work)."""
    op, loop, _ = (fn(inputs) for fn in CALLS[name])
    op, loop = (op,) if torch.is_tensor(op) else op, (loop,) if torch.is_tensor(loop) else loop
    if name == "topk_select":  # padding slots: the loop returns some invalid index, the op -1
        op, loop = (op[0],), (loop[0],)
    for a, b in zip(op, loop):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name}: op and per-image loop disagree")


def make_step(name: str, impl: str, case: Case):
    inputs = make_inputs(case)
    fn = CALLS[name][IMPLS.index(impl)]

    def step():
        fn(inputs)
        if case.device == "cuda":
            torch.cuda.synchronize()

    return step


# ---- pytest-benchmark mode ---------------------------------------------------------------------------
def _cases():
    gpu = [pytest.param(c, marks=pytest.mark.needs_cuda, id=c.name) for c in GPU_CASES]
    return [pytest.param(c, id=c.name) for c in CPU_CASES] + gpu


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("case", _cases())
def test_batched_op(benchmark, case, name, impl):
    check_same_results(name, make_inputs(case))
    benchmark.group = f"{case.name}-{name}"
    benchmark.extra_info["baseline"] = impl == "loop"
    benchmark(make_step(name, impl, case))


# ---- script mode ---------------------------------------------------------------------------------------
def _median_seconds(step) -> float:
    from torch.utils import benchmark as torch_benchmark

    step()  # warm-up
    return torch_benchmark.Timer(stmt="step()", globals={"step": step}).blocked_autorange(min_run_time=0.5).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU cases even if CUDA is available")
    args = parser.parse_args()
    cases = CPU_CASES + ([] if args.cpu_only or not torch.cuda.is_available() else GPU_CASES)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
    header = (f"{'case':<10} {'op':<20} {'loop ms':>9} {'reference ms':>12} {'op ms':>8} {'vs loop':>8} "
              f"{'vs reference':>12}")
    print(header)
    print("-" * len(header))
    for case in cases:
        for name in CALLS:
            check_same_results(name, make_inputs(case))
            t = {impl: _median_seconds(make_step(name, impl, case)) for impl in IMPLS}
            print(f"{case.name:<10} {name:<20} {t['loop'] * 1e3:9.3f} {t['reference'] * 1e3:12.3f} "
                  f"{t['op'] * 1e3:8.3f} {t['loop'] / t['op']:7.1f}x {t['reference'] / t['op']:11.1f}x")


if __name__ == "__main__":
    main()
