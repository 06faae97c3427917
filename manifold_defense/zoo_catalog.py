"""The zoo's catalogue: every model it knows, as a recipe (architecture, data, trainer and its settings).

``manifold_defense.zoo`` loads, builds and ships them; a recipe's ``ZooEntry.spec`` is what a cached or
shipped model is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ZooEntry", "ENTRIES", "SNGAN_ITERATIONS"]


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model: architecture, data and training recipe."""

    name: str
    kind: str  # "generator" or "classifier"
    dataset: str
    arch: str
    arch_config: dict[str, Any]
    #: "vae", "wgan", "encoder" (of train_config["base"]) or "classifier" (train_config's ``objective``: the arguments
    #: of ``objective_preset``; ``init``: the zoo model whose weights it starts from)
    trainer: str
    train_config: dict[str, Any]
    description: str
    budget_minutes: float
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        """The recipe (architecture, data, trainer and its settings; for an encoder, its base generator's recipe
        too): a cached model built from another is refused."""
        spec = {"arch": self.arch, "arch_config": self.arch_config, "trainer": self.trainer,
                "train_config": self.train_config, "dataset": self.dataset}
        if self.trainer == "encoder":  # an encoder fitted to another generator is another model
            spec["base_spec"] = ENTRIES[self.train_config["base"]].spec()
        if "init" in self.train_config:  # a warm start: the model it starts from is part of the recipe
            spec["init_spec"] = ENTRIES[self.train_config["init"]].spec()
        generator = self.train_config.get("objective", {}).get("generator")
        if generator is not None:  # an objective on a generator's range: that generator is part of the recipe
            spec["generator_spec"] = ENTRIES[generator].spec()
        return spec


def _classifier(name: str, model: str, epochs: int, budget: float) -> ZooEntry:
    return ZooEntry(
        name=name, kind="classifier", dataset="mnist", arch="defensegan-classifier",
        arch_config={"model": model}, trainer="classifier",
        train_config={"epochs": epochs, "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "seed": 0},
        description=f"Defense-GAN classifier {model} on MNIST (Adam 1e-3, batch 128, cosine decay, {epochs} epochs)",
        budget_minutes=budget,
    )


def _robust(name: str, train_config: dict[str, Any], what: str, budget: float, *, madry: bool = False) -> ZooEntry:
    """An MNIST classifier of benchmarks/robust_mnist.py: classifier A of Defense-GAN, or with ``madry`` Madry et
    al. 2018's network (3.3 M weights)."""
    arch, config, network = (("madry-mnist", {}, "Madry et al.'s MNIST network") if madry else
                             ("defensegan-classifier", {"model": "A"}, "Defense-GAN classifier A on MNIST"))
    return ZooEntry(name, "classifier", "mnist", arch, config, "classifier", {**train_config, "seed": 0},
                    f"{network}, {what}", budget)


_FAST = {"epochs": 10, "batch_size": 100, "lr": 5e-3, "schedule": "cyclic",
         "objective": {"preset": "fast", "norm": "linf", "epsilon": 0.3}}
_FAST_WHAT = ("fast adversarial training (Wong, Rice, Kolter 2020: FGSM of 1.25 eps from a random start, Linf eps 0.3, "
              "cyclic lr up to 5e-3, batch 100, 10 epochs, rolled back on catastrophic overfitting by OverfitGuard; "
              "benchmarks/robust_mnist.py {})")
_TRADES_WHAT = ("{} fine-tuned with TRADES (Zhang et al. 2019: beta 1, Linf eps 0.3, 40 steps of 0.01; Adam 5e-4, "
                "cosine, {} epoch(s); benchmarks/robust_mnist.py {})")


def _trades(init: str, epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": 128, "lr": 5e-4, "schedule": "cosine", "init": init,
            "objective": {"preset": "trades", "norm": "linf", "epsilon": 0.3, "steps": 40, "step_size": 0.01}}


def _pgd_l2(init: str, epochs: int) -> dict[str, Any]:
    """``init``'s weights, then Madry ℓ2 PGD at ε 2.5 (10 steps of 2.5 ε / 10; Adam 5e-4, cosine) for ``epochs``."""
    return {"epochs": epochs, "batch_size": 128, "lr": 5e-4, "schedule": "cosine", "init": init,
            "objective": {"preset": "pgd_at", "norm": "l2", "epsilon": 2.5, "steps": 10}}


_PGD_L2_WHAT = ("{} fine-tuned with Madry PGD (L2 eps 2.5, 10 steps of 2.5 eps / 10; Adam 5e-4, cosine, {} epochs; "
                "benchmarks/robust_mnist.py {})")

#: The fast projection tuned for the 128-d GAN latents with an encoder (see mnist-wgan-inv's entry for why)
_GAN_ENCODER_PROJECTION = {"optimizer": "sgd", "lr": 5.0, "momentum": 0.9, "schedule": "constant", "restarts": 1,
                           "init": "encoder", "steps": 90, "tol": 1e-4, "patience": 25, "prune_after": 0}

#: generator updates of mnist-sngan: the stage of benchmarks/gan_training.py's sn-hinge-bn run with the best FID
SNGAN_ITERATIONS = 10000

ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="digits-vae", kind="generator", dataset="digits", arch="vae-mlp",
            arch_config={"image_shape": [1, 8, 8], "latent_dim": 8, "hidden": [256, 256]},
            trainer="vae", train_config={"epochs": 300, "batch_size": 64, "lr": 1e-3, "seed": 0},
            description="MLP VAE 64-256-256-8 on the 8x8 digits (CSGM's design, scaled down)",
            budget_minutes=1.0,
        ),
        ZooEntry(
            name="digits-classifier", kind="classifier", dataset="digits", arch="digits-cnn",
            arch_config={"input_shape": [1, 8, 8], "num_classes": 10, "width": 32}, trainer="classifier",
            train_config={"epochs": 40, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "augment_shift": 1,
                          "seed": 0},
            description="Small CNN on the 8x8 digits (random 1-pixel shifts)", budget_minutes=0.5,
        ),
        ZooEntry(
            name="mnist-vae20", kind="generator", dataset="mnist", arch="vae-mlp",
            arch_config={"image_shape": [1, 28, 28], "latent_dim": 20, "hidden": [500, 500]},
            trainer="vae", train_config={"epochs": 100, "batch_size": 100, "lr": 1e-3, "seed": 0},
            description="CSGM's MNIST VAE 784-500-500-20 (Bora et al. 2017: Adam 1e-3, batch 100, 100 epochs)",
            budget_minutes=15.0,
        ),
        ZooEntry(
            name="mnist-wgan", kind="generator", dataset="mnist", arch="defensegan-generator",
            arch_config={"latent_dim": 128, "dim": 64}, trainer="wgan",
            train_config={"iterations": 2000, "iterations_per_epoch": 100, "critic_iters": 5, "gp_weight": 10.0,
                          "lr": 1e-4, "betas": [0.5, 0.9], "batch_size": 50, "seed": 0},
            description="Defense-GAN's MNIST generator, WGAN-GP (paper recipe, 2,000 of its 200,000 iterations)",
            budget_minutes=40.0, extra={"critic": {"arch": "wgan-critic", "config": {"dim": 64}}},
        ),
        ZooEntry(
            name="mnist-wgan-inv", kind="generator", dataset="mnist", arch="encoded-generator",
            arch_config={"generator_arch": "defensegan-generator", "generator_config": {"latent_dim": 128, "dim": 64},
                         "encoder_dim": 64},
            trainer="encoder",
            train_config={"base": "mnist-wgan", "epochs": 3, "batch_size": 64, "lr": 1e-3, "image_weight": 1.0,
                          "noise": 0.3, "seed": 0},
            description="mnist-wgan with an encoder trained for it (Invert-and-Defend, Lin et al. 2019): warm starts "
                        "for the fast projection, also trained on randomly L∞-perturbed images (noise 0.3) so that it starts "
                        "the projection of off-manifold inputs well; same generator weights",
            budget_minutes=20.0,
            # Its 128-d latent converges far faster under momentum SGD (momentum 0.9) than under Adam (measured:
            # clean MSE 0.0030 vs 0.0054 at ~90 evaluations), and adding random-search starts in 128 dimensions
            # did not improve on the encoder start. A constant lr 5 with patience 25 beats cosine-decayed lr 10
            # with patience 10 on FGSM inputs (MSE .0284 vs .0306, 100 test images; momentum SGD's loss
            # oscillates, so a short patience stopped those samples early) at the same clean MSE.
            extra={"projection": dict(_GAN_ENCODER_PROJECTION)},
        ),
        ZooEntry(
            name="mnist-sngan", kind="generator", dataset="mnist", arch="defensegan-generator",
            arch_config={"latent_dim": 128, "dim": 64, "batchnorm": True}, trainer="wgan",
            train_config={"iterations": SNGAN_ITERATIONS, "iterations_per_epoch": 100, "loss": "hinge",
                          "critic_iters": 1, "lr": 2e-4, "betas": [0.5, 0.999], "batch_size": 64, "ema": 0.995,
                          "seed": 0},
            description="Defense-GAN's MNIST generator (with DCGAN's batch normalisation), hinge loss against a "
                        "spectrally normalised critic (Miyato et al. 2018), Adam 2e-4 (0.5, 0.999), batch 64, "
                        f"weights averaged (EMA 0.995); {SNGAN_ITERATIONS:,} iterations "
                        "(benchmarks/gan_training.py --recipe sn-hinge-bn)",
            budget_minutes=SNGAN_ITERATIONS / 2000 * 17,
            extra={"critic": {"arch": "wgan-critic", "config": {"dim": 64, "spectral_norm": True}}},
        ),
        ZooEntry(
            name="mnist-sngan-inv", kind="generator", dataset="mnist", arch="encoded-generator",
            arch_config={"generator_arch": "defensegan-generator",
                         "generator_config": {"latent_dim": 128, "dim": 64, "batchnorm": True}, "encoder_dim": 64},
            trainer="encoder",
            train_config={"base": "mnist-sngan", "epochs": 3, "batch_size": 64, "lr": 1e-3, "image_weight": 1.0,
                          "noise": 0.3, "seed": 0},
            description="mnist-sngan with an encoder trained for it (as mnist-wgan-inv): warm starts for the fast "
                        "projection; same generator weights",
            budget_minutes=20.0,
            extra={"projection": dict(_GAN_ENCODER_PROJECTION)},
        ),
        ZooEntry(
            name="digits-robust-l2", kind="classifier", dataset="digits", arch="digits-cnn",
            arch_config={"input_shape": [1, 8, 8], "num_classes": 10, "width": 32}, trainer="classifier",
            train_config={"epochs": 40, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "augment_shift": 1,
                          "seed": 0, "adversary": {"norm": "l2", "epsilon": 0.5, "steps": 5}},
            description="Small CNN on the 8x8 digits, Madry PGD adversarial training (L2 eps 0.5, 5 steps): "
                        "a robust classifier for guided generation",
            budget_minutes=2.0,
        ),
        ZooEntry(
            name="mnist-robust-l2", kind="classifier", dataset="mnist", arch="defensegan-classifier",
            arch_config={"model": "A"}, trainer="classifier",
            train_config={"epochs": 3, "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "seed": 0,
                          "adversary": {"norm": "l2", "epsilon": 2.0, "steps": 7}},
            description="Defense-GAN classifier A on MNIST, Madry PGD adversarial training (L2 eps 2.0, 7 steps, "
                        "3 epochs): the robust classifier that guides ILO generation",
            budget_minutes=15.0,
        ),
        _robust("mnist-fast-linf", _FAST, _FAST_WHAT.format("fast_linf"), 20.0),
        _robust("mnist-trades-linf", _trades("mnist-fast-linf", 1),
                _TRADES_WHAT.format("mnist-fast-linf", 1, "trades_linf_ft"), 60.0),
        # the ℓ2 2.0 chain of benchmarks/robust_mnist.py; only its last link is shipped
        _robust("mnist-madry-standard", {"epochs": 5, "batch_size": 128, "lr": 1e-3, "schedule": "cosine"},
                "cross-entropy (Adam 1e-3, batch 128, cosine, 5 epochs; benchmarks/robust_mnist.py "
                "standard_madry)", 10.0, madry=True),
        _robust("mnist-madry-l2-e4", _pgd_l2("mnist-madry-standard", 4),
                _PGD_L2_WHAT.format("mnist-madry-standard", 4, "pgd_at_l2_madry_ft"), 30.0, madry=True),
        _robust("mnist-madry-l2", _pgd_l2("mnist-madry-l2-e4", 4),
                _PGD_L2_WHAT.format("mnist-madry-l2-e4", 4, "pgd_at_l2_madry_ft8") + ", robust at L2 2.0", 30.0,
                madry=True),
        ZooEntry(
            name="digits-class-vaes", kind="generator", dataset="digits", arch="class-vaes",
            arch_config={"image_shape": [1, 8, 8], "latent_dim": 4, "hidden": [128, 128], "num_classes": 10},
            trainer="vae", train_config={"epochs": 300, "batch_size": 64, "lr": 1e-3, "seed": 0},
            description="One MLP VAE 64-128-128-4 per digit class (Stutz et al. 2019's class-specific generators, "
                        "scaled down) on the 8x8 digits",
            budget_minutes=2.0,
        ),
        ZooEntry(
            name="mnist-class-vaes", kind="generator", dataset="mnist", arch="class-vaes",
            arch_config={"image_shape": [1, 28, 28], "latent_dim": 10, "hidden": [256, 256], "num_classes": 10},
            trainer="vae", train_config={"epochs": 60, "batch_size": 100, "lr": 1e-3, "seed": 0},
            description="One MLP VAE 784-256-256-10 per MNIST class (Stutz et al. 2019's class-specific generators "
                        "with a 10-d latent; a VAE for its encoder; Adam 1e-3, batch 100, 60 epochs)",
            budget_minutes=20.0,
        ),
        _classifier("mnist-classifier-a", "A", 5, 5.0),
        _classifier("mnist-classifier-b", "B", 12, 5.0),
        _classifier("mnist-classifier-c", "C", 2, 5.0),
        _classifier("mnist-classifier-d", "D", 20, 5.0),
    ]
}


