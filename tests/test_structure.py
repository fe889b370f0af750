"""Package structure: data flows one way, so no two modules import each other (directly or through others).

Every import counts, also those deferred into a function or kept for type checking only: a deferred import hides
a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

import droneseg

ROOT = Path(droneseg.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name and t != "droneseg"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert "droneseg.report" in graph["droneseg.evaluate"]  # the scan sees imports
    assert cycles(graph) == []


def _reached(graph: dict[str, set[str]], start: list[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return seen


LIGHTNING_FREE = ["droneseg.config", "droneseg.evaluate", "droneseg.predict", "droneseg.export", "droneseg.session",
                  "droneseg.data.offline", "droneseg.runs", "droneseg.artifact"]


@pytest.mark.parametrize("module", LIGHTNING_FREE)
def test_lightning_stays_out_of_config_evaluate_predict_and_export(module):
    """Their import path must not pay ``import lightning`` (seconds) nor depend on the training engine, counting
    deferred imports."""
    seen = _reached(import_graph(), [module])
    assert not any(m.startswith("droneseg.engine") or m == "droneseg.data.datamodule" for m in seen), sorted(seen)


PROBE = """
import sys
from droneseg.cli import main
for argv in (["augment", "--help"], ["evaluate", "--help"], ["predict", "--help"], ["export", "--help"],
             ["check-data", "--help"], ["train", "--help"], ["synth", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
import droneseg.config, droneseg.evaluate, droneseg.predict, droneseg.export, droneseg.session
droneseg.config.load_config("full")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")))
"""


@pytest.mark.slow
def test_commands_other_than_training_never_import_lightning():
    """What Python actually loads, not only what the scan sees: every command's help (train's too), reading a
    config, and importing evaluate, predict and export load no Lightning module."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    assert out.strip().splitlines()[-1] == "[]", out[-2000:]
