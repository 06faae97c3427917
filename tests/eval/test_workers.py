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


_SLEEPER = '''
import os, sys, time
from manifold_defense import data, zoo
from manifold_defense.attacks import Attack
from manifold_defense.eval import AttackSpec, evaluate


class Sleeps(Attack):
    norm = "linf"

    def run(self, model, x, y, epsilon):
        open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
        time.sleep(600)
        return x


if __name__ == "__main__":
    x, y = data.load("digits", "test")
    evaluate(zoo.get("digits-classifier"), x[:16], y[:16], [AttackSpec("sleeps", Sleeps(), [0.1], "linf")],
             batch_size=8, workers=2, progress=False)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_killing_the_evaluation_takes_its_workers_with_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "sleeper.py"
    script.write_text(_SLEEPER)
    main = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline and main.poll() is None:
            time.sleep(0.5)
        workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        assert len(workers) == 2, "the workers never started"
        main.send_signal(signal.SIGKILL)  # no handler runs: the workers must notice on their own
        main.wait()
        deadline = time.monotonic() + 20
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(map(_alive, workers)), "orphaned workers kept running"
    finally:
        if main.poll() is None:
            main.kill()
