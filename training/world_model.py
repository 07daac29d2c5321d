"""The one definition of the world model: its config, tokenizer, ConvGRU core and
SharpWorldModelV2.

    from training.world_model import ModelConfig, SharpWorldModelV2
    model = SharpWorldModelV2(ModelConfig(predict="motion", action_dim=2, reward_head=True))
    state = model.observe(context, actions)           # context (B, Tc, 1, 64, 64)
    out = model.imagine(state, horizon, actions)      # out['frames'] (B, N, 1, 64, 64)
    z = model.latent(state)                           # (B, F): the compact state of the last frame
    z_next = model.prior_step(z_prev, z, action)      # imagine in latent space (the agent's)
    loss, logs = model(batch, context)                # the dynamics objective (DDP-friendly)

    ModelConfig         every architecture setting, one dataclass; scripts, the benchmark,
                        the diagram and the checkpoints ('model_config') all build from it
    VectorQuantizer     EMA codebook, dead-code restarts, commitment loss, straight-through
                        gradients ("MPS-safe": matmul distances, one-hot counts; no cdist /
                        bincount / unique / float64); statistics summed across DDP ranks
    Tokenizer           VQ-VAE: 64x64 frame -> 16x16 grid of codes -> 64x64 frame
    ConvGRUCell         convolutional GRU (Shi et al. 2015 with GRU gates, Cho et al. 2014)
    Dynamics            the ConvGRU core over code embeddings (+ the action at every step,
                        + a mode's extra input planes), an output head, and with a reward
                        head the keypoints, the reward MLP and the latent prior
    LatentPrior         the compact state's own transition, what the agent imagines with
    SharpWorldModelV2   tokenizer + core + one dynamics unit picked by `predict`

The dynamics units ("how the next latent is predicted") each own their observe /
imagine / loss, so nothing here branches on the mode:
    predict="particles"  training/particles.py  Particles: every pixel of the last observed
                         frame is a particle; the core corrects the motion measured
                         between the last two frames, the particles move by it, are
                         splatted and the frame re-tokenised
    predict="motion"     training/dynamics.py   MotionField: a displacement field warps the
                         last observed frame, the result is re-tokenised
    predict="layers"     training/layers.py     RigidLayers: the last frame cut into rigid
                         objects, each moved by the ConvGRU, overlaid and re-tokenised
Why moving content and re-tokenising: regressing codes or embeddings averages over the
model's uncertainty and decoded rollouts turn to grey blobs within a few steps; snapping
moved content to the codebook every step keeps it sharp, so the error only has to get
the motion right.

Tensor conventions: frames are float in [0, 1], shape (B, 1, H, W) or (B, T, 1, H, W);
codes are int64 (B, h, w) with h = H / 4; embeddings are (B, D, h, w); actions (B, T, A).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from training.dynamics import MotionField
from training.layers import RigidLayers
from training.particles import Particles

LATENT_POOL = 4       # the compact state: ConvGRU features average-pooled to 4 x 4 regions ...
KEYPOINTS = 16        # ... plus, with a reward head, this many learned keypoints (x, y)
KEYPOINT_SHARPNESS = 10.0   # keypoint maps are scaled by this before their softmax (peaked from the start)
REWARD_UNITS = 128    # hidden units of the reward head
PRIOR_UNITS = 512     # hidden units of the latent prior (reward-head models only)
PRIOR_REWARD_WEIGHT = 10.0   # the reward's weight in the prior's loss
PRIOR_KEYPOINT_WEIGHT = 64.0  # each keypoint coordinate's weight in the prior's latent MSE (`prior_loss`)

UNITS = {"motion": MotionField, "particles": Particles, "layers": RigidLayers}
PREDICT_MODES = tuple(UNITS)
AGENT_UNITS = ("motion", "particles")   # the units with a reward head and latent prior (the agent's); all take actions


@dataclass
class ModelConfig:
    """Every architecture setting of SharpWorldModelV2 (saved as 'model_config')."""
    channels: int = 64          # tokenizer width (32x32 stage; the 16x16 stage has 2x)
    code_dim: int = 64          # codebook vector size
    num_codes: int = 512        # codebook size
    hidden: int = 64            # ConvGRU channels
    layers: int = 2             # stacked ConvGRU cells
    action_dim: int = 0         # > 0: the action of every frame leads to the next (Dynamics)
    predict: str = "motion"     # particles | motion | layers (see the module docstring)
    reward_head: bool = False   # predict the reward of each frame (the agent's)
    image_size: int = 64        # frames are image_size x image_size
    max_motion: float = 8.0     # bound of one step's displacement, px/frame
    objects: int = 2            # predict=layers: rigid layers cut from the last context frame

    def __post_init__(self):
        if self.predict not in UNITS:
            raise ValueError(f"predict must be one of {', '.join(PREDICT_MODES)}, got '{self.predict}'")
        if self.reward_head and self.predict not in AGENT_UNITS:
            raise ValueError(f"predict={self.predict} has no reward head (its compact state is each layer's offset and "
                             f"velocity, with no keypoints or features a reward head reads); use predict="
                             f"{' or '.join(AGENT_UNITS)} with reward_head")
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {self.image_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config of a checkpoint or a script's settings; keys that are not model
        settings are ignored, so a script can pass its whole CONFIG."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def from_checkpoint(cls, d: dict) -> "ModelConfig":
        """Strict: a key this version does not know means the checkpoint is of another
        version (ValueError naming it)."""
        known = {f.name for f in fields(cls)}
        if d.get("motion_radius", None) == 0:   # runs before the option was removed, made without it
            d = {k: v for k, v in d.items() if k != "motion_radius"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"model_config has settings this version does not know: {', '.join(extra)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
        sums = onehot.t() @ flat                                    # (K, D)
        if _distributed():
            # Under DistributedDataParallel each process sees its shard of the batch: sum
            # the statistics so that every rank makes the update one process would make
            # on the whole global batch (the codebook is a buffer, not a gradient).
            counts, sums = counts.clone(), sums.contiguous()
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
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
        worst_dist, worst = min_dist.topk(k)
        new = flat[worst]                                               # (k, D)
        if _distributed():
            # The worst-quantised vectors of the whole global batch, the same on every rank:
            # each rank's k worst, gathered, then the k worst of those.
            dists = [torch.empty_like(worst_dist) for _ in range(dist.get_world_size())]
            vecs = [torch.empty_like(new) for _ in range(dist.get_world_size())]
            dist.all_gather(dists, worst_dist.contiguous())
            dist.all_gather(vecs, new.contiguous())
            new = torch.cat(vecs)[torch.cat(dists).topk(k).indices]
        dead = dead[:k]
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
        """x (B, 1, H, W) in [0,1] -> (logits (B,1,H,W) of the reconstruction, codes, vq
        stats); the reconstruction is sigmoid(logits). The loss reads the logits (see
        `tokenizer_loss`)."""
        z_q, codes, stats = self.quantizer(self.encode_latent(x))
        return self.decode_logits(z_q), codes, stats

    def decode_logits(self, z_q):
        return self.decoder(z_q.contiguous()).float()

    def decode_embeddings(self, z_q):
        """(B, D, h, w) embeddings -> (B, 1, H, W) frame in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z_q))


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


class Dynamics(nn.Module):
    """The ConvGRU core shared by every dynamics unit: `layers` stacked ConvGRUs over the
    code-embedding grid, an output head and a reward head.

    Split as in Dreamer's recurrent state-space model (Hafner et al. 2019, eq. 1), so that
    an actor can read the state of frame t before it picks the action of frame t:
        step(emb_t (B, D, h, w), hidden, prev_action a_{t-1} (B, A) or None, planes)
            -> (feats_t (B, hidden*layers, h, w), new hidden)    the state of frame t
        predict(feats_t, action a_t) -> raw (B, out_ch, h, w)    what leads to frame t+1
        predict_reward(feats_t) -> (B,)                          the reward of frame t
    The action taken at frame t thus enters the head that predicts frame t+1 and, as the
    previous action, the core at frame t+1 (zeros before the first action). Coordinate
    channels are appended to the core's input so that cells know where the walls are
    (bounces happen at fixed image positions); actions are broadcast over the grid. The
    head's last layer starts at zero, so an untrained unit predicts its prior: no motion
    (motion), the motion measured between the last two frames (particles)."""

    def __init__(self, code_dim: int, hidden: int, layers: int, action_dim: int, extra_in: int,
                 out_ch: int, reward_head: bool, grid: int):
        super().__init__()
        self.action_dim, self.hidden = action_dim, hidden
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        self.stem = nn.Conv2d(code_dim + 2 + action_dim + extra_in, hidden, 3, padding=1)
        self.cells = nn.ModuleList(ConvGRUCell(hidden, hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Conv2d(hidden * layers + action_dim, hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hidden, out_ch, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # With a reward head the compact state also holds KEYPOINTS learned keypoints: maps
        # computed from the frame's code embeddings (what Dreamer calls z, beside the
        # recurrent h), each turned into the expected (x, y) under its spatial softmax (Levine et al.
        # 2016, "deep spatial autoencoders"). Pooled features keep what is where only to
        # 16 px; the agent's reward, a distance between two bodies, needs where exactly,
        # and a keypoint is a coordinate (measured in docs/experiments.md).
        self.latent_dim = hidden * layers * LATENT_POOL ** 2 + (2 * KEYPOINTS if reward_head else 0)
        self.keypoint_maps = (nn.Sequential(nn.Conv2d(code_dim + 2, 2 * hidden, 3, padding=1),
                                            nn.SiLU(), nn.Conv2d(2 * hidden, KEYPOINTS, 1))
                              if reward_head else None)
        self.reward = (nn.Sequential(nn.Linear(self.latent_dim, REWARD_UNITS), nn.SiLU(), nn.Linear(REWARD_UNITS, 1))
                       if reward_head else None)
        self.prior = LatentPrior(self.latent_dim, action_dim) if reward_head and action_dim else None

    def init_hidden(self, batch: int, device, h: int, w: int):
        """One (B, hidden, h, w) float32 state per ConvGRU cell."""
        return [torch.zeros(batch, self.hidden, h, w, device=device) for _ in self.cells]

    def _action_planes(self, action, like):
        """(B, A) -> (B, A, h, w) in like's dtype; None -> zeros (no action taken yet)."""
        B, _, h, w = like.shape
        if action is None:
            return like.new_zeros(B, self.action_dim, h, w)
        return action[:, :, None, None].to(like.dtype).expand(-1, -1, h, w)

    def step(self, emb, hidden, prev_action=None, planes=None):
        B = emb.shape[0]
        parts = [emb, self.coords.expand(B, -1, -1, -1).to(emb.dtype)]
        if self.action_dim:
            parts.append(self._action_planes(prev_action, emb))
        if planes is not None:
            parts.append(planes.to(emb.dtype))
        x = F.silu(self.stem(torch.cat(parts, 1)))
        new_hidden = []
        for cell, hid in zip(self.cells, hidden):
            hid = cell(x, hid)
            new_hidden.append(hid)
            x = hid.to(x.dtype)
        return torch.cat(new_hidden, 1), new_hidden

    def predict(self, feats, action=None):
        x = feats.float()
        if self.action_dim:
            if action is None:
                raise ValueError("this dynamics model was built with action_dim > 0: pass the action that leads "
                                 "to the next frame")
            x = torch.cat([x, self._action_planes(action, x)], 1)
        return self.head(x).float()

    def compact(self, feats, emb):
        """The compact state of a frame: (B, C, h, w) features (C = hidden*layers) and the
        frame's (B, D, h, w) code embeddings -> (B, latent_dim): the features averaged over
        a 4 x 4 grid of regions, plus the keypoints with a reward head."""
        return self.latent_from(self.pool(feats), emb)

    @staticmethod
    def pool(feats):
        """(B, C, h, w) features -> (B, C * LATENT_POOL^2), averaged over a 4 x 4 grid of regions."""
        return F.adaptive_avg_pool2d(feats.float(), LATENT_POOL).flatten(1)

    def latent_from(self, pooled, emb):
        """The compact state from its pooled part (B, C * LATENT_POOL^2), computed once and
        cached (the agent's latent phase), and the frame's embeddings (B, D, h, w), whose
        keypoints it appends with their graph (so the keypoint maps can learn from a cache)."""
        if self.keypoint_maps is None:
            return pooled
        B = emb.shape[0]
        coords = self.coords.expand(B, -1, -1, -1)
        # float32 even under autocast: in bf16 the keypoints fall on a grid of about 0.1 px, and
        # the agent reads their change from frame to frame (the speed) at acting time from
        # states built under autocast, while it learns from a cache built without it
        with torch.autocast(emb.device.type, enabled=False):
            maps = KEYPOINT_SHARPNESS * self.keypoint_maps(torch.cat([emb.float(), coords], 1))
            attention = torch.softmax(maps.flatten(2), -1)                              # (B, K, h*w) over the grid
            keypoints = attention @ self.coords.flatten(2).transpose(1, 2)              # (B, K, 2) in [-1, 1]
        return torch.cat([pooled.float(), keypoints.flatten(1)], 1)

    def predict_reward(self, latent):
        """(B, latent_dim) compact state -> (B,) reward of the frame, or None without a reward head."""
        return None if self.reward is None else self.reward(latent).squeeze(1)


class LatentPrior(nn.Module):
    """The compact state's own transition, what an agent imagines with (Dreamer's prior,
    Hafner et al. 2019/2020: imagination runs in latent space, no frame is drawn):
        z_{t+1} = z_t + f([z_t, z_t - z_{t-1}, a_t])
    second order, because a frame's compact state says where bodies are better than how fast
    they move, and physics needs both. z (B, F) = `Dynamics.compact` of real frames (the
    posterior); the MLP f starts at zero (the prior "nothing moves"). It learns to reproduce
    the posterior's sequence open-loop (`SharpWorldModelV2.prior_loss`), and the reward head
    reads its states as it reads real ones."""

    def __init__(self, latent_dim: int, action_dim: int, units: int = PRIOR_UNITS):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * latent_dim + action_dim, units), nn.LayerNorm(units), nn.SiLU(),
                                 nn.Linear(units, units), nn.LayerNorm(units), nn.SiLU(),
                                 nn.Linear(units, latent_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, prev, cur, action):
        """prev, cur (B, F) float32, action (B, A) -> next (B, F)."""
        return cur + self.net(torch.cat([cur, cur - prev, action.to(cur.dtype)], -1)).float()


class SharpWorldModelV2(nn.Module):
    """Tokenizer + ConvGRU core + the dynamics unit named by config.predict.

        model = SharpWorldModelV2(ModelConfig(...))       # or SharpWorldModelV2(hidden=32, ...)
        codes = model.encode(frames)                      # (B,1,64,64) -> (B,16,16)
        frames = model.decode(codes)                      # -> (B,1,64,64) in [0,1]
        state = model.observe(context, actions)           # context (B,Tc,1,64,64)
        out = model.imagine(state, horizon, actions)      # out['frames'] (B,N,1,64,64)
        pred = model.rollout(context, horizon, actions)   # observe + imagine, frames only
        state = model.step(state, action)                 # one imagined frame
        state = model.observe_next(state, frame, action)  # one real frame (agent)
    Actions: the action taken at frame k leads to frame k+1, (B, A) each. `observe` takes
    the actions of the context frames, (B, >= Tc - 1, A) (the one of the last context frame
    is not used there: it leads to the first predicted frame); `imagine` the actions of
    the frames it starts from, (B, horizon, A): actions[:, 0] is taken at the last observed
    frame. `rollout` takes them for context and horizon together, (B, Tc + horizon, A).
    A state is that of one frame, before its action: `latent(state)` is its compact state
    (the agent's actor reads it with its change since the frame before,
    training/world_model_rl.py agent_input), state['reward'] the predicted reward of that frame.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = ModelConfig(**overrides)
        elif overrides:
            config = ModelConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.grid = config.image_size // 4
        self.unit = UNITS[config.predict](config)
        self.tokenizer = Tokenizer(config.channels, config.code_dim, config.num_codes)
        self.dynamics = Dynamics(config.code_dim, config.hidden, config.layers, config.action_dim,
                                 self.unit.extra_in, self.unit.out_channels(config), config.reward_head, self.grid)

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

    def encode_clip(self, frames):
        """(B, T, 1, H, W) -> codes (B, T, h, w)."""
        B, T = frames.shape[:2]
        return self.encode(frames.flatten(0, 1)).view(B, T, self.grid, self.grid)

    # --- dynamics ----------------------------------------------------------------------
    def observe(self, context, actions=None, codes=None):
        """Run the dynamics over the context frames (B, Tc, 1, H, W); actions (B, Tc, A)
        or None; codes (B, Tc, h, w) if already computed. Returns the unit's state."""
        return self.unit.observe(self, context, actions, codes)

    def imagine(self, state, horizon: int, actions=None):
        """Predict `horizon` frames autoregressively from `observe`'s state. Returns
        {'frames': (B,N,1,H,W), 'codes': (B,N,h,w), 'rewards': (B,N) with a reward head}."""
        return self.unit.imagine(self, state, horizon, actions)

    def latent(self, state) -> torch.Tensor:
        """The compact state of the frame: (B, F) float32 (what the latent prior steps on)."""
        return self.unit.latent(self, state)

    def step(self, state, action=None):
        """One imagined frame: the state of the frame that `action` (B, A) leads to, with
        its codes in state["codes"] (the frame-by-frame units: particles, motion)."""
        return self.unit.step(self, state, action)

    def observe_next(self, state, frame, action=None, codes=None):
        """One real frame (B, 1, H, W) that `action` led to: the state of that frame,
        anchored on it (the frame-by-frame units: particles, motion)."""
        return self.unit.observe_next(self, state, frame, action, codes)

    def prior_step(self, prev, cur, action):
        """Imagine in latent space: compact states of frames t-1 and t (B, F) and the action
        of frame t (B, A) -> the compact state of frame t+1 (B, F). Reward: `reward_of`."""
        return self.dynamics.prior(prev, cur, action)

    def reward_of(self, latent):
        """(B, F) compact state -> (B,) its predicted reward (the reward head)."""
        return self.dynamics.predict_reward(latent)

    def prior_loss(self, latents, actions, rewards, reward_weight: float = PRIOR_REWARD_WEIGHT):
        """The latent prior's objective on posterior sequences: latents (B, L, F) of real
        frames (constants here: the prior learns to follow them, not to move them), actions
        (B, L >= 3, A), rewards (B, L). Open loop after the first two states, as imagination runs:
            z^_{k+1} = prior(z^_{k-1}, z^_k, a_k),  z^_0 = z_0, z^_1 = z_1,  k = 1 .. L-2
        loss = mean_k mean_f w_f (z^_{k+1} - z_{k+1})_f^2 + reward_weight (r(z^_{k+1}) - r_{k+1})^2,
        the reward term reaching only the prior (the reward head learns on the states the frames
        give, in the latent phase and in the frame-prediction steps). w_f is 1 for the pooled
        features and PRIOR_KEYPOINT_WEIGHT = 8^2 for the keypoints' coordinates, i.e. their
        error is counted in token widths (4 px) instead of half-frames ([-1, 1] spans 64 px).
        Why: unweighted, the 2 * KEYPOINTS coordinates are a small share of the latent_dim
        features, and the prior let the keypoints of a ball resting on the target drift
        until the reward head read it several px away, as far as where the agent hovered
        (docs/experiments.md, 2026-12-07 fourth session). ->
        (loss, logs: 'prior' latent MSE, 'prior_rew' reward MSE, 'prior_kp' keypoint MSE)."""
        if latents.shape[1] < 3:
            raise ValueError(f"prior_loss needs windows of at least 3 states, got {latents.shape[1]}")
        z = latents.detach().float()
        frozen = {k: v.detach() for k, v in self.dynamics.reward.named_parameters()}
        head = lambda x: torch.func.functional_call(self.dynamics.reward, frozen, (x,))   # noqa: E731
        prev, cur = z[:, 0], z[:, 1]
        lat, rew = [], []
        for k in range(1, z.shape[1] - 1):
            prev, cur = cur, self.prior_step(prev, cur, actions[:, k])
            lat.append(F.mse_loss(cur, z[:, k + 1], reduction="none").mean(0))
            rew.append(F.mse_loss(head(cur).squeeze(1), rewards[:, k + 1].float()))
        lat = torch.stack(lat).mean(0)                  # (F,) per feature
        rew = torch.stack(rew).mean()
        weight = torch.ones_like(lat)
        weight[-2 * KEYPOINTS:] = PRIOR_KEYPOINT_WEIGHT
        loss = (lat * weight).mean() + reward_weight * rew
        kp = lat[-2 * KEYPOINTS:].mean().item()
        return loss, {"prior": lat.mean().item(), "prior_rew": rew.item(), "prior_kp": kp}

    @torch.no_grad()
    def rollout(self, context, horizon: int, actions=None, with_latent: bool = False):
        """context (B, Tc, 1, H, W) -> predicted frames (B, horizon, 1, H, W) in [0,1];
        with_latent: (frames, the compact state after the context (B, F)), so that one
        rollout serves both the frame metrics and the state probes (evaluation/)."""
        Tc = context.shape[1]
        obs_a = actions[:, :Tc] if actions is not None else None
        fut_a = actions[:, Tc - 1:] if actions is not None else None
        state = self.observe(context, obs_a)
        latent = self.latent(state) if with_latent else None
        frames = self.imagine(state, horizon, fut_a)["frames"]
        return (frames, latent) if with_latent else frames

    def forward(self, batch: dict, context: int, forced=None):
        """The dynamics objective on one batch (so DistributedDataParallel can wrap the
        model): batch {'frames' (B,T,1,H,W), 'codes' (B,T,h,w), optional 'actions'
        (B,T,A), 'rewards' (B,T) and the unit's cached inputs}; forced: per step t of
        T-1, whether the input of step t+1 is the true frame (teacher forcing) or None
        (free-running after the context). -> (loss, logs with 'rollout_mse' per step)."""
        return self.unit.loss(self, batch, context, forced)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tokenizer_loss(tokenizer: nn.Module, frames: torch.Tensor):
    """frames (N, 1, H, W) in [0,1] -> (loss, logs). Binary cross-entropy of the pixels
    (intensities as soft targets) on the decoder's logits + the VQ commitment term.
    `tokenizer` may be wrapped in DistributedDataParallel.

    Why cross-entropy and not MSE or L1 of sigmoid(logits): their gradient with respect to a
    logit carries the factor sigmoid'(logit), which vanishes once the decoder paints the
    background black with confidence, so a decoder that has learned "all black" early (an
    easy first optimum when 5 % of the pixels are ink, as with real MNIST digits) gets
    almost no signal from the ink it misses and stays there (docs/experiments.md,
    2026-12-02). The cross-entropy's gradient is sigmoid(logit) - pixel, never vanishing
    on a wrong pixel; like MSE, it is minimal where sigmoid(logit) equals the pixel."""
    logits, _, stats = tokenizer(frames)
    bce = F.binary_cross_entropy_with_logits(logits, frames)
    with torch.no_grad():
        recon = torch.sigmoid(logits)
        mse = F.mse_loss(recon, frames)
        l1 = F.l1_loss(recon, frames)
    loss = bce + stats["commit"]
    logs = {"loss": loss.item(), "bce": bce.item(), "mse": mse.item(), "l1": l1.item(),
            "psnr": (-10 * torch.log10(mse.detach().clamp_min(1e-10))).item(),
            "perplexity": stats["perplexity"].item(), "usage": stats["usage"].item(),
            "restarted": stats["restarted"]}
    return loss, logs
