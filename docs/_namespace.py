"""mkdocs hook: the package as one folder tree for the API reference.

``pyproject.toml`` maps ``attacks/``, ``generators/`` and ``eval/`` into the ``manifold_defense`` namespace;
griffe (mkdocstrings' reader) finds a package's modules by walking its folder (links are followed to their
real folder, so they will not do). Before a build this hook copies the Python sources into
``build/api-src/manifold_defense/`` as one tree, so the reference reads the source (nothing is imported)
under the names users import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "api-src" / "manifold_defense"
MAPPED = {"attacks": "attacks", "generators": "generators", "eval": "eval"}


def on_pre_build(config, **kwargs) -> None:  # noqa: ARG001 — mkdocs' hook signature
    if TREE.exists():
        shutil.rmtree(TREE)
    keep = shutil.ignore_patterns("__pycache__", "weights", "*.pt")
    shutil.copytree(ROOT / "manifold_defense", TREE, ignore=keep)
    for name, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, TREE / name, ignore=keep)


def on_files(files, config):  # noqa: ANN001 — mkdocs' hook signature
    """The plots of ``benchmarks/results/`` (linked from the pages as ``../benchmarks/results/NAME.png``, which
    is where they are on GitHub) are published as ``assets/results/NAME.png``."""
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"assets/results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001, ARG001
    return markdown.replace("](../benchmarks/results/", "](assets/results/")
