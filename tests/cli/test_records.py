"""``manifold-defense records``: the status of an evaluation folder and the merge of its shards."""

import json

import pytest

from manifold_defense.attacks import FGSM, LinfPGD
from manifold_defense.cli import main
from manifold_defense.eval import AttackSpec, evaluate


def _specs():
    return [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False),
            AttackSpec("pgd_linf", LinfPGD(steps=5), [0.1], "linf")]


@pytest.fixture
def shards(digits_classifier, digits_test, tmp_path):
    """Two shards of one evaluation of 32 digits in batches of 8 (samples 0-15 and 16-31), and the unsharded run.
    Test image 214 (sample 14), which the classifier gets wrong, is in the first shard."""
    x, y = digits_test.images[200:232], digits_test.labels[200:232]
    run = {"batch_size": 8, "progress": False}
    evaluate(digits_classifier, x, y, _specs(), out_dir=tmp_path / "a", stop=16, **run)
    evaluate(digits_classifier, x, y, _specs()[:1], out_dir=tmp_path / "b", start=16, **run)  # pgd not started yet
    whole = evaluate(digits_classifier, x, y, _specs(), out_dir=tmp_path / "whole", **run)
    return tmp_path, x, y, run, whole


class TestSmoke:
    def test_status_counts_what_is_recorded_and_what_is_missing(self, shards, capsys):
        tmp, _, _, _, whole = shards
        assert main(["records", "status", str(tmp / "b"), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        cols = {c["column"]: c for c in status["columns"]}
        assert status["n"] == 32 and status["batch_size"] == 8
        assert set(cols) == {"clean", "fgsm@0.1"}  # the attack with no finished batch has no column
        assert cols["clean"]["recorded"] == 16 and cols["clean"]["missing"] == "0-15" and cols["clean"]["batches"] == 2
        assert main(["records", "status", str(tmp / "a"), "--json"]) == 0
        cols = {c["column"]: c for c in json.loads(capsys.readouterr().out)["columns"]}
        first = range(16)
        assert cols["clean"]["correct"] == sum(whole.clean[i] for i in first) == 15  # sample 14 is wrong
        for key in [("fgsm", 0.1), ("pgd_linf", 0.1)]:
            # a break counts only on a sample the model got right (an attack "succeeds" on every wrong one)
            assert cols[f"{key[0]}@0.1"]["broken"] == sum(whole.clean[i] and not whole.robust[key][i] for i in first)
        raw = [json.loads(line) for line in (tmp / "a" / "records.jsonl").read_text().splitlines()]
        assert sum(sum(r["broken_any"]) for r in raw if r.get("attack") == "pgd_linf") > cols["pgd_linf@0.1"]["broken"]
        assert main(["records", "status", str(tmp / "a")]) == 0
        table = capsys.readouterr().out
        assert "pgd_linf@0.1" in table and "16-31" in table

    def test_merged_shards_report_what_the_unsharded_run_reports(self, shards, digits_classifier, capsys):
        tmp, x, y, run, whole = shards
        assert main(["records", "merge", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "m")]) == 0
        assert "merged" in capsys.readouterr().out
        assert main(["records", "status", str(tmp / "m"), "--json"]) == 0
        cols = {c["column"]: c for c in json.loads(capsys.readouterr().out)["columns"]}
        assert cols["clean"]["missing"] == "" and cols["pgd_linf@0.1"]["missing"] == "16-31"
        # evaluating into the merged folder attacks only what no shard recorded (pgd on 16-31)
        ev = evaluate(digits_classifier, x, y, _specs(), out_dir=tmp / "m", **run)
        assert ev.robust == whole.robust and ev.clean == whole.clean
        lines = (tmp / "m" / "records.jsonl").read_text().splitlines()
        assert sum(json.loads(r).get("attack") == "pgd_linf" for r in lines) == 4  # 2 merged + 2 new batches


class TestException:
    def test_not_an_evaluation_folder(self, tmp_path, capsys):
        assert main(["records", "status", str(tmp_path)]) == 2
        assert "no run.json" in capsys.readouterr().err

    def test_merge_refuses_overlap_and_its_own_shard_and_writes_nothing(self, shards, capsys):
        tmp, *_ = shards
        before = (tmp / "a" / "records.jsonl").read_text()
        assert main(["records", "merge", str(tmp / "a"), str(tmp / "whole"), "--out", str(tmp / "m")]) == 2
        assert "overlap" in capsys.readouterr().err and not (tmp / "m" / "records.jsonl").exists()
        assert main(["records", "merge", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "a")]) == 2
        assert "one of the shards" in capsys.readouterr().err
        assert (tmp / "a" / "records.jsonl").read_text() == before
