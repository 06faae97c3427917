"""Every failure of the command line is one line on stderr and exit code 2 (Ctrl-C: one line, exit 130), never a
traceback; misuse of the Python API is an error naming the problem where it happens."""

from __future__ import annotations

import json

import pytest
import torch

from manifold_defense.cli import main

DIGITS = ["--classifier", "digits-classifier", "--generator", "digits-vae", "--n", "8", "--batch-size", "8",
          "--attack", "fgsm:0.1", "--quick", "--decision-subset", "0", "--quiet"]


def _one_line(capsys, code: int, expect: int = 2, text: str | None = None) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expect, err
    assert len(lines) == 1 and "Traceback" not in err and "\x1b[" not in err, err
    if text is not None:
        assert text in err, err
    return err


@pytest.fixture
def folder(tmp_path, digits_classifier, digits_vae):
    """An evaluation folder of 8 digits (run once)."""
    out = tmp_path / "ev"
    assert main(["evaluate", *DIGITS, "--out", str(out)]) == 0
    return out


class TestException:
    def test_merge_into_an_existing_file_or_under_a_file(self, folder, tmp_path, capsys):
        (tmp_path / "file").write_text("x")
        _one_line(capsys, main(["records", "merge", str(folder), "--out", str(tmp_path / "file")]), text="a file")
        _one_line(capsys, main(["records", "merge", str(folder), "--out", str(tmp_path / "file" / "sub")]))
        _one_line(capsys, main(["records", "merge", str(folder), "--out", str(tmp_path / "no" / "such")]),
                  text="does not exist")
        assert not (tmp_path / "no").exists()  # a typo'd path makes no folders
        assert main(["records", "merge", str(folder), "--out", str(tmp_path / "merged")]) == 0
        assert (tmp_path / "merged" / "examples.pt").is_file()  # the shards' image grid comes along

    @pytest.mark.parametrize("command", ["evaluate", "status", "merge"])
    def test_a_garbled_run_json(self, command, folder, tmp_path, capsys):
        (folder / "run.json").write_text("{ not json")
        argv = {"evaluate": ["evaluate", *DIGITS, "--out", str(folder)], "status": ["records", "status", str(folder)],
                "merge": ["records", "merge", str(folder), "--out", str(tmp_path / "m")]}[command]
        _one_line(capsys, main(argv), text="garbled")

    def test_a_corrupt_checkpoint_is_one_line_without_colour(self, tmp_path, capsys):
        bad = tmp_path / "clf.pt"
        bad.write_bytes(b"PK\x03\x04 not a zip at all" * 10)
        _one_line(capsys, main(["evaluate", "--classifier", str(bad), "--projection", "none", "--n", "8",
                                "--out", str(tmp_path / "o")]), text="corrupted")

    @pytest.mark.parametrize("argv, text", [
        (["--suite", "strongest"], "invalid choice"),
        (["--workers", "0"], "must be"),
        (["--workers", "2"], "at most 1 workers"),
        (["--epsilon", "linf"], "THREAT=EPS"),
        (["--epsilon", "l3=0.3"], "THREAT=EPS"),
        (["--device", "cuda:7"], "GPU"),
    ])
    def test_bad_evaluate_arguments(self, argv, text, tmp_path, capsys, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        base = [a for a in DIGITS if a not in ("--attack", "fgsm:0.1")]
        _one_line(capsys, main(["evaluate", *base, *argv, "--out", str(tmp_path / "o")]), text=text)

    def test_a_suite_with_single_attacks_is_refused(self, tmp_path, capsys):
        _one_line(capsys, main(["evaluate", *DIGITS, "--suite", "standard", "--out", str(tmp_path / "o")]),
                  text="--suite")

    def test_ctrl_c_is_one_line_and_exit_130(self, tmp_path, capsys, monkeypatch):
        from manifold_defense.cli import evaluate as cmd

        def interrupted(args):
            raise KeyboardInterrupt

        monkeypatch.setattr(cmd, "run", interrupted)
        _one_line(capsys, main(["evaluate", *DIGITS, "--out", str(tmp_path / "o")]), expect=130, text="rerun")


class TestSmoke:
    def test_a_damaged_example_grid_is_replaced_not_fatal(self, folder, capsys):
        (folder / "examples.pt").write_bytes(b"garbage")
        assert main(["evaluate", *DIGITS, "--out", str(folder)]) == 0
        assert torch.load(folder / "examples.pt", weights_only=True)["clean"].shape[0] == 8

    def test_a_class_conditional_generator_is_shown_per_class(self, digits_class_vaes, tmp_path):
        assert main(["zoo", "show", "digits-class-vaes", "--out", str(tmp_path / "cc.png")]) == 0
        assert (tmp_path / "cc.png").stat().st_size > 3000

    def test_zoo_path_names_the_file_it_loads(self, capsys):
        assert main(["zoo", "path", "digits-vae"]) == 0
        assert capsys.readouterr().out.strip().endswith("weights/digits-vae.pt")

    def test_help_states_defaults_of_zero(self, capsys):
        assert main(["evaluate", "--help"]) == 0
        assert "(default: 0)" in capsys.readouterr().out  # --start


class TestApi:
    def test_images_of_another_dtype_are_named(self, digits_classifier, digits_vae, digits_test):
        from manifold_defense.attacks import FGSM
        from manifold_defense.defended import DefendedModel
        from manifold_defense.validation import InputError

        x, y = digits_test.images[:4], digits_test.labels[:4]
        model = DefendedModel(digits_classifier, digits_vae)
        for dtype in (torch.float64, torch.float16):
            with pytest.raises(InputError, match=f"dtype {str(dtype).replace('torch.', '')}"):
                model(x.to(dtype))
            with pytest.raises(InputError, match="dtype"):
                FGSM()(digits_classifier, x.to(dtype), y, epsilon=0.1)

    def test_a_projection_by_name_is_refused_at_construction(self, digits_classifier, digits_vae):
        from manifold_defense.defended import DefendedModel

        with pytest.raises(TypeError, match="ProjectionConfig.preset"):
            DefendedModel(digits_classifier, digits_vae, "defense_gan")
