"""The Deep Image Prior network: forward, functional forward, initialisation, checkpoints."""

import pytest
import torch

from manifold_defense.generators import DeepImagePrior
from manifold_defense.models import load_model, save_model
from manifold_defense.validation import InputError


class TestSmoke:
    @pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
    def test_smoke(self, shape):
        net = DeepImagePrior(shape, channels=8, latent_channels=4)
        x = net()
        assert x.shape == (1, *shape) and bool(((x >= 0) & (x <= 1)).all())
        # the fixed input is small: 28×28 images start from 7×7, 8×8 from 2×2
        assert net.z0.shape[-1] == {8: 2, 28: 7, 32: 4}[shape[-1]]

    def test_functional_forward_matches_module(self, device, dtype):
        net = DeepImagePrior((1, 8, 8), channels=8, latent_channels=4).to(device, dtype)
        torch.testing.assert_close(net.functional_forward(net.flat_weights()), net()[0])
        w = net.flat_init(3, torch.Generator().manual_seed(0)).to(device, dtype)
        assert w.shape == (3, net.num_weights) and w.device.type == device.type and w.dtype == dtype
        out = torch.func.vmap(net.functional_forward)(w)
        assert out.shape == (3, 1, 8, 8)
        assert not torch.allclose(out[0], out[1])  # independent draws give different networks


class TestInit:
    def test_flat_init_is_seeded_and_matches_pytorch_bounds(self):
        net = DeepImagePrior((1, 8, 8), channels=8, latent_channels=4)
        a = net.flat_init(2, torch.Generator().manual_seed(5))
        b = net.flat_init(2, torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, b)
        for sl, shape in net.conv_weight_slices():
            fan_in = shape[1] * shape[2] * shape[3]
            assert float(a[:, sl].abs().max()) <= fan_in**-0.5
            assert float(a[:, sl].abs().max()) > 0.5 * fan_in**-0.5


class TestCheckpoint:
    def test_roundtrip(self, tmp_path):
        net = DeepImagePrior((1, 8, 8), channels=8, latent_channels=4, seed=3)
        save_model(tmp_path / "dip.pt", net)
        back = load_model(tmp_path / "dip.pt")
        torch.testing.assert_close(back(), net())


class TestException:
    def test_exception(self):
        with pytest.raises(InputError, match="square"):
            DeepImagePrior((1, 8, 6))
        with pytest.raises(InputError, match="divisible"):
            DeepImagePrior((1, 28, 28), upsamples=3)
        with pytest.raises(InputError, match=">= 1"):
            DeepImagePrior((1, 8, 8), channels=0)
