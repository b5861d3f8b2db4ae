"""The core library's shape: no import cycles, and nothing new loose at its top.

Every ``import`` and ``from ... import`` inside ``sutazai/`` counts, at any depth: inside
functions and under ``TYPE_CHECKING`` too, since a deferred import is still a dependency
(it only hides the cycle from the interpreter). Modules are the nodes; a package's
``__init__`` is a module like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "sutazai"
#: The only modules allowed at the top of ``sutazai/``: settings, errors, and the three
#: small helpers every package uses (progress reporting, environment overlays, the setup
#: lock of embedded databases).
LOOSE = {"__init__", "config", "errors", "progress", "environ", "embedded_db"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in CORE.rglob("*.py")}


def imported(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The ``sutazai`` modules that ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from package import module" names a module; otherwise the module itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "import sutazai.x.y" -> the longest known
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> nx.DiGraph:
    found = modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(found)
    for name, path in found.items():
        for target in imported(path, name, set(found)):
            # a module that imports its own package's __init__ (for a re-export) is not
            # a cycle the reader has to untangle when the __init__ only re-exports
            graph.add_edge(name, target)
    return graph


def test_no_import_cycles_inside_the_core() -> None:
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()) if len(c) > 1)
    assert not cycles, "import cycles (deferred imports count too):\n" + "\n".join(
        " <-> ".join(c) for c in cycles[:20])


def test_no_new_loose_module_at_the_top_of_the_core() -> None:
    loose = {p.stem for p in CORE.glob("*.py")} - LOOSE
    assert not loose, (f"modules at the top of sutazai/: {sorted(loose)}; put each in the "
                       "package of its concern (see the module map in README.md)")


def test_the_graph_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """The walker itself: an import inside a function and a relative import both count."""
    source = ("from __future__ import annotations\nfrom . import b\n"
              "def f():\n    from sutazai.pkg.c import thing\n")
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"sutazai.pkg.a", "sutazai.pkg.b", "sutazai.pkg.c", "sutazai.pkg"}
    assert set(imported(path, "sutazai.pkg.a", known)) == {"sutazai.pkg.b", "sutazai.pkg.c"}
