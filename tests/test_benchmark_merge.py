"""``benchmarks/defense_mnist.py --merge``: rows run in parallel processes are joined without losing or
mixing anything (the committed benchmark JSON, split by row, is the fixture); ``--shard``: batches of a row run in
parallel record only their samples and columns, and report nothing."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
COMMITTED = BENCH / "results" / "defense_mnist.json"


@pytest.fixture(scope="module")
def defense_mnist():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("defense_mnist")
    finally:
        sys.path.remove(str(BENCH))


def _only(d: dict, rows: list[str]) -> dict:
    """``d`` as a run of just ``rows`` would have written it."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and set(v) <= set(d["accuracy"]) and k not in ("config", "provenance"):
            out[k] = {r: x for r, x in v.items() if r in rows}
        else:
            out[k] = v
    return out


def _split(tmp_path: Path, parts: list[list[str]]) -> list[str]:
    d = json.loads(COMMITTED.read_text())
    files = []
    for i, rows in enumerate(parts):
        f = tmp_path / f"part{i}.json"
        f.write_text(json.dumps(_only(d, rows)))
        files.append(str(f))
    return files


def test_merge_rebuilds_every_row(defense_mnist, tmp_path):
    committed = json.loads(COMMITTED.read_text())
    rows = list(committed["accuracy"])
    files = _split(tmp_path, [rows[:2], rows[2:]])
    out = tmp_path / "merged.json"
    assert defense_mnist.main(["--suite", "per-attack", "--merge", *files, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    for key in ("n", "accuracy", "stderr", "ci95", "sanity", "sanity_details", "robustbench", "projection",
                "projection_attacked", "extra_columns", "autoattack_full", "seconds"):
        assert merged[key] == committed[key], key
    assert merged["missing_rows"] == committed["missing_rows"]
    assert [s["rows"] for s in merged["merged_from"]] == [rows[:2], rows[2:]]
    assert merged["total_seconds"] == pytest.approx(sum(v["seconds"] for v in committed["seconds"].values()))


def test_merge_with_a_row_missing_says_so(defense_mnist, tmp_path):
    rows = list(json.loads(COMMITTED.read_text())["accuracy"])
    out = tmp_path / "merged.json"
    assert defense_mnist.main(["--suite", "per-attack", "--merge", *_split(tmp_path, [rows[:1], rows[2:]]), "--out", str(out)]) == 0
    kept = rows[:1] + rows[2:]
    assert json.loads(out.read_text())["missing_rows"] == [r for r in defense_mnist.ROWS if r not in kept]
    assert rows[1] in json.loads(out.read_text())["missing_rows"]


@pytest.mark.parametrize("case", ["same row twice", "other generator", "other budget", "a column missing"])
def test_merge_refuses_rows_that_do_not_belong_together(defense_mnist, tmp_path, capsys, case):
    rows = list(json.loads(COMMITTED.read_text())["accuracy"])
    files = _split(tmp_path, [rows[:2], rows[1:]] if case == "same row twice" else [rows[:2], rows[2:]])
    if case != "same row twice":
        d = json.loads(Path(files[1]).read_text())
        if case == "other generator":
            d["config"]["generator"] = "mnist-wgan"
        elif case == "a column missing":  # an older run's row, before a stronger attack was added to it
            row = next(r for r in d["accuracy"] if r in d.get("extra_columns", {}))
            d["extra_columns"][row].popitem()
        else:
            d["config"]["budget"]["pgd_steps"] += 1
        Path(files[1]).write_text(json.dumps(d))
    out = tmp_path / "merged.json"
    with pytest.raises(SystemExit):
        defense_mnist.main(["--suite", "per-attack", "--merge", *files, "--out", str(out)])
    assert "--merge" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_merge_accepts_a_file_from_before_a_budget_field_existed(defense_mnist, tmp_path):
    """A field added to AttackBudget later budgets only an attack the older file never ran (the column check
    above catches a row that lacks it): the file's own fields are compared."""
    rows = list(json.loads(COMMITTED.read_text())["accuracy"])
    files = _split(tmp_path, [rows[:2], rows[2:]])
    d = json.loads(Path(files[0]).read_text())
    d["config"]["budget"].pop("range_targets", None)
    d["config"]["budget"].pop("on_manifold_cc_steps")
    Path(files[0]).write_text(json.dumps(d))
    out = tmp_path / "merged.json"
    assert defense_mnist.main(["--suite", "per-attack", "--merge", *files, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == json.loads(COMMITTED.read_text())["accuracy"]


@pytest.mark.parametrize("field", ["pgd_steps", "range_targets"])
def test_merge_refuses_a_file_without_a_budget_field_its_attacks_use(defense_mnist, tmp_path, capsys, field):
    """pgd_steps budgets BPDA, which every row ran; range_targets budgets the dead-zone row's range-target column."""
    rows = list(json.loads(COMMITTED.read_text())["accuracy"])
    files = _split(tmp_path, [rows[:2], rows[2:]])  # the second part holds the dead-zone row
    d = json.loads(Path(files[1]).read_text())
    d["config"]["budget"].pop(field)
    Path(files[1]).write_text(json.dumps(d))
    out = tmp_path / "merged.json"
    with pytest.raises(SystemExit):
        defense_mnist.main(["--suite", "per-attack", "--merge", *files, "--out", str(out)])
    assert field in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def on_digits(defense_mnist, monkeypatch, digits_classifier, digits_vae, digits_test):
    """The script on the embedded digits: its zoo and data calls get the digits classifier, VAE and test set."""
    models = {"mnist-classifier-a": digits_classifier, "mnist-vae20": digits_vae}
    monkeypatch.setattr(defense_mnist.zoo, "get", lambda name, **kw: models[name])
    monkeypatch.setattr(defense_mnist.data, "load", lambda *a, **kw: digits_test)
    return defense_mnist


def test_shard_records_only_its_batches_and_columns(on_digits, tmp_path):
    from manifold_defense.eval.records import read_records

    out = tmp_path / "shard.json"
    cols = ["pgd_linf_0.3_bpda_eot", "fgsm_linf_0.3_transfer"]
    argv = ["--suite", "per-attack", "--rows", "undefended", "--n", "12", "--batch-size", "4", "--small-budget",
            "--quiet", "--shard", "4:8", "--columns", *cols, "--out", str(out)]
    assert on_digits.main(argv) == 0
    records = read_records(tmp_path / "shard" / "undefended" / "records.jsonl")
    assert {r["start"] for r in records} == {4}
    assert [r["kind"] for r in records].count("clean") == 1
    assert [r["attack"] for r in records if r["kind"] == "attack"] == cols
    assert all(r["indices"] == [4, 5, 6, 7] for r in records)
    # the FGSM transfer attack breaks some of the undefended classifier's correct digits at ε = 0.3
    assert any(any(r["broken"]) for r in records if r["kind"] == "attack")
    assert not out.exists() and not out.with_suffix(".md").exists()  # a shard reports nothing


def test_a_suite_run_reports_worst_cases_and_what_each_attack_added(on_digits, tmp_path):
    out = tmp_path / "suite.json"
    argv = ["--rows", "undefended", "--n", "12", "--batch-size", "6", "--small-budget", "--quiet", "--out", str(out)]
    assert on_digits.main(argv) == 0  # the standard suite by default
    row = json.loads(out.read_text())["rows"]["undefended"]
    assert row["worst_case"]["linf@0.3"]["accuracy"] < row["clean"]["accuracy"] - 0.5
    assert row["stages"][0]["attack"] == "fgsm_transfer" and row["stages"][0]["attacked"] <= 12
    assert (tmp_path / "suite" / "undefended" / "report.md").is_file() and out.with_suffix(".md").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--columns", "fgsm_linf_0.3_transfer"], "--columns needs --shard"),
    (["--shard", "0:100", "--columns", "pgd_linf_9_bpda"], "has no column"),
    (["--rows", "undefended", "--shard", "0:100", "--columns", "pgd_linf_0.3_implicit_full"], "has no column"),
    (["--shard", "4"], "START:STOP"),
    (["--shard", "8:4"], "0 <= START < STOP"),
    (["--shard", "10:20", "--row-batch-size", "defended_default=20"], "multiple of each row's batch size"),
])
def test_shard_refuses_bad_arguments(defense_mnist, tmp_path, capsys, argv, message):
    out = tmp_path / "shard.json"
    with pytest.raises(SystemExit):
        defense_mnist.main([*argv, "--out", str(out)])
    assert message in capsys.readouterr().err
    assert not out.with_suffix("").exists()  # refused before any folder is made

