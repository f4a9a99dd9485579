"""Checkpoints: damaged files are named, a resume falls back past them, and a resume that cannot work changes nothing.

The resume cases hash every file of the run folder before and after: a failed resume (every checkpoint
unreadable, a config that differs in keys a resume cannot change, a finished run, a checkpoint that does not fit)
must leave the folder byte-identical; a successful one may only write what a resume writes (new checkpoints,
``config.yaml``, ``metrics.csv``) and must keep the checkpoints it did not replace.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
import torch

from relground.engine.checkpoint import load_checkpoint
from relground.engine.defaults import train
from tests.robustness.conftest import TEST_IMAGE, tiny_config
from tests.robustness.test_inputs import random_bytes, run_cli, truncate, write_bytes


def folder_hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def not_a_run(path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, path)


FINAL = "checkpoints/model_final.pth"

# (case id, corruption of the checkpoint file, regex of the error line)
DAMAGED_CHECKPOINTS = [
    ("truncated", truncate(0.5), r"model_final\.pth: cannot be read as a torch checkpoint \(truncated"),
    ("empty", write_bytes(b""), r"model_final\.pth: empty file"),
    ("garbage", random_bytes, r"model_final\.pth: cannot be read as a torch checkpoint"),
    ("flipped-byte", flip_byte, r"model_final\.pth: damaged checkpoint"),
    ("not-a-relground-checkpoint", not_a_run, r"model_final\.pth: not a relground checkpoint"),
]


@pytest.mark.parametrize("case_id, corrupt, expected", DAMAGED_CHECKPOINTS, ids=[c[0] for c in DAMAGED_CHECKPOINTS])
def test_evaluate_and_ground_name_a_damaged_checkpoint(case_id, corrupt, expected, fresh_run, bench, capsys):
    from relground.api import Grounder

    corrupt(fresh_run / FINAL)
    commands = {
        "evaluate": ["evaluate", "--checkpoint", str(fresh_run / FINAL), "--json"],
        "ground": ["ground", "--checkpoint", str(fresh_run / FINAL), "--image", str(bench / "Images" / f"{TEST_IMAGE}.jpg"),
                   "--caption", "a red circle", "--out", str(fresh_run / "g.png")],
    }
    for name, argv in commands.items():
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "Traceback" not in err, (name, err)
        assert err.startswith(f"relground {name}: error: ") and re.search(expected, err), (name, err)
    with pytest.raises(ValueError, match=expected):
        Grounder.from_checkpoint(fresh_run / FINAL)


def test_a_checkpoint_of_other_sizes_names_the_config_keys(run, capsys):
    code, _, err = run_cli(["evaluate", "--checkpoint", str(run), "--set", "model.hidden_dim=64", "--json"], capsys)
    assert code == 2 and "Traceback" not in err and "size mismatch" not in err, err
    assert re.search(r"model_final\.pth: its weights do not fit .*model\.hidden_dim: checkpoint 128, requested 64", err)


def _resume(run: Path, bench: Path, overrides=(), iterations: int = 3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(tiny_config(bench, run, iterations=iterations, overrides=overrides), resume=True)


def test_resume_falls_back_past_a_truncated_newest_checkpoint(run, fresh_run, bench):
    """The newest checkpoint is named and skipped; the run continues from the previous one, exactly."""
    truncate(0.5)(fresh_run / FINAL)
    before = folder_hashes(fresh_run)
    with pytest.warns(RuntimeWarning, match=r"skipping unreadable checkpoint \(.*model_final\.pth: .*\); resuming from "
                                            r"the previous one, .*model_0000002\.pth"):
        result = _resume(fresh_run, bench)
    assert result["status"] == "finished" and result["iteration"] == 3
    after = folder_hashes(fresh_run)
    # what a successful resume writes: the new final checkpoint, config.yaml, metrics.csv, log.txt; nothing else changed
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {FINAL, "config.yaml", "metrics.csv", "log.txt"}, changed
    assert before["checkpoints/model_0000001.pth"] == after["checkpoints/model_0000001.pth"]
    resumed = load_checkpoint(fresh_run / FINAL)["model"]
    uninterrupted = load_checkpoint(run / FINAL)["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # exact resume from iteration 2


def _set_optimizer_garbage(path: Path) -> None:
    state = load_checkpoint(path)
    state["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(state, path)


def _truncate_all(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.pth"):
        truncate(0.3)(path)


# (case id, how the run folder is damaged, overrides of the resume, iterations, regex of the error)
FAILED_RESUMES = [
    ("every-checkpoint-truncated", _truncate_all, [], 3,
     r"checkpoints: none of the 3 checkpoint\(s\) can be read .*model_final\.pth.*nothing was changed"),
    ("config-mismatch", None, ["model.hidden_dim=64", "solver.ims_per_batch=8"], 3,
     r"model_final\.pth: cannot resume with this config, 2 key\(s\) differ from the run's: model\.hidden_dim: "
     r"checkpoint 128, requested 64; solver\.ims_per_batch: checkpoint 4, requested 8"),
    ("finished-run", None, [], 3, r"model_final\.pth: the run already finished iteration 3 and solver\.max_iter=3"),
    ("checkpoint-does-not-fit", lambda r: _set_optimizer_garbage(r / FINAL), ["solver.max_iter=4"], 3,
     r"model_final\.pth: cannot resume this run from it \(ValueError: .*parameter group"),
]


@pytest.mark.parametrize("case_id, damage, overrides, iterations, expected", FAILED_RESUMES,
                         ids=[c[0] for c in FAILED_RESUMES])
def test_a_failed_resume_leaves_the_run_folder_byte_identical(case_id, damage, overrides, iterations, expected,
                                                              fresh_run, bench):
    if damage is not None:
        damage(fresh_run)
    before = folder_hashes(fresh_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=expected):
            train(tiny_config(bench, fresh_run, iterations=iterations, overrides=overrides), resume=True)
    assert folder_hashes(fresh_run) == before


def test_the_cli_names_a_config_mismatch_and_keeps_config_yaml(fresh_run, capsys):
    before = folder_hashes(fresh_run)
    code, _, err = run_cli(["train", "--config", str(fresh_run / "config.yaml"), "--output", str(fresh_run), "--resume",
                            "--set", "model.hidden_dim=64", "--set", "solver.max_iter=5"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(r"relground train: error: .*model_final\.pth: cannot resume with this config, 1 key\(s\) differ "
                     r"from the run's: model\.hidden_dim: checkpoint 128, requested 64", err), err
    assert folder_hashes(fresh_run) == before


def test_extending_a_finished_run_keeps_its_final_checkpoint(fresh_run, bench):
    before = folder_hashes(fresh_run)
    result = _resume(fresh_run, bench, overrides=["solver.max_iter=5"])
    assert result["status"] == "finished" and result["iteration"] == 5
    after = folder_hashes(fresh_run)
    assert after["checkpoints/model_final_0000003.pth"] == before[FINAL]  # the finished run's final, kept
    assert load_checkpoint(fresh_run / FINAL)["iteration"] == 5
    assert load_checkpoint(fresh_run / "checkpoints/model_final_0000003.pth")["iteration"] == 3


def test_an_interrupted_extension_resumes_from_its_own_checkpoint(fresh_run, bench):
    """Once the extension wrote a periodic checkpoint, it (not the old final) is the newest checkpoint."""
    from relground.engine.checkpoint import Checkpointer

    _resume(fresh_run, bench, overrides=["solver.max_iter=5"])
    (fresh_run / FINAL).unlink()  # as if the extension had been killed after iteration 4's checkpoint
    candidates = [p.name for p in Checkpointer(fresh_run / "checkpoints").candidates()]
    assert candidates[:2] == ["model_0000004.pth", "model_final_0000003.pth"], candidates
    result = _resume(fresh_run, bench, overrides=["solver.max_iter=5"])
    assert result["iteration"] == 5 and load_checkpoint(fresh_run / FINAL)["iteration"] == 5
