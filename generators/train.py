"""Trainers for the generators: VAE (ELBO), WGAN-GP (Gulrajani et al. 2017) and the hinge-loss GAN with a
spectrally normalised critic (Miyato et al. 2018).

Both run through ``manifold_defense.checkpoint.train_epochs``: seeded, tqdm progress, an atomic
checkpoint after every epoch, and resumption after an interruption.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from manifold_defense.ambient import RandomMeasurement
from manifold_defense.checkpoint import train_epochs
from manifold_defense.generators.dcgan import WGANCritic
from manifold_defense.generators.base import SequentialGenerator
from manifold_defense.generators.class_conditional import ClassVAEs
from manifold_defense.protocols import ClassConditional, Encoded
from manifold_defense.generators.vae import VAE
from manifold_defense.utils import batched_apply, evaluation_mode, minibatches, seed_everything
from manifold_defense.validation import InputError, check_images, check_labels

__all__ = ["train_vae", "train_wgan", "reconstruction_mse"]


def reconstruction_mse(model: Encoded, x: torch.Tensor, batch_size: int = 1000,
                       labels: torch.Tensor | None = None) -> float:
    """Mean per-pixel squared error of ``G(encode(x))`` against ``x``, for any generator with an encoder
    (a VAE, an ``EncodedGenerator``); a class-conditional one
    encodes and decodes each image with its class's model (``labels``)."""
    p = next(model.parameters())
    x = x.to(p.device)
    if isinstance(model, ClassConditional):
        if labels is None:
            raise InputError("a class-conditional generator's reconstruction needs the labels")
        labels = labels.to(p.device)
        rec = torch.cat([model(model.encode(x[i:i + batch_size], labels[i:i + batch_size]), labels[i:i + batch_size])
                         for i in range(0, len(x), batch_size)]).detach()
    else:
        rec = batched_apply(lambda c: model(model.encode(c)), x, batch_size)
    return float((rec - x).pow(2).mean())


def train_vae(
    model: VAE | ClassVAEs,
    x_train: torch.Tensor,
    y_train: torch.Tensor | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train a VAE with Adam on the negative ELBO (CSGM settings by default: lr 1e-3, batch 100). A
    class-conditional ``ClassVAEs`` takes the labels
    ``y_train`` (and ``y_test``): each image trains its own class's VAE."""
    check_images(x_train, model.output_shape, name="x_train")
    conditional = isinstance(model, ClassConditional)
    if conditional and (y_train is None or (x_test is not None and y_test is None)):
        raise InputError("a class-conditional VAE trains on labelled images: pass y_train (and y_test with x_test)")
    if conditional:
        check_labels(y_train, len(x_train), model.num_classes)
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    x_train = x_train.to(device)
    y_train = y_train.to(device) if conditional else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def epoch_fn(epoch: int) -> dict[str, float]:
        total, count = 0.0, 0
        for idx in minibatches(len(x_train), batch_size, gen):
            xb = x_train[idx.to(device)]
            loss = model.loss(xb, y_train[idx.to(device)]) if conditional else model.loss(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        return {"neg_elbo": total / count}

    def finalize() -> dict[str, float]:
        out = {"train_recon_mse": reconstruction_mse(model, x_train[:10000],
                                                     labels=y_train[:10000] if conditional else None)}
        if x_test is not None:
            out["test_recon_mse"] = reconstruction_mse(model, x_test, labels=y_test if conditional else None)
        return out

    config = {"trainer": "class-vaes" if conditional else "vae", "batch_size": batch_size, "lr": lr, "seed": seed, "n_train": len(x_train)}
    return train_epochs(
        path=path, modules={"model": model}, optimizers={"adam": opt}, epochs=epochs, epoch_fn=epoch_fn,
        config=config, metadata=metadata, generator=gen, finalize=finalize, desc="vae", progress=progress,
    )


def _gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def train_wgan(
    generator: SequentialGenerator,
    critic: WGANCritic,
    x_train: torch.Tensor,
    *,
    iterations: int = 2000,
    iterations_per_epoch: int = 100,
    critic_iters: int = 5,
    gp_weight: float = 10.0,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.5, 0.9),
    batch_size: int = 50,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    x_test: torch.Tensor | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    loss: str = "wgan-gp",
    ema: float = 0.0,
    measurement: RandomMeasurement | None = None,
    measure: str = "ambient",
    real_measured: bool = False,
) -> list[dict[str, float]]:
    """GAN training; WGAN-GP with Defense-GAN's settings by default (5 critic iterations, GP 10, Adam 1e-4
    (0.5, 0.9), batch 50).

    ``iterations`` generator updates, checkpointed every ``iterations_per_epoch`` (a rerun with more
    iterations extends a finished run). ``loss='hinge'``: the hinge loss of SN-GAN (Miyato et al. 2018;
    use a spectrally normalised critic, ``gp_weight`` is ignored). ``ema`` > 0 keeps an exponential
    moving average of the generator's weights with that decay (Yazıcı et al. 2019) and leaves it in
    ``generator`` (the trained weights are checkpointed beside it): averaged weights give better samples.

    ``measurement`` (a ``RandomMeasurement``): AmbientGAN training (Bora, Price,
    Dimakis 2018) with ``measure='ambient'``: the critic compares real measurements with measurements of the
    generator's samples, fresh parameters θ for every sample and step (drawn from the checkpointed data
    generator, so a resumed run draws what an uninterrupted one would); ``measure='ignore'`` is the paper's
    baseline that compares real measurements with unmeasured samples. ``real_measured=True``: ``x_train``
    already holds the measurements (a user's corrupted data; ``x_test`` then too); else each real batch is measured
    afresh.
    """
    if real_measured and measurement is None:
        raise InputError("real_measured=True needs the measurement the data went through (measurement=...)")
    # measured data need not lie in [0, 1] (noise; block-pixels' rescaled pixels) nor be image-shaped
    check_images(x_train, measurement.output_shape if real_measured else generator.output_shape, name="x_train",
                 **({"bounds": None} if real_measured else {}))
    if iterations % iterations_per_epoch:
        raise ValueError("iterations must be a multiple of iterations_per_epoch")
    if loss not in ("wgan-gp", "hinge"):
        raise ValueError(f"loss must be 'wgan-gp' or 'hinge', got {loss!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    if measure not in ("ambient", "ignore"):
        raise InputError(f"measure must be 'ambient' or 'ignore', got {measure!r}")
    if measurement is not None and tuple(measurement.image_shape) != tuple(generator.output_shape):
        raise InputError(f"the measurement takes images of shape {tuple(measurement.image_shape)} but the generator "
                         f"makes {tuple(generator.output_shape)}")
    if measurement is not None:
        if measure == "ignore" and tuple(measurement.output_shape) != tuple(measurement.image_shape):
            raise InputError(f"measure='ignore' shows the critic unmeasured samples beside measurements, but "
                             f"{measurement.name!r} measurements are not images (shape {measurement.output_shape})")
        # a critic of the wrong input shape fails here, not after the first epoch's work (eval mode: a spectral
        # norm's power iteration is not advanced, so the training is the one it would have been)
        with torch.no_grad(), evaluation_mode(critic):
            try:
                critic(torch.zeros(2, *measurement.output_shape, device=next(critic.parameters()).device))
            except RuntimeError as e:
                first = str(e).splitlines()[0]
                raise InputError(f"the critic cannot take {measurement.name!r} measurements of shape "
                                 f"{measurement.output_shape} ({first})") from None
    averaged = generator
    if ema > 0:  # train a copy, keep the average in `generator`
        generator = copy.deepcopy(averaged)
        averaged.requires_grad_(False)
    gen = seed_everything(seed)
    device = next(generator.parameters()).device
    x_train = x_train.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    state = {"order": iter(())}

    def real_batch() -> torch.Tensor:
        idx = next(state["order"], None)
        if idx is None:
            state["order"] = minibatches(len(x_train), batch_size, gen, drop_last=True)
            idx = next(state["order"])
        return x_train[idx.to(device)]

    def noise() -> torch.Tensor:
        return torch.randn(batch_size, generator.latent_dim, generator=gen).to(device)

    def measured_real() -> torch.Tensor:
        real = real_batch()
        return real if measurement is None or real_measured else measurement(real, gen)

    def measured_fake(fake: torch.Tensor) -> torch.Tensor:
        return fake if measurement is None or measure == "ignore" else measurement(fake, gen)

    def epoch_fn(epoch: int) -> dict[str, float]:
        # Each epoch draws a fresh data order from the (checkpointed) data generator, so a run resumed at
        # an epoch boundary sees exactly the batches an uninterrupted one would.
        state["order"] = iter(())
        critic.train()
        generator.train()
        w_sum = gp_sum = 0.0
        for _ in range(iterations_per_epoch):
            for p in critic.parameters():
                p.requires_grad_(True)
            for _ in range(critic_iters):
                real = measured_real()
                with torch.no_grad():
                    fake = measured_fake(generator(noise()))
                d_real, d_fake = critic(real), critic(fake)
                w = d_real.mean() - d_fake.mean()
                if loss == "hinge":
                    gp = torch.zeros(())
                    loss_c = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
                else:
                    gp = _gradient_penalty(critic, real, fake, gen)
                    loss_c = -w + gp_weight * gp
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()
            for p in critic.parameters():
                p.requires_grad_(False)
            loss_g = -critic(measured_fake(generator(noise()))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if ema > 0:
                with torch.no_grad():
                    for a, p in zip(averaged.parameters(), generator.parameters()):
                        a.lerp_(p, 1 - ema)
                    for a, b in zip(averaged.buffers(), generator.buffers()):
                        a.copy_(b)
            w_sum += float(w.detach())
            gp_sum += float(gp.detach())
        for p in critic.parameters():
            p.requires_grad_(True)
        return {"wasserstein": w_sum / iterations_per_epoch, "gp": gp_sum / iterations_per_epoch}


    def finalize() -> dict[str, float]:
        ref = x_test if x_test is not None else x_train
        ref = ref[:2000].to(device)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.inference_mode():
            fake = averaged(torch.randn(len(ref), averaged.latent_dim, generator=g).to(device))
            if measurement is not None:  # the critic judges measurements: measure both sides alike
                ref = ref if real_measured else measurement(ref, g)
                fake = fake if measure == "ignore" else measurement(fake, g)
            w = float(critic(ref).mean() - critic(fake).mean())
        return {"critic_wasserstein_test": w, "iterations": iterations}

    config = {
        "trainer": "wgan-gp", "iterations_per_epoch": iterations_per_epoch, "critic_iters": critic_iters,
        "gp_weight": gp_weight, "lr": lr, "betas": list(betas), "batch_size": batch_size, "seed": seed,
        "n_train": len(x_train),
    }
    if loss != "wgan-gp" or ema > 0:  # recorded only when set: earlier checkpoints' configs stay valid
        config.update(trainer=f"gan-{loss}", ema=ema)
    if measurement is not None:
        config.update(measurement=measurement.config(), measure=measure, real_measured=real_measured)
    modules = {"model": averaged, "critic": critic} | ({"trained_generator": generator} if ema > 0 else {})
    return train_epochs(
        path=path, modules=modules, optimizers={"g": opt_g, "c": opt_c},
        epochs=iterations // iterations_per_epoch, epoch_fn=epoch_fn, config=config, metadata=metadata,
        generator=gen, finalize=finalize, desc="wgan-gp", progress=progress,
    )
