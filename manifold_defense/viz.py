"""Figures: image grids with labelled rows (matplotlib, Agg backend: works without a display)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["save_image_grid", "save_animation", "generator_grid", "measurement_picture"]


def save_image_grid(
    rows: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """Save a grid whose i-th row shows the images of ``rows[i]`` (each ``(N, C, H, W)`` in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.9 * n_cols + 1.2, 0.95 * n_rows + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        row = row.detach().float().cpu().clamp(0, 1)
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(row):
                img = row[j]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_animation(frames: torch.Tensor, path: str | os.PathLike, *, columns: int, scale: int = 4,
                   seconds_per_frame: float = 0.15) -> Path:
    """Animated GIF of ``frames`` ``(F, N, C, H, W)`` in [0, 1]: each frame tiles its N images into rows of
    ``columns``, upscaled ``scale``× (Pillow, nearest neighbour); the last frame is held longer."""
    from PIL import Image

    if frames.dim() != 5 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (F, N, C, H, W) tensor, got shape {tuple(frames.shape)}")
    f, n, c, h, w = frames.shape
    rows = -(-n // columns)
    canvas = torch.ones(f, c, rows * (h + 1) + 1, columns * (w + 1) + 1)  # 1-pixel white separators
    for i in range(n):
        r, q = divmod(i, columns)
        canvas[:, :, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = frames[:, i]
    pix = (canvas.clamp(0, 1) * 255).round().to(torch.uint8)
    pix = pix.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    images = [Image.fromarray(p[0].numpy() if c == 1 else p.permute(1, 2, 0).numpy()) for p in pix]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ms = int(seconds_per_frame * 1000)
    images[0].save(path, save_all=True, append_images=images[1:], duration=[ms] * (f - 1) + [ms * 8], loop=0)
    return path


def generator_grid(generator: torch.nn.Module, path: str | os.PathLike, *, rows: int = 4, cols: int = 12, seed: int = 0,
                   test_images: torch.Tensor | None = None, title: str | None = None) -> Path:
    """PNG of ``rows`` rows of ``cols`` samples ``G(z)``, ``z`` from the seeded prior (a class-conditional
    generator: a row per class); with ``test_images`` and an encoder, two more rows: the images and their
    reconstructions ``G(E(x))``."""
    from manifold_defense.protocols import ClassConditional, Encoded, Generator

    device = next(generator.parameters()).device
    with torch.inference_mode():
        g = torch.Generator(device=device).manual_seed(seed)
        if isinstance(generator, ClassConditional) and not isinstance(generator, Generator):
            per_class = [generator.condition(c) for c in range(generator.num_classes)]
            grid = [gc(gc.sample_latent(cols, g)) for gc in per_class]
            labels = [f"class {c}" for c in range(generator.num_classes)]
            return save_image_grid(grid, path, row_labels=labels, title=title)
        grid = [generator(generator.sample_latent(cols, g)) for _ in range(rows)]
        labels = ["samples"] * rows
        if test_images is not None and isinstance(generator, Encoded):
            x = test_images[:cols].to(device)
            grid += [x, generator(generator.encode(x))]
            labels += ["test", "G(E(x))"]
    return save_image_grid(grid, path, row_labels=labels, title=title)


def measurement_picture(operator: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Something to look at for measurements ``y``: ``y`` itself when image-shaped (upsampled to the operator's
    input size), else the back-projection ``Aᵀy`` rescaled to [0, 1] per image."""
    import torch.nn.functional as F

    if y.dim() == 4:
        return F.interpolate(y, size=operator.in_shape[1:], mode="nearest") if y.shape[2:] != operator.in_shape[1:] else y
    back = operator.adjoint(y)
    lo = back.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = back.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (back - lo) / (hi - lo).clamp_min(1e-8)
