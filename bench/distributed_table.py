"""The world-size table of docs/distributed.md: the same global batch on 1, 2 and 4 CPU processes (Gloo).

    python bench/distributed_table.py [--images 120] [--iterations 100] [--world-sizes 1 2 4] [--out DIR]

For each ``loss.ranking_negatives`` (global, local) and each world size W, ``torchrun --nproc_per_node W`` runs
``relground.engine.defaults.train`` on one synthetic benchmark (``--images``, data seed 0) with the config of the
demo (configs/synthetic.yaml, schedule scaled to ``--iterations`` by ``synthetic_config``, seed 10), a global batch
of 16 pairs (16 / W per process) and ``train.data_order=distributed`` (every world size trains on the same global
batches). Then the final checkpoint is evaluated on the test split in this process. Prints a markdown table: the
logged total loss (mean over each ``log_period`` window) at a few points of the run, the final test Acc and the
wall time (not comparable across W on a 2-core machine: W processes share the cores).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # script mode: import the checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relground.config import load_config, save_config  # noqa: E402
from relground.engine.defaults import train  # noqa: E402
from relground.engine.predictor import TrainedModel  # noqa: E402
from relground.experiments.synthetic import prepare_synthetic, synthetic_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def worker(config_path: str) -> None:
    """One process of a run (under torchrun)."""
    train(load_config(config_path))


def loss_curve(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(row["iteration"]): float(row["total_loss"]) for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--negatives", nargs="+", default=["global", "local"])
    parser.add_argument("--out", default="outputs/distributed_table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    out = Path(args.out)
    data = out / "synth"
    if not (data / "relations_train.json").exists():
        prepare_synthetic(data, num_images=args.images, seed=0)
    rows = []
    for negatives in args.negatives:
        for world in args.world_sizes:
            run = out / f"{negatives}_w{world}"
            cfg = synthetic_config(
                None, data, run, iterations=args.iterations, seed=10,
                overrides=["solver.ims_per_batch=16", "train.data_order=distributed", "train.tensorboard=false",
                           f"train.log_period={max(1, args.iterations // 5)}",
                           f"model.loss.ranking_negatives={negatives}"],
            )
            run.mkdir(parents=True, exist_ok=True)
            for old in (run / "checkpoints").glob("*.pth"):
                old.unlink()
            config_path = save_config(cfg, out / f"{negatives}_w{world}.yaml")
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                 "--master_port", str(29500 + world), str(Path(__file__).resolve()), "--worker", str(config_path)],
                check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
            )
            seconds = time.perf_counter() - start
            metrics = TrainedModel.from_checkpoint(str(run / "checkpoints" / "model_final.pth")).evaluate("test")
            rows.append({"negatives": negatives, "world": world, "curve": loss_curve(run),
                         "accuracy": metrics["accuracy"], "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
    iterations = sorted(rows[0]["curve"])
    print(f"\n| negatives | processes x pairs | {' | '.join(f'loss @{i}' for i in iterations)} | test Acc % | wall s |")
    print("|---|---|" + "---|" * len(iterations) + "---|---|")
    for row in rows:
        losses = " | ".join(f"{row['curve'][i]:.4f}" for i in iterations)
        print(f"| {row['negatives']} | {row['world']} x {16 // row['world']} | {losses} | "
              f"{100 * row['accuracy']:.2f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
