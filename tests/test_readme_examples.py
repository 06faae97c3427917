"""The examples of the README and of every documentation page run as written, so they cannot go stale.

Per page, Python blocks run in order in one namespace (as a reader would paste them), on the embedded
digits; a block already run on another page (the README's example is also the docs' home page) is not run
twice: the names it defined there are given to the page that repeats it. A block the text marks ``<!-- needs: mnist -->`` (or another dataset) needs data or models the test
machine may not have; it is compiled and every name it imports from the library must exist. Every
``manifold-defense`` command line in a shell block must parse with the real argument parser, and every
benchmark a page runs must exist.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w-]+) -->\s*\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)


def _blocks(page: Path, lang: str) -> list[tuple[str | None, str, int]]:
    text = page.read_text()
    return [(m["needs"], m["code"], text[: m.start()].count("\n") + 1) for m in _BLOCK.finditer(text)
            if m["lang"] == lang]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _imports_resolve(code: str, where: str) -> None:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("manifold_defense"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{where}: {node.module} has no {alias.name}"


def test_setup_commands_come_first():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    assert lines[:4] == ["```bash", "pip install -e . && manifold-defense demo",
                         'pip install -e ".[test]" && pytest', "```"]


def test_the_readme_fits_on_a_few_screens():
    assert len(README.read_text().splitlines()) <= 250


def test_python_examples_run(digits_vae, digits_classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    ran, defined = 0, {}  # a block's code -> the names it left behind where it first ran
    for page in PAGES:
        namespace: dict = {}
        for needs, code, line in _blocks(page, "python"):
            if needs is not None:
                continue
            if code in defined:
                namespace.update(defined[code])
                continue
            try:
                exec(compile(code, f"{_name(page)}:{line}", "exec"), namespace)  # noqa: S102 - the pages are ours
            except Exception as exc:  # pragma: no cover - the message says which block broke
                pytest.fail(f"{_name(page)} example at line {line} failed: {type(exc).__name__}: {exc}")
            defined[code] = dict(namespace)
            ran += 1
    assert ran >= 12


def test_examples_that_need_mnist_still_match_the_api():
    marked = [(code, f"{_name(p)}:{line}") for p in PAGES for needs, code, line in _blocks(p, "python")
              if needs is not None]
    assert marked, "no example is marked as needing MNIST"
    for code, where in marked:
        compile(code, where, "exec")
        _imports_resolve(code, where)


def test_command_lines_parse():
    from manifold_defense.cli import build_parser

    parser = build_parser()
    checked = 0
    for page in PAGES:
        for _, code, line in _blocks(page, "bash"):
            for cmd in code.replace("\\\n", " ").splitlines():
                cmd = cmd.split("#")[0].strip()
                if "manifold-defense " not in cmd or cmd.startswith("pip "):
                    continue
                argv = shlex.split(cmd[cmd.index("manifold-defense ") + len("manifold-defense "):])
                argv = [a for a in argv if "[" not in a]  # "[--quick]"-style optional markers are prose
                try:
                    parser.parse_args(argv)
                except SystemExit:  # pragma: no cover
                    pytest.fail(f"{_name(page)} line {line}: `manifold-defense {' '.join(argv)}` does not parse")
                checked += 1
    assert checked >= 8


def test_benchmark_commands_name_real_scripts():
    scripts = [s for page in PAGES for s in re.findall(r"python (benchmarks/\w+\.py)", page.read_text())]
    assert scripts and all((ROOT / s).is_file() for s in scripts), scripts


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(((?:docs/)?[\w-]+\.md)(?:#[\w-]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{_name(page)} links to {target}, which does not exist"
