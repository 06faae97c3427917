"""The registry of recovery recipes: the CLI and the benchmark share settings and loss scale."""

import pytest
import torch

from manifold_defense.operators import GaussianMeasurements, Inpainting, PartialCirculant
from manifold_defense.recipes import RECIPES, lasso_alpha, recover
from manifold_defense.validation import InputError


class TestSmoke:
    @pytest.mark.parametrize("name", ["csgm", "csgm_reg", "ilo", "subgradient", "dip", "lasso", "lasso_dct"])
    def test_every_recipe_recovers_better_than_zero(self, name, digits_vae, digits_test):
        x = digits_test.images[:6]
        A = GaussianMeasurements((1, 8, 8), 40, seed=0)
        fast = {"steps": 60} if "steps" in RECIPES[name].tunable else {}
        fast |= {"restarts": 2} if "restarts" in RECIPES[name].tunable else {}
        fast |= {"ilo_steps": 20} if name == "ilo" else {}
        rec = recover(name, A(x), A, generator=digits_vae, seed=0, **fast)
        assert rec.x.shape == x.shape and all(rec.settings[k] == v for k, v in fast.items())
        assert float((rec.x - x).pow(2).mean()) < 0.7 * float(x.pow(2).mean())

    def test_lasso_alpha_is_in_csgms_units(self):
        assert lasso_alpha(0.1, GaussianMeasurements((1, 8, 8), 40)) == pytest.approx(0.1 / 40)
        assert lasso_alpha(0.1, PartialCirculant((1, 8, 8), 40)) == pytest.approx(0.1 / 40)
        assert lasso_alpha(0.1, Inpainting((1, 8, 8), fraction=0.5)) == 0.1

    def test_the_recipes_state_the_published_settings(self):
        assert RECIPES["csgm"].kwargs == {"loss": "sum", "restarts": 10, "steps": 1000, "lr": 0.01, "prior_weight": 0.0}
        assert RECIPES["csgm_reg"].kwargs["prior_weight"] == 0.1
        assert RECIPES["ilo"].kwargs["prior_weight"] == 0.1 and RECIPES["lasso"].kwargs["alpha"] == 0.1

    def test_dip_stops_at_the_noise_energy(self, digits_test):
        x = digits_test.images[:4]
        A = GaussianMeasurements((1, 8, 8), 40, seed=0)
        y = A(x) + 0.3 / 40**0.5 * torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
        stopped = recover("dip", y, A, noise=0.3, steps=400)
        full = recover("dip", y, A, steps=400)
        assert stopped.evals_per_image < full.evals_per_image


class TestException:
    def test_unknown_and_missing(self, digits_test):
        y = digits_test.images[:2]
        A = GaussianMeasurements((1, 8, 8), 10)
        with pytest.raises(InputError, match="unknown recovery recipe"):
            recover("lbfgs", A(y), A)
        with pytest.raises(InputError, match="needs a trained generator"):
            recover("csgm", A(y), A)
        with pytest.raises(InputError, match="needs a weight_prior"):
            recover("dip_lr", A(y), A)
        with pytest.raises(InputError, match="does not take steps"):
            recover("lasso", A(y), A, steps=3)
        with pytest.raises(InputError, match="noise"):
            recover("lasso", A(y), A, noise=-1.0)
