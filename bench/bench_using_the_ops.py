"""The detector head of docs/using-the-ops.md, torchvision + per-image loop vs relground.ops, timed in one run.

The two heads are not copied here: the script runs the guide's Python block (so the figures belong to the code
the guide shows) and times ``head_torchvision`` and ``head_relground`` on its ``make_inputs()`` batch::

    python bench/bench_using_the_ops.py [--threads 2] [--images 4]

Prints a Markdown table (median times of ``torch.utils.benchmark`` timers, forward and forward+backward
w.r.t. the feature map) for docs/using-the-ops.md and bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

import torch
from torch.utils import benchmark

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # script mode: import the checkout without installing it
    sys.path.insert(0, str(REPO))

GUIDE = REPO / "docs" / "using-the-ops.md"


def guide_namespace() -> dict:
    """The names the guide's first ```python block defines (its own checks run too)."""
    block = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "using_the_ops"}
    exec(compile(block, str(GUIDE), "exec"), namespace)
    return namespace


def median_ms(fn, min_run_time: float) -> float:
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--images", type=int, default=4, help="B, images in the batch")
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per timer")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = guide_namespace()
    import relground  # after the guide ran: its import of relground.ops is the one timed

    features, boxes, valid, phrases = ns["make_inputs"](B=args.images)
    k = 10
    rows = []
    for name, head in (("torchvision", ns["head_torchvision"]), ("relground", ns["head_relground"])):
        forward = median_ms(lambda: head(features, boxes, valid, phrases, k), args.min_run_time)
        x = features.clone().requires_grad_()

        def step():
            values, _, _ = head(x, boxes, valid, phrases, k)
            values.sum().backward()
            x.grad = None

        rows.append((name, forward, median_ms(step, args.min_run_time)))
    (_, tv_f, tv_b), (_, rg_f, rg_b) = rows
    B, C, H, W = features.shape
    print(f"torch {torch.__version__}, relground HAS_OPS={relground.HAS_OPS}, {platform.machine()}, "
          f"{args.threads} threads; B={B}, C={C}, {H}x{W} map, M={boxes.shape[1]}, k={k}, float32")
    print("| pass | torchvision + per-image loop | relground.ops | speedup |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| forward | {tv_f:.2f} ms | {rg_f:.2f} ms | {tv_f / rg_f:.1f}x |")
    print(f"| forward+backward | {tv_b:.2f} ms | {rg_b:.2f} ms | {tv_b / rg_b:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
