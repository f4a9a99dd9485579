"""Every Python example of the README, docs/*.md and the public docstrings runs as written.

* Markdown: each ```python block of a file runs, in order, in one namespace per file, from a folder that holds
  what the examples name: ``outputs/demo/full`` (a tiny trained run, ``relground demo`` at test size) and the
  pictures ``photo.jpg`` / ``dog.jpg`` (images of that run's synthetic data). A block that cannot run (a script
  reading ``sys.argv``, a fragment of a larger program) starts with the marker line
  ``# docs-example: not run: <reason>``; the reason must be said and such blocks stay rare.
* Docstrings: the ``>>>`` examples of the public modules run as doctests (``torch``, ``np`` and ``relground``
  predefined; ``# doctest: +SKIP`` marks the ones that need real data).
"""
from __future__ import annotations

import doctest
import importlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import relground

REPO = Path(__file__).resolve().parents[1]
MARKDOWN_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = "# docs-example: not run:"
MAX_NOT_RUN = 3  # exceptions stay rare
NEEDS_DEMO = "outputs/demo"  # a block naming the demo's run folder gets the tiny trained run

DOCTEST_MODULES = (
    "relground.api",
    "relground.ops.roi_align_avg",
    "relground.ops.pairwise_iou",
    "relground.ops.topk_select",
    "relground.ops.self_taught_targets",
    "relground.losses.ranking",
    "relground.losses.reconstruction",
    "relground.losses.regression",
    "relground.losses.relation",
    "relground.evaluation.evaluator",
    "relground.evaluation.predictions",
    "relground.data.flickr30k",
    "relground.data.referit",
    "relground.data.catalog",
    "relground.data.proposals",
    "relground.data.transforms",
    "relground.structures.boxes",
    "relground.language.captions",
    "relground.language.relations",
    "relground.language.vocab",
    "relground.language.glove",
)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of each ```python block of a Markdown file."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def _markdown_cases():
    for path in MARKDOWN_FILES:
        blocks = python_blocks(path)
        if blocks:
            slow = any(NEEDS_DEMO in code and not code.startswith(NOT_RUN) for _, code in blocks)
            yield pytest.param(path, id=str(path.relative_to(REPO)), marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory):
    """A working folder with what the examples name; the tiny demo is trained on first use only."""
    folder = tmp_path_factory.mktemp("docs-examples")
    state = {}

    def prepare(needs_demo: bool) -> Path:
        if needs_demo and "demo" not in state:
            from tests.engine.test_cli import tiny_demo

            demo = tiny_demo()[0]
            (folder / "outputs").mkdir(exist_ok=True)
            os.symlink(demo, folder / "outputs" / "demo")
            image = sorted((demo / "data" / "Images").glob("*.jpg"))[0]
            for name in ("photo.jpg", "dog.jpg"):
                shutil.copy(image, folder / name)
            state["demo"] = demo
        return folder

    return prepare


@pytest.mark.parametrize("path", list(_markdown_cases()))
def test_markdown_python_examples_run(path, example_folder, monkeypatch, capsys):
    blocks = python_blocks(path)
    runnable = [(line, code) for line, code in blocks if not code.startswith(NOT_RUN)]
    monkeypatch.chdir(example_folder(any(NEEDS_DEMO in code for _, code in runnable)))
    namespace = {"__name__": f"docs_example_{path.stem}"}
    for line, code in runnable:
        try:
            exec(compile(code, f"{path.relative_to(REPO)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{path.relative_to(REPO)}, the ```python block at line {line} fails: {error!r}") from error


def test_examples_not_run_say_why_and_stay_rare():
    skipped = []
    for path in MARKDOWN_FILES:
        for line, code in python_blocks(path):
            if code.startswith(NOT_RUN):
                reason = code.splitlines()[0][len(NOT_RUN):].strip()
                assert len(reason.split()) >= 3, f"{path.name}:{line}: say why the example is not run"
                skipped.append(f"{path.name}:{line}")
    assert len(skipped) <= MAX_NOT_RUN, f"too many examples not run: {skipped}"


def test_the_markdown_extraction_finds_blocks():
    """The extraction can fail: the README's Python API block is found, with its first line."""
    blocks = python_blocks(REPO / "README.md")
    assert any("Grounder.from_checkpoint(" in code for _, code in blocks)
    line, code = blocks[0]
    assert (REPO / "README.md").read_text().splitlines()[line - 1] == code.splitlines()[0]


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {**vars(module), "torch": torch, "np": np, "relground": relground}
    for test in finder.find(module, module_name, globs=globs):
        if test.examples and test.name.startswith(module_name):  # not the ones of imported names
            runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} docstring examples of {module_name} fail (output above)"
