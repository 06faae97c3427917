"""Generators: the interface, the architectures and their trainers."""

from manifold_defense.generators.base import Chain, Generator
from manifold_defense.generators.dip import DeepImagePrior
from manifold_defense.generators.dcgan import DefenseGANGenerator, WGANCritic
from manifold_defense.generators.encoder import EncodedGenerator, LatentEncoder, train_encoder
from manifold_defense.generators.random_relu import RandomReLUGenerator
from manifold_defense.generators.train import train_vae, train_wgan
from manifold_defense.generators.vae import VAE

__all__ = ["Generator", "Chain", "VAE", "DefenseGANGenerator", "RandomReLUGenerator", "WGANCritic", "train_vae", "train_wgan",
           "EncodedGenerator", "LatentEncoder", "train_encoder", "DeepImagePrior"]
