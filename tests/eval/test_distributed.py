"""``torchrun`` evaluation: each rank attacks its share of the batches; the records are exactly a single
process's, and the merged report is the same."""

import json
import os
import subprocess
import sys

from manifold_defense.eval.records import read_records


def _records(paths):
    out = []
    for p in paths:
        out += [{k: v for k, v in r.items() if k not in ("seconds", "digest")} for r in read_records(p)]
    return sorted(out, key=lambda r: (r["kind"], r.get("attack") or "", r.get("epsilon") or 0, r["start"]))


class TestDistributed:
    def test_two_processes_record_exactly_what_one_does(self, digits_classifier, digits_vae, tmp_path):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        common = ["evaluate", "--classifier", "digits-classifier", "--generator", "digits-vae", "--num-images", "32",
                  "--batch-size", "8", "--attack", "fgsm:0.1", "--attack", "pgd_linf:0.1", "--quick",
                  "--decision-subset", "0", "--quiet"]
        one = subprocess.run([sys.executable, "-m", "manifold_defense.cli", *common, "--out", str(tmp_path / "one")],
                             env=env, capture_output=True, text=True, timeout=900)
        assert one.returncode == 0, one.stderr
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                              "-m", "manifold_defense.cli", *common, "--out", str(tmp_path / "two")],
                             env=env, capture_output=True, text=True, timeout=900)
        assert two.returncode == 0, two.stderr
        shards = sorted((tmp_path / "two").glob("shard-*-of-2"))
        assert len(shards) == 2
        assert _records([tmp_path / "one" / "records.jsonl"]) == _records([s / "records.jsonl" for s in shards])
        r1 = json.loads((tmp_path / "one" / "report.json").read_text())
        r2 = json.loads((tmp_path / "two" / "report.json").read_text())
        assert r1["robust"] == r2["robust"] and r1["clean"] == r2["clean"] and r2["n"] == 32
