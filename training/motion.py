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

    # sum_W cur(p) prev(p + o), one row of offsets (one o_y) at a time: the products are
    # pooled to cells before the next row, so no (B, k*k, H, W) tensor is ever built
    # (7x faster than unfolding all offsets at once on a CPU).
    padded = F.pad(prev, (radius,) * 4)[:, 0]                              # (B, H+2r, W+2r)
    rows = []
    for i in range(k):
        shifted = padded[:, i:i + H].unfold(2, H, 1)                       # (B, H, k, W): prev(y + i - r, x + j - r)
        rows.append(F.avg_pool2d((cur[:, 0, :, None, :] * shifted).permute(0, 2, 1, 3), s))   # (B, k, grid, grid)
    corr = F.avg_pool2d(torch.cat(rows, 1), cells, stride=1, padding=cells // 2)   # (B, k*k, grid, grid)
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


def pixel_grid(H: int, W: int, device, dtype=torch.float32) -> torch.Tensor:
    """Every pixel centre as a point: (H*W, 2) (x, y) in pixels, row-major."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                            torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def splat(pos: torch.Tensor, values: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Forward ("splatting") warp: every point adds its values to the four pixels around
    it with bilinear weights; points outside the image add nothing.
    pos (B, N, 2) pixels (x, y); values (B, N, C) -> (B, C, H, W) sums.
    Differentiable in `values` and, through the bilinear weights, in `pos` (the
    forward counterpart of `warp`, as in softmax splatting, Niklaus & Liu 2020)."""
    B, N, C = values.shape
    pos = pos.float()
    base = pos.floor()
    frac = pos - base
    base = base.long()
    out = values.new_zeros(B, C, H * W, dtype=torch.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            xi, yi = base[..., 0] + dx, base[..., 1] + dy
            inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1))                    # (B, N)
            w = (wx * wy * inside).unsqueeze(-1)                                      # (B, N, 1)
            out = out.scatter_add(2, idx[:, None, :].expand(B, C, N), (values.float() * w).transpose(1, 2))
    return out.view(B, C, H, W)


def sample_at(field: torch.Tensor, pos: torch.Tensor, size: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A field on a grid of cells covering a size x size image, read at points: bilinear,
    or with `weight` (B, 1, h, w) >= 0 a normalised convolution (Knutsson & Westin 1993),
    sum(w * f) / sum(w) over the neighbouring cells, so that cells with no weight (empty
    space beside a body) do not water down the value read at the body's edge.
    field (B, C, h, w); pos (B, N, 2) pixels (x, y) -> (B, N, C)."""
    grid = ((2 * pos.float() + 1) / size - 1)[:, :, None, :]                          # (B, N, 1, 2)

    def read(x):
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[..., 0].transpose(1, 2)             # (B, N, C)
    if weight is None:
        return read(field)
    w = weight.float()
    return read(field * w) / read(w).clamp_min(1e-4)


def pool_by_motion(field: torch.Tensor, guide: torch.Tensor, weight: torch.Tensor, radius: int = 3,
                   sigma: float = 0.5, iterations: int = 2) -> torch.Tensor:
    """Average a field over the cells that move alike: a joint bilateral filter (Tomasi &
    Manduchi 1998; Kopf et al. 2007) on the cell grid, guided by a measured motion:
        out(p) = sum_q w(q) exp(-|g(p) - g(q)|^2 / 2 sigma^2) f(q) / sum_q (same weights)
    over the (2 radius + 1)^2 cells q around p, repeated `iterations` times (so it reaches
    2 * radius * iterations cells across). Cells of one body share its motion and are
    averaged together; a neighbour moving another way by more than ~2 sigma px/frame
    stays out. field (B, C, h, w); guide (B, 2, h, w) px/frame; weight (B, 1, h, w) >= 0
    (how much content each cell holds) -> (B, C, h, w). Differentiable in `field`."""
    B, C, h, w = field.shape
    k = 2 * radius + 1

    def neighbours(x):   # (B, c, h, w) -> (B, c, k*k, h*w)
        return F.unfold(x, k, padding=radius).view(B, x.shape[1], k * k, h * w)
    g = guide.float()
    affinity = torch.exp(-(neighbours(g) - g.flatten(2)[:, :, None]).pow(2).sum(1) / (2 * sigma ** 2))
    affinity = affinity * neighbours(weight.float())[:, 0]                           # (B, k*k, h*w)
    norm = affinity.sum(1).clamp_min(1e-6)
    out = field.float()
    for _ in range(iterations):
        out = ((neighbours(out) * affinity[:, None]).sum(2) / norm[:, None]).view(B, C, h, w)
    return out
