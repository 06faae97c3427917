"""README's "Measured results" tables are exactly what ``benchmarks/render_readme.py`` renders from the committed
``benchmarks/results/*.json`` (fix a failure with ``python benchmarks/render_readme.py``)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rr = _load("render_readme")


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    return rr.render(RESULTS)


def test_readme_tables_match_the_results_json(readme, blocks):
    report = rr.check(readme, blocks)
    assert not report, "README.md is out of date with benchmarks/results/*.json; run " \
                       "`python benchmarks/render_readme.py`:\n" + report


def test_the_check_fails_when_a_number_changes(readme, blocks):
    text = rr.update(readme, blocks)
    assert rr.check(text, blocks) == ""
    m = next(rr.BLOCK.finditer(text))
    number = re.search(r"(?m)^\|[^\n]*?\d\.(\d+)", m["body"])  # the first decimal number in a table row
    i = m.start("body") + number.end(1) - 1  # its last digit
    tampered = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    report = rr.check(tampered, blocks)
    assert report and "rendered from the JSON" in report
    assert any(line.startswith("-") and not line.startswith("---") for line in report.splitlines())


def test_every_block_has_a_json_and_every_json_a_block(readme):
    in_readme = set(rr.blocks_in(readme))
    on_disk = {p.stem for p in RESULTS.glob("*.json")}
    assert in_readme == on_disk, (f"README blocks without JSON: {sorted(in_readme - on_disk)}; "
                                  f"JSON without README block: {sorted(on_disk - in_readme)}")
    opened = re.findall(r"<!-- results:([\w.-]+) -->", readme)
    assert len(opened) == len(set(opened)) == len(in_readme), "duplicate or unclosed result markers"


def test_source_line_uses_provenance_and_never_invents_it():
    assert "commit not recorded, date not recorded; command: not recorded" in rr.source("x", {})
    prov = {"git_commit": "0123456789abcdef", "git_dirty": True, "date": "2026-01-02T03:04:05+00:00",
            "command": "benchmarks/x.py --quick"}
    line = rr.source("x", {"provenance": prov})
    assert "commit 0123456-dirty, 2026-01-02T03:04:05+00:00; command: `benchmarks/x.py --quick`" in line


def test_provenance_is_json_safe_and_complete():
    common = _load("common")
    prov = common.provenance(argparse.Namespace(out=Path("a/b.json"), widths=(1, 2), quick=True))
    assert set(prov) == {"git_commit", "git_dirty", "date", "command", "config", "torch", "torch_threads",
                         "library_version"}
    assert prov["config"] == {"out": "a/b.json", "widths": [1, 2], "quick": True}
    assert prov["git_dirty"] in (True, False, None)
    json.dumps(prov)
