"""Models by architecture name (``manifold_defense.models``): ``save_model``, ``load_model``, weights checked
against the architecture."""

import pytest
import torch

from manifold_defense.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_defense.classifiers import DigitsCNN
from manifold_defense.models import load_model, save_model


class TestSmoke:
    def test_save_load_model(self, tmp_path):
        model = DigitsCNN(width=8)
        save_model(tmp_path / "m.pt", model, {"note": "hello"})
        loaded = load_model(tmp_path / "m.pt")
        assert isinstance(loaded, DigitsCNN) and loaded.config == model.config
        assert loaded.metadata["note"] == "hello" and loaded.metadata["library_version"]
        x = torch.rand(4, 1, 8, 8)
        model.eval()
        assert torch.equal(model(x), loaded(x))
        assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


class TestException:
    def test_missing(self, tmp_path):
        with pytest.raises(CheckpointError, match="not found"):
            load_model(tmp_path / "absent.pt")

    def test_corrupted(self, tmp_path):
        save_model(tmp_path / "m.pt", DigitsCNN(width=8))
        blob = (tmp_path / "m.pt").read_bytes()
        (tmp_path / "m.pt").write_bytes(blob[: len(blob) // 2])
        with pytest.raises(CheckpointError, match="corrupted"):
            load_model(tmp_path / "m.pt")

    def test_weights_do_not_match(self, tmp_path):
        save_model(tmp_path / "m.pt", DigitsCNN(width=8))
        ckpt = load_checkpoint(tmp_path / "m.pt")
        ckpt["modules"]["model"]["config"]["width"] = 16
        save_checkpoint(tmp_path / "m.pt", ckpt)
        with pytest.raises(CheckpointError, match="do not match architecture"):
            load_model(tmp_path / "m.pt")
