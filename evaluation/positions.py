"""Body positions read off frames: the instrument the physics checks measure with.

Not run directly; evaluation/eval_physics.py and eval_sharp.py call it:

    pos = read_bodies(frames, k=3, thin=False)      # (N, T, H, W) in [0, 1] -> (N, T, 3, 2)
    pos = match_bodies(pos, true_pos)               # same bodies, in the states' order
    err = position_error(pos, true_pos)             # (N, T) px

The reader knows how many bodies a scene has and nothing else about it. Per frame:
  1. haze below `floor` is dropped (a blurry prediction leaves a faint halo);
  2. with `thin`, a 3x3 grey-scale opening (erosion, then dilation) removes structures under
     3 px wide: pendulum rods, springs, the pivot dot; bodies 5 px across or more survive;
  3. a chessboard distance transform of the body mask (repeated 3x3 erosions) peaks at each
     body's centre, also where two bodies touch (the neck between them is thin), so the k
     highest peaks, each suppressing a square of its own radius, seed one body each;
  4. a few weighted k-means steps on the pixel grid (weights: the frame's own intensities
     inside the mask) move each seed to its body's intensity centroid; pixels go to the body
     of least power distance |p - c|^2 - r^2 (r from the body's area), so two touching
     discs are split along their common tangent.
A body not found (no mask left) is NaN. Its error on the true frames of each dataset is
measured by eval_physics.py and printed beside every figure made with it.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

# How to read each scene (read_bodies keywords). Rods (grey 110), springs (130) and anchor
# boxes (150) are thin; spring_mass bodies are 180-255, so a floor of 0.62 drops its springs
# where they coil up into a blob. Digits are strokes, not discs.
READER = {
    "moving_mnist": dict(compact=False),
    "pendulum": dict(thin=True),
    "double_pendulum": dict(thin=True),
    "spring_mass": dict(thin=True, floor=0.62),
}


def _erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


@torch.no_grad()
def read_bodies(frames: torch.Tensor, k: int, thin: bool = False, compact: bool = True,
                floor: float = 0.1, iters: int = 4) -> torch.Tensor:
    """Centres of the k bodies in each frame.

    frames (..., H, W) float in [0, 1] (squeeze the channel first) -> (..., k, 2) float32
    as (x, y) in pixel coordinates, the top-left pixel's centre at (0, 0) (the states'
    convention, docs/data.md). NaN where fewer than k bodies are visible.
    `thin`: remove rods and springs first. `compact` False (a digit's strokes are thinner
    than it is wide): every bright pixel belongs to its nearest body, however far.
    `floor`: intensities at or below it are background."""
    H, W = frames.shape[-2:]
    lead = frames.shape[:-2]
    x = frames.float().reshape(-1, 1, H, W)
    w = torch.where(x > floor, x, torch.zeros_like(x))
    if thin:
        opened = F.max_pool2d(_erode(w), 3, stride=1, padding=1)
        w = torch.where(opened > floor, w, torch.zeros_like(w))
    mask = (w > 0).float()
    dist = torch.zeros_like(mask)                        # chessboard distance to the background
    core = mask
    for _ in range(max(H, W) // 2):
        dist += core
        core = _erode(core)
        if not core.any():
            break
    # the peak of the 3x3-smoothed distance is the centre of a plateau, not its edge
    # (5x5: the middle of a box's ridge, not its end)
    score = F.avg_pool2d(dist, 5, stride=1, padding=2) + 0.01 * F.avg_pool2d(w, 3, stride=1, padding=1)
    N = x.shape[0]
    ys = torch.arange(H, dtype=torch.float32, device=x.device).view(1, H, 1)
    xs = torch.arange(W, dtype=torch.float32, device=x.device).view(1, 1, W)
    seeds, reach, found = [], [], []
    s = score[:, 0].clone()
    for _ in range(k):
        flat = s.flatten(1).argmax(1)                    # (N,)
        depth = dist[:, 0].flatten(1).gather(1, flat[:, None])[:, 0]
        py, px = (flat // W).float(), (flat % W).float()
        # a disc of radius R survives d - 1 square erosions while R >= sqrt(2) (d - 1), so the
        # body reaches about sqrt(2) (d - 1) + 1.5 px from its peak; a margin covers the rim
        r = 1.41 * (depth - 1).clamp_min(0) + 3.0
        found.append(depth >= 1.0)
        seeds.append(torch.stack([px, py], -1))
        reach.append(r if compact else torch.full_like(r, float("inf")))
        near = (ys - py.view(N, 1, 1)).pow(2) + (xs - px.view(N, 1, 1)).pow(2) <= r.view(N, 1, 1).pow(2)
        s = s.masked_fill(near & (s > -1), -1.0)
    centres = torch.stack(seeds, 1)                      # (N, k, 2)
    reach = torch.stack(reach, 1)                        # (N, k)
    ok = torch.stack(found, 1)                           # (N, k)
    weight = w[:, 0].flatten(1)                          # (N, H*W)
    grid = torch.stack([xs.expand(1, H, W), ys.expand(1, H, W)], -1).reshape(1, H * W, 2)
    power = torch.zeros_like(reach)                      # r^2 of each body, once measured
    for _ in range(iters):
        # each pixel goes to the body of least power distance |p - c|^2 - r^2, if within that
        # body's reach (an anchor box or a stray blob beside a body stays out of its centroid).
        # For two touching discs the power diagram's boundary is their common tangent, so
        # neither takes the other's pixels, whatever their sizes.
        d = (grid[:, :, None] - centres[:, None]).pow(2).sum(-1)        # (N, H*W, k)
        d = d.masked_fill(~ok[:, None] | (d > reach[:, None].pow(2)), float("inf"))
        near = (d - power[:, None]).argmin(-1)
        inside = torch.isfinite(d.min(-1).values)
        assign = F.one_hot(near, k).float() * (weight * inside)[..., None]   # (N, H*W, k)
        mass = assign.sum(1)                                             # (N, k)
        new = torch.einsum("npk,pc->nkc", assign, grid[0]) / mass.clamp_min(1e-12)[..., None]
        centres = torch.where((mass > 1e-6)[..., None], new, centres)
        # area = summed coverage (intensity over the body's own peak intensity)
        peak = assign.amax(1).clamp_min(1e-6)
        power = mass / peak / torch.pi if compact else power
    centres = centres.masked_fill(~ok[..., None], float("nan"))
    return centres.reshape(*lead, k, 2)


def _permutations(k: int) -> torch.Tensor:
    if k > 6:
        raise ValueError(f"bodies are matched by trying all permutations; k={k} is too many")
    return torch.tensor(list(itertools.permutations(range(k))))


def match_bodies(read: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Reorder the bodies of `read` (..., K, 2) to the order of `ref` (..., K, 2): per frame,
    the permutation with the smallest summed distance (a body not found costs 1e6 px)."""
    read, ref = read.float(), ref.float().to(read.device)
    perms = _permutations(read.shape[-2]).to(read.device)                 # (P, K)
    cand = read[..., perms, :]                                           # (..., P, K, 2)
    d = (cand - ref[..., None, :, :]).norm(dim=-1).nan_to_num(1e6).sum(-1)   # (..., P)
    best = d.argmin(-1)                                                  # (...,)
    idx = perms[best]                                                    # (..., K)
    return torch.gather(read, -2, idx[..., None].expand(*idx.shape, 2))


def position_error(read: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean distance (px) between read and true body centres, bodies matched per frame
    (the reader gives no identities). read, true (..., K, 2) -> (...,); NaN where a body
    was not found."""
    if read.shape != true.shape:
        raise ValueError(f"position shapes differ: {tuple(read.shape)} vs {tuple(true.shape)}")
    true = true.float().to(read.device)
    return (match_bodies(read, true) - true).norm(dim=-1).mean(-1)
