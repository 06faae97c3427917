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


PAGES = [README, ROOT / "docs" / "results.md"]


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in PAGES}


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    return rr.render(RESULTS)


def test_readme_tables_match_the_results_json(pages, blocks):
    report = rr.check_pages(pages, blocks)
    assert not report, "README.md or docs/results.md is out of date with benchmarks/results/*.json; run " \
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


def test_every_block_has_a_json_and_every_json_a_block(pages):
    shown = {n for text in pages.values() for n in rr.blocks_in(text)}
    on_disk = {p.stem for p in RESULTS.glob("*.json")} | {"headline"}
    assert shown == on_disk, (f"blocks without JSON: {sorted(shown - on_disk)}; "
                              f"JSON without a block: {sorted(on_disk - shown)}")
    opened = [n for text in pages.values() for n in re.findall(r"<!-- results:([\w.-]+) -->", text)]
    assert len(opened) == len(set(opened)) == len(shown), "duplicate or unclosed result markers"
    assert "headline" in rr.blocks_in(pages["README.md"])


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


def test_a_row_measured_by_its_suite_alone_shows_its_clean_accuracy_and_images():
    """The ABS row has no separate clean pass: its clean accuracy is the suite's, on its own (smaller) image count."""
    interval = [0.9, 1.0]
    d = {"models": {"a": {"clean": {"accuracy": 0.99, "n": 1000, "ci95": interval}},
                    "abs": {"standard_suite": {"clean": {"accuracy": 0.97, "n": 100, "ci95": interval},
                                               "worst_case": {}}}}}
    rows = {line.split(" | ")[0]: line for line in rr.robust_mnist(d).splitlines() if line.startswith("| `")}
    assert "0.97" in rows["| `abs` (first 100)"] and "0.99" in rows["| `a`"]
    assert "first 100, 1000 test images" in rr.robust_mnist(d)


def test_an_unfinished_worst_case_is_marked_as_a_bound():
    """A suite whose escalation still broke samples, and a worst case AutoAttack did not finish, read as bounds."""
    e = {"accuracy": 0.48, "n": 100, "ci95": [0.38, 0.58]}
    d = {"models": {"abs": {"standard_suite": {"clean": e, "worst_case": {"l2@2": e}, "converged": {"l2@2": False}},
                            "autoattack_on_survivors": {"l2": {"indices": list(range(48)), "not_run": "flag"}},
                            "worst_case": {"l2": {**e, "upper_bound": "AutoAttack did not run"}},
                            "latent_descent": {"l2": {"worst_case": {**e, "accuracy": 0.76}}}}}}
    text = rr.robust_mnist(d)
    assert "not run on the 48 left" in text and "(not converged)" in text and "(upper bound)" in text
    assert "paper's own attack alone" in text and "0.76" in text
    d["models"]["abs"]["standard_suite"]["sanity"] = {"gradients_informative": False, "monotone_in_epsilon": True}
    assert "(fails gradients_informative)" in rr.robust_mnist(d)
    d["models"]["abs"]["standard_suite"]["sanity"] = {"monotone_in_epsilon": True}
    del d["models"]["abs"]["standard_suite"]["converged"], d["models"]["abs"]["worst_case"]["l2"]["upper_bound"]
    assert "(not converged)" not in rr.robust_mnist(d) and "(upper bound)" not in rr.robust_mnist(d)


def test_a_defended_row_is_set_beside_the_same_budget_models_alone():
    """The seed's claim: a defended row shows its worst cases and the same-budget classifiers' alone on its images."""
    e = {"accuracy": 0.5, "n": 100, "ci95": [0.4, 0.6]}
    alone = {"accuracy": 0.83, "n": 100, "ci95": [0.75, 0.89]}
    d = {"models": {"defended_rmd_linf_ft": {"standard_suite": {"clean": e, "worst_case": {"linf@0.3": e, "l2@2": e}},
                                             "same_budget_undefended": {"trades_linf_ft": {"linf": alone, "l2": e}}}}}
    text = rr.robust_mnist(d)
    assert "The seed's claim, `defended_rmd_linf_ft` (first 100)" in text and "`trades_linf_ft` ℓ∞ 0.3 0.83" in text
    del d["models"]["defended_rmd_linf_ft"]["same_budget_undefended"]
    assert "seed's claim" not in rr.robust_mnist(d)
