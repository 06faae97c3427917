"""Generator quality: Fréchet distance in an independent classifier's feature space, precision and recall.

FID (Heusel et al. 2017) is computed by torchmetrics' ``FrechetInceptionDistance`` with a feature network
of ours instead of a downloaded Inception: the activations that enter the last linear layer of an MNIST
classifier that neither the defended model nor the judge is (the zoo's ``mnist-classifier-c`` by default).
Figures are therefore comparable between generators measured here, not with Inception FIDs in papers.
Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020, which
stay honest when a few real outliers have huge k-NN balls: uniform noise can score precision 1) use the
same features with k-nearest-neighbour balls; torchmetrics has no implementation of them, and the one on
PyPI (``prdc``) has been unmaintained since 2020, so the few lines live here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from manifold_defense.utils import batched_apply
from manifold_defense.validation import InputError, check_images

__all__ = ["PenultimateFeatures", "frechet_distance", "precision_recall", "density_coverage", "generator_quality", "sample_generator"]


class PenultimateFeatures(nn.Module):
    """The input of a classifier's last linear layer (its learned representation), as a feature network.

    ``classifier.net`` must be an ``nn.Sequential`` ending in ``nn.Linear`` (every classifier of the zoo);
    the classifier is put in eval mode and frozen.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        net = getattr(classifier, "net", None)
        if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
            raise InputError("the feature classifier needs a .net nn.Sequential ending in nn.Linear "
                             f"(the zoo's classifiers), got {type(classifier).__name__}")
        self.body = net[:-1].eval().requires_grad_(False)
        self.num_features = int(net[-1].in_features)
        self.input_shape = tuple(getattr(classifier, "input_shape", ()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float()).flatten(1)

    def train(self, mode: bool = True) -> "PenultimateFeatures":  # always in eval mode (dropout off)
        super().train(False)
        return self


@torch.inference_mode()
def _features(features: PenultimateFeatures, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(features.parameters()).device
    return batched_apply(lambda b: features(b.to(device)).double().cpu(), x, batch_size)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, features: PenultimateFeatures,
                     batch_size: int = 500) -> float:
    """FID between two image sets in ``features``' space (torchmetrics' implementation)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, x in (("real", real), ("fake", fake)):
        check_images(x, features.input_shape or None, name=name)
        if len(x) < 2:
            raise InputError(f"{name} needs at least 2 images for a covariance, got {len(x)}")
    fid = FrechetInceptionDistance(feature=features, reset_real_features=True, normalize=True)
    with torch.inference_mode():
        for x, is_real in ((real, True), (fake, False)):
            for chunk in x.split(batch_size):
                fid.update(chunk.to(next(features.parameters()).device), real=is_real)
        return float(fid.compute())


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     chunk: int = 2000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the fraction of fakes inside the union of
    the real samples' k-NN balls (precision), and of reals inside the fakes' balls (recall)."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if min(len(real_features), len(fake_features)) <= k:
        raise InputError(f"both sets need more than k = {k} samples")

    def covered(query: torch.Tensor, support: torch.Tensor, r: torch.Tensor) -> float:
        inside = [(torch.cdist(c, support) <= r[None]).any(1) for c in query.split(chunk)]
        return float(torch.cat(inside).double().mean())

    real_features, fake_features = real_features.double(), fake_features.double()
    return (covered(fake_features, real_features, _radii(real_features, k, chunk)),
            covered(real_features, fake_features, _radii(fake_features, k, chunk)))


def _radii(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``f`` to its k-th nearest other row."""
    return torch.cat([torch.cdist(c, f).kthvalue(k + 1, dim=1).values for c in f.split(chunk)])


def density_coverage(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     chunk: int = 2000) -> tuple[float, float]:
    """Density (mean number of real k-NN balls holding a fake, over k) and coverage (the fraction of real
    samples whose ball holds at least one fake): Naeem et al. 2020."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if len(real_features) <= k or len(fake_features) < 1:
        raise InputError(f"need more than k = {k} real samples and at least one fake")
    real, fake = real_features.double(), fake_features.double()
    r = _radii(real, k, chunk)
    hits = torch.cat([(torch.cdist(real[i:i + chunk], fake) <= r[i:i + chunk, None]) for i in range(0, len(real), chunk)])
    return float(hits.sum()) / (k * len(fake)), float(hits.any(1).double().mean())


@torch.inference_mode()
def sample_generator(generator: nn.Module, n: int, *, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """``n`` images G(z), z ~ N(0, I), drawn from a seeded stream (the same images every call)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.latent_dim, generator=g)
    device = next(generator.parameters()).device
    return batched_apply(lambda b: generator(b.to(device)).cpu(), z, batch_size).clamp(0, 1)


def generator_quality(generator: nn.Module | None, real: torch.Tensor, feature_classifier: nn.Module, *,
                      n: int = 5000, seed: int = 0, k: int = 3, fake: torch.Tensor | None = None,
                      batch_size: int = 500) -> dict[str, Any]:
    """FID, precision, recall, density and coverage of ``n`` samples of ``generator`` (or the images ``fake``) against the first
    ``n`` images of ``real``, in ``feature_classifier``'s penultimate features."""
    if (generator is None) == (fake is None):
        raise InputError("give exactly one of generator and fake")
    if n < 2 * k + 2:
        raise InputError(f"n must be at least {2 * k + 2}, got {n}")
    feats = PenultimateFeatures(feature_classifier)
    real = real[:n]
    fake = sample_generator(generator, len(real), seed=seed, batch_size=batch_size) if fake is None else fake[:n]
    fr, ff = _features(feats, real, batch_size), _features(feats, fake, batch_size)
    precision, recall = precision_recall(fr, ff, k=k)
    density, coverage = density_coverage(fr, ff, k=k)
    return {"fid": frechet_distance(real, fake, feats, batch_size), "precision": precision, "recall": recall,
            "density": density, "coverage": coverage,
            "n_real": len(real), "n_fake": len(fake), "k": k, "features": f"penultimate ({feats.num_features}-d)",
            "seed": seed, "precision_se": math.sqrt(precision * (1 - precision) / len(fake)),
            "recall_se": math.sqrt(recall * (1 - recall) / len(real))}
