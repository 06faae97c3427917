"""``manifold-defense generate``: guided generation judged by an independent classifier."""

import json

from manifold_defense.cli import main


class TestSmoke:
    def test_generate(self, digits_vae, tmp_path, capsys):
        argv = ["generate", "--dataset", "digits", "--n", "3", "--targets", "0", "4", "7", "--steps", "90",
                "--frames", "3", "--quiet", "--out", str(tmp_path)]
        assert main(argv) == 0
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["n"] == 9 and metrics["targets"] == [0, 4, 7]
        assert metrics["judge"] != metrics["guide"]
        # the independent (standard) classifier agrees the guided images show their target classes
        assert metrics["judge_success_changed_class"] >= 0.6
        assert (tmp_path / "grid.png").stat().st_size > 3000
        from PIL import Image

        with Image.open(tmp_path / "morph.gif") as gif:
            assert gif.n_frames >= 4
        assert "judge success" in capsys.readouterr().out


class TestException:
    def test_bad_target(self, digits_vae, tmp_path, capsys):
        assert main(["generate", "--n", "2", "--targets", "12", "--steps", "5", "--quiet", "--out", str(tmp_path)]) == 2
        assert "target classes must be in [0, 10)" in capsys.readouterr().err

    def test_the_judge_is_never_the_guide(self, tmp_path, capsys):
        argv = ["generate", "--classifier", "digits-classifier", "--judge", "digits-classifier", "--out", str(tmp_path)]
        assert main(argv) == 2
        assert "not be independent" in capsys.readouterr().err

    def test_flags_a_method_ignores(self, tmp_path, capsys):
        assert main(["generate", "--method", "latent", "--radii", "0.2", "--out", str(tmp_path)]) == 2
        assert "--radii is not used by --method latent" in capsys.readouterr().err
