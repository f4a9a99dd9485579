"""The paper's Table 2 (components) and Table 3 (K) on the synthetic benchmark (``relground ablation``).

Every row is trained with ``seeds`` seeds on the same benchmark and schedule, evaluated on its test split
(and on the validation split, which is where K is chosen), and reported as mean +- standard deviation (sample
std over seeds) of Acc, PointIt, and Acc on phrases whose object has an identical twin. Each finished run is
stored in ``OUT/runs/<row>-seed<s>/metrics.json``; a rerun with the same ``out`` reuses them, so an
interrupted ablation continues where it stopped (a run is reused only when its whole config, folders aside, and its
benchmark's arguments are the same; any other run's folder is replaced by a new training)::

    result = run_ablation("outputs/ablation", rows=["baseline", "full"], seeds=3, log=print)

With ``data_seeds`` the spread covers the benchmark too: run ``i`` generates the benchmark with data seed
``data_seeds[i]`` (in ``OUT/data-seed<d>/``) and trains with the same number as training seed (runs in
``OUT/runs/<row>-data<d>/``). Rows ``baseline`` and ``full`` are the demo's two models, so
``rows=["baseline", "full"], data_seeds=[0, 1, 2]`` is the demo's table over three benchmarks.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from relground.config import to_dict
from relground.experiments.demo import DEFAULT_IMAGES  # same benchmark size as the demo
from relground.experiments.synthetic import prepare_synthetic, synthetic_config, train_and_evaluate
from relground.utils.paths import check_can_create_folder

# The demo's schedule, so the rows compare with its numbers. Run two processes with disjoint --rows and the same
# --out (finished runs are reused), one core each: 4-5 minutes per training of a two-stage model at K = 10, 27
# trainings in 50-60 minutes (measured: 9 in one process in 37 minutes); one process takes about twice that.
DEFAULT_ITERATIONS = 800


@dataclass(frozen=True)
class Row:
    """One ablation row: a ModelConfig preset plus model overrides; the check marks of Table 2."""

    name: str
    preset: str
    tsd: str = ""
    str_: str = ""
    vogn_rc: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


# Table 2 in the paper's order (TSD, STR, VOGN&RC columns) and Table 3 (K of the full model). The Table 3 row
# whose K is the config's is the same training as "full" and shares its runs.
TABLE2 = (
    Row("baseline", "baseline"),
    Row("tsd", "tsd", "x"),
    Row("tsd_str_noq", "tsd_str_noq", "x", "x (w/o x_q)"),
    Row("tsd_str", "tsd_str", "x", "x"),
    Row("tsd_vogn_rc", "tsd_vogn_rc", "x", "", "x"),
    Row("full_uniform", "full_uniform", "x", "x", "x (uniform)"),
    Row("full", "full", "x", "x", "x"),
)
TABLE3 = tuple(Row(f"full_k{k}", "full", overrides={"top_k": k}) for k in (3, 5, 10))
ROWS = {row.name: row for row in TABLE2 + TABLE3}


def _silent(text: str) -> None:
    pass


def run_ablation(
    out: str | Path,
    *,
    rows: Sequence[str] = tuple(ROWS),
    seeds: int = 3,
    images: int = DEFAULT_IMAGES,
    iterations: int = DEFAULT_ITERATIONS,
    data_seed: int = 0,
    data_seeds: Optional[Sequence[int]] = None,
    multi_relation: float = 0.0,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    method_from: Optional[str] = None,
    log: Callable[[str], None] = _silent,
) -> dict[str, Any]:
    """Train and evaluate every (row, seed) not already stored in ``out``; write ``ablation.{md,json}``.

    Args:
        out: output folder (``data/``, ``runs/<row>-seed<s>/``).
        rows: names from ``ROWS``.
        seeds: training seeds per row (0 .. seeds - 1).
        images: synthetic images (the benchmark is regenerated when ``out/data`` holds another size or seed).
        iterations: training iterations per run.
        data_seed: seed of the synthetic benchmark (with ``seeds`` training seeds on it).
        data_seeds: instead of ``data_seed`` and ``seeds``: one run per data seed ``d``, on the benchmark of
            seed ``d`` with training seed ``d`` (data and training both varied).
        multi_relation: the generator's opt-in share of multi-relation images (``generate_synthetic``), where
            a phrase relates to two others: the benchmark on which learned graph attention can beat uniform.
        config: base config (YAML file or shipped name), None = ``synthetic.yaml``.
        overrides: ``key=value`` config overrides for every run.
        method_from: a config whose method switches every run takes (``synthetic_config``'s ``method_from``).
        log: called with one line per finished (row, seed).

    Returns:
        ``{"rows": {name: summarize(...)}, "seeds", "images", "iterations", "seconds", "markdown"(path),
        "table"(the Markdown)}``.
    """
    names = list(rows)
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise ValueError(f"--rows: unknown row(s) {unknown or names}; choose from {','.join(ROWS)}")
    for flag, value in (("--seeds", seeds), ("--images", images), ("--iterations", iterations)):
        if value <= 0:
            raise ValueError(f"{flag}: must be positive, got {value}")
    plan = _run_plan(seeds, data_seed, data_seeds)
    start = time.perf_counter()
    out = check_can_create_folder(out, "--out", "choose another folder")  # before anything is generated
    for data, seed_of_data, _, _ in plan:
        data = out / data
        if not (data / "synthetic.json").is_file() or _data_args(data) != (images, seed_of_data, multi_relation):
            prepare_synthetic(data, num_images=images, seed=seed_of_data, multi_relation=multi_relation)

    config_k = synthetic_config(config, out / plan[0][0], out, overrides=overrides, method_from=method_from).model.top_k
    runs: dict[str, list[dict]] = {}
    for name in names:
        row = ROWS[name]
        run_name = "full" if row.overrides.get("top_k") == config_k and row.preset == "full" else name
        for data, seed_of_data, seed, suffix in plan:
            run_dir = out / "runs" / f"{run_name}-{suffix}"
            done = run_dir / "metrics.json"
            cfg = synthetic_config(config, out / data, run_dir, preset=row.preset, iterations=iterations,
                                   seed=seed, overrides=overrides, model_overrides=row.overrides,
                                   method_from=method_from)
            key = _run_key(cfg, images, seed_of_data, multi_relation)
            stored = json.loads(done.read_text()) if done.is_file() else {}
            if stored.get("run") == key:  # the same config on the same benchmark: reuse it
                metrics = stored["metrics"]
            else:
                shutil.rmtree(run_dir, ignore_errors=True)  # another config's or an interrupted run: replaced
                result = train_and_evaluate(cfg, split="test")
                metrics = {**result["metrics"], "val": result["trained"].evaluate("val")}
                done.write_text(json.dumps({"iterations": iterations, "seed": seed, "run": key, "metrics": metrics}))
            runs.setdefault(name, []).append(metrics)
            log(f"{name} {suffix}: Acc {100 * metrics['accuracy']:.2f}%")

    summary = {name: summarize(ms) for name, ms in runs.items()}
    table = markdown_tables(summary, images=images, data_seed=data_seed, iterations=iterations, seeds=seeds,
                            config_k=config_k, data_seeds=data_seeds, multi_relation=multi_relation,
                            method_from=method_from)
    (out / "ablation.md").write_text(table + "\n")
    result = {"rows": summary, "runs_per_row": len(plan), "run_data_seeds": [p[1] for p in plan], "images": images,
              "iterations": iterations, "multi_relation": multi_relation, "config": config,
              "method_from": method_from, "overrides": list(overrides),
              "seconds": round(time.perf_counter() - start, 1), "markdown": str(out / "ablation.md")}
    (out / "ablation.json").write_text(json.dumps({**result, "runs": runs}, indent=2))
    return {**result, "table": table}


def _run_plan(
    seeds: int, data_seed: int, data_seeds: Optional[Sequence[int]]
) -> list[tuple[str, int, int, str]]:
    """``(data folder, data seed, training seed, run-name suffix)`` of every run of a row."""
    if data_seeds is None:  # the folders of the single-benchmark mode, so earlier outputs are reused
        return [("data", data_seed, seed, f"seed{seed}") for seed in range(seeds)]
    data_seeds = list(data_seeds)
    if not data_seeds or len(set(data_seeds)) != len(data_seeds) or min(data_seeds) < 0:
        raise ValueError(f"--data-seeds: distinct non-negative integers expected, got {data_seeds}")
    return [(f"data-seed{d}", d, d, f"data{d}") for d in data_seeds]


def _run_key(cfg, images: int, data_seed: int, multi_relation: float) -> dict:
    """What a stored run must match to be reused: its whole config but the folders, and its benchmark's arguments."""
    config = to_dict(cfg)
    config.pop("output_dir")
    config["data"].pop("root")
    return json.loads(json.dumps({"config": config, "benchmark": [images, data_seed, multi_relation]}))


def _data_args(data: Path) -> tuple[Optional[int], Optional[int], float]:
    props = json.loads((data / "synthetic.json").read_text())
    return props.get("images"), props.get("seed"), props.get("multi_relation", 0.0)


def _mean_std(values: list[Optional[float]]) -> dict[str, Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(metrics: list[dict]) -> dict[str, dict]:
    """Mean and sample std over seeds of accuracy, PointIt, mean IoU, twin accuracy, the upper bound (test split)
    and the validation accuracy (None for runs stored before it was recorded)."""
    return {
        "accuracy": _mean_std([m["accuracy"] for m in metrics]),
        "point_it": _mean_std([m["point_it"] for m in metrics]),
        "mean_iou": _mean_std([m["mean_iou"] for m in metrics]),
        "twin_accuracy": _mean_std([m.get("twin", {}).get("accuracy") for m in metrics]),
        "upper_bound": _mean_std([m.get("upper_bound") for m in metrics]),
        "val_accuracy": _mean_std([m.get("val", {}).get("accuracy") for m in metrics]),
    }


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown_tables(
    summary: dict[str, dict], *, images: int, data_seed: int, iterations: int, seeds: int, config_k: int,
    data_seeds: Optional[Sequence[int]] = None, multi_relation: float = 0.0, method_from: Optional[str] = None,
) -> str:
    """Table 2 and Table 3 as Markdown, rows that were not run left out; ``config_k`` is the config's K."""
    if data_seeds is None:
        header = (f"Synthetic benchmark ({images} images, data seed {data_seed}), {iterations} iterations, "
                  f"{seeds} seed(s) per row; mean ± sample std, in %.\n")
    else:
        header = (f"Synthetic benchmarks ({images} images) of data seeds {', '.join(map(str, data_seeds))}, each "
                  f"trained with its data seed as training seed, {iterations} iterations; mean ± sample std over "
                  f"the {len(data_seeds)} benchmarks, in %.\n")
    if multi_relation:
        header += f"Multi-relation images: generator option multi_relation = {multi_relation:g}.\n"
    if method_from:
        header += f"Method switches of {method_from}, carried to the base config's scale (--method-from).\n"
    lines = [header]
    table2_rows = [row for row in TABLE2 if row.name in summary]
    if table2_rows:
        lines += ["### Table 2: components", "",
                  "| row | TSD | STR | VOGN&RC | Acc | PointIt | Acc (twins) | mean IoU |",
                  "| --- | :-: | :-: | :-: | ---: | ---: | ---: | ---: |"]
        for row in table2_rows:
            s = summary[row.name]
            lines.append(f"| {row.name} | {row.tsd} | {row.str_} | {row.vogn_rc} | {_cell(s['accuracy'])} | "
                         f"{_cell(s['point_it'])} | {_cell(s['twin_accuracy'])} | {_cell(s['mean_iou'])} |")
    k_rows = [row for row in TABLE3 if row.name in summary]
    if k_rows:
        lines += ["", f"### Table 3: K (proposals kept for stage 2, full model; the config's K = {config_k})", "",
                  "| K | Acc (val) | Acc | PointIt | Acc (twins) |", "| ---: | ---: | ---: | ---: | ---: |"]
        for row in k_rows:
            s = summary[row.name]
            lines.append(f"| {row.overrides['top_k']} | {_cell(s['val_accuracy'])} | {_cell(s['accuracy'])} | "
                         f"{_cell(s['point_it'])} | {_cell(s['twin_accuracy'])} |")
    bounds = [s["upper_bound"] for s in summary.values() if s["upper_bound"]["mean"] is not None]
    if bounds:
        lines.append(f"\nProposal upper bound (any proposal at IoU >= 0.5): {100 * bounds[0]['mean']:.2f}%")
    return "\n".join(lines)
