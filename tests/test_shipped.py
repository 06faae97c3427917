"""Shipped weights: a manifest of sha256 hashes, verified loading, and clear errors for every broken case."""

import json
import warnings

import pytest
import torch

from manifold_defense import shipped, zoo
from manifold_defense.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_defense.cli import main as cli_main
from manifold_defense.validation import InputError


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A shipped-weights folder holding digits-classifier, exported from the test cache's build."""
    zoo.get("digits-classifier", source="cache", progress=False)  # the build to export (trained if not cached)
    root = tmp_path / "weights"
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", root)
    monkeypatch.delenv("MANIFOLD_DEFENSE_ZOO_SOURCE", raising=False)
    zoo._WARNED.clear()
    shipped.export("digits-classifier", zoo.path("digits-classifier"), zoo.ENTRIES["digits-classifier"].spec())
    return root


class TestSmoke:
    def test_export_writes_a_slim_verified_file(self, weights, digits_test):
        entry = shipped.manifest()["digits-classifier"]
        file = weights / entry["file"]
        assert entry["sha256"] == shipped.file_sha256(file) and entry["bytes"] == file.stat().st_size
        assert entry["quality"]["test_accuracy"] > 0.9 and entry["train_seconds"] > 0
        payload = load_checkpoint(file)
        assert list(payload["modules"]) == ["model"] and payload["state"] == {}  # no optimiser state
        assert file.stat().st_size < zoo.path("digits-classifier").stat().st_size
        model = zoo.get("digits-classifier")
        assert model.metadata["source"] == "shipped"
        x = digits_test.images[:8]
        assert torch.equal(model(x), zoo.get("digits-classifier", source="cache")(x))
        assert {r["name"]: r for r in zoo.status()}["digits-classifier"]["state"].startswith("shipped")

    def test_export_keeps_what_identifies_the_training_run(self, weights, tmp_path):
        """A benchmark goes on measuring shipped weights once its training cache is gone: their start, settings, the
        overfitting guard's choice and the training checkpoint's digest travel with them (benchmarks/robust_mnist.py
        ``_trained``)."""
        payload = load_checkpoint(zoo.path("digits-classifier"))
        run = {"benchmark": {"recipe": "r", "seed": 0, "digest": "ab" * 32}, "init": {"zoo_name": "x"},
               "config": {"lr": 1e-3}, "guard": {"best_epoch": 5, "rollbacks": 3}, "scratch": 1}
        save_checkpoint(tmp_path / "run.pt", {**payload, "metadata": {**payload["metadata"], **run}})
        shipped.export("digits-classifier", tmp_path / "run.pt", zoo.ENTRIES["digits-classifier"].spec(), root=weights)
        meta = zoo.get("digits-classifier").metadata
        kept = ("benchmark", "init", "config", "guard")
        assert {k: meta[k] for k in kept} == {k: run[k] for k in kept}
        assert "scratch" not in meta

    def test_cache_source_ignores_the_shipped_weights(self, weights):
        assert "source" not in zoo.get("digits-classifier", source="cache").metadata


class TestException:
    @pytest.mark.parametrize("damage", ["tamper", "truncate", "delete", "recipe"])
    def test_broken_shipped_weights_are_an_error_never_a_retrain(self, weights, damage):
        file = weights / "digits-classifier.pt"
        data = bytearray(file.read_bytes())
        if damage == "tamper":
            data[len(data) // 2] ^= 0xFF
            file.write_bytes(bytes(data))
        elif damage == "truncate":
            file.write_bytes(bytes(data[: len(data) // 3]))
        elif damage == "delete":
            file.unlink()
        else:
            m = json.loads((weights / "manifest.json").read_text())
            m["models"]["digits-classifier"]["recipe_sha256"] = "0" * 64
            (weights / "manifest.json").write_text(json.dumps(m))
        mtime = zoo.path("digits-classifier").stat().st_mtime
        with pytest.raises(CheckpointError, match="--retrain"):
            zoo.get("digits-classifier")
        assert zoo.path("digits-classifier").stat().st_mtime == mtime  # nothing retrained or overwritten

    def test_a_different_cached_build_is_kept_and_named(self, weights):
        file = zoo.path("digits-classifier")
        original = file.read_bytes()
        try:
            ckpt = load_checkpoint(file)
            sd = ckpt["modules"]["model"]["state_dict"]
            first = next(k for k, v in sd.items() if v.is_floating_point())
            sd[first] = sd[first] + 1.0
            save_checkpoint(file, ckpt)
            with pytest.warns(UserWarning, match="shipped weights of digits-classifier"):
                model = zoo.get("digits-classifier")
            assert model.metadata["source"] == "shipped"
            mine = zoo.get("digits-classifier", source="cache")
            assert torch.equal(dict(mine.state_dict())[first], sd[first])
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # said once, not on every call
                zoo.get("digits-classifier")
        finally:
            file.write_bytes(original)

    def test_bad_source_and_unshipped_names(self, weights):
        with pytest.raises(InputError):
            zoo.get("digits-classifier", source="hub")
        with pytest.raises(CheckpointError, match="not shipped"):
            zoo.get("digits-vae", source="shipped")

    def test_export_refuses_an_unfinished_build(self, weights, tmp_path):
        ckpt = load_checkpoint(zoo.path("digits-classifier"))
        ckpt["complete"] = False
        save_checkpoint(tmp_path / "partial.pt", ckpt)
        with pytest.raises(CheckpointError, match="not a finished model"):
            shipped.export("digits-classifier", tmp_path / "partial.pt", zoo.ENTRIES["digits-classifier"].spec())

    def test_cli_ship_of_an_unknown_name_is_a_one_line_error(self, weights, capsys):
        assert cli_main(["zoo", "ship", "no-such-model"]) == 2
        assert "unknown zoo model" in capsys.readouterr().err
