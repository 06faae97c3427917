"""mkdocs hook: the package as one folder tree for the API reference.

``pyproject.toml`` maps ``attacks/``, ``generators/`` and ``eval/`` into the ``manifold_defense`` namespace;
griffe (mkdocstrings' reader) finds a package's modules by walking its folder (links are followed to their
real folder, so they will not do). When the configuration is loaded this hook copies the Python sources into
``build/api-src/manifold_defense/`` as one tree, so the reference reads the source (nothing is imported)
under the names users import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "api-src" / "manifold_defense"
MAPPED = {"attacks": "attacks", "generators": "generators", "eval": "eval"}


@event_priority(100)  # before mkdocstrings' own on_config, which starts the handler
def on_config(config):  # noqa: ANN001 — mkdocs' hook signature
    """Build the tree when the configuration is loaded: mkdocstrings' Python handler drops a search path
    that does not exist yet when it starts (its ``paths`` are globbed), so building it later (``on_pre_build``)
    fails on a fresh clone and passes wherever an earlier build left the tree."""
    if TREE.exists():
        shutil.rmtree(TREE)
    keep = shutil.ignore_patterns("__pycache__", "weights", "*.pt")
    shutil.copytree(ROOT / "manifold_defense", TREE, ignore=keep)
    for name, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, TREE / name, ignore=keep)
    return config


def on_files(files, config):  # noqa: ANN001 — mkdocs' hook signature
    """The plots of ``benchmarks/results/`` (linked from the pages as ``../benchmarks/results/NAME.png``, which
    is where they are on GitHub) are published as ``assets/results/NAME.png``."""
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"assets/results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001, ARG001
    return markdown.replace("](../benchmarks/results/", "](assets/results/")
