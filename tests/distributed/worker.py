"""One process of the multi-process tests, launched by ``torchrun`` (or run alone for the 1-process reference).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/worker.py SPEC.json

SPEC.json: ``{"data": <synthetic benchmark>, "output": <folder>, "overrides": [...], "mode": "trainer" | "train",
"float64": bool, "kill_rank": int, "kill_iteration": int, "kill_marker": <file>}``.

``trainer``: the assembly of ``train(cfg)`` (loader, model, Trainer) without checkpoints, the model optionally in
float64, once per entry of ``variants`` (``{"name", "overrides"}``), each writing ``<output>/<name>_rank<r>.pt``
(initial and trained state); ``train``: ``relground.engine.defaults.train(cfg)`` itself (checkpoints, automatic
resume after a restart), writing ``<output>/params_rank0.pt`` (the final checkpoint's weights).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests` and `relground`

from relground.config import load_config  # noqa: E402
from relground.engine import distributed as du  # noqa: E402
from relground.engine.checkpoint import load_checkpoint  # noqa: E402
from relground.engine.defaults import build_model, build_train_loader, train  # noqa: E402
from relground.engine.hooks import HookBase  # noqa: E402
from relground.engine.trainer import Trainer, unwrap  # noqa: E402
from relground.structures.batch import GroundingBatch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Float64(nn.Module):
    """The model in float64: casts the batch's floating tensors on the way in (the test's precision switch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.double()

    def forward(self, batch: GroundingBatch, **kwargs):
        fields = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in vars(batch).items()}
        return self.model(GroundingBatch(**fields), **kwargs)


class KillOnce(HookBase):
    """Test-only: rank ``rank`` SIGKILLs itself after step ``iteration`` unless ``marker`` exists (then creates it)."""

    def __init__(self, rank: int, iteration: int, marker: str):
        self.rank, self.kill_iteration, self.marker = rank, iteration, Path(marker)

    def after_step(self) -> None:
        if du.get_rank() == self.rank and self.trainer.iteration == self.kill_iteration and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def config(spec: dict):
    overrides = [f"data.root={spec['data']}", f"output_dir={spec['output']}/run", *spec.get("overrides", [])]
    return load_config(REPO / "configs" / "synthetic.yaml", overrides)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    cfg = config(spec)
    output = Path(spec["output"])
    torch.set_num_threads(1)
    if spec.get("mode", "trainer") == "train":
        hooks = []
        if "kill_rank" in spec:
            hooks.append(KillOnce(spec["kill_rank"], spec["kill_iteration"], spec["kill_marker"]))
        du.init_distributed("cpu")  # train() joins it too (a no-op then); kept to read the rank afterwards
        rank = du.get_rank()
        result = train(cfg, hooks=hooks)
        state = load_checkpoint(result["checkpoint"]) if rank == 0 else None
        if rank == 0:
            torch.save({"params": state["model"], "result": result}, output / "params_rank0.pt")
        return
    du.init_distributed("cpu")
    try:
        for variant in spec.get("variants", [{"name": "run", "overrides": []}]):
            cfg = config({**spec, "overrides": [*spec.get("overrides", []), *variant["overrides"]]})
            torch.manual_seed(cfg.seed)  # identical initial weights on every rank (as train(cfg))
            loader, model_args = build_train_loader(cfg)
            model = build_model(cfg, model_args)
            wrapped = Float64(model) if spec.get("float64") else model
            initial = {k: v.detach().clone() for k, v in wrapped.state_dict().items()}
            trainer = Trainer(wrapped, loader, cfg.solver, cfg.train, None, device="cpu", seed=cfg.seed)
            result = trainer.train()
            params = {k: v.detach().clone() for k, v in unwrap(trainer.model).state_dict().items()}
            torch.save(
                {"params": params, "initial": initial, "result": result},
                output / f"{variant['name']}_rank{du.get_rank()}.pt",
            )
    finally:
        du.destroy_distributed()

if __name__ == "__main__":
    main(sys.argv[1])
