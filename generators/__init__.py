"""Generators: the architectures (VAE, the Defense-GAN WGAN, DCGAN for 32×32, random ReLU networks, Deep
Image Prior networks, per-class VAEs), encoders for GANs, and their trainers. ``Generator`` and the other protocols
(``manifold_defense.protocols``) say what the rest of the library asks of a generator."""

from manifold_defense.generators.base import Chain, SequentialGenerator
from manifold_defense.generators.class_conditional import ClassVAEs, class_groups
from manifold_defense.generators.cifar import DCGANCritic, DCGANGenerator
from manifold_defense.generators.dcgan import DefenseGANGenerator, WGANCritic
from manifold_defense.generators.dip import DeepImagePrior
from manifold_defense.generators.encoder import EncodedGenerator, LatentEncoder, train_encoder
from manifold_defense.generators.random_relu import RandomReLUGenerator
from manifold_defense.generators.train import reconstruction_mse, train_vae, train_wgan
from manifold_defense.generators.vae import VAE
from manifold_defense.protocols import ClassConditional, Encoded, Generator, Splittable

__all__ = ["Generator", "Splittable", "Encoded", "ClassConditional", "SequentialGenerator", "Chain", "VAE",
           "DefenseGANGenerator", "WGANCritic", "DCGANGenerator", "DCGANCritic", "RandomReLUGenerator", "train_vae",
           "train_wgan", "reconstruction_mse", "EncodedGenerator", "LatentEncoder", "train_encoder", "DeepImagePrior",
           "ClassVAEs", "class_groups"]
