"""A run on a cluster: evaluation during training with ``model_best.pth``, ``log.txt`` and metric lines without a
terminal, a checkpoint that travels without its backbone weight file, and ``evaluate --device``."""
from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from relground.api import Grounder
from relground.cli.main import main
from relground.data.synthetic import generate_synthetic
from relground.engine.checkpoint import load_checkpoint
from relground.model.backbone import build_resnet

# 10 synthetic images of 64 px, a narrow model without relations, 4 steps of 2 pairs
SMALL = [
    "data.relations=", "model.loss.relation=false", "model.vogn=false", "model.vogn_geometry=false",
    "model.relation_geometry=false", "data.min_size=64", "data.max_size=64", "model.hidden_dim=16",
    "model.vogn_dim=8", "model.ranking_dim=8", "model.relation_hidden=8", "model.regression_hidden=8",
    "model.refine_start_iteration=1", "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=[3]",
    "train.checkpoint_period=2", "train.tensorboard=false",
]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@functools.cache
def _data(folder: str) -> Path:
    root = Path(folder) / "synth"
    generate_synthetic(root, num_images=10, seed=0, image_size=64, workers=1)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _data(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A torchvision-named resnet10 (the synthetic config's layout: stride in 3x3, torchvision pixels)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet10.pth"
    torch.save(build_resnet("resnet10", False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run_with_eval(data, weights_file, tmp_path_factory):
    """4 steps with an evaluation every 2 and the weight file; stderr captured (not a terminal)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--config", "synthetic.yaml", "--output", str(run), *_sets([
        f"data.root={data}", *SMALL, "solver.max_iter=4", "train.eval_period=2", "train.log_period=2",
        f"model.backbone_weights={weights_file}",
    ])]
    import contextlib
    import io
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return run, out.getvalue(), err.getvalue()


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_eval_during_training_keeps_the_best_model(run_with_eval, capsys):
    run, _, _ = run_with_eval
    evals = {int(r["iteration"]): float(r["val/accuracy"]) for r in _csv_rows(run) if r.get("val/accuracy")}
    assert sorted(evals) == [2, 4]  # every eval_period and at the end
    best = load_checkpoint(run / "checkpoints" / "model_best.pth")
    assert best["best"]["metric"] == "accuracy" and best["best"]["split"] == "val"
    first_best = max(evals, key=lambda it: (evals[it], -it))  # the first iteration reaching the maximum
    assert best["best"]["iteration"] == best["iteration"] == first_best
    assert best["best"]["value"] == evals[first_best]
    # independent check: evaluating model_best.pth on val gives the value it was kept for
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "model_best.pth"), "--split", "val",
                 "--device", "cpu", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracy"] == pytest.approx(best["best"]["value"], abs=1e-12)
    assert again["iteration"] == first_best
    log = (run / "log.txt").read_text()
    assert "eval iter 2: val accuracy" in log and "eval iter 4: val accuracy" in log


def test_metric_lines_without_a_terminal(run_with_eval):
    run, stdout, stderr = run_with_eval
    lines = [ln for ln in stderr.splitlines() if "iter " in ln and "total_loss" in ln]
    assert [ln.split("iter ")[1].split()[0] for ln in lines] == ["2/4", "4/4"]
    for line in lines:
        for field in ("total_loss", "loss/rec_s2", "lr ", "pairs/s ", "eta ", "max_mem "):
            assert field in line, (field, line)
    assert "\r" not in stderr  # no bar frames
    log = (run / "log.txt").read_text()
    assert all(line.split("] ", 1)[1] in log for line in lines)  # the same lines in the run folder
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "finished"  # stdout keeps the result


def test_with_a_terminal_the_bar_shows_and_lines_go_to_the_file_only(data, tmp_path, monkeypatch, capsys):
    import relground.engine.hooks as hooks
    monkeypatch.setattr(hooks, "interactive", lambda: True)
    run = tmp_path / "run"
    assert main(["train", "--config", "synthetic.yaml", "--output", str(run), *_sets([
        f"data.root={data}", *SMALL, "solver.max_iter=2", "train.log_period=1"])]) == 0
    err = capsys.readouterr().err
    assert "total_loss" not in err.replace("loss=", "")  # no metric line on the terminal (only the bar)
    assert (run / "log.txt").read_text().count("total_loss") == 2


def test_checkpoint_travels_without_its_weight_file(run_with_eval, weights_file, tmp_path, capsys):
    run, _, _ = run_with_eval
    moved = tmp_path / "moved_run"
    shutil.copytree(run, moved)
    final = moved / "checkpoints" / "model_final.pth"
    state = load_checkpoint(final)
    file_state = torch.load(weights_file, weights_only=True)
    # the checkpoint holds the file's backbone tensors (not a random init)
    assert torch.equal(state["model"]["backbone.body.0.weight"], file_state["conv1.weight"])
    assert main(["evaluate", "--checkpoint", str(final), "--split", "test", "--device", "cpu", "--json"]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    hidden = weights_file.with_suffix(".hidden")
    weights_file.rename(hidden)  # the weight file is gone
    try:
        assert main(["evaluate", "--checkpoint", str(final), "--split", "test", "--device", "cpu", "--json"]) == 0
        after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert after["accuracy"] == before["accuracy"] and after["mean_iou"] == before["mean_iou"]
        grounder = Grounder.from_checkpoint(moved, device="cpu")
        assert torch.equal(grounder.model.backbone.body[0].weight, file_state["conv1.weight"])
        # resume (a longer schedule) takes the backbone from the checkpoint too
        assert main(["train", "--config", str(moved / "config.yaml"), "--output", str(moved), "--resume",
                     "--set", "solver.max_iter=5", "--set", "train.eval_period=0"]) == 0
        resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert resumed["status"] == "finished" and resumed["iteration"] == 5
        assert torch.equal(load_checkpoint(final)["model"]["backbone.body.0.weight"], file_state["conv1.weight"])
    finally:
        hidden.rename(weights_file)


def test_evaluate_text_output_names_split_checkpoint_iteration_and_speed(run_with_eval, capsys):
    run, _, _ = run_with_eval
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test", "--device", "cpu", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert first == f"split test  checkpoint {run / 'checkpoints' / 'model_final.pth'}  iteration 4"
    assert second.startswith("device cpu  ") and "pairs/s" in second and "images/s" in second


def test_evaluate_device_errors(run_with_eval, capsys):
    run, _, _ = run_with_eval
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["evaluate", "--checkpoint", str(run), "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
