"""The package's shape: no import cycles (module-level or deferred), modules of a readable size, and a public
API that is typed and documented."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: import name → folder (pyproject maps attacks/, generators/, eval/ into the namespace)
PACKAGES = {"manifold_defense": ROOT / "manifold_defense", "manifold_defense.attacks": ROOT / "attacks",
            "manifold_defense.generators": ROOT / "generators", "manifold_defense.eval": ROOT / "eval"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods.setdefault(".".join([pkg, *parts]), f)
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module → project modules it imports anywhere in its body (function-level imports count: a deferred
    import is still a dependency)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                dep = _resolve(t, mods)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


class TestLayers:
    def test_no_import_cycles(self):
        found = cycles(import_graph())
        assert not found, f"import cycles: {found}"

    def test_the_checker_sees_a_cycle(self):
        assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

    def test_only_the_api_imports_the_package_root(self):
        graph = import_graph()
        users = sorted(m for m, deps in graph.items() if "manifold_defense" in deps and m != "manifold_defense")
        assert not users, f"modules importing the package root (a cycle through the public API): {users}"

    def test_lower_layers_do_not_import_higher_ones(self):
        graph = import_graph()
        low = ("manifold_defense.validation", "manifold_defense.protocols", "manifold_defense.utils",
               "manifold_defense.checkpoint", "manifold_defense.operators", "manifold_defense.inversion")
        high = ("manifold_defense.attacks", "manifold_defense.eval", "manifold_defense.cli", "manifold_defense.zoo",
                "manifold_defense.training", "manifold_defense.defended")
        bad = [(m, d) for m, deps in graph.items() if m.startswith(low) for d in deps if d.startswith(high)]
        assert not bad, bad

    @pytest.mark.parametrize("name", sorted(_modules()))
    def test_module_size(self, name):
        lines = len(_modules()[name].read_text().splitlines())
        assert lines <= 420, f"{name} has {lines} lines"


def _public_objects():
    for name in sorted(_modules()):
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name:
                yield f"{name}.{attr}", obj


class TestPublicAPI:
    def test_documented(self):
        missing = [n for n, obj in _public_objects() if not inspect.getdoc(obj)]
        missing += [f"{n}.{k}" for n, obj in _public_objects() if inspect.isclass(obj) for k, f in vars(obj).items()
                    if inspect.isfunction(f) and not k.startswith("_") and not inspect.getdoc(getattr(obj, k))]
        assert not missing, f"public objects without a docstring: {missing}"

    def test_functions_typed(self):
        untyped = []
        for n, obj in _public_objects():
            funcs = [obj] if inspect.isfunction(obj) else [
                f for k, f in vars(obj).items() if inspect.isfunction(f) and (not k.startswith("_") or k == "__call__")]
            for f in funcs:
                sig = inspect.signature(f)
                params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")
                          and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                if any(p.annotation is inspect.Parameter.empty for p in params) or \
                        sig.return_annotation is inspect.Signature.empty:
                    untyped.append(n)
        assert not untyped, f"public functions without full type hints: {untyped}"

    def test_the_first_names_a_user_types(self):
        import manifold_defense as md

        for name in ("DefendedModel", "ProjectionConfig", "zoo", "data", "evaluate", "invert", "guided_generate"):
            assert getattr(md, name) is not None
        from manifold_defense.attacks import BPDA, AutoAttack, LatentPGD  # noqa: F401
