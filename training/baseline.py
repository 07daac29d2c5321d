"""The learned baseline: a SimVP-style non-autoregressive CNN (after Gao et al. 2022, "SimVP:
Simpler yet Better Video Prediction"), written for this project.

    from training.baseline import SimVP, SimVPConfig
    model = SimVP(SimVPConfig(context=10, horizon=10))
    pred = model(context)                      # (B, 10, 1, 64, 64) -> (B, 10, 1, 64, 64), raw
    pred = model.rollout(context, 30)          # any horizon, in [0, 1] (eval_sharp's interface)
    loss, logs = prediction_loss(model, frames)   # pixel MSE on clips (B, context + horizon, 1, H, W)

Three parts, all convolutional, no recurrence:
    encoder     the same small CNN on every context frame: n_s conv blocks of hid_s channels,
                every second one with stride 2 (n_s=4: 64x64 -> 16x16)
    translator  the context frames' latents stacked along channels (context * hid_s), mapped
                to hid_t channels, n_t gated blocks (below), and mapped to horizon * hid_s
                channels: all predicted frames' latents at once
    decoder     the encoder mirrored (sub-pixel upsampling), on every predicted frame's latent,
                plus a skip: the encoder's full-resolution features of the last context frame
The loss is the pixel MSE of all predicted frames against the truth; nothing is sampled and
no prediction is fed back in training. `rollout` predicts `horizon` frames in one pass and, for
a longer horizon, feeds its last `context` predictions back in as the next context.

A translator block (the gated spatial attention of SimVP v2's gSTA, in this project's own
form): x + s1 * attention(norm(x)), then x + s2 * mlp(norm(x)), where attention is a 1x1
projection, a wide receptive field from a 5x5 depthwise convolution followed by a 7x7
depthwise one (11x11 cells of the 16x16 grid; gSTA dilates the 7x7 by 3, which on this CPU
made the block's backward pass three times slower and is not needed on a 16x16 grid), split
into a gate and a value (sigmoid(gate) * value), and a 1x1 projection; the mlp is 1x1 up by mlp_ratio, a 3x3
depthwise convolution, GELU, 1x1 down. s1, s2 are per-channel scales that start small, so
every block starts close to the identity.

Differences from the published SimVP, chosen here: the decoder's skip comes from the last
context frame (SimVP adds the encoder features of input frame i to output frame i, which
pairs frames that are `context` steps apart), and `horizon` may differ from `context`.

Frames are float in [0, 1], (B, T, 1, H, W), as everywhere in the project (world_model.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

KIND = "simvp"   # the checkpoint's model_config['kind']: what evaluation/eval_sharp.py builds


@dataclass
class SimVPConfig:
    """Every architecture setting of SimVP (saved in checkpoints as 'model_config')."""
    kind: str = KIND            # tells this model's checkpoints from the world model's
    hid_s: int = 16             # encoder / decoder channels
    hid_t: int = 256            # translator channels
    n_s: int = 4                # conv blocks in the encoder (and the decoder); every second strides by 2
    n_t: int = 4                # translator blocks
    mlp_ratio: int = 4          # translator mlp width / hid_t
    context: int = 10           # frames read
    horizon: int = 10           # frames predicted in one pass
    image_size: int = 64        # frames are image_size x image_size

    action_dim = 0              # (not a setting) action-free, like the video world models

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"kind must be '{KIND}', got '{self.kind}'")
        for name in ("hid_s", "hid_t", "n_s", "n_t", "mlp_ratio", "context", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hid_s % 2:
            raise ValueError(f"hid_s must be even (GroupNorm of 2 groups), got {self.hid_s}")
        if self.image_size % (2 ** (self.n_s // 2)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(n_s // 2) = "
                             f"{2 ** (self.n_s // 2)}")

    @classmethod
    def from_dict(cls, d: dict) -> "SimVPConfig":
        """From a script's settings: keys that are not model settings are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d and f.name != "kind"})

    @classmethod
    def from_checkpoint(cls, d: dict) -> "SimVPConfig":
        """Strict: a key this version does not know means another version (ValueError)."""
        extra = sorted(set(d) - {f.name for f in fields(cls)})
        if extra:
            raise ValueError(f"model_config has settings this version does not know: {', '.join(extra)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Module):
    """3x3 convolution (stride 2 to go down, or sub-pixel upsampling by 2 to go up),
    GroupNorm of 2 groups, SiLU."""

    def __init__(self, cin: int, cout: int, down: bool = False, up: bool = False):
        super().__init__()
        if up:
            self.conv = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=1)
        self.norm = nn.GroupNorm(2, cout)

    def forward(self, x):
        return F.silu(self.norm(self.conv(x)))


class GatedBlock(nn.Module):
    """One translator block on (B, dim, h, w); see the module docstring."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.wide = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.gate_value = nn.Conv2d(dim, 2 * dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        wide = dim * mlp_ratio
        self.mlp = nn.Sequential(nn.Conv2d(dim, wide, 1), nn.Conv2d(wide, wide, 3, padding=1, groups=wide),
                                 nn.GELU(), nn.Conv2d(wide, dim, 1))
        self.scale1 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-2))
        self.scale2 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-2))

    def forward(self, x):
        y = F.gelu(self.proj_in(self.norm1(x)))
        gate, value = self.gate_value(self.wide(self.local(y))).chunk(2, 1)
        x = x + self.scale1 * self.proj_out(torch.sigmoid(gate) * value)
        return x + self.scale2 * self.mlp(self.norm2(x))


class SimVP(nn.Module):
    """Encoder per frame -> translator over the stacked context latents -> decoder per frame."""

    def __init__(self, config: SimVPConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = SimVPConfig(**overrides)
        elif overrides:
            config = SimVPConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        downs = [i % 2 == 1 for i in range(c.n_s)]              # n_s=4: full, /2, /2, /4
        self.encoder = nn.ModuleList(ConvBlock(1 if i == 0 else c.hid_s, c.hid_s, down=d)
                                     for i, d in enumerate(downs))
        self.decoder = nn.ModuleList(ConvBlock(c.hid_s, c.hid_s, up=u) for u in reversed(downs))
        self.readout = nn.Conv2d(c.hid_s, 1, 1)
        self.grid = c.image_size // 2 ** sum(downs)
        self.translate_in = nn.Conv2d(c.context * c.hid_s, c.hid_t, 1)
        self.blocks = nn.Sequential(*(GatedBlock(c.hid_t, c.mlp_ratio) for _ in range(c.n_t)))
        self.translate_out = nn.Conv2d(c.hid_t, c.horizon * c.hid_s, 1)

    def encode(self, frames):
        """(N, 1, H, W) -> (latent (N, hid_s, h, w), full-resolution features (N, hid_s, H, W))."""
        x = self.encoder[0](frames)
        skip = x
        for block in self.encoder[1:]:
            x = block(x)
        return x, skip

    def decode(self, latent, skip):
        """(N, hid_s, h, w) and the skip (N, hid_s, H, W) -> raw frames (N, 1, H, W)."""
        x = latent
        for block in self.decoder[:-1]:
            x = block(x)
        return self.readout(self.decoder[-1](x + skip))

    def forward(self, context):
        """context (B, context, 1, H, W) -> raw predictions (B, horizon, 1, H, W) (not clamped)."""
        c = self.config
        B, T = context.shape[:2]
        if T != c.context:
            raise ValueError(f"SimVP reads exactly {c.context} context frames, got {T}")
        latent, skip = self.encode(context.flatten(0, 1).contiguous())
        h, w = latent.shape[-2:]
        z = self.translate_out(self.blocks(self.translate_in(latent.reshape(B, T * c.hid_s, h, w))))
        z = z.reshape(B * c.horizon, c.hid_s, h, w)
        last = skip.view(B, T, *skip.shape[1:])[:, -1]
        skip = last.unsqueeze(1).expand(-1, c.horizon, -1, -1, -1).flatten(0, 1)
        return self.decode(z, skip).view(B, c.horizon, 1, *context.shape[-2:]).float()

    @torch.no_grad()
    def rollout(self, context, horizon: int, actions=None):
        """context (B, Tc >= config.context, 1, H, W) -> predicted frames (B, horizon, 1, H, W) in
        [0, 1]: the last config.context frames are read; beyond config.horizon, the model's own
        last predictions are the next context. The interface eval_sharp.evaluate calls."""
        if actions is not None:
            raise ValueError("SimVP is action-free; it takes no actions")
        c = self.config
        if context.shape[1] < c.context:
            raise ValueError(f"SimVP reads {c.context} context frames, got {context.shape[1]}")
        frames, out, made = context[:, -c.context:], [], 0
        while made < horizon:
            pred = self(frames).clamp(0, 1)
            out.append(pred)
            made += pred.shape[1]
            frames = torch.cat([frames.float(), pred], 1)[:, -c.context:]
        return torch.cat(out, 1)[:, :horizon]


def prediction_loss(net: nn.Module, frames: torch.Tensor):
    """The training objective: frames (B, >= context + horizon, 1, H, W) -> (pixel MSE of the
    predicted frames, logs with 'rollout_mse': each predicted step's error summed over a frame's
    pixels, as the evaluation reports it). `net` is a SimVP, or one wrapped in
    DistributedDataParallel (called, so that its gradients are averaged)."""
    c = getattr(net, "module", net).config
    target = frames[:, c.context:c.context + c.horizon].float()
    pred = net(frames[:, :c.context])
    loss = F.mse_loss(pred, target)
    with torch.no_grad():
        per_step = (pred.detach().clamp(0, 1) - target).pow(2).sum((2, 3, 4)).mean(0)
    return loss, {"loss": loss.item(), "rollout_mse": per_step.tolist()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
