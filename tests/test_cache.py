"""The projection cache: a projection paid once per evaluation, never another input's."""

from __future__ import annotations

import pytest
import torch

from manifold_defense.cache import ProjectionCache, ProjectionCacheError, active_cache
from manifold_defense.defended import DefendedModel, ProjectionConfig

FAST = ProjectionConfig(steps=10, restarts=2, search_candidates=50)


@pytest.fixture
def model(digits_classifier, digits_vae):
    return DefendedModel(digits_classifier, digits_vae, FAST).eval()


class TestSmoke:
    def test_a_cached_projection_is_the_projection(self, model, digits_test):
        x = digits_test.images[:12]
        cold = model.project(x)
        with ProjectionCache() as cache:
            assert active_cache() is cache
            first = model.project(x[:8])
            both = model.project(x)  # 8 rows from the cache, 4 projected now
            again = model.project(x)
        assert active_cache() is None
        assert cache.hits == 8 + 12 and cache.misses == 8 + 4
        for res in (both, again):
            assert torch.equal(res.x, cold.x) and torch.equal(res.z, cold.z) and torch.equal(res.loss, cold.loss)
        assert torch.equal(first.x, cold.x[:8])
        assert float(again.generator_evals.sum()) == 0 and again.info["cached_rows"] == 12  # nothing paid twice

    def test_the_forward_pass_is_cold_but_fills_the_cache(self, model, digits_test):
        x = digits_test.images[:8]
        with ProjectionCache() as cache:
            logits = model(x)
            assert cache.misses == 0 and len(cache) == 8  # scored on a fresh projection, kept for later requests
            model(x)
            assert cache.hits == 0  # a forward pass never reads it
            assert torch.equal(model.project(x).x, model.classify(x)[1].x) and cache.hits == 8
        assert torch.equal(logits, model(x))

    def test_stochastic_and_unrolled_projections_are_never_cached(self, digits_classifier, digits_vae, digits_test):
        x = digits_test.images[:4]
        stochastic = DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=5, stochastic=True,
                                                                                   search_candidates=50))
        with ProjectionCache() as cache:
            stochastic.project(x)
            stochastic.project(x)
            assert len(cache) == 0 and cache.hits == 0
            unrolled = DefendedModel(digits_classifier, digits_vae, FAST, gradient="unrolled")
            unrolled(x.clone().requires_grad_(True))
            assert len(cache) == 0


class TestException:
    def test_a_hit_for_another_input_fails_closed(self, model, digits_test, monkeypatch):
        # a broken key (every row the same key) must never hand one input's projection to another
        x = digits_test.images[:2]
        with ProjectionCache() as cache:
            monkeypatch.setattr(cache, "keys", lambda scope, rows: [(scope, 0)] * len(rows))
            model.project(x[:1])
            with pytest.raises(ProjectionCacheError, match="another input"):
                model.project(x[1:2])

    def test_other_settings_or_generators_are_other_entries(self, digits_classifier, digits_vae, digits_test):
        x = digits_test.images[:4]
        with ProjectionCache() as cache:
            DefendedModel(digits_classifier, digits_vae, FAST).project(x)
            DefendedModel(digits_classifier, digits_vae, ProjectionConfig(steps=11, restarts=2,
                                                                          search_candidates=50)).project(x)
            assert cache.hits == 0 and len(cache) == 8

    def test_bad_cache_mode(self, digits_vae, digits_test):
        from manifold_defense.validation import InputError

        with pytest.raises(InputError, match="cache"):
            FAST.project(digits_vae, digits_test.images[:2], cache="sometimes")


def test_a_generator_freed_during_a_run_never_lends_its_id(digits_vae, digits_test):
    # a class-conditional generator makes a new module per class and call: a freed one's id must not be reused
    # by another generator while the cache still holds its projections
    import copy

    x = digits_test.images[:2]
    with ProjectionCache() as cache:
        first = copy.deepcopy(digits_vae)
        FAST.project(first, x)
        held = id(first)
        del first
        others = [copy.deepcopy(digits_vae) for _ in range(8)]
        assert all(id(g) != held for g in others)
        assert len(cache._generators) == 1
