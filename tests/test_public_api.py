"""The public surface of relground: every name a package lists in ``__all__``, with its call signature.

``tests/public_api.txt`` is the committed snapshot. The test fails when a line of it disappears (a public name
removed or renamed, a parameter removed, renamed or made required); new names only print a hint. After a
deliberate change, regenerate the snapshot and commit it with the change::

    .venv/bin/python -m tests.test_public_api --update
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("public_api.txt")
UPDATE_COMMAND = ".venv/bin/python -m tests.test_public_api --update"

# The packages whose ``__all__`` is relground's public API (cli: entry points only; its __all__ is empty).
PUBLIC_MODULES = (
    "relground",
    "relground.api",
    "relground.structures",
    "relground.utils",
    "relground.config",
    "relground.ops",
    "relground.language",
    "relground.losses",
    "relground.data",
    "relground.model",
    "relground.evaluation",
    "relground.engine",
    "relground.experiments",
    "relground.cli",
)


def _signature(obj) -> str:
    """Parameter names and kinds, no annotations or default values: ``(a, b=, *, c=, **kwargs)``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts, star_done = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star_done = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star_done:
                parts.append("*")
                star_done = True
            parts.append(p.name + ("=" if p.default is not p.empty else ""))
    return "(" + ", ".join(parts) + ")"


def _class_lines(qualname: str, cls: type) -> list[str]:
    lines = [f"{qualname}{_signature(cls)} class"]
    if dataclasses.is_dataclass(cls):
        lines += [f"{qualname}.{f.name} field" for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    members = {}
    for base in reversed(cls.__mro__):  # relground's own members, inherited ones included; not torch's
        if base.__module__.startswith("relground"):
            members.update(vars(base))
    for name, member in sorted(members.items()):
        if name.startswith("_") or (dataclasses.is_dataclass(cls) and name in cls.__dataclass_fields__):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            lines.append(f"{qualname}.{name}{_signature(getattr(cls, name))}")
        elif isinstance(member, property):
            lines.append(f"{qualname}.{name} property")
        elif inspect.isfunction(member):
            lines.append(f"{qualname}.{name}{_signature(member)}")
    return lines


def describe(module_name: str) -> list[str]:
    """One line per public name of ``module_name`` (its ``__all__``), classes followed by their public members."""
    module = importlib.import_module(module_name)
    lines = []
    for name in sorted(module.__all__):
        qualname = f"{module_name}.{name}"
        if hasattr(module, name):
            obj = getattr(module, name)
        else:  # a submodule listed in __all__ and imported on use
            obj = importlib.import_module(qualname)
        if isinstance(obj, types.ModuleType):
            lines.append(f"{qualname} module")
        elif inspect.isclass(obj):
            lines += _class_lines(qualname, obj)
        elif callable(obj):
            lines.append(f"{qualname}{_signature(obj)}")
        else:
            lines.append(f"{qualname} {type(obj).__name__}")
    return lines


def current_api() -> list[str]:
    return [line for module_name in PUBLIC_MODULES for line in describe(module_name)]


def read_snapshot() -> list[str]:
    return [line for line in SNAPSHOT.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_package_lists_existing_names(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, "__all__", None), list), f"{module_name} has no __all__ list"
    assert len(set(module.__all__)) == len(module.__all__), f"{module_name}.__all__ repeats a name"
    for name in module.__all__:  # resolvable: an attribute, or a submodule imported on use
        assert hasattr(module, name) or importlib.util.find_spec(f"{module_name}.{name}"), f"{module_name}.{name}"


def test_no_public_name_disappears():
    current = set(current_api())
    missing = [line for line in read_snapshot() if line not in current]
    assert not missing, (
        "public API lines of tests/public_api.txt no longer hold (a name or parameter was removed or renamed):\n  "
        + "\n  ".join(missing)
        + f"\nIf deliberate, regenerate the snapshot: {UPDATE_COMMAND}"
    )
    added = sorted(current - set(read_snapshot()))
    if added:  # not a failure: new public names, to be added to the snapshot with the change
        print(f"{len(added)} public API lines not in the snapshot yet ({UPDATE_COMMAND}):", *added, sep="\n  ")


def test_snapshot_notices_a_removed_name_and_parameter(monkeypatch):
    """The check can fail: removing a public function or one of its parameters changes the described lines."""
    import relground.ops

    before = describe("relground.ops")
    monkeypatch.setattr(relground.ops, "__all__", [n for n in relground.ops.__all__ if n != "topk_select"])
    assert "relground.ops.topk_select(scores, k, valid=)" in before
    assert not any(line.startswith("relground.ops.topk_select") for line in describe("relground.ops"))
    monkeypatch.undo()
    monkeypatch.setattr(relground.ops, "topk_select", lambda scores, k: None)
    assert "relground.ops.topk_select(scores, k)" in describe("relground.ops")


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print(f"usage: {UPDATE_COMMAND}   (rewrites {SNAPSHOT.name} from the current __all__ lists)")
        return 2
    header = [
        "# relground's public API: every name in the __all__ of the packages of tests/test_public_api.py, with the",
        "# parameters of its signature (name= has a default). tests/test_public_api.py fails when a line disappears.",
        f"# Regenerate deliberately: {UPDATE_COMMAND}",
    ]
    SNAPSHOT.write_text("\n".join(header + current_api()) + "\n")
    print(f"wrote {SNAPSHOT} ({len(current_api())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
