"""Every ``--help`` complete (the whole description of its module, not its first paragraph), ``relground --version``."""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

import relground
from relground.cli.common import command_description
from relground.cli.main import SUBCOMMANDS, build_parser, main


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("command", sorted(set(SUBCOMMANDS) - {"data", "config"}))
def test_every_command_help_holds_its_whole_description(capsys, command):
    module = importlib.import_module(f"relground.cli.{command}")
    shown = words(help_text(capsys, [command]))
    for paragraph in command_description(module.__doc__).split("\n\n"):
        assert words(paragraph) in shown, (command, paragraph)


def test_evaluate_help_shows_both_modes_and_ground_help_describes_its_phrases(capsys):
    evaluate = words(help_text(capsys, ["evaluate"]))
    assert "Two modes:" in evaluate
    assert "* model: relground evaluate --checkpoint K" in evaluate
    assert "* file: relground evaluate --dataset flickr30k --root DIR" in evaluate
    assert "--plot PNG draws accuracy vs IoU threshold" in evaluate
    ground = words(help_text(capsys, ["ground"]))
    assert "noun chunk" not in ground and "entities SceneGraphParser finds" in ground
    assert "--overwrite" in ground and "--device" in ground


def test_every_nested_command_has_a_description(capsys):
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in top.choices.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for inner_name, inner in (nested[0].choices.items() if nested else []):
            assert inner.description, f"relground {name} {inner_name} has no description"
            assert words(inner.description) in words(help_text(capsys, [name, inner_name]))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"relground {relground.__version__}"
