"""The layers' import rules, read from the source with `ast`: no cycles, each layer imports only
what it may, and the light entry points (analysis, the spec language) load no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("sweeps", "search_spaces", "trainable", "analysis")
ENGINES = {  # the modules of each engine: none may import another engine's
    "optuna": {"sweeps.optuna_engine", "sweeps.optuna_work", "sweeps.workers"},
    "ray": {"sweeps.ray_engine", "sweeps.ray_pbt", "sweeps.ray_schedulers"},
}


def _modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports anywhere in its file (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a non-module c: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    if path.name == "__init__.py":  # a package's __init__ importing its own submodules is fine
        found = {t for t in found if not t.startswith(name + ".")}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    assert "sweeps.record" in GRAPH["sweeps.study"]  # from . import compat, record
    assert "sweeps.study" in GRAPH["sweeps.optuna_work"]  # from . import ..., study as studies
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles_among_the_projects_modules():
    assert _cycle(GRAPH) is None


def _of(prefix: str) -> dict[str, set[str]]:
    return {name: deps for name, deps in GRAPH.items() if name == prefix or name.startswith(prefix + ".")}


def _reaching(prefix: str, layers: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(name, dep) for name, deps in _of(prefix).items() for dep in deps
            if dep.split(".")[0] in layers]


def test_the_trainable_imports_no_other_layer():
    assert _reaching("trainable", ("sweeps", "analysis", "search_spaces", "cli")) == []


def test_the_spec_language_imports_no_engine_or_analysis():
    assert _reaching("search_spaces", ("sweeps", "analysis", "cli")) == []


def test_analysis_reads_stored_results_only():
    """No trainable, no spec language, no CLI: what analysis knows of a sweep is what was stored."""
    assert _reaching("analysis", ("trainable", "search_spaces", "cli")) == []


def test_analysis_reads_sweeps_only_through_the_record_and_the_storage():
    assert [(name, dep) for name, dep in _reaching("analysis", ("sweeps",))
            if dep not in ("sweeps.record", "sweeps.storage")] == []


def test_no_engine_imports_another_engine():
    for engine, modules in ENGINES.items():
        others = set().union(*(m for e, m in ENGINES.items() if e != engine))
        assert [(name, GRAPH[name] & others) for name in modules if GRAPH[name] & others] == []


def test_the_shared_sweep_layers_import_no_engine():
    engines = set().union(*ENGINES.values())
    for name in ("sweeps", "sweeps.base", "sweeps.record", "sweeps.study", "sweeps.sampling", "sweeps.trial",
                 "sweeps.isolated", "sweeps.compat", "sweeps.storage", "sweeps.same_length"):
        assert not GRAPH[name] & engines, name


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import analysis", "import sweeps.record", "import sweeps.storage",
                                       "import sweeps"])
def test_light_entry_points_load_no_torch_and_no_engine(statement):
    loaded = _loaded_after(statement)
    assert "torch" not in loaded
    assert not loaded & {"sweeps.optuna_engine", "sweeps.ray_engine", "sweeps.trial", "trainable.run"}


def test_the_spec_language_loads_no_torch():
    assert "torch" not in _loaded_after("import search_spaces")
