"""benchmarks/common.py's provenance: the commit and cleanliness of the tree a run *started* from, and dirty if the
code changed while it ran (its own outputs under benchmarks/results/ aside)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
START = ("a" * 40, "")


@pytest.fixture
def common(monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        module = importlib.import_module("common")
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(module, "_AT_START", START)
    return module


@pytest.mark.parametrize(("now", "dirty"), [
    (START, False),
    (("a" * 40, " M benchmarks/results/evaluation_speed.json\n M benchmarks/results/defense_mnist/x/records.jsonl"),
     False),  # the run's own outputs
    (("a" * 40, " M attacks/pixel.py"), True),  # the code changed while it ran
    (("b" * 40, ""), True),  # a commit made in the middle of the run
])
def test_provenance_is_the_start_and_flags_a_change_on_the_way(common, monkeypatch, now, dirty):
    monkeypatch.setattr(common, "_tree_state", lambda: now)
    prov = common.provenance(None)
    assert prov["git_commit"] == "a" * 40
    assert prov["git_dirty"] is dirty


def test_a_run_that_started_dirty_stays_dirty(common, monkeypatch):
    monkeypatch.setattr(common, "_AT_START", ("a" * 40, " M eval/suites.py"))
    monkeypatch.setattr(common, "_tree_state", lambda: ("a" * 40, ""))  # restored before the end
    assert common.provenance(None)["git_dirty"] is True
