"""``manifold-defense demo``: the digits story end to end."""

import json
import logging

import pytest

from manifold_defense.cli import main


class TestSmoke:
    # the first command of the README prints no warning the user did not cause: every warning a user would see
    # (Python hides deprecation warnings raised outside __main__) is an error here, and no library logs one
    @pytest.mark.filterwarnings("error", "ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
    def test_demo_tells_the_story(self, digits_vae, digits_classifier, tmp_path, capfd, caplog):
        # capfd, not capsys: the demo's worker processes write to the inherited file descriptors
        assert main(["demo", "--out", str(tmp_path), "--quiet", "--n", "50", "--workers", "2"]) == 0
        captured = capfd.readouterr()
        out = captured.out
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "warning" not in captured.err.lower(), captured.err
        assert "test accuracy" in out and "reconstruction MSE" in out and "after pgd_linf_implicit" in out
        summary = json.loads((tmp_path / "demo.json").read_text())
        assert summary["classifier"]["test_accuracy"] >= 0.95
        assert summary["generator"]["test_recon_mse_per_pixel"] < 0.04
        for name in ("digits-vae.png", "defense_grid.png", "defended/report.md", "undefended/accuracy_vs_epsilon.png"):
            assert (tmp_path / name).stat().st_size > 500
        und, dfd = summary["robustness"]["undefended"], summary["robustness"]["defended"]
        assert dfd["suite"]["name"] == "standard" and "worst case (escalated)" in out
        added = {f"{s['attack']}@{s['epsilon']:g}": s["broken"] for s in dfd["stages"]}
        seen = {k: (und["robust"].get(k, {}).get("accuracy"), v["accuracy"]) for k, v in dfd["robust"].items()}
        # The story the demo tells: the projection resists the non-adaptive transfer attack ...
        assert dfd["robust"]["fgsm_transfer@0.2"]["accuracy"] > und["robust"]["fgsm_transfer@0.2"]["accuracy"] + 0.2, seen
        # ... the adaptive attacks break what it left (BPDA; the implicit gradient in l2) ...
        assert added["pgd_linf@0.3"] > 0 and added["pgd_l2_implicit@1"] > 0, added
        # ... and the worst case comes after all of them, escalated to convergence.
        assert dfd["worst_case"]["linf@0.3"]["accuracy"] <= dfd["robust"]["pgd_linf_implicit@0.3"]["accuracy"]
        assert dfd["worst_case"]["linf@0.2"]["accuracy"] < dfd["robust"]["fgsm_transfer@0.2"]["accuracy"] - 0.2, seen
        assert all(und["sanity"].values()), (und["sanity_details"], seen)


    @pytest.mark.mnist
    def test_mnist_demo_on_the_shipped_models(self, tmp_path, capsys):
        assert main(["demo", "--dataset", "mnist", "--out", str(tmp_path), "--quiet", "--n", "6"]) == 0
        summary = json.loads((tmp_path / "demo.json").read_text())
        assert summary["generator"]["name"] == "mnist-vae20" and summary["classifier"]["test_accuracy"] >= 0.98
        und, dfd = summary["robustness"]["undefended"], summary["robustness"]["defended"]
        assert und["robust"]["pgd_linf@0.3"]["accuracy"] == 0.0  # PGD breaks the undefended classifier A
        assert dfd["clean"]["accuracy"] >= 0.8 and "worst case (escalated)" in capsys.readouterr().out


class TestException:
    def test_mnist_without_its_data_says_where_to_put_it(self, tmp_path, capsys, monkeypatch):
        monkeypatch.delenv("MANIFOLD_DEFENSE_DATA", raising=False)
        assert main(["demo", "--dataset", "mnist", "--data-path", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "mnist.npz" in err
        assert not (tmp_path / "o" / "demo.json").exists()

    def test_data_path_needs_mnist(self, tmp_path, capsys):
        assert main(["demo", "--data-path", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
        assert "--data-path is for --dataset mnist" in capsys.readouterr().err

    def test_a_gpu_that_is_not_there(self, capsys, monkeypatch):
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert main(["demo", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA GPU" in err
