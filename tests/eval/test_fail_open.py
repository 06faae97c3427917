"""The fail-open paths found by trying the library as a new user would: each one reported robustness that was
not measured. Every test here failed on the code before its fix."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from manifold_defense.attacks import FGSM, LinfPGD
from manifold_defense.defended import DefendedModel, ProjectionConfig
from manifold_defense.eval import AttackSpec, RecordError, evaluate, sanity_checks
from manifold_defense.eval.records import RecordStore, read_records, seal

FAST = ProjectionConfig(steps=10, restarts=1, search_candidates=50)


def _fgsm():
    return [AttackSpec("fgsm", FGSM(), [0.1], "linf", iterative=False)]


class _Wrapper(nn.Module):
    """A user's module around a defended model (e.g. input normalisation): weights alone do not say what it does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.input_shape, self.num_classes = inner.input_shape, inner.num_classes

    def forward(self, x):
        return self.inner(x)


def _cosine(t: int, steps: int) -> float:
    return 0.5


def _crippled(t: int, steps: int) -> float:
    return 0.0  # the projection never moves from its start


class TestFingerprints:
    def test_a_wrapped_defended_model_with_another_projection_is_refused(self, digits_classifier, digits_vae,
                                                                         digits_test, tmp_path):
        x, y = digits_test.images[:8], digits_test.labels[:8]
        good = _Wrapper(DefendedModel(digits_classifier, digits_vae, FAST))
        evaluate(good, x, y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)
        crippled = _Wrapper(DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=0, restarts=1,
                                                                                        search_candidates=50)))
        with pytest.raises(RecordError, match="model"):
            evaluate(crippled, x, y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)

    def test_a_swapped_function_setting_is_refused(self, digits_classifier, digits_vae, digits_test, tmp_path):
        x, y = digits_test.images[:8], digits_test.labels[:8]
        evaluate(DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=10, schedule=_cosine)), x, y,
                 _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)
        with pytest.raises(RecordError, match="model"):
            evaluate(DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=10, schedule=_crippled)), x,
                     y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)

    def test_a_function_is_fingerprinted_by_what_it_computes(self):
        from manifold_defense.eval.fingerprint import jsonable

        scale = 0.5
        def a(t, steps):  # noqa: E306
            return scale * t

        first = jsonable(a)
        scale = 0.25  # noqa: F841 — the closure reads the new value: another function
        assert jsonable(a) != first and jsonable(_cosine) != jsonable(_crippled)
        assert jsonable(_cosine) == jsonable(_cosine) and "_cosine" in jsonable(_cosine)["function"]


class TestChecksPerSampleSet:
    def test_a_shorter_run_then_the_full_range_runs_every_check(self, digits_classifier, digits_test, tmp_path):
        # the checks' records were keyed by --start only: --stop 10 then the whole range in one folder left two
        # checks "COULD NOT RUN" forever, and the worst case lost their breaks
        x, y = digits_test.images[:16], digits_test.labels[:16]
        specs = _fgsm() + [AttackSpec("pgd", LinfPGD(steps=5), [0.1], "linf")]
        kw = dict(decision_subset=4, gradient_subset=4, subset=8, convergence_subset=8, batch_size=8)
        part = evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "run", stop=4, progress=False)
        sanity_checks(part, digits_classifier, x, y, out_dir=tmp_path / "run" / "sanity", **kw)
        whole = evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "run", progress=False)
        sanity_checks(whole, digits_classifier, x, y, out_dir=tmp_path / "run" / "sanity", **kw)
        fresh = evaluate(digits_classifier, x, y, specs, batch_size=8, out_dir=tmp_path / "fresh", progress=False)
        sanity_checks(fresh, digits_classifier, x, y, out_dir=tmp_path / "fresh" / "sanity", **kw)
        assert None not in whole.sanity.values(), whole.sanity_details
        assert whole.sanity == fresh.sanity and whole.worst_case() == fresh.worst_case()


class TestRecordIntegrity:
    def _run(self, digits_classifier, digits_test, folder):
        x, y = digits_test.images[:16], digits_test.labels[:16]
        evaluate(digits_classifier, x, y, _fgsm(), batch_size=8, out_dir=folder, progress=False)
        return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]

    def test_a_hand_edited_record_is_an_error_not_a_number(self, digits_classifier, digits_test, tmp_path):
        records = self._run(digits_classifier, digits_test, tmp_path)
        r = next(r for r in records if r["kind"] == "attack" and any(r["broken"]))
        r["broken"] = r["broken_any"] = [False] * len(r["broken"])  # "nothing was broken"
        (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(RecordError, match="digest"):
            read_records(tmp_path / "records.jsonl")

    @pytest.mark.parametrize("change", ["indices out of order", "fewer verdicts", "above epsilon", "no digest"])
    def test_a_record_that_contradicts_itself_is_an_error(self, change, digits_classifier, digits_test, tmp_path):
        records = self._run(digits_classifier, digits_test, tmp_path)
        r = next(r for r in records if r["kind"] == "attack")
        body = {k: v for k, v in r.items() if k != "digest"}
        if change == "indices out of order":
            body["indices"] = body["indices"][::-1]
        elif change == "fewer verdicts":
            body["broken"] = body["broken"][:-1]
        elif change == "above epsilon":
            body["max_norm"] = 2 * body["epsilon"]
        records[records.index(r)] = body if change == "no digest" else seal(body)
        (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(RecordError):
            read_records(tmp_path / "records.jsonl")


class TestLock:
    def test_a_second_writer_is_refused_and_nothing_is_duplicated(self, digits_classifier, digits_test, tmp_path):
        x, y = digits_test.images[:8], digits_test.labels[:8]
        evaluate(digits_classifier, x, y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)
        before = (tmp_path / "records.jsonl").read_text()
        run = json.loads((tmp_path / "run.json").read_text())
        run.pop("format")
        with RecordStore(tmp_path, run):  # another process's evaluation holds the folder
            with pytest.raises(RecordError, match="another evaluation"):
                evaluate(digits_classifier, x, y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)
        assert (tmp_path / "records.jsonl").read_text() == before
        evaluate(digits_classifier, x, y, _fgsm(), batch_size=8, out_dir=tmp_path, progress=False)  # released

    def test_a_concurrent_process_is_refused(self, tmp_path):
        import subprocess
        import sys

        code = ("import sys, time; from manifold_defense.eval.records import RecordStore; "
                "s = RecordStore(sys.argv[1], {'batch_size': 1}); print('locked', flush=True); time.sleep(60)")
        holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(RecordError, match="being written"):
                RecordStore(tmp_path, {"batch_size": 1})
        finally:
            holder.kill()
            holder.wait()
        RecordStore(tmp_path, {"batch_size": 1}).close()  # a killed holder's lock is gone with it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_standard_suite_runs_on_cuda(digits_classifier, digits_vae, digits_test):
    from manifold_defense.eval import AttackBudget

    model = DefendedModel(digits_classifier.cuda(), digits_vae.cuda()).eval()
    x, y = digits_test.images[:16].cuda(), digits_test.labels[:16].cuda()
    ev = evaluate(model, x, y, suite="standard", budget=AttackBudget.quick(), batch_size=16, progress=False)
    assert ev.worst_case()[("linf", 0.3)][0] < ev.accuracy()[0]
