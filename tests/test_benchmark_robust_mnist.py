"""``benchmarks/robust_mnist.py``: a row's worst case over separate evaluations is the per-sample worst, never
above any one of them."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from manifold_defense.attacks import FGSM, LinfPGD
from manifold_defense.eval import AttackSpec, evaluate

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def robust_mnist():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("robust_mnist")
    finally:
        sys.path.remove(str(BENCH))


def _run(model, x, y, attack, name, folder):
    ev = evaluate(model, x, y, [AttackSpec(name, attack, [0.1], "linf")], out_dir=folder, progress=False,
                  batch_size=16)
    return {i for i, r in ev.robust[(name, 0.1)].items() if r}


def test_worst_over_is_the_per_sample_worst(robust_mnist, digits_classifier, digits_test, tmp_path):
    x, y = digits_test.images[:48], digits_test.labels[:48]
    a = _run(digits_classifier, x, y, FGSM(), "fgsm", tmp_path / "a")
    b = _run(digits_classifier, x, y, LinfPGD(steps=5, random_start=True, seed=3), "pgd", tmp_path / "b")
    assert not (a <= b or b <= a)  # each attack leaves samples the other breaks: a min over folders would not do
    both = robust_mnist._worst_over([tmp_path / "a", tmp_path / "b"], "linf", 0.1, len(y))
    assert both["correct"] == len(a & b) <= min(len(a), len(b))
    extra = sorted(a & b)[:1]  # a sanity check's break counts too
    assert robust_mnist._worst_over([tmp_path / "a", tmp_path / "b"], "linf", 0.1, len(y), extra)["correct"] == \
        len(a & b) - 1
    # a break within a smaller ball is one within a larger ball; another threat model's breaks nothing here
    assert robust_mnist._worst_over([tmp_path / "a", tmp_path / "b"], "linf", 0.2, len(y))["correct"] == len(a & b)
    assert robust_mnist._worst_over([tmp_path / "a"], "l2", 0.1, len(y))["correct"] == \
        int((digits_classifier(x).argmax(1) == y).sum())


def test_worst_over_the_first_images_of_a_larger_evaluation(robust_mnist, digits_classifier, digits_test, tmp_path):
    """A defended row's first 100 images against its classifier's row of 1000: only when asked for a subset."""
    x, y = digits_test.images[:48], digits_test.labels[:48]
    robust = _run(digits_classifier, x, y, FGSM(), "fgsm", tmp_path / "a")
    with pytest.raises(RuntimeError, match="beyond the first 16"):
        robust_mnist._worst_over([tmp_path / "a"], "linf", 0.1, 16)
    first = robust_mnist._worst_over([tmp_path / "a"], "linf", 0.1, 16, [0, 40], subset=True)
    assert (first["n"], first["correct"]) == (16, len({i for i in robust if i < 16} - {0}))


def test_worst_over_refuses_mixed_models_and_missing_samples(robust_mnist, digits_classifier, digits_test, tmp_path):
    x, y = digits_test.images[:32], digits_test.labels[:32]
    _run(digits_classifier, x, y, FGSM(), "fgsm", tmp_path / "a")
    flipped = y.clone()
    flipped[:8] = (flipped[:8] + 1) % 10  # other labels: the clean answers differ, as another model's would
    _run(digits_classifier, x, flipped, FGSM(), "fgsm", tmp_path / "b")
    with pytest.raises(RuntimeError, match="differs between evaluations"):
        robust_mnist._worst_over([tmp_path / "a", tmp_path / "b"], "linf", 0.1, 32)
    with pytest.raises(RuntimeError, match="do not cover"):
        robust_mnist._worst_over([tmp_path / "a"], "linf", 0.1, 40)


def test_an_attack_on_the_survivors_counts_for_the_images_it_attacked(robust_mnist, digits_classifier, digits_test,
                                                                     tmp_path):
    """A folder of a subset (the survivors of earlier attacks) maps its samples back to their test images."""
    x, y = digits_test.images[:48], digits_test.labels[:48]
    a = _run(digits_classifier, x, y, FGSM(), "fgsm", tmp_path / "a")
    alive = robust_mnist._survivors([tmp_path / "a"], "linf", 0.1, len(y))
    assert alive == sorted(a)
    b = _run(digits_classifier, x[alive], y[alive], LinfPGD(steps=5, random_start=True, seed=3), "pgd", tmp_path / "b")
    assert 0 < len(b) < len(alive)  # PGD breaks some of FGSM's survivors, not all
    both = robust_mnist._worst_over([tmp_path / "a", (tmp_path / "b", alive)], "linf", 0.1, len(y))
    assert both["correct"] == len(b)
    assert robust_mnist._survivors([tmp_path / "a", (tmp_path / "b", alive)], "linf", 0.1, len(y)) == \
        sorted(alive[i] for i in b)


def test_an_attack_on_fewer_images_than_a_batch_still_uses_the_workers(robust_mnist, digits_classifier, digits_test,
                                                                       tmp_path, monkeypatch):
    """AutoAttack on ABS's few survivors: fewer images than ``--batch-size`` with two workers run as two batches
    (evaluate refuses more workers than batches), and every image is attacked."""
    import argparse

    monkeypatch.setattr(robust_mnist, "REPO_ROOT", tmp_path)
    x, y = digits_test.images[:3], digits_test.labels[:3]
    args = argparse.Namespace(batch_size=100, workers=2, quiet=True)
    out = robust_mnist._attack(digits_classifier, x, y, "fgsm", "linf", tmp_path / "aa", args)
    assert out["worst_case"]["n"] == 3 and out["folder"] == "aa"
    from manifold_defense.eval.records import read_records

    starts = sorted(r["start"] for r in read_records(tmp_path / "aa" / "records.jsonl") if r["kind"] == "attack")
    assert starts == [0, 2]


@pytest.mark.parametrize("n, batch_size, workers", [(1000, 100, 2), (100, 50, 2), (48, 24, 2), (3, 2, 2), (1, 1, 1)])
def test_batching_gives_every_worker_a_batch(robust_mnist, n, batch_size, workers):
    """The defaults (--batch-size 100, --workers 2) on a defended row's 100 images: two batches, not a refusal."""
    import argparse

    assert robust_mnist._batching(n, argparse.Namespace(batch_size=100, workers=2)) == \
        {"batch_size": batch_size, "workers": workers}


def _recorded_config(robust_mnist, name: str, seed: int = 0) -> dict:
    """The ``config`` train_classifier records for benchmark recipe ``name`` (as its checkpoint would hold it)."""
    r = robust_mnist.RECIPES[name]
    objective = r.objective()  # train_classifier records an adversarial objective's settings, none for cross-entropy
    return {"batch_size": r.batch_size, "lr": r.lr, "schedule": r.schedule, "seed": seed, "epochs": r.epochs,
            "weight_decay": 0.0, "augment_shift": 0,
            **({"trainer": "adversarial", **objective.config()} if objective is not None else {"trainer": "standard"})}


@pytest.mark.parametrize("name", ["fast_linf", "trades_linf_ft", "standard_madry", "pgd_at_l2_madry_ft",
                                  "pgd_at_l2_madry_ft8"])
def test_exported_recipes_are_the_zoo_recipes(robust_mnist, name):
    """The zoo builds what the benchmark trained and exports (one edited without the other fails here)."""
    from manifold_defense import zoo

    entry = zoo.ENTRIES[robust_mnist.ZOO_NAMES[name]]
    config = _recorded_config(robust_mnist, name)
    assert robust_mnist.zoo_recipe_differences(name, entry, config, 0) == {}
    assert set(robust_mnist.zoo_recipe_differences(name, entry, {**config, "lr": config["lr"] * 2}, 0)) == {"lr"}
    assert set(robust_mnist.zoo_recipe_differences(name, entry, {**config, "objective": "other"}, 0)) == {"objective"}
    if "step_size" in config:
        assert set(robust_mnist.zoo_recipe_differences(name, entry, {**config, "step_size": 0.02}, 0)) == {"step_size"}
    assert "architecture/seed" in robust_mnist.zoo_recipe_differences(name, entry, config, 1)


def test_export_refuses_another_recipe_and_unfinished_runs(robust_mnist, monkeypatch, tmp_path):
    from manifold_defense import zoo

    entry = zoo.ENTRIES["mnist-fast-linf"]
    ckpt = {"metadata": {"config": {**_recorded_config(robust_mnist, "fast_linf"), "epochs": 9}}}
    with pytest.raises(SystemExit, match="another recipe.*epochs"):
        robust_mnist._check_zoo_recipe("fast_linf", entry, ckpt, 0)
    monkeypatch.setattr(robust_mnist, "checkpoint_path", lambda name, seed: tmp_path / f"{name}.pt")
    args = type("Args", (), {"recipes": ["fast_linf"], "seed": 0})
    with pytest.raises(SystemExit, match="no finished checkpoint"):
        robust_mnist.export(args)
    args.recipes = ["standard"]
    with pytest.raises(SystemExit, match="no zoo name"):
        robust_mnist.export(args)


def test_trained_models_outlive_the_training_cache(robust_mnist, monkeypatch, tmp_path):
    """On a new machine (no training checkpoint) the leaderboard measures, and warm starts from, the zoo's export of
    the same weights — one model for the records, so an evaluation begun on the checkpoint resumes on the export —
    and only an export of that recipe and seed."""
    from manifold_defense.eval.fingerprint import model_fingerprint
    from manifold_defense.models import build_model, save_model

    monkeypatch.setattr(robust_mnist, "checkpoint_path", lambda name, seed: tmp_path / f"{name}-{seed}.pt")
    trained = build_model("defensegan-classifier", {"model": "A"})
    save_model(tmp_path / "fast_linf-0.pt", trained, {"history": [{"cpu_seconds": 1.0}], "config": {"lr": 1.0}})
    from_checkpoint, ident = robust_mnist._trained("fast_linf", 0)
    (tmp_path / "fast_linf-0.pt").unlink()  # the cache is gone

    export = {"benchmark": {"recipe": "fast_linf", "seed": 0, "digest": ident["digest"]},
              "history": [{"cpu_seconds": 1.0}], "quality": {}}

    def zoo_get(name, **kw):  # as the zoo loads an export: a new model each time
        model = build_model("defensegan-classifier", {"model": "A"})
        model.load_state_dict(trained.state_dict())
        model.metadata = dict(export)
        return model

    monkeypatch.setattr(robust_mnist.zoo, "get", zoo_get)
    from_zoo, ident_zoo = robust_mnist._trained("fast_linf", 0)
    assert ident_zoo == ident and model_fingerprint(from_zoo) == model_fingerprint(from_checkpoint)
    fine_tuned = build_model("defensegan-classifier", {"model": "A"})
    assert robust_mnist._warm_start(fine_tuned, "fast_linf", 0, tmp_path / "ft.pt")["digest"] == ident["digest"]
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fine_tuned.state_dict().items())
    save_model(tmp_path / "ft.pt", fine_tuned, {"init": {"digest": "cd" * 32}})  # a run begun from other weights
    with pytest.raises(SystemExit, match="other weights"):
        robust_mnist._warm_start(fine_tuned, "fast_linf", 0, tmp_path / "ft.pt")
    assert robust_mnist._trained("fast_linf", 1) is None  # another seed's run
    assert robust_mnist._trained("standard", 0) is None  # a recipe the zoo does not hold
    export = {"history": []}  # the zoo's own build from the recipe: not the weights the leaderboard measured
    assert robust_mnist._trained("fast_linf", 0) is None


def test_recipes_build_their_architecture(robust_mnist):
    from manifold_defense.classifiers import DefenseGANClassifier, MadryMNISTClassifier

    assert isinstance(robust_mnist._classifier(robust_mnist.RECIPES["trades_linf_madry_ft"].arch), MadryMNISTClassifier)
    assert isinstance(robust_mnist._classifier(robust_mnist.RECIPES["trades_linf_ft"].arch), DefenseGANClassifier)
    for name, r in robust_mnist.RECIPES.items():  # a warm start continues the weights of its own architecture
        assert r.init is None or robust_mnist.RECIPES[r.init].arch == r.arch, name


def test_recipes_probe_the_threat_they_train_against(robust_mnist):
    """The between-epochs probe of an ℓ2 recipe is APGD-CE at ℓ2 2.0, not ℓ∞ 0.3 (an ℓ2 model reads ~0 there)."""
    assert robust_mnist.RECIPES["pgd_at_l2_ft"].threat == "l2"
    assert robust_mnist.probe_key("l2") == "apgd_ce_l2_2.0"
    for name, r in robust_mnist.RECIPES.items():
        if r.objective in (robust_mnist._rmd, robust_mnist._combined):  # ℓ∞ presets that load generators
            assert r.threat == "linf", name
            continue
        objective = r.objective()
        assert r.threat == getattr(objective, "norm", "linf"), name


def test_retrained_weights_get_their_own_row_and_folders(robust_mnist):
    """A recipe trained again (another digest) starts a new row in new folders; the earlier weights' row stays in the
    JSON, under ``earlier_weights``, so a retraining can never resume into (or overwrite) another model's numbers."""
    a, b = "a" * 64, "b" * 64
    assert robust_mnist._weights_folder("fast_linf", a) != robust_mnist._weights_folder("fast_linf", b)
    result = {"models": {"fast_linf": {"clean": 1}, "trades_linf_ft": {"digest": a, "clean": 2}}}
    robust_mnist._retire(result, "fast_linf", b)  # a row from before rows recorded their digest
    robust_mnist._retire(result, "trades_linf_ft", a)  # the same weights: resumed, not retired
    assert result["models"] == {"trades_linf_ft": {"digest": a, "clean": 2}}
    robust_mnist._retire(result, "trades_linf_ft", b)
    assert result == {"models": {}, "earlier_weights": {"fast_linf@unrecorded": {"clean": 1},
                                                        "trades_linf_ft@aaaaaaaaaaaa": {"digest": a, "clean": 2}}}


def test_a_warm_start_counts_its_whole_chain(robust_mnist, monkeypatch):
    rm = robust_mnist
    """A row started from a warm start counts every model up its chain, and NaN when a link holds other weights."""
    links = {"b": {"digest": "B", "init": {"recipe": "a", "digest": "A", "cpu_hours": 0.5}},
             "a": {"digest": "A", "init": None}}
    monkeypatch.setattr(rm, "_trained", lambda name, seed: (None, links[name]) if name in links else None)
    chain, hours = rm._start_chain({"recipe": "b", "digest": "B", "cpu_hours": 1.0}, 0)
    assert chain == ["b", "a"] and hours == 1.5
    links["a"]["digest"] = "retrained"
    assert math.isnan(rm._start_chain({"recipe": "b", "digest": "B", "cpu_hours": 1.0}, 0)[1])


def test_a_defended_row_alone_evaluates_no_classifier_and_claims_no_comparison(robust_mnist, monkeypatch, tmp_path):
    """``evaluate --no-undefended``: only the defended suite runs; the row compares with the classifier alone only
    when that classifier's own row measured the same weights (an earlier model's row is retired, never compared),
    and with the evaluated recipes of the same budget, undefended, on its images (the seed's claim)."""
    rm = robust_mnist
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    monkeypatch.setattr(rm.data, "load", lambda *a, **k: type("D", (), {"images": x, "labels": y}))
    monkeypatch.setattr(rm, "_trained", lambda name, seed: (torch.nn.Flatten(), {"digest": "d" * 64}))
    monkeypatch.setattr(rm, "RESULTS", tmp_path)
    monkeypatch.setattr(rm.zoo, "get", lambda name, **k: name)
    monkeypatch.setattr(rm, "DefendedModel", lambda clf, gen, cfg: torch.nn.Identity())
    monkeypatch.setattr(rm.ProjectionConfig, "for_generator", staticmethod(lambda gen: None))
    suites = []
    monkeypatch.setattr(rm, "_suite", lambda model, xs, ys, folder, args, threats, **k: suites.append(
        (len(xs), threats)) or {"worst_case": {}, "clean": rm._acc(len(xs), len(xs))})
    monkeypatch.setattr(rm, "_evaluate_undefended", lambda *a: pytest.fail("the classifier alone was evaluated"))
    monkeypatch.setattr(rm, "_row_worst_on_first", lambda row, n: {"first": n, "of": row["digest"]})
    (tmp_path / "robust_mnist.json").write_text(json.dumps({"models": {
        "pgd_at_linf_ft": {"digest": "e" * 64, "worst_case": {"linf": {}}},
        "trades_linf_ft": {"digest": "t" * 64, "worst_case": {"linf": {}}},  # same budget: set beside it
        "pgd_at_l2_ft": {"digest": "l" * 64, "worst_case": {"linf": {}}}}}))  # another budget: not
    args = argparse.Namespace(
        recipes=["pgd_at_linf_ft"], seed=0, n=8, defended_n=4, undefended=False, abs_n=0)
    result = rm.evaluate_rows(args, {"command": "this run"})
    assert suites == [(4, ("linf", "l2", "on_manifold"))]
    assert "undefended_worst_case" not in result["models"]["defended_pgd_at_linf_ft"]
    assert result["models"]["defended_pgd_at_linf_ft"]["same_budget_undefended"] == {
        "trades_linf_ft": {"first": 4, "of": "t" * 64}}
    assert "pgd_at_linf_ft" not in result["models"]  # the other weights' row went to earlier_weights
    assert result["earlier_weights"]["pgd_at_linf_ft@eeeeeeeeeeee"]["digest"] == "e" * 64
    # each row keeps the run that made it; rows this run did not touch keep theirs (here: none)
    assert result["models"]["defended_pgd_at_linf_ft"]["provenance"] == {"command": "this run"}
    assert "provenance" not in result["models"]["trades_linf_ft"]


def test_the_autoattack_column_attacks_each_image_once(robust_mnist, digits_classifier, digits_test, tmp_path,
                                                        monkeypatch):
    """An undefended row's AutoAttack column: the suite's cascade ran AutoAttack on what PGD left, so the column
    attacks only the images PGD broke — every clean-correct image exactly once — and an image neither attacked is
    refused, not counted robust; a suite that ran AutoAttack otherwise leaves the column to a whole run."""
    from manifold_defense.eval.records import read_records
    from manifold_defense.eval.suites import Stage, Suite

    rm, eps = robust_mnist, 0.05
    monkeypatch.setattr(rm, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(rm, "EPSILONS", {"linf": eps, "l2": 2.0})
    x, y = digits_test.images[:48], digits_test.labels[:48]
    suite = Suite("pgd-then-autoattack", 1, {"linf": (Stage("pgd_linf"), Stage("autoattack_linf", when="undefended"))},
                  escalation_rounds=0)
    wf = tmp_path / "weights"
    evaluate(digits_classifier, x, y, suite=suite, epsilons={"linf": [eps]}, threats=["linf"], out_dir=wf / "suite",
             progress=False, batch_size=16)
    args = argparse.Namespace(batch_size=100, workers=1, quiet=True)
    out = rm._autoattack_column(digits_classifier, x, y, wf, "linf", args, wf / "suite")

    def attacked(folder, index=None):
        recs = [r for r in read_records(folder / "records.jsonl") if r.get("attack") == "autoattack_linf"]
        at = (lambda i: i) if index is None else index.__getitem__
        return ({at(i) for r in recs for i in r["indices"]},
                {at(i) for r in recs for i, b in zip(r["indices"], r["broken"]) if not b})

    with torch.inference_mode():
        correct = set((digits_classifier(x).argmax(1) == y).nonzero().flatten().tolist())
    in_suite, left_in_suite = attacked(wf / "suite")
    rest = sorted(correct - in_suite)
    here, left_here = attacked(wf / "autoattack_linf_rest", rest)
    assert in_suite and here and not in_suite & here and in_suite | here == correct
    assert out["attacked"] == {"in_the_suite": len(in_suite), "here": len(here)}
    assert out["worst_case"]["correct"] == len(left_in_suite | left_here) and out["worst_case"]["n"] == len(y)
    assert not (wf / "autoattack_linf").exists()
    with pytest.raises(RuntimeError, match="did not attack"):  # PGD's breaks never met AutoAttack there
        rm._worst_over([wf / "suite"], "linf", eps, len(y), attack="autoattack_linf")
    # a suite folder without one batch's AutoAttack record: its survivors there met no AutoAttack, refused
    shutil.copytree(wf / "suite", tmp_path / "cut" / "suite")
    lines = (wf / "suite" / "records.jsonl").read_text().splitlines(keepends=True)
    cut = next(k for k, line in enumerate(lines) if json.loads(line).get("attack") == "autoattack_linf")
    (tmp_path / "cut" / "suite" / "records.jsonl").write_text("".join(lines[:cut] + lines[cut + 1:]))
    with pytest.raises(RuntimeError, match="did not attack .* images its earlier attacks left standing"):
        rm._autoattack_column(digits_classifier, x, y, tmp_path / "cut", "linf", args, tmp_path / "cut" / "suite")
    # the column at another budget than the suite's stage: the suite's verdicts are not its own, so a whole run
    monkeypatch.setattr(rm.AttackBudget, "full", classmethod(lambda cls: cls.quick()))
    whole = rm._autoattack_column(digits_classifier, x, y, wf, "linf", args, wf / "suite")
    assert "attacked" not in whole and attacked(wf / "autoattack_linf")[0] == correct
