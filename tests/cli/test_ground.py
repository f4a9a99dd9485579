"""``relground ground`` like the other commands: one-line errors, a warning for a caption without phrases, no silent
overwrite, the proposal source and the device printed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from relground.cli.main import main
from relground.data.proposals import ProposalStore
from tests.cli.conftest import TEST_IMAGE

CAPTION = "the violet cross to the left of the big blue square"


def run(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jpeg(path: Path, size=(64, 48)) -> Path:
    Image.effect_noise(size, 40).convert("RGB").save(path, "JPEG", quality=90)
    return path


def one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relground ground: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize("damage, message", [
    ("empty", "empty file (0 bytes)"),
    ("text", "not an image file"),
    ("cut_in_the_scan", "damaged or truncated JPEG"),
    ("no_end_marker", "truncated JPEG (no end-of-image marker)"),
    ("cut_in_the_header", "damaged or truncated image"),
])
def test_unreadable_images_are_one_line_errors_before_the_model_loads(tmp_path, capsys, damage, message):
    good = jpeg(tmp_path / "good.jpg").read_bytes()
    content = {"empty": b"", "text": b"a caption, not a picture\n", "cut_in_the_scan": good[: len(good) * 2 // 3],
               "no_end_marker": good[:-2] + bytes(2000),  # PIL decodes this without a word
               "cut_in_the_header": good[:300]}[damage]
    image = tmp_path / "photo.jpg"
    image.write_bytes(content)
    # the checkpoint does not exist either: the image is checked first, so the error names the image
    code, _, err = run(capsys, ["ground", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(image),
                                "--caption", "a dog"])
    assert code == 2
    one_line_error(err, f"--image: {image}", message)


def test_device_errors(tmp_path, capsys, monkeypatch):
    image = jpeg(tmp_path / "photo.jpg")
    base = ["ground", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(image), "--caption", "a dog"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, base + ["--device", "cuda"])
    assert code == 2
    one_line_error(err, "--device cuda: CUDA is not available on this machine; use --device cpu")
    code, _, err = run(capsys, base + ["--device", "gpu0"])
    assert code == 2
    one_line_error(err, "--device: 'gpu0' is not a torch device")


def test_an_existing_png_is_kept_unless_overwrite(tiny_run, tmp_path, capsys):
    image = tiny_run / "data" / "Images" / f"{TEST_IMAGE}.jpg"
    out = tmp_path / "g.png"
    out.write_bytes(b"someone's picture")
    base = ["ground", "--checkpoint", str(tiny_run / "run"), "--image", str(image), "--caption", CAPTION,
            "--out", str(out), "--device", "cpu"]
    code, _, err = run(capsys, base)
    assert code == 2
    one_line_error(err, f"--out: {out} exists; pass --overwrite")
    assert out.read_bytes() == b"someone's picture"  # nothing lost
    code, stdout, _ = run(capsys, base + ["--overwrite"])
    assert code == 0 and Image.open(out).format == "PNG"
    # the text output names the proposal source and the device
    assert "proposals: sliding windows (no detector" in stdout and "device: cpu" in stdout
    assert re.search(r"'the violet cross'\s+box \[", stdout) and re.search(r"'the big blue square'\s+box \[", stdout)


def test_the_proposal_file_is_named(tiny_run, tmp_path, capsys):
    image = tiny_run / "data" / "Images" / f"{TEST_IMAGE}.jpg"
    proposals = tiny_run / "data" / "proposals.h5"
    count = len(ProposalStore(proposals)[TEST_IMAGE])
    code, stdout, _ = run(capsys, ["ground", "--checkpoint", str(tiny_run / "run"), "--image", str(image),
                                   "--caption", CAPTION, "--proposals", str(proposals),
                                   "--out", str(tmp_path / "p.png")])
    assert code == 0
    assert f"proposals: {proposals}, image id '{TEST_IMAGE}', {count} boxes; device: cpu" in stdout  # auto: no GPU here


def test_a_caption_without_phrases_is_warned_about(tiny_run, tmp_path, capsys):
    image = tiny_run / "data" / "Images" / f"{TEST_IMAGE}.jpg"
    code, stdout, err = run(capsys, ["ground", "--checkpoint", str(tiny_run / "run"), "--image", str(image),
                                     "--caption", "runs quickly .", "--out", str(tmp_path / "n.png"), "--json"])
    assert code == 0
    assert "relground ground: warning: the caption has no phrase to ground" in err and "no box" in err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["phrases"] == [] and (tmp_path / "n.png").is_file()
    code, _, err = run(capsys, ["ground", "--checkpoint", str(tiny_run / "run"), "--image", str(image),
                                "--caption", CAPTION, "--out", str(tmp_path / "m.png"), "--json"])
    assert code == 0 and "warning" not in err  # a caption with phrases: no warning
