"""Attacks: off-manifold (pixel), adaptive (BPDA, EOT, latent reparameterisation) and on-manifold."""
