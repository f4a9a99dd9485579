"""``relground evaluate / ground / demo / ablation`` through ``relground.cli.main.main`` on small inputs."""
from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from relground.cli.main import main
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import ProposalSet, ProposalStore, write_proposals
from tests.evaluation.test_evaluator import iou_loop
from tests.utils import REPO

# Two images in the Flickr30K Entities layout. Raw XML coordinates are 1-based inclusive (reader subtracts 1).
XML = """<annotation>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}
</annotation>"""
OBJECT = "<object><name>{chain}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
SCENE = "<object><name>{chain}</name><scene>1</scene><nobndbox>1</nobndbox></object>"

IMAGES = {
    "100": {
        "size": (200, 100),
        "objects": {"1": [(11, 11, 51, 61)], "2": [(101, 21, 141, 61), (151, 21, 181, 41)]},
        "scene": "3",
        "sentences": [
            "[/EN#1/people A man] throws [/EN#2/other two balls] in [/EN#3/scene the park] .",
            "[/EN#1/people/bodyparts Someone] plays .",
        ],
    },
    "200": {
        "size": (50, 50),
        "objects": {"7": [(1, 1, 21, 21)]},
        "scene": None,
        "sentences": ["[/EN#7/animals A dog] runs near [/EN#0/notvisual something] ."],
    },
}
# Evaluated phrases: (100, 0, 0) man, (100, 0, 3) balls (union of two boxes), (100, 1, 0) someone, (200, 0, 0) dog.
GT = {
    ("100", 0, 0): (10, 10, 50, 60),
    ("100", 0, 3): (100, 20, 180, 60),
    ("100", 1, 0): (10, 10, 50, 60),
    ("200", 0, 0): (0, 0, 20, 20),
}


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    root = tmp_path / "tiny"
    (root / "Annotations").mkdir(parents=True)
    (root / "Sentences").mkdir()
    for image_id, spec in IMAGES.items():
        objects = [
            OBJECT.format(chain=chain, x1=b[0], y1=b[1], x2=b[2], y2=b[3])
            for chain, boxes in spec["objects"].items()
            for b in boxes
        ]
        if spec["scene"]:
            objects.append(SCENE.format(chain=spec["scene"]))
        w, h = spec["size"]
        (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(w=w, h=h, objects="\n".join(objects)))
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(spec["sentences"]) + "\n")
    (root / "test.txt").write_text("100\n200\n")
    return root


def write_predictions(path: Path, boxes: dict) -> Path:
    path.write_text(json.dumps([
        {"image_id": k[0], "sentence_index": k[1], "first_word_index": k[2], "box": list(map(float, b))}
        for k, b in boxes.items()
    ]))
    return path


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_predictions_file_json(tiny_root, tmp_path, capsys):
    # man: exact; balls: only the first ball (IoU 40*40 / 80*40 = 0.5 -> hit); someone: missing; dog: shifted off.
    preds = {("100", 0, 0): GT[("100", 0, 0)], ("100", 0, 3): (100, 20, 140, 60), ("200", 0, 0): (15, 15, 35, 35),
             ("100", 0, 6): (0, 0, 10, 10)}  # "the park" is not grounded: an unused entry
    path = write_predictions(tmp_path / "p.json", preds)
    out = run_json(capsys, ["evaluate", "--dataset", "flickr30k", "--root", str(tiny_root), "--split", "test",
                            "--predictions", str(path), "--json", "--plot", str(tmp_path / "acc.png")])
    assert out["count"] == 4 and out["missing"] == 1 and out["unused_predictions"] == 1
    assert out["accuracy"] == pytest.approx(2 / 4)
    dog_iou = 25 / (400 + 400 - 25)
    assert out["mean_iou"] == pytest.approx((1 + 0.5 + 0 + dog_iou) / 4)
    assert out["point_it"] == pytest.approx(2 / 4)  # dog centre (25, 25) is outside (0..20)
    assert out["acc_at_iou"]["0.55"] == pytest.approx(1 / 4)
    assert out["per_type"]["people"]["count"] == 2 and out["per_type"]["people"]["accuracy"] == 0.5
    assert (tmp_path / "acc.png").is_file()


def test_evaluate_predictions_with_proposals_and_twins(tiny_root, tmp_path, capsys):
    sets = {
        "100": ProposalSet(np.array([[10, 10, 50, 60], [0, 0, 5, 5], [100, 20, 180, 60]]), np.ones(3), np.zeros(3), 200, 100),
        "200": ProposalSet(np.array([[30, 30, 40, 40]]), np.ones(1), np.zeros(1), 50, 50),
    }
    write_proposals(tmp_path / "props.h5", sets, ["thing"])
    (tiny_root / "twins.json").write_text(json.dumps({"100": ["1"]}))
    path = write_predictions(tmp_path / "p.json", GT)
    argv = ["evaluate", "--dataset", "flickr30k", "--root", str(tiny_root), "--predictions", str(path),
            "--proposals", str(tmp_path / "props.h5"), "--json"]
    out = run_json(capsys, argv)
    assert out["accuracy"] == 1.0 and out["upper_bound"] == pytest.approx(3 / 4)  # the dog has no good proposal
    assert out["twin"]["count"] == 2 and out["no_twin"]["count"] == 2  # both phrases of chain 1
    assert run_json(capsys, argv + ["--top-m", "2"])["upper_bound"] == pytest.approx(2 / 4)


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"image_id": "100", "sentence_index": 0, "first_word_index": 0}]', "entry 0: missing field 'box'"),
        ('[{"image_id": "100", "sentence_index": 0, "first_word_index": 0, "box": [0, 0, 1, 1]}, {"image_id": "100"}]',
         "entry 1: missing field 'sentence_index'"),
        ('{"not": "a list"}', "expected a JSON list"),
    ],
)
def test_evaluate_bad_predictions_file_names_file_and_entry(tiny_root, tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code = main(["evaluate", "--dataset", "flickr30k", "--root", str(tiny_root), "--predictions", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and message in err


def test_evaluate_argument_errors(tiny_root, tmp_path, capsys):
    path = write_predictions(tmp_path / "p.json", GT)
    assert main(["evaluate", "--predictions", str(path), "--root", str(tiny_root)]) == 2
    assert "--dataset is required" in capsys.readouterr().err
    assert main(["evaluate", "--json"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "k.pth", "--predictions", str(path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(tmp_path / "nowhere"), "--predictions", str(path)]) == 2
    assert "nowhere" in capsys.readouterr().err


# ---------------------------------------------------------------- demo, and the checkpoints it trains

# A tiny demo: 10 images (the minimum), 2 iterations per model, batch 4. It only checks the plumbing; the
# numbers mean nothing at this size. Shared by this module and test_api.py (one run per pytest process).
TINY_DEMO = ["--images", "10", "--iterations", "2", "--examples", "1", "--set", "solver.ims_per_batch=4"]


@functools.cache
def tiny_demo() -> tuple[Path, dict]:
    out = Path(tempfile.mkdtemp(prefix="relground-demo-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out / "demo"), "--json", *TINY_DEMO])
    assert code == 0
    return out / "demo", json.loads(stdout.getvalue().strip().splitlines()[-1])


def independent_upper_bound(root: Path, split: str, max_proposals: int) -> float:
    """Share of the split's grounded phrases with a stored proposal (first M) at IoU >= 0.5, plain loops."""
    store = ProposalStore(root / "proposals.h5")
    hits = total = 0
    for image in load_flickr30k(root, split):
        boxes = store[image.image_id].boxes[:max_proposals].tolist()
        for sentence in image.sentences:
            for phrase in sentence.phrases:
                if phrase.union_box is not None:
                    total += 1
                    hits += any(iou_loop(phrase.union_box, b) >= 0.5 for b in boxes)
    return hits / total


@pytest.mark.slow
def test_demo_trains_both_models_and_reports():
    out, summary = tiny_demo()
    for key in ("accuracy", "baseline_accuracy", "upper_bound", "point_it", "seconds"):
        assert key in summary
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["baseline_accuracy"] <= 1 and summary["seconds"] > 0
    assert summary["upper_bound"] == pytest.approx(independent_upper_bound(out / "data", "test", 50))
    saved = json.loads((out / "results.json").read_text())
    assert saved["full"]["accuracy"] == summary["accuracy"] and saved["baseline"]["accuracy"] == summary["baseline_accuracy"]
    assert "stage2" in saved["full"] and "stage2" not in saved["baseline"]  # the baseline is single-stage
    assert saved["full"]["count"] == summary["test_phrases"] > 0
    twins = json.loads((out / "data" / "twins.json").read_text())  # written by the generator
    twin_phrases = sum(
        p.phrase_id in twins.get(im.image_id, [])
        for im in load_flickr30k(out / "data", "test") for s in im.sentences for p in s.phrases if p.grounded
    )
    assert saved["full"]["twin"]["count"] == twin_phrases
    assert saved["full"]["twin"]["count"] + saved["full"]["no_twin"]["count"] == summary["test_phrases"]
    assert (out / "full" / "checkpoints" / "model_final.pth").is_file()
    assert (out / "baseline" / "checkpoints" / "model_final.pth").is_file()
    assert all(Path(f).is_file() for f in summary["figures"]) and len(summary["figures"]) == 2
    assert "| ReIR (full) |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_demo_metrics(capsys):
    out, summary = tiny_demo()
    metrics = run_json(capsys, ["evaluate", "--checkpoint", str(out / "full"), "--split", "test", "--json"])
    assert metrics["accuracy"] == summary["accuracy"] and metrics["missing"] == 0
    assert metrics["upper_bound"] == summary["upper_bound"]
    assert {"stage1", "stage2"} <= set(metrics)
    # An explicit --config (the repository's synthetic.yaml: same architecture) gives the same numbers.
    explicit = run_json(capsys, ["evaluate", "--checkpoint", str(out / "full"), "--config", str(REPO / "configs" / "synthetic.yaml"),
                                 "--set", f"data.root={out / 'data'}", "--json"])
    assert explicit["accuracy"] == summary["accuracy"]
    baseline = run_json(capsys, ["evaluate", "--checkpoint", str(out / "baseline" / "checkpoints" / "model_final.pth"), "--json"])
    assert baseline["accuracy"] == summary["baseline_accuracy"] and "stage2" not in baseline


@pytest.mark.slow
def test_ground_cli_with_and_without_proposals(tmp_path, capsys):
    out, _ = tiny_demo()
    image_id = load_flickr30k(out / "data", "test")[0].image_id
    image = out / "data" / "Images" / f"{image_id}.jpg"
    caption = (out / "data" / "Sentences" / f"{image_id}.txt").read_text().splitlines()[0]  # with markup
    n_phrases = caption.count("[/EN#")

    windows = run_json(capsys, ["ground", "--checkpoint", str(out / "full"), "--image", str(image), "--caption", caption,
                                "--out", str(tmp_path / "g.png"), "--json"])
    assert windows["proposals"] == "sliding_windows" and len(windows["phrases"]) == n_phrases
    assert (tmp_path / "g.png").is_file()

    stored = ProposalStore(out / "data" / "proposals.h5")[image_id].boxes[:50]
    result = run_json(capsys, ["ground", "--checkpoint", str(out / "full"), "--image", str(image), "--caption", caption,
                               "--proposals", str(out / "data" / "proposals.h5"), "--out", str(tmp_path / "p.png"), "--json"])
    assert result["proposals"] == "file"
    for phrase in result["phrases"]:  # every prediction starts from one of this image's stored proposals
        assert np.abs(stored - np.array(phrase["proposal_box"])).max(axis=1).min() < 1e-3
        assert 0 <= phrase["score"] <= 1


def test_ground_cli_errors(tmp_path, capsys):
    assert main(["ground", "--checkpoint", str(tmp_path), "--image", str(tmp_path / "none.jpg"), "--caption", "a dog"]) == 2
    assert "none.jpg" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")  # a readable image: the checkpoint is what is missing
    assert main(["ground", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(tmp_path / "img.png"),
                 "--caption", "a dog"]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_tiny_markdown_and_resume(tmp_path, capsys):
    argv = ["ablation", "--out", str(tmp_path / "abl"), "--rows", "baseline", "--seeds", "2", "--images", "10",
            "--iterations", "1", "--set", "solver.ims_per_batch=4", "--json"]
    result = run_json(capsys, argv)
    row = result["rows"]["baseline"]
    runs = json.loads((tmp_path / "abl" / "ablation.json").read_text())["runs"]["baseline"]
    accs = [r["accuracy"] for r in runs]
    assert len(accs) == 2 and row["accuracy"]["n"] == 2
    assert row["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert row["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| baseline |" in table and "±" in table and "Table 3" not in table
    stamp = (tmp_path / "abl" / "runs" / "baseline-seed0" / "metrics.json").stat().st_mtime_ns
    assert run_json(capsys, argv)["rows"] == result["rows"]  # the rerun reuses the finished runs
    assert (tmp_path / "abl" / "runs" / "baseline-seed0" / "metrics.json").stat().st_mtime_ns == stamp
    assert main(["ablation", "--out", str(tmp_path / "x"), "--rows", "nope"]) == 2
    assert "--rows" in capsys.readouterr().err


def test_ablation_over_data_seeds_trains_each_benchmark_with_its_own_seed(tmp_path, capsys):
    common = ["--rows", "baseline", "--images", "10", "--iterations", "1", "--set", "solver.ims_per_batch=4",
              "--json"]
    result = run_json(capsys, ["ablation", "--out", str(tmp_path / "abl"), "--data-seeds", "0,1", *common])
    assert result["run_data_seeds"] == [0, 1] and result["rows"]["baseline"]["accuracy"]["n"] == 2
    props = [json.loads((tmp_path / "abl" / f"data-seed{d}" / "synthetic.json").read_text()) for d in (0, 1)]
    assert [p["seed"] for p in props] == [0, 1]
    stored = [json.loads((tmp_path / "abl" / "runs" / f"baseline-data{d}" / "metrics.json").read_text())
              for d in (0, 1)]
    assert [s["seed"] for s in stored] == [0, 1]  # training seed = data seed
    # Data seed 1's run is the single-benchmark run at data seed 1, training seed 1.
    single = run_json(capsys, ["ablation", "--out", str(tmp_path / "one"), "--data-seed", "1", "--seeds", "2",
                               *common])
    one = json.loads((tmp_path / "one" / "ablation.json").read_text())["runs"]["baseline"][1]
    assert one == stored[1]["metrics"] and single["run_data_seeds"] == [1, 1]
    assert "data seeds 0, 1" in (tmp_path / "abl" / "ablation.md").read_text()
    assert main(["ablation", "--out", str(tmp_path / "x"), "--data-seeds", "1,1"]) == 2
    assert "--data-seeds" in capsys.readouterr().err
    assert main(["ablation", "--out", str(tmp_path / "x"), "--data-seeds", "a"]) == 2
    assert "--data-seeds" in capsys.readouterr().err
    assert main(["ablation", "--out", str(tmp_path / "x"), "--data-seeds", "0,1", "--seeds", "2"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_ablation_on_the_multi_relation_benchmark_generates_it(tmp_path, capsys):
    argv = ["ablation", "--out", str(tmp_path / "abl"), "--rows", "baseline", "--seeds", "1", "--images", "12",
            "--iterations", "1", "--set", "solver.ims_per_batch=4", "--json"]
    result = run_json(capsys, [*argv, "--multi-relation", "1"])
    props = json.loads((tmp_path / "abl" / "data" / "synthetic.json").read_text())
    assert result["multi_relation"] == 1.0 and props["multi_relation"] == 1.0 and props["triple_image_share"] > 0
    assert "multi_relation = 1" in (tmp_path / "abl" / "ablation.md").read_text()
    done = tmp_path / "abl" / "runs" / "baseline-seed0" / "metrics.json"
    stamp = done.stat().st_mtime_ns
    run_json(capsys, argv)  # the same folder without the option: the benchmark is generated again, without it,
    assert "multi_relation" not in json.loads((tmp_path / "abl" / "data" / "synthetic.json").read_text())
    assert done.stat().st_mtime_ns != stamp  # and the run on the other benchmark is not reused
    assert json.loads(done.read_text())["run"]["benchmark"] == [12, 0, 0.0]
    stamp = done.stat().st_mtime_ns
    run_json(capsys, [*argv, "--set", "model.cls_bias=20"])  # another config: trained again too
    assert done.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_ablation_table3_shares_the_config_k_run_and_records_validation(tmp_path, capsys):
    argv = ["ablation", "--out", str(tmp_path / "abl"), "--rows", "full,full_k3,full_k5", "--seeds", "1",
            "--images", "10", "--iterations", "1", "--set", "solver.ims_per_batch=4", "--set", "model.top_k=3",
            "--json"]
    rows = run_json(capsys, argv)["rows"]
    # With the config's K = 3, the K = 3 row is the "full" training itself; K = 5 is a training of its own.
    assert sorted(d.name for d in (tmp_path / "abl" / "runs").iterdir()) == ["full-seed0", "full_k5-seed0"]
    trained_k = {run: yaml.safe_load((tmp_path / "abl" / "runs" / f"{run}-seed0" / "config.yaml").read_text())
                 ["model"]["top_k"] for run in ("full", "full_k5")}
    assert trained_k == {"full": 3, "full_k5": 5}  # the row's K wins over --set
    assert rows["full_k3"] == rows["full"]
    stored = json.loads((tmp_path / "abl" / "runs" / "full_k5-seed0" / "metrics.json").read_text())["metrics"]
    assert stored["val"]["count"] > 0 and "val" not in stored["val"]
    assert rows["full_k5"]["val_accuracy"]["mean"] == pytest.approx(stored["val"]["accuracy"])
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "the config's K = 3" in table and "| 5 |" in table and "Acc (val)" in table
    argv[argv.index("full,full_k3,full_k5")] = "full_k5"  # reuses the run: Table 3 alone
    assert run_json(capsys, argv)["rows"] == {"full_k5": rows["full_k5"]}
    assert "Table 2" not in (tmp_path / "abl" / "ablation.md").read_text()
