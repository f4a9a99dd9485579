"""Second pass (issue 24), settings and the run folder: each case and the class it stands for.

* every device string (``train.device``, the ``device`` of ``TrainedModel`` / ``Grounder``, ``--device``);
* every path template key (``data.proposals``, ``data.relations``): unknown or malformed placeholders;
* every path that exists but is the wrong kind (the run folder's entries, the readers' files and folders);
* every resume path (no folder, no ``checkpoints/``, an empty one; ``--fresh-if-no-checkpoint``);
* a full disk during a checkpoint save (a patched writer and a real ``ulimit -f``): one line naming the file and
  the intact previous checkpoint, no temporary file, and a later resume bit-exact;
* settings of two sections that contradict each other (``model.top_k`` > ``data.max_proposals``) or the files
  (``data.max_proposals`` far above the proposals' count); a config key given twice.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from relground.config import load_config
from relground.config.data import DataConfig
from relground.engine.checkpoint import load_checkpoint
from relground.engine.defaults import train
from relground.utils.env import parse_device, resolve_device
from relground.utils.errors import WriteError
from tests.robustness.conftest import TEST_IMAGE, tiny_config
from tests.robustness.test_checkpoints import folder_hashes
from tests.robustness.test_inputs import evaluate_argv, run_cli

REPO = Path(__file__).resolve().parents[2]
FINAL = "checkpoints/model_final.pth"


def one_error_line(code: int, err: str, command: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"relground {command}: error: "), err
    return lines[-1]


# ------------------------------------------------------------------------------------------ device strings

BAD_DEVICES = ["tpu", "CUDA", "cuda:x", "cuda:-1", "cuda:0:1", " cpu", "", "mps", "meta", "gpu"]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_every_malformed_device_string_is_named_with_its_key(device):
    with pytest.raises(ValueError, match=rf"^train\.device: {re.escape(repr(device))} is not a device relground can "
                                         r"run on; use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        load_config("synthetic.yaml", [f"train.device={device}"])
    with pytest.raises(ValueError, match=rf"^device: {re.escape(repr(device))} is not a device"):
        resolve_device(device, "device")  # what TrainedModel / Grounder / detect-proposals call


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_well_formed_device_strings_load(device):
    assert load_config("synthetic.yaml", [f"train.device={device}"]).train.device == device
    assert parse_device(device, allow_auto=True) is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_cuda_on_a_machine_without_it_is_named():
    with pytest.raises(ValueError, match=r"^device is 'cuda:1' but CUDA is not available"):
        resolve_device("cuda:1", "device")


def test_train_and_grounder_name_a_bad_device(run, tmp_path, capsys):
    from relground.api import Grounder

    code, _, err = run_cli(["train", "--config", "synthetic.yaml", "--output", str(tmp_path / "o"),
                            "--set", "train.device=tpu"], capsys)
    assert "train.device: 'tpu' is not a device" in one_error_line(code, err, "train")
    with pytest.raises(ValueError, match=r"^device: 'tpu' is not a device"):
        Grounder.from_checkpoint(run, device="tpu")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ path templates

TEMPLATE_KEYS = ["data.proposals", "data.relations"]
BAD_TEMPLATES = ["{root}/{nosuch}.h5", "{root}/{0}.h5", "{root}/{}.h5", "{root}/{split", "{root}/x}.h5",
                 "{root.parent}/p.h5", "{split[0]}.h5", "{root!r}/p.h5", "{root:>9}/p.h5"]


@pytest.mark.parametrize("key", TEMPLATE_KEYS)
@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_every_path_template_placeholder_is_checked_at_load(key, template):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: (unknown placeholder|malformed path template).*the valid "
                                         r"placeholders are \{root\}, \{split\}, \{dataset\}"):
        load_config("synthetic.yaml", [f"{key}={template}"])


def test_the_template_keys_are_every_formatted_key():
    """The class: every str key of ``data`` that loads with a stray placeholder is never formatted."""
    for field in dataclasses.fields(DataConfig):
        if field.type not in ("str", str):
            continue
        try:
            cfg = load_config("synthetic.yaml", [f"data.{field.name}={{root}}/{{nosuch}}"])
        except ValueError:
            assert f"data.{field.name}" in TEMPLATE_KEYS or field.name in ("dataset", "pixel_format", "loader")
            continue
        cfg.data.proposals_path("train"), cfg.data.relations_path("train")  # the only formatters: no KeyError
    cfg = load_config("synthetic.yaml", ["data.proposals={root}/{{literal}}_{split}_{dataset}.h5"])
    assert cfg.data.proposals_path("val").endswith("/{literal}_val_synthetic.h5")


# ---------------------------------------------------------------------- exists but is the wrong kind

RUN_FOLDER_CASES = [  # (case id, make the wrong thing under the output folder, output relative to it, regex)
    ("output-is-a-file", lambda o: o.write_text("x"), ".", r"output_dir \(--output\) is a file, not a folder"),
    ("parent-is-a-file", lambda o: o.write_text("x"), "sub", r"\(a parent of .*sub\) is a file, not a folder"),
    ("checkpoints-is-a-file", lambda o: (o.mkdir(), (o / "checkpoints").write_text("x")), ".",
     r"checkpoints: the run writes a folder there but it is a file"),
    ("tensorboard-is-a-file", lambda o: (o.mkdir(), (o / "tensorboard").write_text("x")), ".",
     r"tensorboard: the run writes a folder there but it is a file"),
    ("metrics-csv-is-a-folder", lambda o: (o.mkdir(), (o / "metrics.csv").mkdir()), ".",
     r"metrics\.csv: the run writes a file there but it is a folder"),
    ("config-yaml-is-a-folder", lambda o: (o.mkdir(), (o / "config.yaml").mkdir()), ".",
     r"config\.yaml: the run writes a file there but it is a folder"),
]


@pytest.mark.parametrize("case_id, make, relative, expected", RUN_FOLDER_CASES, ids=[c[0] for c in RUN_FOLDER_CASES])
def test_a_run_folder_entry_of_the_wrong_kind_stops_train_before_anything(case_id, make, relative, expected, bench,
                                                                       tmp_path, capsys):
    out = tmp_path / "out"
    make(out)
    before = folder_hashes(tmp_path)
    code, _, err = run_cli(["train", "--config", "synthetic.yaml", "--output", str(out / relative),
                            "--set", f"data.root={bench}"], capsys)
    line = one_error_line(code, err, "train")
    assert re.search(expected, line) and "nothing was written" in line, line
    assert folder_hashes(tmp_path) == before


@pytest.mark.parametrize("command", ["demo", "ablation"])
def test_an_experiment_out_that_is_a_file_is_named_before_anything(command, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli([command, "--out", str(tmp_path / "f" / "sub"), "--images", "10", "--iterations", "1"], capsys)
    assert re.search(r"f: --out \(a parent of .*sub\) is a file, not a folder; choose another folder",
                     one_error_line(code, err, command))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


READER_CASES = [  # (case id, path under the dataset root replaced by a folder / a file, regex)
    ("split-list-is-a-folder", "test.txt", r"test\.txt: split list is a folder, not a file"),
    ("annotation-is-a-folder", f"Annotations/{TEST_IMAGE}.xml", rf"{TEST_IMAGE}\.xml: annotation file is a folder"),
    ("sentences-is-a-folder", f"Sentences/{TEST_IMAGE}.txt", rf"{TEST_IMAGE}\.txt: sentences file is a folder"),
    ("proposals-is-a-folder", "proposals.h5", r"proposals\.h5: proposals file is a folder, not a file"),
    ("relations-is-a-folder", "relations_test.json", r"relations_test\.json: relations file is a folder"),
]


@pytest.mark.parametrize("case_id, relative, expected", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_a_folder_where_a_reader_expects_a_file_is_named(case_id, relative, expected, run, fresh_root, capsys):
    path = fresh_root / relative
    path.unlink()
    path.mkdir()
    line = one_error_line(*run_cli(evaluate_argv(run, fresh_root), capsys)[::2], "evaluate")
    assert re.search(expected, line), line


def test_a_file_as_dataset_root_and_predictions_folder_are_named(run, bench, tmp_path, capsys):
    root_file = tmp_path / "root"
    root_file.write_text("x")
    line = one_error_line(*run_cli(evaluate_argv(run, root_file), capsys)[::2], "evaluate")
    assert re.search(r"root: dataset root \(data\.root\) is a file, not a folder", line), line
    from relground.evaluation.predictions import load_predictions

    with pytest.raises(ValueError, match=r"predictions file is a folder, not a file"):
        load_predictions(tmp_path)


# ------------------------------------------------------------------------------------------ resume paths

RESUME_CASES = [  # (case id, make the folder, regex)
    ("no-folder", lambda o: None, r"the run folder .*out does not exist, so there is nothing to resume"),
    ("no-checkpoints-folder", lambda o: o.mkdir(), r"has no checkpoints folder"),
    ("empty-checkpoints-folder", lambda o: (o / "checkpoints").mkdir(parents=True), r"holds no checkpoint"),
]


@pytest.mark.parametrize("case_id, make, expected", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_without_a_checkpoint_stops_unless_asked_to_start_fresh(case_id, make, expected, bench, tmp_path,
                                                                      capsys):
    out = tmp_path / "out"
    make(out)
    before = folder_hashes(tmp_path)
    argv = ["train", "--config", "synthetic.yaml", "--output", str(out), "--resume", "--set", f"data.root={bench}",
            "--set", "solver.max_iter=1"]  # short, should a run start after all
    line = one_error_line(*run_cli(argv, capsys)[::2], "train")
    assert re.search(expected, line) and "--fresh-if-no-checkpoint" in line, line
    assert folder_hashes(tmp_path) == before and out.exists() == (case_id != "no-folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(tiny_config(bench, out, iterations=1), resume=True, fresh_if_no_checkpoint=True)
    assert result["status"] == "finished" and (out / FINAL).is_file()


# ------------------------------------------------------------------------------------------ full disk


@pytest.mark.slow
def test_a_full_disk_during_a_save_names_the_file_and_the_intact_checkpoint(run, bench, tmp_path, monkeypatch):
    """The save of iteration 2 fails with ENOSPC: one message naming model_0000002.pth and the intact
    model_0000001.pth, no temporary file, and a resume ends bit-identical to the uninterrupted run."""
    import relground.utils.io as io

    out = tmp_path / "run"
    real_save = torch.save

    def full_disk_at_iteration_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iteration") == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(io.torch, "save", full_disk_at_iteration_2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(WriteError, match=r"model_0000002\.pth: cannot be written: no space left on device .*no "
                                             r"temporary file was left.*newest intact checkpoint is .*model_0000001\.pth"):
            train(tiny_config(bench, out))
    monkeypatch.setattr(io.torch, "save", real_save)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["model_0000001.pth"]  # no .tmp- file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(tiny_config(bench, out), resume=True)
    assert result["iteration"] == 3
    resumed, reference = load_checkpoint(out / FINAL)["model"], load_checkpoint(run / FINAL)["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_a_file_size_limit_during_a_save_is_one_line_from_the_cli(fresh_run, bench):
    """A real limit (``ulimit -f``, as the battery did): torch's C++ writer fails, the CLI names the file."""
    before = {p.name: p.read_bytes() for p in (fresh_run / "checkpoints").iterdir()}

    def limit_file_size():  # 1 MB per file: config.yaml and metrics.csv fit, a 25 MB checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    argv = [sys.executable, "-m", "relground.cli.main", "train", "--config", str(fresh_run / "config.yaml"),
            "--output", str(fresh_run), "--resume", "--set", "solver.max_iter=5", "--set", f"data.root={bench}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                             preexec_fn=limit_file_size)
    line = one_error_line(process.returncode, process.stderr, "train")
    assert re.search(r"model_0000004\.pth: cannot be written: file too large .*newest intact checkpoint is "
                     r".*model_final\.pth", line), line
    after = {p.name: p.read_bytes() for p in (fresh_run / "checkpoints").iterdir()}
    assert not [name for name in after if name.startswith(".tmp-")]
    assert after["model_final.pth"] == before["model_final.pth"]  # the finished run's final, intact


# ---------------------------------------------------------------------- settings that contradict each other


def test_top_k_above_max_proposals_names_both_keys():
    with pytest.raises(ValueError, match=r"^model\.top_k=1000 is larger than data\.max_proposals=50 .*set "
                                         r"model\.top_k <= 50"):
        load_config("synthetic.yaml", ["model.top_k=1000"])
    with pytest.raises(ValueError, match=r"model\.top_k=60 is larger than data\.max_proposals=40"):
        load_config("synthetic.yaml", ["data.max_proposals=40", "model.top_k=60"])
    assert load_config("synthetic.yaml", ["model.top_k=50"]).model.top_k == 50


def test_max_proposals_far_above_the_files_is_named_before_iteration_0(run, bench, caplog):
    from relground.engine.defaults import build_split_dataset, model_from_checkpoint

    state = load_checkpoint(run / FINAL)
    _, cfg, model_args = model_from_checkpoint(state, [f"data.root={bench}", "data.max_proposals=100000"])
    most = 35  # the synthetic test image's proposal count
    with pytest.raises(ValueError, match=rf"^data\.max_proposals=100000 but no image has more than {most} proposals "
                                         rf"in .*proposals\.h5.*set data\.max_proposals={most}"):
        build_split_dataset(cfg, "test", model_args)
    for slots, warned in ((200, True), (50, False)):  # above twice the count: a warning; the default 50: no word
        caplog.clear()
        _, cfg, model_args = model_from_checkpoint(state, [f"data.root={bench}", f"data.max_proposals={slots}"])
        with caplog.at_level("WARNING"):
            build_split_dataset(cfg, "test", model_args)
        assert (f"data.max_proposals={slots} but no image has more than {most} proposals" in caplog.text) == warned


DUPLICATE_YAML = [
    (b"solver:\n  max_iter: 3\n  base_lr: 0.1\n  max_iter: 5\n", r"bad\.yaml:4:3: invalid YAML: key 'max_iter' is given "
                                                                 r"twice in one mapping \(first on line 2"),
    (b"seed: 1\nseed: 2\n", r"bad\.yaml:2:1: .*key 'seed' is given twice"),
    (b"data: {root: a, root: b}\n", r"bad\.yaml:1:17: .*key 'root' is given twice"),
]


@pytest.mark.parametrize("content, expected", DUPLICATE_YAML)
def test_a_config_key_given_twice_is_named(content, expected, tmp_path):
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        load_config(tmp_path / "bad.yaml")
