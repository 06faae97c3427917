"""Local worker processes: the same records as one process, and a worker that dies loses only its batches."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
import torch

from manifold_defense.attacks import Attack, LinfPGD
from manifold_defense.eval import AttackBudget, AttackSpec, WorkerError, evaluate
from manifold_defense.eval.records import read_records


def _strip(records):
    keep = [{k: v for k, v in r.items() if k not in ("seconds", "digest")} for r in records]
    return sorted(keep, key=lambda r: (r["kind"], r.get("attack") or "", r.get("epsilon") or 0, r["start"]))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _DiesInAWorker(Attack):
    """PGD, except that a worker process given sample 13 dies on the spot (as an OOM kill would)."""

    norm = "linf"

    def __init__(self) -> None:
        self.pgd = LinfPGD(steps=3)

    def run(self, model, x, y, epsilon):
        if multiprocessing.parent_process() is not None and bool((x[:, 0, 0, 0] == 13 / 64).any()):
            os._exit(3)
        return self.pgd.run(model, x, y, epsilon)


class TestSmoke:
    @pytest.mark.slow
    def test_two_workers_record_exactly_what_one_process_does(self, digits_classifier, digits_test, tmp_path,
                                                            one_thread):
        x, y = digits_test.images[:32], digits_test.labels[:32]
        kw = dict(suite="standard", threats=["linf"], budget=AttackBudget.quick(), batch_size=8, progress=False)
        one = evaluate(digits_classifier, x, y, out_dir=tmp_path / "one", **kw)
        two = evaluate(digits_classifier, x, y, out_dir=tmp_path / "two", workers=2, **kw)
        assert _strip(read_records(tmp_path / "one" / "records.jsonl")) == \
            _strip(read_records(tmp_path / "two" / "records.jsonl"))
        assert one.worst_case() == two.worst_case() and one.stages == [
            {**s, "seconds": o["seconds"]} for s, o in zip(two.stages, one.stages)]


class TestException:
    @pytest.mark.slow
    def test_a_worker_that_dies_loses_only_its_batches(self, digits_classifier, digits_test, tmp_path, one_thread):
        x, y = digits_test.images[:32].clone(), digits_test.labels[:32]
        x[:, 0, 0, 0] = torch.arange(32) / 64  # an id the attack can see (a corner pixel of the digits)
        specs = [AttackSpec("pgd", _DiesInAWorker(), [0.1], "linf")]
        with pytest.raises(WorkerError, match="rerun"):
            evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "run", workers=2,
                     progress=False)
        kept = (tmp_path / "run" / "records.jsonl").read_text()
        pgd = [r for r in map(json.loads, kept.splitlines()) if r["kind"] == "attack"]
        assert all(13 not in r["indices"] for r in pgd)  # the dead worker's batch left no record
        resumed = evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "run", progress=False)
        assert (tmp_path / "run" / "records.jsonl").read_text().startswith(kept)  # nothing recorded was lost
        fresh = evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "fresh", progress=False)
        assert resumed.worst_case() == fresh.worst_case() and resumed.robust == fresh.robust
