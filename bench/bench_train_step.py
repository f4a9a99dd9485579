"""Training-step throughput of several configurations in one run, and each one's ratio to the first.

Drives ``relground benchmark`` (one subprocess per configuration and repeat, so peak memory is each run's own)
and prints one row per run plus the speedup of every configuration over the first (median pairs/s over
repeats; repeats interleave the configurations so a busy machine's load spreads over all of them)::

    python bench/bench_train_step.py                       # CPU, small shapes, synthetic.yaml's model
    python bench/bench_train_step.py --paper --steps 20    # a GPU: the paper's shapes (600 x 1000, M = 50)
    python bench/bench_train_step.py --only today,fastest --repeats 3 --timeout 120 --json-out runs.jsonl

The configurations (``--set`` items appended to every one with ``--set``):

* ``today``: per-pair batches, one backbone pass per pair, unfolded BatchNorm, NCHW (the code before grouping);
* ``grouped``: batches of 5 captions per image, one backbone pass per image;
* ``grouped_fold``: and the frozen backbone's BatchNorm folded into its convolutions;
* ``fastest``: and channels_last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGURATIONS = {
    "today": ["--set", "data.captions_per_image=1", "--per-pair-backbone"],
    "grouped": ["--set", "data.captions_per_image=5"],
    "grouped_fold": ["--set", "data.captions_per_image=5", "--set", "model.fold_backbone_bn=true"],
    "fastest": ["--set", "data.captions_per_image=5", "--set", "model.fold_backbone_bn=true",
                "--set", "model.channels_last=true"],
}

# Small shapes for a CPU: the synthetic config's model (ResNet-10, fast head) on 192 x 288 images, M = 20.
CPU_SHAPES = ["--height", "192", "--width", "288", "--proposals", "20", "--images", "40"]
CPU_SETS = ["--set", "model.cache_features=false", "--set", "solver.ims_per_batch=20", "--set", "data.num_workers=0"]


def run_one(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "relground.cli.main", "benchmark", "--config", args.config,
               "--synthetic-shapes", "--steps", str(args.steps), "--warmup", str(args.warmup), "--json",
               *(CPU_SHAPES + CPU_SETS if not args.paper else []), *CONFIGURATIONS[name]]
    for item in args.set:
        command += ["--set", item]
    if args.compile and name == "fastest":
        command.append("--compile")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timeout after {args.timeout} s"}
    if done.returncode != 0:
        return {"name": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(name=name, wall_s=round(time.perf_counter() - start, 1), command=" ".join(command[2:]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="synthetic.yaml")
    parser.add_argument("--paper", action="store_true", help="the paper's shapes (default: small CPU shapes)")
    parser.add_argument("--only", default=",".join(CONFIGURATIONS), help="comma-separated configurations")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the fastest configuration")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for all")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run")
    parser.add_argument("--json-out", help="append every run's JSON object to this file")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(CONFIGURATIONS)}")

    runs: dict[str, list[dict]] = {n: [] for n in names}
    print(f"{'configuration':<14}{'pairs/s':>9}{'step ms':>9}{'data':>8}{'backbone':>9}{'heads':>8}{'losses':>8}"
          f"{'backward':>9}{'optim':>7}{'bb img':>7}{'peak MB':>9}{'dev pairs/s':>12}")
    for _ in range(args.repeats):
        for name in names:
            result = run_one(name, args)
            runs[name].append(result)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(result, sort_keys=True) + "\n")
            if "error" in result:
                print(f"{name:<14} FAILED: {result['error']}", flush=True)
                continue
            device = result.get("device_batch") or {}

            def ms(key: str) -> str:
                value = result.get(key)
                return "-" if value is None else f"{value:.0f}"

            images = result["backbone_images_per_step"]
            print(f"{name:<14}{result['pairs_per_s']:9.2f}{result['step_ms']:9.0f}{ms('data_ms'):>8}"
                  f"{ms('backbone_ms'):>9}{ms('heads_ms'):>8}{ms('losses_ms'):>8}{ms('backward_ms'):>9}"
                  f"{ms('optimizer_ms'):>7}{'-' if images is None else f'{images:.1f}':>7}"
                  f"{result['peak_memory_mb']:9.0f}{device.get('pairs_per_s', float('nan')):12.2f}", flush=True)
    ok = {n: [r for r in rs if "error" not in r] for n, rs in runs.items()}
    if names and ok[names[0]]:
        base = statistics.median(r["pairs_per_s"] for r in ok[names[0]])
        print(f"\nmedian pairs/s over {args.repeats} repeat(s), ratio to {names[0]} (loader phase):")
        for name in names:
            if ok[name]:
                rate = statistics.median(r["pairs_per_s"] for r in ok[name])
                hours = statistics.median(r["paper_schedule_hours"] for r in ok[name])
                print(f"  {name:<14}{rate:9.2f} pairs/s  {rate / base:5.2f}x   paper schedule {hours:8.1f} h")
    return 0 if all(ok[n] for n in names) else 1


if __name__ == "__main__":
    sys.exit(main())
