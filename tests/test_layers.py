"""The floors of ``relground/`` (docs/design.md): no import cycle, no import of a higher floor or of a same-floor
sibling package, and no relground import inside a function except the allowed ones.

The import graph is read from the source with ``ast`` (nothing is imported): top-level imports and imports inside
functions count; imports under ``if TYPE_CHECKING:`` do not. The floor table is the ```layers fenced block of
docs/design.md (``rank: package package ...``, bottom first).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "relground"
DESIGN = REPO / "docs" / "design.md"
ROOT = "relground"

# relground imports allowed inside a function, (importing module, imported module) -> why.
LOCAL_IMPORTS_ALLOWED = {
    (ROOT, "relground.api"): "the root's lazy Grounder (module __getattr__): `import relground.ops` stays light",
}
# Imports of the root package (the façade above the floors), importing module -> why.
ROOT_IMPORTS_ALLOWED = {
    "relground.cli.info": "`relground info` reports relground.__version__, HAS_OPS and build_info",
    "relground.cli.main": "`relground --version` prints relground.__version__",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. relground.engine.trainer
    target: str  # imported module, e.g. relground.engine.hooks (an attribute import resolves to its module)
    line: int
    local: bool  # inside a function

    def where(self) -> str:
        path = module_path(self.source).relative_to(REPO)
        return f"{path}:{self.line}"


def module_path(module: str) -> Path:
    parts = module.split(".")
    folder = REPO.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def all_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def read_floors() -> dict[str, int]:
    """``package -> rank`` from the ```layers block of docs/design.md."""
    match = re.search(r"^```layers\n(.*?)^```", DESIGN.read_text(), re.S | re.M)
    assert match, f"{DESIGN}: no ```layers fenced block (lines `rank: package ...`, bottom floor first)"
    floors = {}
    for number, line in enumerate(match.group(1).splitlines(), 1):
        if not line.strip():
            continue
        rank, _, names = line.partition(":")
        assert rank.strip().isdigit() and names.split(), f"{DESIGN}, layers block line {number}: expected 'rank: pkg ...', got {line!r}"
        for name in names.split():
            assert name not in floors, f"{DESIGN}: package {name!r} is on two floors"
            floors[name] = int(rank)
    return floors


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(target: str, modules: dict[str, Path]) -> Optional[str]:
    """The module ``target`` names (an attribute of a module resolves to the module); None outside relground's
    Python modules (e.g. the compiled ``relground._C``)."""
    if target in modules:
        return target
    parent = target.rpartition(".")[0]
    return parent if parent in modules and parent != ROOT else None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the `else:` of `if TYPE_CHECKING:` runs
                visit(child, local)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local = True
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name == ROOT or name.startswith(ROOT + "."):
                target = name if name == ROOT else _resolve(name, modules)
                if target is not None and target != module:
                    found.append(Import(module, target, node.lineno, local))
                elif target is None and local:  # e.g. relground._C: still a relground import in a function
                    found.append(Import(module, name, node.lineno, local))
        for child in ast.iter_child_nodes(node):
            visit(child, local)

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = all_modules()
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def package_of(module: str) -> str:
    """``relground.engine.trainer -> engine``, ``relground.api -> api``, the root -> ``relground``."""
    return module.split(".")[1] if module != ROOT else ROOT


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return cycles


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


def test_no_import_cycle(graph):
    edges: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], Import] = {}
    for imp in graph:
        if imp.target in all_modules():
            edges.setdefault(imp.source, set()).add(imp.target)
            lines.setdefault((imp.source, imp.target), imp)
    problems = []
    for component in find_cycles(edges):
        members = set(component)
        inner = [lines[(a, b)] for a in component for b in sorted(edges.get(a, ())) if b in members]
        problems.append(
            "cycle between " + ", ".join(component) + ":\n      "
            + "\n      ".join(f"{i.where()}: {i.source} imports {i.target}" + (" (in a function)" if i.local else "")
                              for i in inner)
        )
    assert not problems, _report(
        "import cycles (break each by moving the shared piece down a floor, or the caller up)", problems
    )


def test_every_package_is_on_a_floor():
    floors = read_floors()
    packages = {package_of(m) for m in all_modules()} - {ROOT}
    missing = sorted(packages - set(floors))
    assert not missing, f"packages of relground/ not in the ```layers block of {DESIGN.relative_to(REPO)}: {missing}"
    stale = sorted(set(floors) - packages)
    assert not stale, f"the ```layers block of {DESIGN.relative_to(REPO)} names packages that do not exist: {stale}"


def test_imports_go_down_the_floors(graph):
    floors = read_floors()
    problems = []
    for imp in graph:
        src, dst = package_of(imp.source), package_of(imp.target)
        if src == dst or src == ROOT:
            continue
        if dst == ROOT:
            if imp.source not in ROOT_IMPORTS_ALLOWED:
                problems.append(f"{imp.where()}: {imp.source} imports the root package `relground` (the façade "
                                f"above every floor); import the module that defines the name instead")
            continue
        if src not in floors or dst not in floors:
            continue  # reported by test_every_package_is_on_a_floor
        if floors[dst] > floors[src]:
            problems.append(f"{imp.where()}: {imp.source} (floor {floors[src]}, {src}) imports {imp.target} "
                            f"(floor {floors[dst]}, {dst}): a higher floor")
        elif floors[dst] == floors[src]:
            problems.append(f"{imp.where()}: {imp.source} imports {imp.target}: {src} and {dst} are siblings on "
                            f"floor {floors[src]} and must not import each other")
    assert not problems, _report(
        f"imports against the floors of {DESIGN.relative_to(REPO)} (move the code down, or the caller up)", problems
    )


def test_no_relground_import_inside_a_function(graph):
    problems = [
        f"{imp.where()}: {imp.source} imports {imp.target} inside a function"
        for imp in graph
        if imp.local and (imp.source, imp.target) not in LOCAL_IMPORTS_ALLOWED
    ]
    assert not problems, _report(
        "relground imports inside functions (make them top-level; a lazy import needs an entry with its reason "
        "in LOCAL_IMPORTS_ALLOWED of tests/test_layers.py)", problems
    )


def test_the_checker_sees_what_it_should(tmp_path):
    """The parser: relative, attribute and TYPE_CHECKING imports, and functions."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from relground.engine import hooks\n"
        "from . import checkpoint\n"
        "from relground.engine.solver import build_optimizer\n"
        "if TYPE_CHECKING:\n"
        "    from relground.config import Config\n"
        "def f():\n"
        "    import relground.api\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = all_modules()
    found = {(i.target, i.local) for i in imports_of("relground.engine.fake", path, modules)}
    assert found == {("relground.engine.hooks", False), ("relground.engine.checkpoint", False),
                     ("relground.engine.solver", False), ("relground.api", True)}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


MAX_LINES = 400
LONG_FILE_REASON = "Over 400 lines because"


def test_a_file_over_400_lines_says_why_at_its_top():
    """A long module is a smell; one that stays long says why in its docstring (``Over 400 lines because ...``)."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if source.count("\n") > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(source)) or ""
            if LONG_FILE_REASON not in docstring:
                unexplained.append(f"{path.relative_to(REPO)} ({source.count(chr(10))} lines)")
    assert not unexplained, f"files over {MAX_LINES} lines without '{LONG_FILE_REASON} ...' in their docstring: {unexplained}"
