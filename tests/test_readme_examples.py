"""The README's examples run as written, so they cannot go stale.

Python blocks run in order in one namespace (as a reader would paste them), on the embedded digits. A
block the text marks ``<!-- needs: mnist -->`` needs MNIST models the test machine does not train; it is
compiled and every name it imports from the library must exist. Every ``manifold-defense`` command line in
a shell block must parse with the real argument parser.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w-]+) -->\s*\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)


def _blocks(lang: str) -> list[tuple[str | None, str, int]]:
    text = README.read_text()
    return [(m["needs"], m["code"], text[: m.start()].count("\n") + 1) for m in _BLOCK.finditer(text)
            if m["lang"] == lang]


def _imports_resolve(code: str, line: int) -> None:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("manifold_defense"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"README line {line}: {node.module} has no {alias.name}"


def test_setup_commands_come_first():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    assert lines[:4] == ["```bash", "pip install -e . && manifold-defense demo",
                         'pip install -e ".[test]" && pytest', "```"]


def test_python_examples_run(digits_vae, digits_classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {}
    ran = 0
    for needs, code, line in _blocks("python"):
        if needs is None:
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README is ours
            except Exception as exc:  # pragma: no cover - the message says which block broke
                pytest.fail(f"README example at line {line} failed: {type(exc).__name__}: {exc}")
            ran += 1
    assert ran >= 6


def test_examples_that_need_mnist_still_match_the_api():
    marked = [(code, line) for needs, code, line in _blocks("python") if needs is not None]
    assert marked, "no example is marked as needing MNIST"
    for code, line in marked:
        compile(code, f"README.md:{line}", "exec")
        _imports_resolve(code, line)


def test_command_lines_parse():
    from manifold_defense.cli import build_parser

    parser = build_parser()
    checked = 0
    for _, code, line in _blocks("bash"):
        for cmd in code.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#")[0].strip()
            if "manifold-defense " not in cmd or cmd.startswith("pip "):
                continue
            argv = shlex.split(cmd[cmd.index("manifold-defense ") + len("manifold-defense "):])
            argv = [a for a in argv if "[" not in a]  # "[--quick]"-style optional markers are prose
            try:
                parser.parse_args(argv)
            except SystemExit:  # pragma: no cover
                pytest.fail(f"README line {line}: `manifold-defense {' '.join(argv)}` does not parse")
            checked += 1
    assert checked >= 8


def test_benchmark_commands_name_real_scripts():
    root = README.parent
    scripts = re.findall(r"python (benchmarks/\w+\.py)", README.read_text())
    assert scripts and all((root / s).is_file() for s in scripts), scripts
