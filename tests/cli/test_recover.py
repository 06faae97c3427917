"""``manifold-defense recover``: the registry's recipes on the command line."""

import json

import pytest

from manifold_defense.cli import main


class TestSmoke:
    @pytest.mark.parametrize("method, extra", [("csgm", ["--steps", "200", "--restarts", "2"]),
                                               ("lasso_dct", ["--alpha", "0.3"]),
                                               ("dip", ["--steps", "200"])])
    def test_recover(self, method, extra, digits_vae, tmp_path):
        code = main(["recover", "--dataset", "digits", "--operator", "gaussian", "--m", "32", "--method", method,
                     "--n", "8", "--out", str(tmp_path), "--quiet", *extra])
        assert code == 0
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["n_images"] == 8 and len(metrics["per_image_mse"]) == 8
        # Predicting all zeros costs mean(x²) ≈ 0.2 on digits; every method must do far better at m = 32.
        assert metrics["per_pixel_mse"] < 0.1
        assert (tmp_path / "recovery.png").stat().st_size > 3000

    def test_inpainting_records_the_observed_count_as_m(self, tmp_path):
        assert main(["recover", "--operator", "inpainting", "--m", "40", "--method", "lasso", "--n", "2",
                     "--out", str(tmp_path)]) == 0
        assert json.loads((tmp_path / "metrics.json").read_text())["m"] == 40


class TestException:
    @pytest.mark.parametrize("argv, match", [
        (["--operator", "circulant", "--m", "100", "--method", "lasso"], "1 <= m <= n = 64"),
        (["--method", "csgm", "--alpha", "0.1"], "--alpha is not used by --method csgm"),
        (["--method", "lasso", "--steps", "10"], "--steps is not used by --method lasso"),
        (["--method", "dip", "--generator", "digits-vae"], "--generator is not used by --method dip"),
        (["--operator", "blur", "--m", "10"], "--m is not used by --operator blur"),
        (["--m", "20", "--generator", "digits-classifier"], "is a classifier in the zoo, not a generator"),
        (["--operator", "gaussian"], "needs m"),
        (["--noise", "-0.1"], "--noise: must be >= 0"),
    ])
    def test_refused(self, argv, match, tmp_path, capsys):
        assert main(["recover", *argv, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
