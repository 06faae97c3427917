"""``train-generator``, ``train-classifier``, ``adv-train``: training runs, and every user mistake is one line,
exit code 2, before any work."""

import pytest

from manifold_defense.cli import main
from manifold_defense.models import load_model


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"not a one-line error: {err!r}"
    return err


class TestMeasured:
    """``measure`` then ``train-generator --measured``: AmbientGAN and its baselines from corrupted data alone."""

    @pytest.mark.mnist
    @pytest.mark.parametrize("spec, mode", [("block_pixels:p=0.8", "ambient"), ("block_pixels:p=0.8", "unmeasure"),
                                            ("gaussian_projection", "ambient"), ("blur_noise:sigma=0.1", "ignore")])
    def test_measure_then_train(self, spec, mode, tmp_path):
        pytest.importorskip("skimage")
        from manifold_defense.ambient import load_measured

        data_file = tmp_path / "y.npz"
        assert main(["measure", "--dataset", "mnist", "--split", "test", "--limit", "64", "--measurement", spec,
                     "--out", str(data_file)]) == 0
        y, m, params = load_measured(data_file)
        assert len(y) == 64 and spec.startswith(m.name) and set(params) == set(m.known_params)
        out = tmp_path / "g.pt"
        assert main(["train-generator", "--arch", "wgan", "--measured", str(data_file), "--measure", mode,
                     "--iterations", "4", "--batch-size", "16", "--latent-dim", "8", "--out", str(out)]) == 0
        meta = load_model(out).metadata
        assert meta["measure"] == mode and meta["measured"] == m.config()
        config = meta["config"]
        assert (config.get("measurement") == m.config()) == (mode != "unmeasure")

    @pytest.mark.parametrize("argv, match", [
        (["--measure", "ignore"], "--measure applies to measured data"),
        (["--measured", "{missing}"], "not found"),
        (["--measured", "{bad_shape}"], "measurements of shape"),
        (["--measured", "{no_mask}", "--measure", "unmeasure"], "needs the mask"),
        (["--measured", "{patch}", "--measure", "unmeasure"], "no inverse"),
        (["--measured", "{small}"], "makes 1x28x28 images"),
    ])
    def test_bad_measured_data(self, argv, match, tmp_path, capsys):
        import numpy as np
        import torch

        from manifold_defense.ambient import BlockPixels, KeepPatch, measure_dataset, save_measured

        x = torch.rand(8, 1, 28, 28)
        files = {"missing": tmp_path / "none.npz", "bad_shape": tmp_path / "bad.npz", "no_mask": tmp_path / "nm.npz",
                 "patch": tmp_path / "patch.npz", "small": tmp_path / "small.npz"}
        m = BlockPixels((1, 28, 28), p=0.5)
        save_measured(files["no_mask"], m(x), m)
        y, params = measure_dataset(KeepPatch((1, 28, 28)), x)
        save_measured(files["patch"], y, KeepPatch((1, 28, 28)), params)
        save_measured(files["small"], torch.rand(8, 1, 8, 8), BlockPixels((1, 8, 8)))
        np.savez(files["bad_shape"], measurements=np.zeros((8, 1, 27, 28), np.float32),
                 config=np.array('{"measurement": "block_pixels", "image_shape": [1, 28, 28], "p": 0.5}'))
        argv = [a.format(**files) for a in argv]
        assert main(["train-generator", "--arch", "wgan", *argv, "--iterations", "4", "--out",
                     str(tmp_path / "g.pt")]) == 2
        assert match in _err(capsys)
        assert not (tmp_path / "g.pt").exists()

    def test_bad_measurement_specs(self, tmp_path, capsys):
        for spec, match in [("block_pixels:p=1.5", "[0, 1)"), ("blur:sigma=1", "unknown measurement"),
                            ("block_pixels:p", "key=value"), ("keep_patch:size=big", "not a number")]:
            assert main(["measure", "--dataset", "digits", "--measurement", spec, "--out",
                         str(tmp_path / "y.npz")]) == 2
            assert match in _err(capsys)


class TestSmoke:
    def test_train_classifier_and_generator(self, tmp_path):
        assert main(["train-classifier", "--dataset", "digits", "--arch", "digits", "--epochs", "3",
                     "--out", str(tmp_path / "c.pt")]) == 0
        clf = load_model(tmp_path / "c.pt")
        assert clf.metadata["quality"]["test_accuracy"] > 0.5
        assert main(["train-generator", "--dataset", "digits", "--arch", "vae", "--epochs", "2", "--latent-dim", "4",
                     "--hidden", "32", "--out", str(tmp_path / "g.pt")]) == 0
        assert load_model(tmp_path / "g.pt").latent_dim == 4


    def test_combined_preset_on_a_class_conditional_generator(self, digits_class_vaes, tmp_path):
        out = tmp_path / "combined.pt"
        assert main(["adv-train", "--preset", "combined", "--generator", "digits-class-vaes", "--epochs", "1",
                     "--attack-steps", "2", "--loss-weight", "0.5", "--out", str(out)]) == 0
        config = load_model(out).metadata["config"]
        assert config["objective"] == "combined" and config["off"]["epsilon"] == 1.5 and config["weight"] == 0.5
        assert config["on"]["class_conditional"] and config["on"]["eta"] == 0.3  # Stutz et al.'s latent budget


    @pytest.mark.parametrize("argv, config", [
        (["--preset", "fast", "--schedule", "cyclic"], {"schedule": "cyclic", "objective": "fast", "norm": "linf", "epsilon": 0.3, "steps": 1, "step_size": 0.375}),
        (["--preset", "trades", "--norm", "linf", "--attack-steps", "2"],
         {"objective": "trades", "norm": "linf", "epsilon": 0.3, "steps": 2, "beta": 1.0}),
    ], ids=["fast", "trades"])
    def test_linf_presets_default_to_madrys_budget(self, argv, config, tmp_path):
        out = tmp_path / "m.pt"
        assert main(["adv-train", *argv, "--epochs", "1", "--out", str(out)]) == 0
        stored = load_model(out).metadata["config"]
        assert {k: stored[k] for k in config} == config
        # FGSM training is guarded against catastrophic overfitting unless told otherwise; PGD training is not
        assert ("overfit_guard" in stored) is (config["objective"] == "fast")

    @pytest.mark.parametrize("argv, guarded", [(["--preset", "fast", "--overfit-guard", "off"], False),
                                               (["--preset", "trades", "--norm", "linf", "--attack-steps", "1",
                                                 "--overfit-guard", "on"], True)], ids=["fast-off", "trades-on"])
    def test_overfit_guard_flag(self, argv, guarded, tmp_path):
        out = tmp_path / "m.pt"
        assert main(["adv-train", *argv, "--epochs", "1", "--out", str(out)]) == 0
        meta = load_model(out).metadata
        assert ("overfit_guard" in meta["config"]) is guarded and ("guard" in meta) is guarded


class TestException:
    @pytest.mark.parametrize("argv, match", [
        (["train-classifier", "--epochs", "0"], "--epochs: must be an integer >= 1"),
        (["train-classifier", "--lr", "-1"], "--lr: must be > 0"),
        (["train-classifier", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["train-classifier", "--arch", "a"], "--arch a does not fit --dataset digits"),
        (["adv-train", "--preset", "standard", "--epsilon", "2"], "--epsilon is not used by --preset standard"),
        (["adv-train", "--preset", "pgd_at", "--eta", "1"], "--eta is not used by --preset pgd_at"),
        (["adv-train", "--preset", "stutz", "--loss-weight", "0.5", "--generator", "digits-class-vaes"],
         "--loss-weight is not used by --preset stutz"),
        (["adv-train", "--preset", "stutz", "--norm", "linf", "--generator", "digits-vae"],
         "--norm is not used by --preset stutz"),
        (["adv-train", "--preset", "stutz"], "--preset stutz needs --generator"),
        (["adv-train", "--preset", "fast", "--norm", "l2"], "--norm is not used by --preset fast"),
        (["adv-train", "--preset", "rmd", "--generator", "digits-classifier"],
         "--generator digits-classifier is a classifier in the zoo, not a generator"),
        (["adv-train", "--preset", "rmd", "--generator", "digits-class-vaes"], "pass an unconditional generator"),
        (["adv-train", "--preset", "combined"], "--preset combined needs --generator"),
        (["adv-train", "--preset", "standard", "--overfit-guard", "on"], "--overfit-guard on needs a pixel adversary"),
        (["train-generator", "--arch", "wgan"], "28x28"),
        (["train-generator", "--arch", "vae", "--iterations", "300"], "--iterations is not used by --arch vae"),
        (["train-generator", "--arch", "wgan", "--dataset", "mnist", "--iterations", "150"], "multiple of 100"),
    ])
    def test_refused_before_any_work(self, argv, match, tmp_path, capsys):
        assert main([*argv, "--out", str(tmp_path / "m.pt")]) == 2
        assert match in _err(capsys)
        assert not (tmp_path / "m.pt").exists()

    def test_output_folders(self, tmp_path, capsys):
        assert main(["train-classifier", "--out", str(tmp_path / "missing" / "c.pt")]) == 2
        assert "does not exist" in _err(capsys)
        assert main(["train-classifier", "--out", str(tmp_path)]) == 2
        assert "is a folder" in _err(capsys)

    @pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs a read-only /proc (Linux)")
    def test_read_only_output_folder(self, capsys):
        # permission bits do not bind root (CI runs as root); a read-only file system does
        assert main(["train-classifier", "--out", "/proc/clf.pt"]) == 2
        assert "not writable" in _err(capsys)

    def test_metrics_log_into_a_missing_folder_is_refused_before_training(self, tmp_path, capsys):
        argv = ["adv-train", "--preset", "standard", "--epochs", "1", "--out", str(tmp_path / "c.pt"),
                "--metrics-log", str(tmp_path / "no" / "log.jsonl")]
        assert main(argv) == 2
        assert "--metrics-log" in _err(capsys) and not (tmp_path / "c.pt").exists()

    def test_missing_mnist(self, tmp_path, monkeypatch, capsys):
        monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(tmp_path))
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
        code = main(["train-classifier", "--dataset", "mnist", "--arch", "a", "--out", str(tmp_path / "a.pt")])
        assert code == 2 and "mnist.npz" in _err(capsys)

    def test_help_states_every_default(self, capsys):
        assert main(["adv-train", "--help"]) == 0
        out = capsys.readouterr().out
        for text in ("(default: 10)", "(default: 128)", "(default: 0.001)", "default: 1.5", "default: l2"):
            assert text in out
