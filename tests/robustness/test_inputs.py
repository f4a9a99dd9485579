"""Every bad input file is named: a table of (file, corruption, expected message) over the synthetic benchmark.

Each case corrupts one file of a copy of the benchmark (the test split's image, its annotation, sentences,
proposals, relations or split list) and runs ``relground evaluate`` on the tiny run's checkpoint with
``data.root`` pointing at the copy. The command must exit with status 2 and print one line
``relground evaluate: error: <message>`` naming the file (no traceback), before any model work: images and
proposals are checked when the dataset is built. A new reader or file type gets the same treatment by adding
rows to ``CASES``; docs/robustness.md lists the same cases and messages.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from PIL import Image

from relground.cli.main import main
from tests.robustness.conftest import TEST_IMAGE


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``relground <argv>`` in this process: ``(exit status, stdout, stderr)``."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_argv(run: Path, root: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(run), "--set", f"data.root={root}", "--split", "test", "--json"]


# ---------------------------------------------------------------- corruptions (path) -> None


def truncate(fraction: float) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return apply


def replace_text(old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        text = path.read_text()
        assert old in text, (old, path)
        path.write_text(text.replace(old, new, count))

    return apply


def regex_sub(pattern: str, replacement: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        text, n = re.subn(pattern, replacement, path.read_text(), count=1)
        assert n == 1, (pattern, path)
        path.write_text(text)

    return apply


def insert_bytes(on_line: int, data: bytes) -> Callable[[Path], None]:
    """Put ``data`` at the start of 1-based line ``on_line``."""

    def apply(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        lines[on_line - 1] = data + lines[on_line - 1]
        path.write_bytes(b"\n".join(lines))

    return apply


def write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def resize_image(width: int, height: int) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with Image.open(path) as pil:
            resized = pil.convert("RGB").resize((width, height))
        resized.save(path, format="JPEG")

    return apply


def edit_proposals(edit: Callable[[h5py.Group], None]) -> Callable[[Path], None]:
    """Rewrite the test image's proposals in place (h5py recomputes the datasets' checksums)."""

    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            edit(f["images"][TEST_IMAGE])

    return apply


def set_row(dataset: str, row: int, value) -> Callable[[h5py.Group], None]:
    def edit(group: h5py.Group) -> None:
        data = group[dataset][()]
        data[row] = value
        group[dataset][...] = data

    return edit


def drop_test_image(group: h5py.Group) -> None:
    del group.parent[TEST_IMAGE]


def remove(path: Path) -> None:
    path.unlink()


def edit_json(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        edit(data)  # in place
        path.write_text(json.dumps(data))

    return apply


def first_relation(data: dict) -> dict:
    return data["images"][TEST_IMAGE]["0"][0]


XML = f"Annotations/{TEST_IMAGE}.xml"
SENTENCES = f"Sentences/{TEST_IMAGE}.txt"
JPEG = f"Images/{TEST_IMAGE}.jpg"

# (case id, file under the root, corruption, regex the error line must match). The file's name is always in it.
CASES = [
    # annotations XML
    ("xml-truncated", XML, truncate(0.5), r"1000009\.xml: broken XML: .*line \d+"),
    ("xml-undecodable", XML, insert_bytes(3, b"\xff\xfe"), r"1000009\.xml: broken XML"),
    ("xml-nan-coordinate", XML, replace_text("<xmin>110</xmin>", "<xmin>nan</xmin>"),
     r"1000009\.xml: <bndbox>/<xmin> is not a finite number: 'nan'"),
    ("xml-inf-coordinate", XML, replace_text("<xmin>110</xmin>", "<xmin>1e999</xmin>"),
     r"1000009\.xml: <bndbox>/<xmin> is not a finite number"),
    ("xml-inverted-box", XML, replace_text("<xmax>125</xmax>", "<xmax>100</xmax>"), r"1000009\.xml: .*inverted box"),
    ("xml-box-outside", XML, replace_text("<xmax>125</xmax>", "<xmax>900</xmax>"),
     r"1000009\.xml: .*outside the 128x128 image"),
    ("xml-zero-size", XML, replace_text("<width>128</width>", "<width>0</width>"), r"1000009\.xml: <size> must be positive"),
    ("xml-size-differs-from-jpeg", XML, replace_text("<width>128</width>", "<width>130</width>"),
     r"1000009.*130x128"),
    ("xml-missing", XML, remove, r"annotation file not found: .*1000009\.xml"),
    # captions
    ("caption-doubled-bracket", SENTENCES, replace_text("triangle]", "triangle]]"),
     r"1000009\.txt:1: stray bracket in word 'triangle\]'"),
    ("caption-empty-phrase", SENTENCES, regex_sub(r"(\[/EN#\d+/\w+) [^\]]*\]", r"\1 ]"),
     r"1000009\.txt:1: empty phrase of chain 100"),
    ("caption-unclosed-phrase", SENTENCES, replace_text("triangle]", "triangle"), r"1000009\.txt:1: "),
    ("caption-undecodable", SENTENCES, insert_bytes(2, b"\xff\xfe"), r"1000009\.txt:2: the sentences file is not UTF-8"),
    ("caption-empty-file", SENTENCES, write_bytes(b""), r"1000009\.txt: no captions"),
    ("caption-blank-line", SENTENCES, insert_bytes(2, b"\n"), r"1000009\.txt:2: empty caption"),
    ("caption-unknown-chain", SENTENCES, replace_text("[/EN#100/", "[/EN#777/"), r"1000009\.txt:1: .*chain 777"),
    # images (checked from the header when the dataset is built)
    ("jpeg-truncated", JPEG, truncate(0.6), r"1000009\.jpg: image id '1000009': truncated JPEG"),
    ("jpeg-random-bytes", JPEG, random_bytes, r"1000009\.jpg: image id '1000009': not a readable image"),
    ("jpeg-empty", JPEG, write_bytes(b""), r"1000009\.jpg: image id '1000009': not a readable image"),
    ("jpeg-other-size", JPEG, resize_image(100, 90),
     r"1000009\.jpg: image id '1000009': the image is 100x90 pixels but its annotation says 128x128"),
    ("jpeg-missing", JPEG, remove, r"image file not found for image id '1000009'"),
    # proposals HDF5
    ("proposals-nan-box", "proposals.h5", edit_proposals(set_row("boxes", 0, [np.nan, 0, 10, 10])),
     r"proposals\.h5: image '1000009', row 0: non-finite box"),
    ("proposals-inverted-box", "proposals.h5", edit_proposals(set_row("boxes", 1, [50, 50, 10, 10])),
     r"proposals\.h5: image '1000009', row 1: x2 < x1 or y2 < y1"),
    ("proposals-box-far-outside", "proposals.h5", edit_proposals(set_row("boxes", 2, [0, 0, 5000, 10])),
     r"proposals\.h5: image '1000009', row 2: box outside the 128x128 image"),
    ("proposals-label-out-of-range", "proposals.h5", edit_proposals(set_row("labels", 0, 99)),
     r"proposals\.h5: image '1000009', row 0: label outside \[0, 6\)"),
    ("proposals-negative-label", "proposals.h5", edit_proposals(set_row("labels", 3, -1)),
     r"proposals\.h5: image '1000009', row 3: label outside \[0, 6\)"),
    ("proposals-nan-score", "proposals.h5", edit_proposals(set_row("scores", 0, np.nan)),
     r"proposals\.h5: image '1000009', row 0: non-finite score"),
    ("proposals-other-image-size", "proposals.h5", edit_proposals(lambda g: g.attrs.__setitem__("width", 200)),
     r"proposals\.h5: image '1000009': proposals are for a 200x128 image but the annotation says 128x128"),
    ("proposals-missing-image", "proposals.h5", edit_proposals(drop_test_image),
     r"proposals\.h5: no proposals for .*'1000009'"),
    ("proposals-truncated", "proposals.h5", truncate(0.5), r"proposals\.h5: cannot be read as an HDF5 proposals file"),
    ("proposals-random-bytes", "proposals.h5", random_bytes, r"proposals\.h5: cannot be read as an HDF5 proposals file"),
    # relations JSON
    ("relations-truncated", "relations_test.json", truncate(0.5), r"relations_test\.json: broken JSON at line 1"),
    ("relations-undecodable", "relations_test.json", insert_bytes(1, b"\xff"), r"relations_test\.json: not UTF-8"),
    ("relations-not-an-object", "relations_test.json", write_bytes(b"[1, 2]"),
     r"relations_test\.json: expected a JSON object"),
    ("relations-index-out-of-range", "relations_test.json", edit_json(lambda d: first_relation(d).update(subject=42)),
     r"relations_test\.json: image '1000009' sentence 0: phrase index out of range"),
    ("relations-missing-field", "relations_test.json", edit_json(lambda d: first_relation(d).pop("text")),
     r"relations_test\.json: image '1000009' sentence 0: expected a relation"),
    ("relations-missing-image", "relations_test.json", edit_json(lambda d: d["images"].pop(TEST_IMAGE)),
     r"relations_test\.json: no relations for image '1000009'"),
    # split list
    ("split-empty", "test.txt", write_bytes(b""), r"test\.txt: split list 'test' is empty"),
    ("split-blank-lines", "test.txt", write_bytes(b"\n \n\n"), r"test\.txt: split list 'test' is empty"),
    ("split-path-in-id", "test.txt", write_bytes(b"../../etc/passwd\n"), r"test\.txt: split list 'test': .* not an image id"),
    ("split-unknown-id", "test.txt", write_bytes(b"4242\n"), r"annotation file not found: .*4242\.xml"),
    ("split-undecodable", "test.txt", write_bytes(b"100\xff0009\n"), r"test\.txt:1: the split list is not UTF-8"),
    ("split-missing", "test.txt", remove, r"split list not found: .*test\.txt"),
]


@pytest.mark.parametrize("case_id, relative, corrupt, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_file_is_named(case_id, relative, corrupt, expected, run, fresh_root, capsys):
    corrupt(fresh_root / relative)
    code, out, err = run_cli(evaluate_argv(run, fresh_root), capsys)
    assert code == 2, (case_id, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("relground evaluate: error: "), err
    assert re.search(expected, lines[-1]), (case_id, lines[-1])


def test_the_clean_benchmark_evaluates(run, bench, capsys):
    """The reference for the table: the same command on the uncorrupted copy succeeds."""
    code, out, err = run_cli(evaluate_argv(run, bench), capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["accuracy"] >= 0


def test_skip_invalid_leaves_bad_images_out_with_a_count(run, fresh_root, bench, caplog):
    """With data.skip_invalid an image that fails a check is left out, and the load summary says why."""
    from relground.config import apply_overrides
    from relground.engine.checkpoint import load_checkpoint
    from relground.engine.defaults import build_split_dataset, model_from_checkpoint

    random_bytes(fresh_root / "Images" / "1000003.jpg")  # a train image
    state = load_checkpoint(run / "checkpoints" / "model_final.pth")
    _, cfg, model_args = model_from_checkpoint(state, [f"data.root={fresh_root}", "data.skip_invalid=true"])
    with caplog.at_level("WARNING"):
        dataset = build_split_dataset(cfg, "train", model_args)
    assert len(dataset.skip_report) == 1 and dataset.skip_report.skipped[0][0] == "1000003"
    assert "not a readable image" in dataset.skip_report.skipped[0][1]
    assert "skipped 1 invalid item(s): 1000003" in caplog.text
    assert [im.image_id for im in dataset.images] == [i for i in (fresh_root / "train.txt").read_text().split()
                                                    if i != "1000003"]
    strict = apply_overrides(cfg, ["data.skip_invalid=false"])
    with pytest.raises(ValueError, match=r"1 of 8 image\(s\) cannot be used: 1000003: .*1000003\.jpg"):
        build_split_dataset(strict, "train", model_args)


def test_bad_config_files_are_named(tmp_path, capsys):
    cases = [
        (b"model: {hidden_dim: [\n", r"bad\.yaml:2:1: invalid YAML"),
        (b"model:\n  hiden_dim: 3\n", r"bad\.yaml: unknown config key 'model\.hiden_dim'; did you mean 'model\.hidden_dim'"),
        (b"model:\n  hidden_dim: abc\n", r"bad\.yaml: config key 'model\.hidden_dim': expected int"),
        (b"\xff\xfe model: 1\n", r"bad\.yaml:1: not UTF-8 text"),
        (b"- 1\n- 2\n", r"bad\.yaml: a config file must hold a mapping"),
    ]
    for content, expected in cases:
        path = tmp_path / "bad.yaml"
        path.write_bytes(content)
        code, _, err = run_cli(["train", "--config", str(path), "--output", str(tmp_path / "out")], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert re.search(expected, err), (content, err)
        assert not (tmp_path / "out").exists()


def test_metrics_csv_garbage_row_is_dropped_on_resume(tmp_path):
    """A damaged metrics.csv row (a write cut by a crash) is dropped with a warning naming the file and line."""
    from relground.engine.hooks import MetricsWriter

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("iteration,loss\n1,0.5\n\x00garbage,row,extra\n2,0.4\n3,0.3\n")
    writer = MetricsWriter(tmp_path, period=1, tensorboard=False)
    with pytest.warns(RuntimeWarning, match=r"metrics\.csv: dropped 1 unreadable row\(s\) \(line\(s\) \[3\]\)"):
        writer._truncate_csv(2)
    assert csv_path.read_text().splitlines() == ["iteration,loss", "1,0.5", "2,0.4"]
    csv_path.write_text("garbage header\nx\n")
    with pytest.warns(RuntimeWarning, match=r"metrics\.csv: no 'iteration' column .* moved to .*metrics\.csv\.damaged"):
        writer._truncate_csv(2)
    assert not csv_path.exists() and (tmp_path / "metrics.csv.damaged").read_text() == "garbage header\nx\n"


def test_referit_files_are_named(tmp_path):
    """The ReferIt reader: broken, undecodable or mistyped JSON files and an empty split name the file."""
    from relground.data.referit import load_referit

    def write(queries=None, bboxes=None, sizes=None, raw_queries=None):
        (tmp_path / "referit_query_test.json").write_bytes(
            raw_queries if raw_queries is not None else json.dumps(queries or {"8756_1": ["a dog"]}).encode())
        (tmp_path / "referit_bbox.json").write_text(json.dumps(bboxes or {"8756_1": [0, 0, 9, 9]}))
        (tmp_path / "referit_imsize.json").write_text(json.dumps(sizes or {"8756.jpg": [20, 20]}))

    write()
    assert len(load_referit(tmp_path, "test")) == 1
    cases = [
        (dict(raw_queries=b'{"8756_1": ["a d'), r"referit_query_test\.json: broken JSON"),
        (dict(raw_queries=b'{"8756_1": ["a \xff dog"]}'), r"referit_query_test\.json: not UTF-8"),
        (dict(raw_queries=b"{}"), r"referit_query_test\.json: no queries"),
        (dict(queries={"8756_1": "a dog"}), r"referit_query_test\.json: imcrop '8756_1': expected a list"),
        (dict(bboxes={"8756_1": [0, 0, "x", 9]}), r"referit_bbox\.json: imcrop '8756_1': box must be 4 numbers"),
        (dict(bboxes={"8756_1": [0, 0, 1e999, 9]}), r"referit_bbox\.json: imcrop '8756_1': non-finite box"),
        (dict(sizes={"8756.jpg": [20]}), r"referit_imsize\.json: image '8756\.jpg': expected \[width, height\]"),
        (dict(sizes=[1, 2]), r"referit_imsize\.json: expected a JSON object"),
    ]
    for kwargs, expected in cases:
        write(**kwargs)
        with pytest.raises(ValueError, match=expected):
            load_referit(tmp_path, "test")
