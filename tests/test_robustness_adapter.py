"""The ``robustness`` library adapter: Madry PGD and robustness-format checkpoints."""

import pytest
import torch

from manifold_defense.robustness_adapter import madry_pgd, madry_step
from manifold_defense.validation import InputError

# ------------------------------------------------------------------- robustness-format checkpoints


class _Dataset:  # what robustness.attacker.AttackerModel reads from its dataset argument
    def __init__(self, channels: int) -> None:
        self.mean = torch.linspace(0.3, 0.5, channels)
        self.std = torch.linspace(0.2, 0.3, channels)


def _write_madry_checkpoint(path, model: torch.nn.Module, channels: int) -> torch.nn.Module:
    """A checkpoint exactly as robustness.train writes it: a DataParallel-wrapped AttackerModel's state dict."""
    from robustness.attacker import AttackerModel

    wrapped = AttackerModel(model, _Dataset(channels))
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    state = {f"module.{k}": v for k, v in wrapped.state_dict().items()}
    assert any(k.startswith("module.attacker.model.") for k in state)  # the format's duplicated weights
    torch.save({"model": state, "optimizer": opt.state_dict(), "epoch": 3}, path)
    return wrapped


class TestSmoke:
    @pytest.mark.parametrize("norm, eps", [("l2", 1.5), ("linf", 0.2)])
    def test_madry_pgd_breaks_undefended_within_budget(self, norm, eps, digits_classifier, digits_test):
        x, y = digits_test.images[:48], digits_test.labels[:48]
        adv = madry_pgd(digits_classifier, x, y, norm=norm, epsilon=eps, steps=10)
        d = (adv - x).flatten(1)
        norms = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
        assert bool((norms <= eps + 1e-5).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
        with torch.no_grad():
            clean = (digits_classifier(x).argmax(1) == y).float().mean()
            robust = (digits_classifier(adv).argmax(1) == y).float().mean()
        assert robust < clean - 0.4


class TestLoadRobustnessCheckpoint:
    def test_resnet(self, tmp_path, device):
        from manifold_defense.robustness_adapter import load_robustness_checkpoint, robustness_architecture

        torch.manual_seed(0)
        net = robustness_architecture("resnet18", num_classes=10).eval()
        wrapped = _write_madry_checkpoint(tmp_path / "ckpt.pt", net, 3)
        loaded = load_robustness_checkpoint(tmp_path / "ckpt.pt", "resnet18", input_shape=(3, 32, 32), device=device)
        assert next(loaded.parameters()).device.type == device.type and not loaded.training
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            out = wrapped.eval()(x)  # AttackerModel returns (logits, input) by default
            want = out[0] if isinstance(out, tuple) else out
            got = loaded(x.to(device)).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert loaded.input_shape == (3, 32, 32)

    def test_custom_module(self, tmp_path):
        from manifold_defense.classifiers import DigitsCNN
        from manifold_defense.robustness_adapter import load_robustness_checkpoint

        torch.manual_seed(0)
        src = DigitsCNN().eval()
        _write_madry_checkpoint(tmp_path / "digits.pt", src, 1)
        loaded = load_robustness_checkpoint(tmp_path / "digits.pt", DigitsCNN(), input_shape=(1, 8, 8))
        x = torch.rand(5, 1, 8, 8)
        mean, std = _Dataset(1).mean.view(1, -1, 1, 1), _Dataset(1).std.view(1, -1, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), src((x - mean) / std))


class TestException:
    def test_exception(self):
        x = torch.rand(2, 1, 8, 8)
        with pytest.raises(InputError, match="norm"):
            madry_step("l1", x, 1.0, 0.1)
        with pytest.raises(InputError, match="epsilon"):
            madry_step("l2", x, 0.0, 0.1)

    def test_load_robustness_checkpoint(self, tmp_path):
        from manifold_defense.checkpoint import CheckpointError
        from manifold_defense.classifiers import DigitsCNN
        from manifold_defense.robustness_adapter import load_robustness_checkpoint, robustness_architecture

        _write_madry_checkpoint(tmp_path / "r18.pt", robustness_architecture("resnet18"), 3)
        with pytest.raises(CheckpointError, match="does not match architecture resnet50"):
            load_robustness_checkpoint(tmp_path / "r18.pt", "resnet50")
        with pytest.raises(CheckpointError, match="does not match architecture DigitsCNN"):
            load_robustness_checkpoint(tmp_path / "r18.pt", DigitsCNN())
        with pytest.raises(CheckpointError, match="wrong shape"):  # same layers, another number of classes
            load_robustness_checkpoint(tmp_path / "r18.pt", "resnet18", num_classes=100)
        with pytest.raises(InputError, match="unknown robustness cifar architecture"):
            load_robustness_checkpoint(tmp_path / "r18.pt", "resnet-18")
        with pytest.raises(CheckpointError, match="no checkpoint file"):
            load_robustness_checkpoint(tmp_path / "missing.pt", "resnet18")
        torch.save({"weights": {}}, tmp_path / "other.pt")
        with pytest.raises(CheckpointError, match="not a robustness checkpoint"):
            load_robustness_checkpoint(tmp_path / "other.pt", "resnet18")
        (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match="cannot read"):
            load_robustness_checkpoint(tmp_path / "garbage.pt", "resnet18")
