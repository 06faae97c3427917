"""Generator quality metrics: FID in a classifier's features, precision/recall, density/coverage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manifold_defense.quality import (PenultimateFeatures, density_coverage, frechet_distance, generator_quality,
                                      precision_recall)
from manifold_defense.validation import InputError


@pytest.fixture
def clouds():
    g = torch.Generator().manual_seed(0)
    return torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 4


class TestKNNMetrics:
    def test_same_distribution_scores_high_and_a_shifted_one_zero(self, clouds):
        a, b, far = clouds
        p, r = precision_recall(a, b)
        d, c = density_coverage(a, b)
        assert p > 0.7 and r > 0.7 and 0.8 < d < 1.2 and c > 0.8  # coverage → 1 − 2^-k = 0.875 for k = 3
        assert precision_recall(a, far) == (0.0, 0.0) and density_coverage(a, far) == (0.0, 0.0)

    def test_mode_collapse_keeps_precision_but_loses_recall_and_coverage(self, clouds):
        a, _, _ = clouds
        collapsed = a[:20].repeat(20, 1) + 0.01 * torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
        p, r = precision_recall(a, collapsed)
        _, c = density_coverage(a, collapsed)
        assert p > 0.9 and r < 0.2 and c < 0.4  # 20 of 400 points covered, plus their neighbours

    @pytest.mark.parametrize("fn", [precision_recall, density_coverage])
    def test_exception(self, fn, clouds):
        a, b, _ = clouds
        with pytest.raises(InputError):
            fn(a, b, k=0)
        with pytest.raises(InputError):
            fn(a[:3], b, k=3)


class TestFID:
    def test_digits_test_halves_are_close_and_noise_is_far(self, digits_test, digits_classifier):
        feats = PenultimateFeatures(digits_classifier)
        x = digits_test.images
        half = len(x) // 2
        same = frechet_distance(x[:half], x[half:2 * half], feats)
        noise = frechet_distance(x[:half], torch.rand(half, *x.shape[1:], generator=torch.Generator().manual_seed(0)),
                                 feats)
        assert 0 <= same < 0.1 * noise

    def test_generator_quality_of_the_digits_vae(self, digits_test, digits_vae, digits_classifier):
        q = generator_quality(digits_vae, digits_test.images, digits_classifier, n=300)
        noise = torch.rand(300, *digits_test.images.shape[1:], generator=torch.Generator().manual_seed(0))
        qn = generator_quality(None, digits_test.images, digits_classifier, n=300, fake=noise)
        assert q["fid"] < qn["fid"] and q["coverage"] > qn["coverage"] and q["n_fake"] == 300
        again = generator_quality(digits_vae, digits_test.images, digits_classifier, n=300)
        assert again["fid"] == q["fid"]  # seeded samples

    def test_exception(self, digits_test, digits_vae, digits_classifier):
        with pytest.raises(InputError):
            PenultimateFeatures(nn.Linear(3, 2))
        with pytest.raises(InputError):
            generator_quality(digits_vae, digits_test.images, digits_classifier, n=50, fake=digits_test.images)
        with pytest.raises(InputError):
            generator_quality(None, digits_test.images, digits_classifier, n=50)
        with pytest.raises(InputError):
            frechet_distance(digits_test.images[:1], digits_test.images[:10], PenultimateFeatures(digits_classifier))
