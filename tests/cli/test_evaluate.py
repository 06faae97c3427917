"""``manifold-defense evaluate``: a resumable evaluation with the registry's attacks."""

import json

import pytest

from manifold_defense.cli import main


class TestSmoke:
    def test_evaluate(self, digits_vae, digits_classifier, tmp_path, capsys):
        out = tmp_path / "ev"
        argv = ["evaluate", "--classifier", "digits-classifier", "--generator", "digits-vae", "--n", "24", "--quick",
                "--attack", "pgd_linf:0.1,0.3", "--attack", "fgsm_transfer", "--decision-subset", "4", "--quiet",
                "--out", str(out)]
        assert main(argv) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["n"] == 24
        seen = {k: v["accuracy"] for k, v in report["robust"].items()} | {"clean": report["clean"]["accuracy"]}
        assert report["robust"]["pgd_linf@0.3"]["accuracy"] < report["clean"]["accuracy"] - 0.3, seen
        assert report["robust"]["pgd_linf@0.3"]["accuracy"] <= report["robust"]["pgd_linf@0.1"]["accuracy"], seen
        assert "pgd_linf" in report["notes"] and (out / "examples.png").is_file()
        assert "worst linf" in capsys.readouterr().out
        # Rerunning resumes from the records instead of attacking again.
        lines = (out / "records.jsonl").read_text().count("\n")
        assert main(argv) == 0 and (out / "records.jsonl").read_text().count("\n") == lines


    def test_class_conditional_attack_with_judges(self, digits_class_vaes, digits_classifier, tmp_path, capsys):
        out = tmp_path / "cc"
        argv = ["evaluate", "--classifier", "digits-classifier", "--projection", "none", "--class-generator",
                "digits-class-vaes", "--attack", "on_manifold_cc:1,5", "--judge", "digits-robust-l2", "--n", "24",
                "--quick", "--decision-subset", "0", "--quiet", "--out", str(out)]
        assert main(argv) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["robust"]["on_manifold_cc@5"]["accuracy"] < report["clean"]["accuracy"]
        agree = report["judge_agreement"]["on_manifold_cc@5"]["digits-robust-l2"]
        assert agree["all"]["n"] == 24 and 0 <= agree["all"]["accuracy"] <= 1
        assert "## Judges" in (out / "report.md").read_text()


class TestException:
    @pytest.mark.parametrize("argv,match", [
        (["--classifier", "digits-classifier", "--projection", "none", "--attack", "on_manifold_cc"],
         "need --class-generator"),
        (["--classifier", "digits-classifier", "--projection", "none", "--attack", "on_manifold_cc",
          "--class-generator", "digits-vae"], "not class-conditional"),
        (["--classifier", "digits-classifier", "--projection", "none", "--class-generator", "digits-class-vaes"],
         "only used by on_manifold_cc"),
        (["--classifier", "digits-classifier", "--projection", "none", "--attack", "pgd_l7"], "unknown attack"),
        (["--classifier", "digits-classifier"], "needs --generator"),
        (["--classifier", "no-such-model", "--projection", "none"], "neither a checkpoint"),
        (["--classifier", "digits-classifier", "--projection", "none", "--n", "0"], "must be an integer >= 1, got 0"),
        (["--classifier", "digits-vae", "--generator", "digits-classifier"],
         "--classifier digits-vae is a generator in the zoo, not a classifier (swapped --classifier and --generator?)"),
        (["--classifier", "digits-classifier", "--projection", "none", "--surrogate", "default"],
         "--surrogate is not used by --projection none"),
        (["--classifier", "digits-classifier", "--projection", "none", "--start", "5", "--stop", "5"],
         "--stop (5) must be greater than --start (5)"),
    ])
    def test_refused(self, argv, match, tmp_path, capsys):
        assert main(["evaluate", *argv, "--out", str(tmp_path / "ev")]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
        assert not (tmp_path / "ev").exists()  # nothing written before the checks pass
