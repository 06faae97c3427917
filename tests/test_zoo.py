"""The model zoo: names, the cache (train once, then load), rebuilds and recipe checks."""

import dataclasses

import pytest
import torch

from manifold_defense import zoo
from manifold_defense.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_defense.classifiers import DigitsCNN, accuracy
from manifold_defense.generators import VAE
from manifold_defense.validation import InputError

REQUIRED = ["digits-vae", "digits-classifier", "mnist-vae20", "mnist-wgan", "mnist-classifier-a",
            "mnist-classifier-b", "mnist-classifier-c", "mnist-classifier-d"]


@pytest.fixture(autouse=True)
def cache_source(monkeypatch):
    """These tests are about the cache and the training path: the shipped weights are out of the way."""
    monkeypatch.setenv("MANIFOLD_DEFENSE_ZOO_SOURCE", "cache")


class TestSmoke:
    def test_names(self):
        assert set(REQUIRED) <= set(zoo.names())
        assert all(zoo.path(n).name == f"{n}.pt" for n in REQUIRED)


class TestCache:
    def test_get_trains_once_then_loads(self, digits_test):
        digits_vae, digits_classifier = zoo.get("digits-vae", progress=False), zoo.get("digits-classifier", progress=False)
        assert isinstance(digits_vae, VAE) and isinstance(digits_classifier, DigitsCNN)
        meta = digits_classifier.metadata
        assert meta["zoo_name"] == "digits-classifier" and meta["complete"]
        assert meta["quality"]["test_accuracy"] == pytest.approx(accuracy(digits_classifier, *digits_test))
        mtime = zoo.path("digits-classifier").stat().st_mtime
        again = zoo.get("digits-classifier")
        assert zoo.path("digits-classifier").stat().st_mtime == mtime  # loaded, not retrained
        x = digits_test.images[:5]
        assert torch.equal(again(x), digits_classifier(x))
        rows = {r["name"]: r for r in zoo.status()}
        assert rows["digits-vae"]["state"].endswith("built") and rows["digits-vae"]["quality"]["test_recon_mse"] < 0.04

    def test_corrupted_cache_is_moved_aside_and_rebuilt(self, tmp_path, monkeypatch):
        zoo.get("digits-classifier", progress=False)
        src = zoo.path("digits-classifier").read_bytes()
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
        zoo.path("digits-classifier").parent.mkdir(parents=True)
        zoo.path("digits-classifier").write_bytes(src[:1000])
        model = zoo.get("digits-classifier", progress=False)
        assert model.metadata["complete"]
        assert any(p.name.startswith("digits-classifier.corrupt-")
                   for p in zoo.path("digits-classifier").parent.iterdir())


class TestReproducibility:
    def test_build_is_reproducible(self, tmp_path, monkeypatch):
        """Two builds of one recipe give the same weights, whatever the global RNG held before (the initial
        weights follow the recipe's seed; unseeded they differed between processes and made tests flaky)."""
        import dataclasses

        short = dataclasses.replace(zoo.ENTRIES["digits-vae"], train_config={"epochs": 1, "batch_size": 64, "lr": 1e-3,
                                                                              "seed": 0})
        monkeypatch.setitem(zoo.ENTRIES, "digits-vae", short)
        weights = []
        for run in range(2):
            monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path / str(run)))
            torch.manual_seed(100 + run)
            weights.append(zoo.get("digits-vae", progress=False).state_dict())
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class TestWarmStart:
    def test_a_classifier_recipe_starts_from_another_zoo_model_with_its_objective(self, tmp_path, monkeypatch):
        """``init`` loads the named model's weights before training (with lr 0 they are what comes out) and
        ``objective`` builds the named preset (recorded in the checkpoint's training config)."""
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
        base = dataclasses.replace(zoo.ENTRIES["digits-classifier"],
                                   train_config={**zoo.ENTRIES["digits-classifier"].train_config, "epochs": 1})
        monkeypatch.setitem(zoo.ENTRIES, "digits-classifier", base)
        tuned = dataclasses.replace(base, name="digits-tuned", train_config={
            "epochs": 1, "batch_size": 128, "lr": 0.0, "schedule": "constant", "seed": 1, "init": "digits-classifier",
            "objective": {"preset": "pgd_at", "norm": "l2", "epsilon": 0.5, "steps": 2}})
        monkeypatch.setitem(zoo.ENTRIES, "digits-tuned", tuned)
        start, model = zoo.get("digits-classifier", progress=False), zoo.get("digits-tuned", progress=False)
        assert all(torch.equal(v, start.state_dict()[k]) for k, v in model.state_dict().items())
        meta = load_checkpoint(zoo.path("digits-tuned"))["metadata"]
        assert meta["init"]["zoo_name"] == "digits-classifier"
        assert (meta["config"]["norm"], meta["config"]["epsilon"], meta["config"]["steps"]) == ("l2", 0.5, 2)
        assert meta["zoo_spec"]["init_spec"] == base.spec()

    def test_a_warm_start_of_another_model_is_another_recipe(self, monkeypatch):
        start = zoo.ENTRIES["mnist-fast-linf"]
        spec = zoo.ENTRIES["mnist-trades-linf"].spec()
        assert spec["init_spec"] == start.spec()
        longer = dataclasses.replace(start, train_config={**start.train_config, "epochs": 12})
        monkeypatch.setitem(zoo.ENTRIES, "mnist-fast-linf", longer)
        assert zoo.ENTRIES["mnist-trades-linf"].spec() != spec

    def test_an_objective_names_a_zoo_generator(self):
        objective = zoo.objective_from_config({"preset": "pgd_at", "norm": "linf", "epsilon": 0.3, "steps": 40,
                                               "step_size": 0.01})
        assert objective.config()["step_size"] == 0.01 and objective.config()["steps"] == 40
        with pytest.raises(InputError, match="needs a generator"):
            zoo.objective_from_config({"preset": "rmd", "norm": "linf", "epsilon": 0.3})


class TestException:
    def test_unknown_name(self):
        with pytest.raises(InputError, match="unknown zoo model 'mnist-resnet'"):
            zoo.get("mnist-resnet")

    def test_not_built(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
        with pytest.raises(CheckpointError, match="zoo build mnist-wgan"):
            zoo.get("mnist-wgan", train=False)

    def test_recipe_changed(self, tmp_path, monkeypatch):
        zoo.get("digits-classifier", progress=False)
        ckpt = load_checkpoint(zoo.path("digits-classifier"))
        ckpt["metadata"]["zoo_spec"]["train_config"]["lr"] = 0.5
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path))
        save_checkpoint(zoo.path("digits-classifier"), ckpt)
        with pytest.raises(CheckpointError, match="different recipe.*--force"):
            zoo.get("digits-classifier")

    def test_an_encoder_of_another_generator_is_another_recipe(self, monkeypatch):
        # an encoder entry's recipe holds its base generator's: a build fitted to an older base is refused
        base = zoo.ENTRIES["mnist-sngan"]
        spec = zoo.ENTRIES["mnist-sngan-inv"].spec()
        assert spec["base_spec"] == base.spec()
        longer = dataclasses.replace(base, train_config={**base.train_config, "iterations": 8000})
        monkeypatch.setitem(zoo.ENTRIES, "mnist-sngan", longer)
        assert zoo.ENTRIES["mnist-sngan-inv"].spec() != spec
