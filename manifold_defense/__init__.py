"""manifold-defense: defending image classifiers with generative models.

Projection defenses (Defense-GAN, the Robust Manifold Defense), adaptive and on-manifold attacks,
manifold adversarial training, and generative compressed sensing (CSGM, ILO) on one inversion core.
"""

from manifold_defense._version import __version__
from manifold_defense.validation import InputError, check_compatible

__all__ = ["__version__", "InputError", "check_compatible"]
