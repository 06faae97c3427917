import json

import pytest

from manifold_defense import zoo
from manifold_defense.models import load_model
from manifold_defense.cli import main


def test_demo(digits_vae, digits_classifier, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "reconstruction MSE" in out and "pgd_linf_bpda" in out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["classifier"]["test_accuracy"] >= 0.95
    assert summary["generator"]["test_recon_mse_per_pixel"] < 0.04
    for name in ("digits_vae.png", "defense_grid.png", "defended/report.md", "undefended/accuracy_vs_epsilon.png"):
        assert (tmp_path / name).stat().st_size > 500
    und, dfd = summary["robustness"]["undefended"], summary["robustness"]["defended"]
    # The story the demo tells: the projection resists the non-adaptive transfer attack ...
    assert dfd["robust"]["fgsm_transfer@0.2"]["accuracy"] > und["robust"]["fgsm_transfer@0.2"]["accuracy"] + 0.2
    # ... and the adaptive BPDA attack is stronger against it than the transfer attack.
    assert dfd["robust"]["pgd_linf_bpda@0.3"]["accuracy"] <= dfd["robust"]["fgsm_transfer@0.3"]["accuracy"]
    assert all(und["sanity"].values()), (und["sanity_details"], {k: v["accuracy"] for k, v in und["robust"].items()})


def test_zoo_list(digits_classifier, capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits-classifier" in out and "built" in out and "mnist-wgan" in out
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(zoo.names())


def test_zoo_show(digits_vae, digits_classifier, tmp_path, capsys):
    assert main(["zoo", "show", "digits-vae", "--out", str(tmp_path / "s.png"), "--rows", "2"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 3000
    assert main(["zoo", "show", "digits-classifier"]) == 2
    assert "not a generator" in capsys.readouterr().err


def test_train_classifier_and_generator(tmp_path):
    assert main(["train-classifier", "--dataset", "digits", "--arch", "digits", "--epochs", "3",
                 "--out", str(tmp_path / "c.pt")]) == 0
    clf = load_model(tmp_path / "c.pt")
    assert clf.metadata["quality"]["test_accuracy"] > 0.5
    assert main(["train-generator", "--dataset", "digits", "--arch", "vae", "--epochs", "2", "--latent-dim", "4",
                 "--hidden", "32", "--out", str(tmp_path / "g.pt")]) == 0
    assert load_model(tmp_path / "g.pt").latent_dim == 4


@pytest.mark.parametrize("argv, match", [
    (["zoo", "build", "mnist-resnet"], "unknown zoo model"),
    (["train-generator", "--dataset", "digits", "--arch", "wgan", "--out", "x.pt"], "28x28"),
])
def test_exception(argv, match, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code, err = exc.code, str(exc)
    else:
        err = capsys.readouterr().err
    assert code != 0 and match in err


def test_exception_missing_mnist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(tmp_path))
    monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
    code = main(["train-classifier", "--dataset", "mnist", "--arch", "a", "--out", str(tmp_path / "a.pt")])
    assert code == 2 and "mnist.npz" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["csgm", "lasso_dct", "dip"])
def test_recover(method, digits_vae, tmp_path, capsys):
    code = main(["recover", "--dataset", "digits", "--operator", "gaussian", "--m", "32", "--method", method,
                 "--n", "8", "--steps", "200", "--restarts", "2", "--alpha", "0.01", "--out", str(tmp_path)])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and len(metrics["per_image_mse"]) == 8
    # Predicting all zeros costs mean(x²) ≈ 0.2 on digits; every method must do far better at m = 32.
    assert metrics["per_pixel_mse"] < 0.1
    assert (tmp_path / "recovery.png").stat().st_size > 3000


def test_generate(digits_vae, tmp_path, capsys):
    argv = ["generate", "--dataset", "digits", "--n", "3", "--targets", "0", "4", "7", "--steps", "90",
            "--frames", "3", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 9 and metrics["targets"] == [0, 4, 7]
    # the independent (standard) classifier agrees the guided images show their target classes
    assert metrics["judge_success_changed_class"] >= 0.6
    assert (tmp_path / "grid.png").stat().st_size > 3000
    from PIL import Image

    with Image.open(tmp_path / "morph.gif") as gif:
        assert gif.n_frames >= 4
    assert "judge success" in capsys.readouterr().out


def test_exception_generate_bad_target(digits_vae, tmp_path, capsys):
    assert main(["generate", "--n", "2", "--targets", "12", "--steps", "5", "--quiet", "--out", str(tmp_path)]) == 2
    assert "target classes must be in [0, 10)" in capsys.readouterr().err


def test_exception_recover_bad_m(tmp_path, capsys):
    assert main(["recover", "--operator", "circulant", "--m", "100", "--method", "lasso", "--out",
                 str(tmp_path)]) == 2
    assert "1 <= m <= n = 64" in capsys.readouterr().err


def test_evaluate(digits_vae, digits_classifier, tmp_path, capsys):
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


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "--classifier", "digits-classifier", "--projection", "none", "--attack", "pgd_l7"], "unknown attack"),
    (["evaluate", "--classifier", "digits-classifier"], "needs --generator"),
    (["evaluate", "--classifier", "no-such-model", "--projection", "none"], "neither a checkpoint"),
    (["evaluate", "--classifier", "digits-classifier", "--projection", "none", "--n", "0"], "--n must be"),
])
def test_exception_evaluate(argv, match, digits_classifier, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err
