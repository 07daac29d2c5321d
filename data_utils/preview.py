"""Dataset previews: `<name>_preview.png` (rows = sequences, columns = frames over time) and
`<name>_preview.gif` (a few sequences side by side, animated).

Written by the dataset CLIs (python data_utils/generate_physics_data.py --dataset all); for an
existing dataset: `from data_utils import preview; preview.save_previews(frames, folder, name, title)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

GAP = 2        # px of grey between tiles
GAP_VALUE = 96            # gap grey in the GIF
GAP_RGB = (70, 110, 190)  # gap colour in the PNG


def montage(frames: np.ndarray, max_cols: int = 10) -> tuple[np.ndarray, list[int]]:
    """(k, T, H, W) uint8 -> one (k*(H+GAP)-GAP, c*(W+GAP)-GAP) image of k rows and c <= max_cols
    evenly spaced time steps, and the time index of each column."""
    k, T, H, W = frames.shape
    cols = np.unique(np.linspace(0, T - 1, min(T, max_cols)).round().astype(int)).tolist()
    img = np.full((k * (H + GAP) - GAP, len(cols) * (W + GAP) - GAP), GAP_VALUE, np.uint8)
    for r in range(k):
        for c, t in enumerate(cols):
            img[r * (H + GAP):r * (H + GAP) + H, c * (W + GAP):c * (W + GAP) + W] = frames[r, t]
    return img, cols


def save_preview_png(frames: np.ndarray, path: str | Path, title: str, max_cols: int = 10) -> Path:
    """Grid of `frames` (k, T, H, W) uint8: one row per sequence, columns over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import utils

    img, cols = montage(frames, max_cols)
    k, _, H, W = frames.shape
    # Colour the gaps so that tiles stay apart on grey scenes (waves) too.
    rgb = np.repeat(img[..., None], 3, axis=-1)
    gap_rows = (np.arange(img.shape[0]) % (H + GAP)) >= H
    gap_cols = (np.arange(img.shape[1]) % (W + GAP)) >= W
    rgb[gap_rows[:, None] | gap_cols[None, :]] = GAP_RGB
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 0.8, 1.1 * k + 0.8))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([c * (W + GAP) + W / 2 for c in range(len(cols))], [f"t={t}" for t in cols], fontsize=8)
    ax.set_yticks([r * (H + GAP) + H / 2 for r in range(k)], [f"seq {r}" for r in range(k)], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    utils.save_figure(fig, path)
    return Path(path)


def save_preview_gif(frames: np.ndarray, path: str | Path, scale: int = 2, fps: float = 8.0) -> Path:
    """Animate `frames` (k, T, H, W) uint8 side by side, each pixel drawn scale x scale."""
    from PIL import Image

    k, T, H, W = frames.shape
    big = frames.repeat(scale, axis=2).repeat(scale, axis=3)  # (k, T, sH, sW), nearest-neighbour
    strip = np.full((T, scale * H, k * (scale * W + GAP) - GAP), GAP_VALUE, np.uint8)
    for r in range(k):
        strip[:, :, r * (scale * W + GAP):r * (scale * W + GAP) + scale * W] = big[r]
    images = [Image.fromarray(f) for f in strip]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


def save_previews(frames: np.ndarray, folder: str | Path, name: str, title: str) -> list[Path]:
    """Both previews of `frames` (k, T, H, W) uint8 into `folder`; returns their paths."""
    folder = Path(folder)
    frames = np.asarray(frames, np.uint8)
    return [save_preview_png(frames, folder / f"{name}_preview.png", title),
            save_preview_gif(frames, folder / f"{name}_preview.gif")]
