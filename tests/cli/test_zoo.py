"""``manifold-defense zoo``: list, show, build."""

import json

from manifold_defense import zoo
from manifold_defense.cli import main


class TestSmoke:
    def test_list(self, digits_classifier, capsys):
        assert main(["zoo", "list"]) == 0
        out = capsys.readouterr().out
        assert "digits-classifier" in out and "built" in out and "mnist-wgan" in out
        assert main(["zoo", "list", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["name"] for r in rows} == set(zoo.names())

    def test_show(self, digits_vae, tmp_path):
        assert main(["zoo", "show", "digits-vae", "--out", str(tmp_path / "s.png"), "--rows", "2"]) == 0
        assert (tmp_path / "s.png").stat().st_size > 3000


class TestException:
    def test_show_a_classifier(self, digits_classifier, capsys):
        assert main(["zoo", "show", "digits-classifier"]) == 2
        assert "not a generator" in capsys.readouterr().err

    def test_build_an_unknown_model(self, capsys):
        assert main(["zoo", "build", "mnist-resnet"]) == 2
        assert "unknown zoo model 'mnist-resnet'" in capsys.readouterr().err

    def test_build_nothing(self, capsys):
        assert main(["zoo", "build"]) == 2
        assert "give model names or --all" in capsys.readouterr().err
