"""Motion helpers the dynamics uses: backward warping, composition of displacements,
frame correlation ("cost volume") and what it says about motion.

    from training import motion
    moved = motion.warp(frames, d)                 # out(p) = frames(p - d(p))
    D = motion.compose(D, d, size)                 # accumulate per-frame displacements
    ev, v, conf = motion.read(prev, cur, radius, grid)   # displacement between two frames

Pure functions of tensors: this module imports nothing of the model, so the model, the
layered dynamics (training/layers.py) and the evaluation can all import it.
Conventions: frames (B, C, H, W) float in [0, 1]; displacements in pixels per frame,
channel 0 = x (right), 1 = y (down), on a grid of h x w cells or at frame resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

READ_SHARPNESS = 100.0   # soft-argmax temperature of `read`: near the argmax, still smooth


def warp(frames: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(p) = frames(p - d(p)), bilinear, zeros outside the image.
    frames (B, C, H, W); d (B, 2, h, w) in pixels (x, y), upsampled to H x W."""
    B, _, H, W = frames.shape
    d = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(H, device=frames.device, dtype=d.dtype),
                            torch.arange(W, device=frames.device, dtype=d.dtype), indexing="ij")
    src_x = xs[None] - d[:, 0]
    src_y = ys[None] - d[:, 1]
    # grid_sample's normalised coordinates with align_corners=False: pixel centre i -> (2i+1)/W - 1
    grid = torch.stack([(2 * src_x + 1) / W - 1, (2 * src_y + 1) / H - 1], dim=-1)
    return F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compose(total: torch.Tensor | None, step: torch.Tensor, size: int) -> torch.Tensor:
    """Accumulate per-frame displacements into one displacement from an anchor frame.

    Backward warps compose as D'(p) = d(p) + D(p - d(p)): the pixel at p came from
    p - d(p) one frame ago, which came from (p - d(p)) - D(p - d(p)) in the anchor.
    total (B, 2, H, W) or None (no motion yet); step (B, 2, h, w) pixels/frame.
    Returns (B, 2, H, W) at frame resolution `size`.

    Warping the sharp anchor once by the accumulated field, instead of re-warping each
    predicted frame, keeps bilinear resampling from eroding thin strokes step after
    step (a re-warped digit lost its edges and became a skeleton within 10 frames)."""
    d = F.interpolate(step.float(), size=(size, size), mode="bilinear", align_corners=False)
    return d if total is None else d + warp(total, d)


def gaussian_blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) frames, radius 3 sigma, zero padding."""
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))


@torch.no_grad()
def correlation(prev: torch.Tensor, cur: torch.Tensor, radius: int, grid: int, cells: int = 5) -> torch.Tensor:
    """Normalised local cross-correlation ("cost volume", as in FlowNet, Dosovitskiy et
    al. 2015, and PWC-Net, Sun et al. 2018) between two consecutive frames, per cell of
    the code grid.

    prev, cur (B, 1, H, W) in [0,1] -> (B, (2r+1)^2, grid, grid). Channel k = i (2r+1) + j
    compares cur(p) with prev(p + o), o = (i - r, j - r) in (y, x), over the window W of
    `cells` x `cells` grid cells (20 px) centred on each cell:
        NCC_o = sum_W cur(p) prev(p + o) / sqrt(sum_W cur(p)^2 * sum_W prev(p + o)^2)
    It is 1 at the offset the content came from (the motion is -o) and 0 on an empty
    background. Wide windows and the normalisation are what make it precise (see
    docs/experiments.md: 0.13 / 0.18 px on Moving MNIST, against 1.2 / 1.3 px for 8-px
    unnormalised windows)."""
    H = cur.shape[-1]
    s, k = H // grid, 2 * radius + 1                           # pixels per cell, offsets per axis
    prev, cur = prev.float(), cur.float()

    def window(x):   # (B, C, H, W) -> (B, C, grid, grid) mean over each cell's window
        return F.avg_pool2d(F.avg_pool2d(x, s), cells, stride=1, padding=cells // 2)

    shifted = F.unfold(F.pad(prev, (radius,) * 4), k)                      # (B, k*k, H*W): prev(p + o)
    corr = window((cur.flatten(2) * shifted).view(-1, k * k, H, H))        # (B, k*k, grid, grid)
    # sum_W prev(p + o)^2 for every o without k*k full-size maps: a box filter of prev^2
    # over the window's extent [q - lo, q + hi], read at q = s c + o.
    lo = s * (cells // 2)
    hi = s * cells - lo - 1
    box = F.avg_pool2d(F.pad(prev.pow(2), (lo, hi, lo, hi)), s * cells, stride=1)   # (B, 1, H, W)
    e_prev = F.unfold(F.pad(box, (radius,) * 4), k, stride=s).view(-1, k * k, grid, grid)
    return corr / ((window(cur.pow(2)) * e_prev).sqrt() + 1e-3)


def correlation_motion(evidence: torch.Tensor, radius: int, sharpness: float = READ_SHARPNESS) -> torch.Tensor:
    """The displacement a `correlation` volume shows: its soft-argmax, negated (content at
    p came from p + o, so it moves by -o per frame). evidence (B, (2r+1)^2, h, w) ->
    (B, 2, h, w) pixels/frame (x, y); an empty cell (all zeros) gives zero motion."""
    o = torch.arange(-radius, radius + 1, device=evidence.device, dtype=torch.float32)
    oy, ox = torch.meshgrid(o, o, indexing="ij")
    p = torch.softmax(sharpness * evidence.float(), 1)
    return -torch.stack([(p * ox.flatten()[:, None, None]).sum(1), (p * oy.flatten()[:, None, None]).sum(1)], 1)


def correlation_confidence(evidence: torch.Tensor) -> torch.Tensor:
    """How much to trust `correlation_motion`: the best correlation score, (B, K, h, w) ->
    (B, 1, h, w) in [0, 1] (0 on an empty background)."""
    return evidence.float().amax(1, keepdim=True).clamp(0, 1)


@torch.no_grad()
def read(prev: torch.Tensor, cur: torch.Tensor, radius: int, grid: int):
    """The motion between two frames, read off their correlation (no learning, no
    physical states). prev, cur (B, 1, H, W) -> evidence (B, (2r+1)^2, grid, grid),
    displacement (B, 2, grid, grid) px/frame, confidence (B, 1, grid, grid)."""
    ev = correlation(prev, cur, radius, grid)
    return ev, correlation_motion(ev, radius), correlation_confidence(ev)
