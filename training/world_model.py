"""The one definition of the world model and its parts.

    VectorQuantizer     EMA codebook, dead-code restarts, commitment loss,
                        straight-through gradients ("MPS-safe": matmul distances,
                        one-hot counts; no cdist / bincount / unique / float64)
    Tokenizer           VQ-VAE: 64x64 frame -> 16x16 grid of codes -> 64x64 frame
    ConvGRUCell         convolutional GRU (Shi et al. 2015 with GRU gates, Cho et al. 2014)
    Dynamics            two stacked ConvGRUs over code embeddings (+ optional action),
                        with a motion head and a reward head; optionally (motion_radius > 0)
                        a frame-correlation input and running velocity prior
    motion_evidence     normalised local cross-correlation of two frames (cost volume)
    SharpWorldModelV2   tokenizer + dynamics: encode / decode / observe / imagine / rollout
    tokenizer_loss, dynamics_loss, layer_dynamics_loss   the training objectives

How the dynamics predicts the next frame's latent ("move, then re-tokenise")
---------------------------------------------------------------------------------
Predicting the 16x16 codes directly (cross-entropy) or regressing their embeddings
both average over the model's uncertainty, and decoded rollouts turn to grey blobs
within a few steps. Here the ConvGRU instead predicts *where content moves*: a
displacement field (pixels per frame) that backward-warps the current frame,
    x_{t+1}(p) = x_t(p - d_t(p)),                       d_t = MotionHead(h_t)
and the warped frame is re-tokenised, z_{t+1} = VQ(E(x_{t+1})), and decoded,
x_{t+1} <- D(z_{t+1}). Snapping to the codebook every step removes the sub-pixel blur
that bilinear warping would otherwise accumulate, so content keeps its sharpness;
the mean-squared error only has to get the motion right. The next-latent
prediction is therefore z_{t+1} = VQ(E(warp(D(z_t), d_t))). The alternative
`predict="embedding"` regresses the next code embeddings (decoded after snapping).
`predict="layers"` moves whole objects instead of a per-cell field: the last observed
frame is cut into rigid layers (training/layers.py), the ConvGRU runs once per layer
and predicts that layer's displacement, and the moved layers are overlaid and
re-tokenised. training/train_sharp_v2.py trains each, and the README compares them.

Tensor conventions: frames are float in [0, 1], shape (B, 1, H, W) or (B, T, 1, H, W);
codes are int64 (B, h, w) with h = H / 4; embeddings are (B, D, h, w).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# Vector quantiser (van den Oord et al. 2017, EMA updates from appendix A.1)
# ----------------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser with EMA codebook updates.

    forward(z: (B, D, h, w)) -> (z_q, codes, stats)
      z_q    (B, D, h, w)  quantised vectors with straight-through gradients
      codes  (B, h, w)     int64 code indices
      stats  dict: 'commit' (beta * |z - sg(e)|^2), 'perplexity', 'usage' (fraction of
             codes used in the batch), 'restarted' (codes restarted this step)
    """

    def __init__(self, num_codes: int = 512, dim: int = 64, decay: float = 0.99,
                 beta: float = 0.25, restart_every: int = 25, dead_usage: float = 0.03,
                 eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.beta = num_codes, dim, decay, beta
        self.restart_every, self.dead_usage, self.eps = restart_every, dead_usage, eps
        embed = torch.randn(num_codes, dim) / math.sqrt(dim)
        self.register_buffer("codebook", embed)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", embed.clone())
        # Slow average of how many vectors pick each code per batch; a code whose
        # average falls below `dead_usage` is "dead" and gets restarted.
        self.register_buffer("usage", torch.ones(num_codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, K) by the matmul expansion |z|^2 - 2 z.e + |e|^2,
        in float32: fast everywhere and supported on MPS (unlike torch.cdist)."""
        e = self.codebook
        return (flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.t() + e.pow(2).sum(1)[None, :])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) int64 -> embeddings (B, D, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        B, D, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, D)              # (N, D), N = B*h*w
            dist = self.distances(flat)                              # (N, K)
            min_dist, idx = dist.min(dim=1)                          # argmin over codes
            onehot = F.one_hot(idx, self.num_codes).to(flat.dtype)   # (N, K): counts by matmul/sum
            counts = onehot.sum(0)                                   # (K,)
            quant = onehot @ self.codebook                           # (N, D)

            restarted = 0
            if self.training:
                self._ema_update(flat, onehot, counts)
                restarted = self._restart_dead(flat, min_dist)

            z_q = quant.view(B, h, w, D).permute(0, 3, 1, 2).contiguous()
            commit = self.beta * F.mse_loss(z, z_q.detach())
            z_q = z + (z_q - z).detach()                             # straight-through estimator
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            usage = (counts > 0).float().mean()
        stats = {"commit": commit, "perplexity": perplexity.detach(), "usage": usage.detach(),
                 "restarted": restarted}
        return z_q, idx.view(B, h, w), stats

    @torch.no_grad()
    def _ema_update(self, flat, onehot, counts):
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(onehot.t() @ flat, alpha=1 - d)
        # Laplace smoothing keeps rarely used codes from dividing by ~0 (eq. in A.1).
        n = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.ema_sum / count[:, None])
        self.usage.mul_(0.95).add_(counts, alpha=0.05)
        self.steps += 1

    @torch.no_grad()
    def _restart_dead(self, flat, min_dist) -> int:
        """Move dead codes onto the batch's *worst-quantised* vectors. Restarting from
        random encoder outputs would scatter the dominant black background over many
        codes; the worst-fit vectors are where the codebook is missing detail."""
        if self.restart_every <= 0 or int(self.steps) % self.restart_every != 0:
            return 0
        dead = (self.usage < self.dead_usage).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        k = min(dead.numel(), flat.shape[0])
        worst = min_dist.topk(k).indices
        dead = dead[:k]
        new = flat[worst]
        self.codebook[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        self.usage[dead] = 1.0  # grace period before it can count as dead again
        return int(k)


# ----------------------------------------------------------------------------------------
# VQ-VAE tokenizer
# ----------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Tokenizer(nn.Module):
    """VQ-VAE: (B, 1, 64, 64) -> codes (B, 16, 16) -> (B, 1, 64, 64).

    Two stride-2 stages (64 -> 32 -> 16); the heavy residual blocks run at 32x32 and
    16x16 only, which keeps a CPU step cheap while each code still sees 4x4 pixels
    plus context."""

    def __init__(self, channels: int = 64, code_dim: int = 64, num_codes: int = 512,
                 in_channels: int = 1, **vq_kwargs):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, stride=2, padding=1),      # 64 -> 32
            ResBlock(c),
            nn.Conv2d(c, c2, 4, stride=2, padding=1),               # 32 -> 16
            ResBlock(c2), ResBlock(c2),
            nn.GroupNorm(8, c2), nn.SiLU(), nn.Conv2d(c2, code_dim, 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim, **vq_kwargs)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, c2, 3, padding=1),
            ResBlock(c2), ResBlock(c2),
            nn.GroupNorm(8, c2), nn.SiLU(), nn.ConvTranspose2d(c2, c, 4, stride=2, padding=1),  # 16 -> 32
            ResBlock(c),
            nn.GroupNorm(8, c), nn.SiLU(), nn.ConvTranspose2d(c, in_channels, 4, stride=2, padding=1))  # 32 -> 64

    def encode_latent(self, x):
        return self.encoder(x.contiguous())

    def forward(self, x):
        """x (B, 1, H, W) in [0,1] -> (recon (B,1,H,W) in [0,1], codes, vq stats)."""
        z_q, codes, stats = self.quantizer(self.encode_latent(x))
        return self.decode_embeddings(z_q), codes, stats

    def decode_embeddings(self, z_q):
        return torch.sigmoid(self.decoder(z_q.contiguous()).float())


# ----------------------------------------------------------------------------------------
# ConvGRU dynamics
# ----------------------------------------------------------------------------------------
class ConvGRUCell(nn.Module):
    """h' = (1 - u) * h + u * tanh(W_c * [x, r * h]),  [u, r] = sigmoid(W_g * [x, h]).
    x: (B, Cin, h, w), h: (B, Ch, h, w). The state is kept in float32 even under
    autocast so that long rollouts do not drift from bf16 rounding."""

    def __init__(self, in_ch: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_ch + hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.cand = nn.Conv2d(in_ch + hidden, hidden, kernel, padding=kernel // 2)
        nn.init.constant_(self.gates.bias[:hidden], -1.0)  # start by mostly keeping the state

    def forward(self, x, h):
        u, r = torch.sigmoid(self.gates(torch.cat([x, h.to(x.dtype)], 1)).float()).chunk(2, 1)
        c = torch.tanh(self.cand(torch.cat([x, (r * h).to(x.dtype)], 1)).float())
        return (1 - u) * h + u * c


PREDICT_MODES = ("motion", "embedding", "layers")


class Dynamics(nn.Module):
    """Two stacked ConvGRUs over the code-embedding grid.

    step(emb (B, D, h, w), hidden list, action (B, A) or None) -> (out, hidden)
      out['motion']    (B, 2, h, w) displacement in pixels per frame (predict="motion")
      out['embedding'] (B, D, h, w) next code embeddings       (predict="embedding")
      out['displacement'], out['velocity'] (B, 2) px/frame      (predict="layers")
      out['reward']    (B,)          predicted reward            (reward_head=True)
    With predict="layers" each batch row is one rigid layer (training/layers.py), and
    step() also takes layer=(mask (B, 1, h, w), velocity (B, 2), centre (B, 2)): the
    layer's coverage of each cell, its velocity and the centre of its ink in pixels
    enter as extra input planes, and the head's output, averaged over the layer's
    cells, corrects the constant-velocity guess: this frame's displacement and the
    velocity carried to the next (two outputs, because a bounce folds the overshoot
    back: the displacement on the bounce frame is neither the old nor the new velocity).
    Coordinate channels are appended to the input so that the cells know where the
    walls are (bounces happen at fixed image positions), and, when motion_radius > 0,
    a local correlation volume between the previous and the current frame
    (`motion_evidence`): frames=(prev, cur) pixel frames (B, 1, H, W) or None (no
    previous frame yet: zeros)."""

    RESET_PX = 1.5   # velocity-prior reset threshold, px/frame (rounding jitter is < 1)

    def __init__(self, code_dim: int = 64, hidden: int = 96, layers: int = 2, action_dim: int = 0,
                 predict: str = "motion", reward_head: bool = False, grid: int = 16,
                 max_motion: float = 8.0, motion_radius: int = 0):
        super().__init__()
        if predict not in PREDICT_MODES:
            raise ValueError(f"predict must be one of {', '.join(PREDICT_MODES)}, got '{predict}'")
        self.predict, self.action_dim, self.hidden, self.max_motion = predict, action_dim, hidden, max_motion
        self.motion_radius = motion_radius
        evidence_ch = (2 * motion_radius + 1) ** 2 if motion_radius > 0 else 0
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        layer_ch = 5 if predict == "layers" else 0   # mask, velocity (2), centre (2)
        self.stem = nn.Conv2d(code_dim + 2 + action_dim + evidence_ch + layer_ch, hidden, 3, padding=1)
        self.cells = nn.ModuleList(ConvGRUCell(hidden, hidden) for _ in range(layers))
        out_ch = {"motion": 2, "embedding": code_dim, "layers": 4}[predict]
        self.head = nn.Sequential(nn.Conv2d(hidden * layers, hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hidden, out_ch, 3, padding=1))
        if motion_radius > 0:   # temperature of the velocity prior's soft-argmax (learned)
            self.log_sharpness = nn.Parameter(torch.tensor(math.log(100.0)))
        nn.init.zeros_(self.head[-1].weight)   # start as copy-last-frame / constant velocity
        nn.init.zeros_(self.head[-1].bias)
        self.reward = (nn.Sequential(nn.Linear(hidden * layers, hidden), nn.SiLU(), nn.Linear(hidden, 1))
                       if reward_head else None)

    def init_hidden(self, batch: int, device, h: int, w: int):
        """One (B, hidden, h, w) state per ConvGRU cell; with motion_radius > 0 two more:
        the running velocity sum (B, 2, h, w) and its weight (B, 1, h, w)."""
        state = [torch.zeros(batch, self.hidden, h, w, device=device) for _ in self.cells]
        if self.motion_radius > 0:
            state += [torch.zeros(batch, 2, h, w, device=device), torch.zeros(batch, 1, h, w, device=device)]
        return state

    def velocity_prior(self, ev, vsum, weight, cell_px: float):
        """Running, confidence-weighted mean of the per-frame velocity read from the
        correlation, carried along with the content.

        One frame pair gives each object's displacement rounded to whole pixels (drawn
        positions are rounded), which jitters by +-1 px around the true velocity: on
        Moving MNIST consecutive displacements differ by 0.9 px on average, so
        extrapolating the last one is off by ~5 px after 10 frames. Averaging the
        displacements since the last change of velocity recovers the sub-pixel velocity.
        The sums live on the grid and are advected with the content before each update
        (what was at c - v is now at c), and a cell whose new displacement disagrees with
        its mean by more than the rounding jitter (RESET_PX in either axis: a bounce, a
        collision) starts afresh:
            S <- keep * warp(S, v) + conf * v,   W <- keep * warp(W, v) + conf,
            keep = 1 if |v - S/W| <= RESET_PX else 0,   prior = S / W,
            conf = the best correlation score (0 on an empty background).
        ev (B, K, h, w); vsum (B, 2, h, w); weight (B, 1, h, w) -> (prior, vsum, weight)."""
        v = evidence_motion(ev, self.motion_radius, self.log_sharpness.exp())   # (B, 2, h, w) px
        conf = evidence_confidence(ev)
        vsum, weight = warp(vsum, v / cell_px), warp(weight, v / cell_px)
        mean = vsum / (weight + 1e-3)
        keep = ((v - mean).abs().amax(1, keepdim=True) <= self.RESET_PX).float().detach()
        vsum = keep * vsum + conf * v
        weight = keep * weight + conf
        return vsum / (weight + 1e-3), vsum, weight

    def step(self, emb, hidden, action=None, frames=None, evidence=None, layer=None):
        """evidence: `motion_evidence(*frames)` when the caller already has it (training
        computes the evidence of all true frame pairs in one batch). layer: see the class
        docstring (predict="layers" only)."""
        B, _, h, w = emb.shape
        parts = [emb, self.coords.expand(B, -1, -1, -1).to(emb.dtype)]
        if self.action_dim:
            if action is None:
                raise ValueError("this dynamics model was built with action_dim > 0: pass an action")
            parts.append(action[:, :, None, None].to(emb.dtype).expand(-1, -1, h, w))
        if self.predict == "layers":
            mask, vel, centre = layer
            size = 4 * h   # frame side in pixels (centre planes scaled to [-1, 1] like coords)
            planes = torch.cat([vel / self.max_motion, 2 * centre / size - 1], 1)
            parts += [mask.to(emb.dtype), planes[:, :, None, None].to(emb.dtype).expand(-1, -1, h, w)]
        prior, prior_state = None, []
        if self.motion_radius > 0:
            vsum, weight = hidden[len(self.cells):]
            if frames is None:
                ev = emb.new_zeros(B, (2 * self.motion_radius + 1) ** 2, h, w)
            else:
                ev = evidence if evidence is not None else motion_evidence(frames[0], frames[1], self.motion_radius, h)
                prior, vsum, weight = self.velocity_prior(ev, vsum, weight, frames[1].shape[-1] / h)
            parts.append(ev.to(emb.dtype))
            prior_state = [vsum, weight]
        x = F.silu(self.stem(torch.cat(parts, 1)))
        new_hidden = []
        for cell, hid in zip(self.cells, hidden):
            hid = cell(x, hid)
            new_hidden.append(hid)
            x = hid.to(x.dtype)
        feats = torch.cat(new_hidden, 1)
        new_hidden += prior_state
        raw = self.head(feats.to(emb.dtype)).float()
        out = {}
        if self.predict == "layers":
            # Averaged over the layer's cells; bounded by 2 max_motion because reversing
            # a velocity changes it by twice its size.
            mask, vel = layer[0].float(), layer[1].float()
            corr = 2 * self.max_motion * torch.tanh(raw / (2 * self.max_motion))
            corr = (corr * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1e-6)   # (B, 4)
            out["displacement"], out["velocity"] = vel + corr[:, :2], vel + corr[:, 2:]
        elif self.predict == "motion":
            # A bounded displacement (px/frame); with motion_radius > 0, a bounded correction
            # on top of the running velocity prior (the prior itself is within +-r, and
            # squashing it would bias it: 8 tanh(5/8) = 4.5).
            out["motion"] = self.max_motion * torch.tanh(raw / self.max_motion)
            if prior is not None:
                out["motion"] = out["motion"] + prior
        else:
            out["embedding"] = emb.float() + raw   # residual: "no change" is the zero output
        if self.reward is not None:
            out["reward"] = self.reward(feats.mean((2, 3))).squeeze(1)
        return out, new_hidden


@torch.no_grad()
def motion_evidence(prev: torch.Tensor, cur: torch.Tensor, radius: int, grid: int,
                    cells: int = 5) -> torch.Tensor:
    """Normalised local cross-correlation ("cost volume", as in FlowNet, Dosovitskiy et
    al. 2015, and PWC-Net, Sun et al. 2018) between two consecutive frames, per cell of
    the code grid.

    prev, cur (B, 1, H, W) in [0,1] -> (B, (2r+1)^2, grid, grid). Channel k = i (2r+1) + j
    compares cur(p) with prev(p + o), o = (i - r, j - r) in (y, x), over the window W of
    `cells` x `cells` grid cells (20 px) centred on each cell:
        NCC_o = sum_W cur(p) prev(p + o) / sqrt(sum_W cur(p)^2 * sum_W prev(p + o)^2)
    It is 1 at the offset the content came from (the motion is -o) and 0 on an empty
    background. Why: from the code embeddings alone the ConvGRU did not learn the
    motion (after the default 450 steps its one-step displacement error at Moving MNIST
    digit centres was 1.4 px in x and 2.5 px in y); the argmax of this volume is off
    by 0.13 / 0.18 px on average (5% of digits more than 1 px off). Wide windows and the
    normalisation are what make it work: 8-px unnormalised windows were off by 1.2 / 1.3 px.
    An input and a prior (`evidence_motion`), not a path for gradients."""
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


def evidence_motion(evidence: torch.Tensor, radius: int, sharpness: torch.Tensor) -> torch.Tensor:
    """Constant-velocity prior from `motion_evidence`: the soft-argmax of the
    correlation, negated (content at p came from p + o, so it moves by -o per frame).
    evidence (B, (2r+1)^2, h, w) -> (B, 2, h, w) pixels/frame (x, y); an empty cell
    (all zeros) gives a uniform weighting and so zero motion."""
    o = torch.arange(-radius, radius + 1, device=evidence.device, dtype=torch.float32)
    oy, ox = torch.meshgrid(o, o, indexing="ij")
    p = torch.softmax(sharpness * evidence.float(), 1)
    return -torch.stack([(p * ox.flatten()[:, None, None]).sum(1), (p * oy.flatten()[:, None, None]).sum(1)], 1)


def evidence_confidence(evidence: torch.Tensor) -> torch.Tensor:
    """How much to trust `evidence_motion`: the best correlation score, (B, K, h, w) ->
    (B, 1, h, w) in [0, 1] (0 on an empty background)."""
    return evidence.float().amax(1, keepdim=True).clamp(0, 1)


def warp(frames: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(p) = frames(p - d(p)), bilinear, zeros outside the image.
    frames (B, C, H, W); motion (B, 2, h, w) in pixels/frame (x, y), upsampled to H x W."""
    B, _, H, W = frames.shape
    d = F.interpolate(motion, size=(H, W), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(H, device=frames.device, dtype=d.dtype),
                            torch.arange(W, device=frames.device, dtype=d.dtype), indexing="ij")
    src_x = xs[None] - d[:, 0]
    src_y = ys[None] - d[:, 1]
    # grid_sample's normalised coordinates with align_corners=False: pixel centre i -> (2i+1)/W - 1
    grid = torch.stack([(2 * src_x + 1) / W - 1, (2 * src_y + 1) / H - 1], dim=-1)
    return F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compose_motion(total: torch.Tensor | None, step: torch.Tensor, size: int) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------
# The world model
# ----------------------------------------------------------------------------------------
class SharpWorldModelV2(nn.Module):
    """Tokenizer + ConvGRU dynamics.

        model = SharpWorldModelV2(**model_config)
        codes = model.encode(frames)                      # (B,1,64,64) -> (B,16,16)
        frames = model.decode(codes)                      # -> (B,1,64,64) in [0,1]
        state = model.observe(context)                    # context (B,Tc,1,64,64)
        out = model.imagine(state, horizon, actions)      # out['frames'] (B,N,1,64,64)
        pred = model.rollout(context, horizon)            # observe + imagine, frames only
    """

    def __init__(self, channels: int = 64, code_dim: int = 64, num_codes: int = 512,
                 hidden: int = 96, layers: int = 2, action_dim: int = 0, predict: str = "motion",
                 reward_head: bool = False, image_size: int = 64, max_motion: float = 8.0,
                 motion_radius: int = 0, objects: int = 2):
        super().__init__()
        self.config = dict(channels=channels, code_dim=code_dim, num_codes=num_codes, hidden=hidden,
                           layers=layers, action_dim=action_dim, predict=predict,
                           reward_head=reward_head, image_size=image_size, max_motion=max_motion,
                           motion_radius=motion_radius, objects=objects)
        self.grid = image_size // 4
        self.objects = objects   # predict="layers": rigid layers per frame (training/layers.py)
        self.tokenizer = Tokenizer(channels, code_dim, num_codes)
        self.dynamics = Dynamics(code_dim, hidden, layers, action_dim, predict, reward_head,
                                 self.grid, max_motion, motion_radius)

    # --- tokens ------------------------------------------------------------------------
    def encode(self, frames):
        """(B, 1, H, W) in [0,1] -> codes (B, H/4, W/4) int64."""
        return self.tokenizer.quantizer(self.tokenizer.encode_latent(frames))[1]

    def embed(self, codes):
        return self.tokenizer.quantizer.lookup(codes)

    def decode(self, codes):
        return self.tokenizer.decode_embeddings(self.embed(codes))

    def reconstruct(self, frames):
        return self.decode(self.encode(frames))

    def snap(self, emb):
        """Nearest-code snapping of predicted embeddings (B, D, h, w) -> codes (B, h, w)."""
        q = self.tokenizer.quantizer
        flat = emb.float().permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        return q.distances(flat).argmin(1).view(emb.shape[0], *emb.shape[2:])

    # --- dynamics ----------------------------------------------------------------------
    def observe(self, context, actions=None, codes=None):
        """Run the dynamics over the context frames.
        context (B, Tc, 1, H, W); actions (B, Tc, A) or None; codes (B, Tc, h, w) if
        already computed. Returns a state dict for `imagine`."""
        B, Tc = context.shape[:2]
        if self.dynamics.predict == "layers":   # only the last frame's tokens are needed
            state = self.observe_layers(context, self.encode(context[:, -1]) if codes is None else codes[:, -1])
            # the action taken at the last context frame moves it to the first predicted one
            state["action"] = actions[:, -1] if actions is not None else None
            return state
        if codes is None:
            codes = self.encode(context.flatten(0, 1)).view(B, Tc, self.grid, self.grid)
        hidden = self.dynamics.init_hidden(B, context.device, self.grid, self.grid)
        out = None
        for t in range(Tc):
            a = actions[:, t] if actions is not None else None
            pair = (context[:, t - 1], context[:, t]) if t > 0 else None
            out, hidden = self.dynamics.step(self.embed(codes[:, t]), hidden, a, pair)
        # 'anchor' is the last observed frame itself (sharpest source for motion warps);
        # 'motion' the displacement accumulated since it (None: none yet); 'frame' the
        # current frame in pixels (the second half of the next correlation pair).
        return {"hidden": hidden, "anchor": context[:, -1].float(), "motion": None,
                "codes": codes[:, -1], "out": out, "frame": context[:, -1].float()}

    def observe_layers(self, context, codes, L=None, velocity=None):
        """predict="layers": the last context frame cut into rigid layers and their
        velocities (training/layers.py; or given: L (B, K, H, W), velocity (B, K, 2)), and
        a fresh ConvGRU state per layer. codes (B, h, w): the last frame's tokens. The
        ConvGRU does not run over the context (what it needs of the past, the velocity,
        comes from tracking the layers), so of the context actions only the last is used
        (by `imagine`: it leads to the first predicted frame)."""
        from training import layers

        if L is None:
            L, velocity = layers.observe_layers(context, self.objects)
        B, K, H, W = L.shape
        mass = L.sum((2, 3)).clamp_min(1e-6)
        ys, xs = torch.meshgrid(torch.arange(H, device=L.device, dtype=torch.float32),
                                torch.arange(W, device=L.device, dtype=torch.float32), indexing="ij")
        centre = torch.stack([(L * xs).sum((2, 3)) / mass, (L * ys).sum((2, 3)) / mass], -1)   # (B, K, 2)
        # 'moved': the layers at their current offset (B, K, H, W), kept so that each move
        # is warped once, for both the next step's coverage and the overlay.
        return {"hidden": self.dynamics.init_hidden(B * K, L.device, self.grid, self.grid),
                "layers": L.float(), "offset": L.new_zeros(B, K, 2, dtype=torch.float32),
                "moved": L.float(), "velocity": velocity.float(), "centre": centre, "codes": codes}

    def layer_step(self, state, action=None):
        """One step of every layer from the current tokens (predict="layers"). Updates
        state['offset'], ['moved'], ['velocity'], ['hidden'] in place; the next frame's
        overlay is state['moved'].amax(1). Returns the dynamics output."""
        from training.layers import INK, move

        L, off, vel = state["layers"], state["offset"], state["velocity"]
        B, K = L.shape[:2]
        emb = self.embed(state["codes"]).repeat_interleave(K, 0)                   # (B*K, D, h, w)
        covered = (state["moved"].flatten(0, 1)[:, None] > INK).float()            # (B*K, 1, H, W)
        mask = F.adaptive_avg_pool2d(covered, self.grid)                           # (B*K, 1, h, w)
        a = action.repeat_interleave(K, 0) if action is not None else None
        layer = (mask, vel.flatten(0, 1), (state["centre"] + off).flatten(0, 1))
        out, state["hidden"] = self.dynamics.step(emb, state["hidden"], a, layer=layer)
        state["offset"] = off + out["displacement"].view(B, K, 2)
        state["moved"] = move(L, state["offset"])
        state["velocity"] = out["velocity"].view(B, K, 2)
        if "reward" in out:
            out["reward"] = out["reward"].view(B, K).sum(1)
        return out

    def imagine_layers(self, state, horizon: int, actions=None):
        """`imagine` for predict="layers": move the layers, overlay, re-tokenise."""
        state = dict(state)
        frames, codes, rewards = [], [], []
        for t in range(horizon):
            # frame t+1 of the prediction follows the action taken at the frame before it,
            # as in training (`layer_dynamics_loss`: actions[:, t - 1] leads to frame t)
            a = state.get("action") if t == 0 else (actions[:, t - 1] if actions is not None else None)
            out = self.layer_step(state, a)
            c = self.encode(state["moved"].amax(1, keepdim=True).clamp(0, 1))
            frames.append(self.decode(c))
            codes.append(c)
            if "reward" in out:
                rewards.append(out["reward"])
            state["codes"] = c
        result = {"frames": torch.stack(frames, 1), "codes": torch.stack(codes, 1)}
        if rewards:
            result["rewards"] = torch.stack(rewards, 1)
        return result

    def next_frame(self, state, out):
        """Turn one dynamics output into the next (sharp) frame and its codes.
        Motion mode: the anchor warped by the accumulated displacement (updates
        state['motion']), re-tokenised so that the frame is decoded from codes.
        Returns (decoded frame, codes, frame fed to the next correlation)."""
        if self.dynamics.predict == "motion":
            state["motion"] = compose_motion(state["motion"], out["motion"], state["anchor"].shape[-1])
            warped = warp(state["anchor"], state["motion"]).clamp(0, 1)
            codes = self.encode(warped)
            return self.decode(codes), codes, warped
        codes = self.snap(out["embedding"])
        frame = self.decode(codes)
        return frame, codes, frame

    def imagine(self, state, horizon: int, actions=None):
        """Predict `horizon` frames autoregressively from `observe`'s state.
        actions (B, horizon, A) or None. Returns {'frames': (B,N,1,H,W), 'codes':
        (B,N,h,w), 'rewards': (B,N) when the reward head exists}."""
        if self.dynamics.predict == "layers":
            return self.imagine_layers(state, horizon, actions)
        frames, codes, rewards = [], [], []
        state = dict(state)
        out = state["out"]
        for t in range(horizon):
            frame, c, seen = self.next_frame(state, out)
            frames.append(frame)
            codes.append(c)
            if "reward" in out:
                rewards.append(out["reward"])
            state["codes"] = c
            pair, state["frame"] = (state["frame"], seen), seen
            if t + 1 < horizon:
                a = actions[:, t] if actions is not None else None
                out, state["hidden"] = self.dynamics.step(self.embed(c), state["hidden"], a, pair)
        result = {"frames": torch.stack(frames, 1), "codes": torch.stack(codes, 1)}
        if rewards:
            result["rewards"] = torch.stack(rewards, 1)
        return result

    @torch.no_grad()
    def rollout(self, context, horizon: int, actions=None):
        """context (B, Tc, 1, H, W) -> predicted frames (B, horizon, 1, H, W) in [0,1].
        actions, when the model takes them, cover context and horizon: (B, Tc+horizon, A)."""
        Tc = context.shape[1]
        obs_a = actions[:, :Tc] if actions is not None else None
        fut_a = actions[:, Tc:] if actions is not None else None
        return self.imagine(self.observe(context, obs_a), horizon, fut_a)["frames"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------
# Training objectives (shared by every training script)
# ----------------------------------------------------------------------------------------
def tokenizer_loss(model: SharpWorldModelV2, frames: torch.Tensor):
    """frames (N, 1, H, W) in [0,1] -> (loss, logs). MSE + L1 reconstruction (L1 keeps
    the mostly-black background exactly black) + the VQ commitment term."""
    recon, _, stats = model.tokenizer(frames)
    mse = F.mse_loss(recon, frames)
    l1 = F.l1_loss(recon, frames)
    loss = mse + l1 + stats["commit"]
    logs = {"loss": loss.item(), "mse": mse.item(), "l1": l1.item(),
            "psnr": (-10 * torch.log10(mse.detach().clamp_min(1e-10))).item(),
            "perplexity": stats["perplexity"].item(), "usage": stats["usage"].item(),
            "restarted": stats["restarted"]}
    return loss, logs


def gaussian_blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) frames, radius 3 sigma, zero padding."""
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))


PIXEL_WEIGHT = 0.25   # sharp-pixel MSE weight (both modes): the wide terms carry most of the signal
MASS_WEIGHT = 0.1     # motion mode: relative brightness error of each predicted frame
FLOW_SHARPNESS = 100.0  # motion_radius > 0: soft-argmax temperature of the flow target (near argmax)


def flow_targets(frames: torch.Tensor, radius: int, grid: int):
    """Self-supervised motion targets from consecutive true frames (no physical states).
    frames (B, T, 1, H, W) -> evidence (B, T-1, (2r+1)^2, grid, grid) of each pair
    (t, t+1), the displacement it shows (B, T-1, 2, grid, grid) px/frame, and its
    confidence (B, T-1, 1, grid, grid) = the best correlation (0 on empty background)."""
    B, T = frames.shape[:2]
    ev = motion_evidence(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), radius, grid)
    target = evidence_motion(ev, radius, torch.tensor(FLOW_SHARPNESS))
    conf = evidence_confidence(ev)
    return (ev.view(B, T - 1, -1, grid, grid), target.view(B, T - 1, 2, grid, grid),
            conf.view(B, T - 1, 1, grid, grid))


def weighted_smooth_l1(err: torch.Tensor, weight: torch.Tensor):
    """Smooth L1 of a displacement error (px), weighted and normalised by the weight's
    mass so its scale does not depend on how much of the batch counts (empty background,
    layers not found). err (..., 2, ...); weight broadcastable to err, >= 0 -> (loss,
    the weighted mean absolute error in px as a float for the logs)."""
    weight = weight.expand_as(err)
    norm = weight.sum().clamp_min(1e-6)
    loss = (weight * F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none")).sum() / norm
    return loss, ((weight * err.detach().abs()).sum() / norm).item()


def dynamics_loss(model: SharpWorldModelV2, frames: torch.Tensor, codes: torch.Tensor, context: int,
                  teacher_prob: float = 0.0, actions=None, rewards=None):
    """One unrolled training pass of the dynamics over a clip.

    frames (B, T, 1, H, W) in [0,1]; codes (B, T, h, w) their cached tokens; the first
    `context` inputs are always the true frames; after that each step's input is the
    true frame with probability `teacher_prob` (scheduled sampling, Bengio et al.
    2015) and otherwise the model's own sharp prediction, so the model is trained on
    the rollouts it will meet at test time; in motion mode the warp source stays the
    last true frame and the displacements accumulate (`compose_motion`), with the
    gradient flowing through the whole chain. Loss per predicted frame: PIXEL_WEIGHT x
    pixel MSE plus a wide-basin term. For motion it compares warps of the source blurred
    at two widths with the blurred target: bilinear warping of a sharp frame at whole-pixel
    offsets has one-sided, mostly zero gradients (a 3-pixel stroke displaced by 4
    pixels gives none), while blurring makes the photometric error smooth in the
    displacement; a brightness term (MASS_WEIGHT) stops the warp from shrinking or
    fading content. For embeddings the wide term is the MSE at 1/4 resolution, plus
    embedding MSE and a code cross-entropy.
    With motion_radius > 0 the motion is instead supervised directly ("flow
    distillation"): each step's displacement field is regressed (smooth L1, weighted by
    the correlation's confidence) onto the displacement that `motion_evidence` reads
    between the true frames t and t+1. The correlation has a wide, exact basin where the
    photometric terms have flat or one-sided gradients. Measured on Moving MNIST (README,
    200 steps, 128 test clips): mean MSE 208.3 against 244.6 with the photometric terms
    and 210.6 for the untrained prior; better than the prior at steps 1-6, worse at 8-10
    (315 against 273): it does not yet learn the bounces.
    Returns (loss, logs) with logs['step_mse'] the per-step error summed over pixels
    and, with motion_radius > 0, logs['flow_px'] the confidence-weighted mean motion
    error in pixels per step.
    """
    dyn = model.dynamics
    B, T, _, H, _ = frames.shape
    hidden = dyn.init_hidden(B, frames.device, model.grid, model.grid)
    emb = model.embed(codes[:, 0])
    anchor, motion = frames[:, 0], None   # motion mode: warp source and displacement since it
    prev, cur = None, frames[:, 0]        # the input frames in pixels (for motion_evidence)
    total, step_mse, flow_px = 0.0, [], []
    flow = dyn.predict == "motion" and dyn.motion_radius > 0
    if flow:
        with torch.no_grad():
            ev_true, flow_target, flow_conf = flow_targets(frames, dyn.motion_radius, model.grid)
    true_pair = [False, True]   # are prev and cur the true frames? (then ev_true has their evidence)
    for t in range(T - 1):
        a = actions[:, t] if actions is not None else None
        ev = ev_true[:, t - 1] if flow and t > 0 and all(true_pair) else None
        out, hidden = dyn.step(emb, hidden, a, (prev, cur) if prev is not None else None, ev)
        target = frames[:, t + 1]
        free = t + 1 >= context and torch.rand(()).item() >= teacher_prob
        if dyn.predict == "motion":
            # As in `imagine`: the anchor warped by the accumulated displacement. The loss
            # sees the warped frame itself (re-tokenising it is near-identity and has no
            # gradient); the next input is its codes, exactly what a rollout feeds back.
            motion = compose_motion(motion, out["motion"], H)
            pred = warp(anchor, motion).clamp(0, 1)
        if flow:
            # Normalised by the confidence mass, so the scale does not depend on how much
            # of the frame is empty background.
            loss_t, px = weighted_smooth_l1(out["motion"] - flow_target[:, t], flow_conf[:, t])
            flow_px.append(px)
        elif dyn.predict == "motion":
            # Wide basins at two widths keep a misplaced stroke cheaper than a deleted
            # one; the mass term (relative brightness error) makes shrinking or fading
            # content, the MSE-optimal hedge under uncertainty, cost as much as it hides.
            wide = sum(F.mse_loss(warp(gaussian_blur(anchor, sg), motion), gaussian_blur(target, sg))
                       for sg in (2.0, 4.0))
            mass_t = target.sum((1, 2, 3))
            extra = MASS_WEIGHT * ((pred.sum((1, 2, 3)) - mass_t) / mass_t.clamp_min(1.0)).pow(2).mean()
        else:
            e = out["embedding"]
            target_emb = model.embed(codes[:, t + 1])
            logits = -model.tokenizer.quantizer.distances(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
            extra = F.mse_loss(e, target_emb) + 0.1 * F.cross_entropy(logits, codes[:, t + 1].reshape(-1))
            pred = model.tokenizer.decode_embeddings(e)
            wide = F.mse_loss(F.avg_pool2d(pred, 4), F.avg_pool2d(target, 4))
        if not flow:
            loss_t = PIXEL_WEIGHT * F.mse_loss(pred, target) + wide + extra
        if rewards is not None and "reward" in out:
            loss_t = loss_t + F.mse_loss(out["reward"], rewards[:, t])
        total = total + loss_t
        step_mse.append((pred.detach() - target).pow(2).flatten(1).sum(1).mean().item())
        prev = cur
        true_pair = [true_pair[1], not free]
        if free:
            with torch.no_grad():
                c = model.encode(pred) if dyn.predict == "motion" else model.snap(e)
            emb = model.embed(c) if dyn.predict == "motion" else e + (model.embed(c) - e).detach()
            cur = pred.detach()
        else:   # teacher forcing: the true frame becomes the new anchor
            anchor, motion, emb = target, None, model.embed(codes[:, t + 1])
            cur = target
    loss = total / (T - 1)
    logs = {"loss": loss.item(), "step_mse": step_mse, "rollout_mse": step_mse[context - 1:]}
    if flow_px:
        logs["flow_px"] = flow_px
    return loss, logs


def layer_dynamics_loss(model: SharpWorldModelV2, frames: torch.Tensor, codes: torch.Tensor, context: int,
                        L: torch.Tensor, velocity: torch.Tensor, positions: torch.Tensor,
                        score: torch.Tensor, actions=None, rewards=None):
    """Training pass of predict="layers": roll the layers out from the last context
    frame exactly as `imagine` does (each step's input is the re-tokenised overlay of
    the model's own layers) and regress each layer's accumulated offset onto where
    template matching finds that layer in the true frames (self-supervised; no
    physical states), smooth L1 in pixels, over the layers found (match score > 0.5).

    frames (B, T, 1, H, W); codes (B, T, h, w); from `layers.observe_layers` on the
    context: L (B, K, H, W), velocity (B, K, 2); from `layers.track` forward from frame
    context-1: positions (B, K, T, 2), score (B, K, T). Returns (loss, logs) with
    logs['rollout_mse'] the per-step pixel error of the overlay (before re-tokenising)
    and logs['track_px'] the mean position error per step in pixels."""
    from training.layers import INK

    T = frames.shape[1]
    state = model.observe_layers(frames[:, :context], codes[:, context - 1], L, velocity)
    present = (L.flatten(2).amax(-1) > INK).float()                                  # (B, K)
    total, step_mse, track_px = 0.0, [], []
    for t in range(context, T):
        out = model.layer_step(state, actions[:, t - 1] if actions is not None else None)
        w = present * (score[:, :, t] > 0.5).float()                                  # (B, K)
        loss_t, px = weighted_smooth_l1(state["offset"] - positions[:, :, t].float(), w[..., None])
        if rewards is not None and "reward" in out:
            loss_t = loss_t + F.mse_loss(out["reward"], rewards[:, t - 1])
        total = total + loss_t
        track_px.append(px)
        with torch.no_grad():
            raw = state["moved"].amax(1, keepdim=True).clamp(0, 1)
            step_mse.append((raw - frames[:, t]).pow(2).flatten(1).sum(1).mean().item())
            state["codes"] = model.encode(raw)
    loss = total / (T - context)
    return loss, {"loss": loss.item(), "rollout_mse": step_mse, "track_px": track_px}
