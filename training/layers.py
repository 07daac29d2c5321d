"""Rigid layers: split the last observed frame into moving objects and follow them
and the dynamics unit that moves them (`RigidLayers`, predict="layers" of
training/world_model.py).

    L, v = observe_layers(context, objects=2)        # context (B, T, 1, H, W)
    P, score = track(frames, L, start, stop)         # each layer's position in other frames
    frame = composite(L, D)                          # layers moved by D (B, K, 2) px

Why: a per-cell displacement field cannot keep two overlapping digits apart (one
backward warp from one anchor squashes them), and an advected velocity field diffuses
so strokes shear within 10 frames (docs/experiments.md, "Where the motion error comes
from").
Moving each object rigidly keeps it whole and sharp; what is left to learn is how each
object's velocity changes (wall bounces), which the ConvGRU does per layer.

Nothing here is learned and nothing here reads physical states: the layers come from
the frames alone.
  1. The cut (`segment`): the whole-pixel displacement that explains the most ink of the
     last frame from the frame before, then the one that explains most of the ink left,
     one per layer (dominant motions, Wang and Adelson 1994); each ink pixel joins the
     displacement that explains it best.
  2. Each layer is followed back through the context by template matching (normalised
     correlation of the layer with the frame, +-SEARCH_PX around its last position), which
     gives whole-pixel positions (Moving MNIST draws digits at rounded positions).
  3. Each layer's template is a low quantile of the context frames moved back by those
     positions (`templates`): ink of another body that the cut gave the wrong layer is
     voted out by the frames in which the two stand apart.
  4. The velocity is the least-squares slope of those positions over the frames since
     the last change of direction, per axis; that recovers the sub-pixel velocity that
     single frame pairs (off by +-1 px from rounding) cannot. Bounces are elastic, so
     where the direction turned within the context the speed also draws on the frames
     before the turn (`fit_velocity`).
How each step was chosen, with the error it removed: docs/experiments.md ("Rigid layers",
2026-11-25; the dominant-motion cut and the templates from all context frames, 2026-12-07, sixth session).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training import motion

SEARCH_PX = 6        # largest motion per frame looked for, px (Moving MNIST moves <= 5 px/frame)
INK = 0.05           # pixels brighter than this belong to an object
HYP_TAU = 0.15       # a displacement explains a pixel when its local residual is below this share of the energy
HYP_WIN = 3          # ... the window of that residual, px
TEMPLATE_QUANTILE = 0.2   # of a pixel over the aligned context frames (`templates`)
MIN_PIXELS = 4       # a displacement explaining fewer new ink pixels than this makes no layer
CUT_VERSION = 2      # of what `cut` computes; a training cache of another version is made again
TURN_PX = 1.5        # a per-frame displacement this far from the recent mean starts a new segment


def shift(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Move images by whole pixels, zeros coming in: out(p) = x(p - o).
    x (N, H, W); offset (N, 2) integer-valued (x, y)."""
    N, H, W = x.shape
    ys = torch.arange(H, device=x.device)[None, :, None] - offset[:, 1, None, None].long()
    xs = torch.arange(W, device=x.device)[None, None, :] - offset[:, 0, None, None].long()
    ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    n = torch.arange(N, device=x.device)[:, None, None]
    return torch.where(ok, x[n, ys.clamp(0, H - 1), xs.clamp(0, W - 1)], x.new_zeros(()))


def best_offset(template: torch.Tensor, frame: torch.Tensor):
    """Whole-pixel offset o in [-R, R]^2 maximising the normalised correlation
        NCC(o) = sum_p T(p) F(p + o) / sqrt(sum_p T(p)^2 * sum_{p in mask} F(p + o)^2),
    mask = the template's ink, so a bright neighbour outside the object does not pull
    the match. template, frame (N, H, W) -> offset (N, 2) long (x, y), score (N,)."""
    N, H, W = template.shape
    R = SEARCH_PX
    fp = F.pad(frame.float()[None], (R,) * 4)                               # (1, N, H+2R, W+2R)
    mask = (template.float() > INK).float()[:, None]                         # (N, 1, H, W)
    t = template.float()[:, None] * mask
    num = F.conv2d(fp, t, groups=N)[0]                                       # (N, 2R+1, 2R+1)
    den = F.conv2d(fp.pow(2), mask, groups=N)[0]
    score = num / ((den * t.pow(2).sum((1, 2, 3))[:, None, None]).sqrt() + 1e-6)
    best, i = score.flatten(1).max(1)
    return torch.stack([i % (2 * R + 1), i // (2 * R + 1)], 1) - R, best


def track(frames: torch.Tensor, L: torch.Tensor, start: int, stop: int):
    """Follow each layer from frame `start` (where L was cut out) to frame `stop`, one
    frame at a time. frames (B, T, 1, H, W); L (B, K, H, W) -> positions (B, K, T, 2)
    (whole pixels relative to frame `start`; 0 outside the tracked span) and the match
    score (B, K, T) (1 = a perfect match, 0 = not found)."""
    B, T = frames.shape[:2]
    K = L.shape[1]
    flat = L.flatten(0, 1)                                                   # (B*K, H, W)
    P = torch.zeros(B * K, T, 2, dtype=torch.long, device=L.device)
    S = torch.zeros(B * K, T, device=L.device)
    S[:, start] = 1.0
    step = 1 if stop > start else -1
    for t in range(start + step, stop + step, step):
        frame = frames[:, t, 0].float().repeat_interleave(K, 0)              # (B*K, H, W)
        o, s = best_offset(shift(flat, P[:, t - step]), frame)
        P[:, t], S[:, t] = P[:, t - step] + o, s
    return P.view(B, K, T, 2), S.view(B, K, T)


def _run(d: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The run of displacements ending at index `end` (per element and axis; < 0: none):
    extended backwards while each earlier displacement stays within TURN_PX of the mean
    of those already in. d (..., n, 2); end (..., 2) long -> mask (..., n, 2) bool."""
    n = d.shape[-2]
    used = torch.zeros_like(d, dtype=torch.bool)
    alive = end >= 0
    for j in range(n - 1, -1, -1):
        count = used.sum(-2)
        mean = torch.where(count > 0, (d * used).sum(-2) / count.clamp_min(1), d[..., j, :])
        inside = j <= end
        ok = alive & inside & ((d[..., j, :] - mean).abs() <= TURN_PX)
        alive = alive & (ok | ~inside)
        used[..., j, :] = ok
    return used


def _slope(P: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of positions P (..., T, 2) over the frames that the used
    displacements (..., T-1, 2) connect -> (..., 2)."""
    w = torch.zeros_like(P, dtype=torch.float32)
    w[..., :-1, :] = used.float()
    w[..., 1:, :] = torch.maximum(w[..., 1:, :], used.float())
    t = torch.arange(P.shape[-2], device=P.device, dtype=torch.float32)[:, None]
    sw = w.sum(-2).clamp_min(1e-6)
    tm, pm = (w * t).sum(-2) / sw, (w * P.float()).sum(-2) / sw
    var = (w * (t - tm[..., None, :]).pow(2)).sum(-2)
    cov = (w * (t - tm[..., None, :]) * (P.float() - pm[..., None, :])).sum(-2)
    return cov / var.clamp_min(1e-6)


def fit_velocity(P: torch.Tensor) -> torch.Tensor:
    """Sub-pixel velocity from whole-pixel positions. P (..., T, 2), the last frame the
    newest -> (..., 2) px/frame, per axis.

    The least-squares slope over the latest run of frames whose displacements stay within
    TURN_PX of their mean. A wall bounce flips the sign, so only the frames since the last
    one give the direction; when that run is short its slope is noisy (a 2-frame run of
    rounded positions is off by up to 0.5 px/frame). Bounces here are elastic, so the
    speed along the axis is the same before and after: when the run before the bounce
    (the frame of the bounce itself left out, its displacement is folded) has the opposite
    sign, the speed is the frame-weighted mean of the two runs' speeds (measured against
    the true velocities: docs/experiments.md, "Rigid layers")."""
    d = (P[..., 1:, :] - P[..., :-1, :]).float()                             # (..., T-1, 2)
    n = d.shape[-2]
    last = _run(d, torch.full(d.shape[:-2] + (2,), n - 1, dtype=torch.long, device=d.device))
    v_last = _slope(P, last)
    first = n - last.sum(-2)                                                  # index where the run starts
    before = _run(d, first - 2)                                               # skip the bounce frame first-1
    v_before = _slope(P, before)
    n_last, n_before = last.sum(-2).float() + 1, before.sum(-2).float() + 1
    bounced = (before.any(-2) & (torch.sign(v_before) == -torch.sign(v_last))
               & (v_last.abs() > 0.5) & (v_before.abs() > 0.5))
    speed = (n_last * v_last.abs() + n_before * v_before.abs()) / (n_last + n_before)
    v = torch.where(bounced, torch.sign(v_last) * speed, v_last)
    # The newest displacement alone breaks the run: the bounce is on the last frame, and
    # that displacement is the folded one (neither the old nor the new velocity), so the
    # new velocity is the old one reversed.
    prev = _run(d, torch.full_like(first, n - 2))
    v_prev = _slope(P, prev)
    fold_now = (last.sum(-2) == 1) & (prev.sum(-2) >= 2) & (v_prev.abs() > 0.5)
    return torch.where(fold_now, -v_prev, v)


def _explained(cur: torch.Tensor, prev: torch.Tensor, oy: int) -> torch.Tensor:
    """How badly `prev` moved by each whole-pixel displacement (ox, oy), ox in
    [-SEARCH_PX, SEARCH_PX], explains `cur`, per pixel: the residual over a HYP_WIN x HYP_WIN
    window relative to the two frames' energy there, 0 = exactly, about 1 = not at all.
    cur, prev (B, H, W) -> (B, 2R+1, H, W): one row of displacements."""
    B, H, W = cur.shape
    R = SEARCH_PX
    p = F.pad(prev, (R, R, R, R))[:, R - oy:R - oy + H]                       # (B, H, W+2R) moved by oy
    moved = torch.stack([p[:, :, R - ox:R - ox + W] for ox in range(-R, R + 1)], 1)   # (B, 2R+1, H, W)
    box = lambda z: F.avg_pool2d(z, HYP_WIN, 1, HYP_WIN // 2)
    return box((cur[:, None] - moved).pow(2)) / (box(cur[:, None].pow(2) + moved.pow(2)) + 1e-3)


def segment(context: torch.Tensor, objects: int) -> torch.Tensor:
    """Cut the last frame of `context` into `objects` layers by the motions that explain
    it (dominant motions, as in Wang and Adelson's layered representation, 1994): the
    whole-pixel displacement in [-SEARCH_PX, SEARCH_PX]^2 that explains the most ink of the
    last frame from the frame before, then the one that explains the most of the ink left
    unexplained, and so on; each ink pixel joins the displacement that explains it best.
    A displacement that explains fewer than MIN_PIXELS new ink pixels makes no layer, so
    a frame with fewer moving objects leaves layers empty.
    context (B, T, 1, H, W), T >= 2 -> L (B, K, H, W): each ink pixel of the last frame in
    exactly one layer. Holds all (2R+1)^2 residual maps at once, 0.7 MB a 64x64 clip."""
    cur, prev = context[:, -1, 0].float(), context[:, -2, 0].float()
    B = cur.shape[0]
    b = torch.arange(B, device=cur.device)
    r = torch.cat([_explained(cur, prev, oy) for oy in range(-SEARCH_PX, SEARCH_PX + 1)], 1)   # (B, (2R+1)^2, H, W)
    hit = (r < HYP_TAU).float()
    free = (cur > INK).float()                                              # ink not yet explained
    residuals = []                                                          # (B, H, W) per layer
    for _ in range(objects):
        n, i = (hit * free[:, None]).sum((2, 3)).max(1)                     # (B,): the best displacement
        best = torch.where((n >= MIN_PIXELS)[:, None, None], r[b, i], torch.full_like(cur, float("inf")))
        residuals.append(best)
        free = free * (best >= HYP_TAU).float()
    owner = F.one_hot(torch.stack(residuals, 1).argmin(1), objects).permute(0, 3, 1, 2).float()
    return cur[:, None] * owner


def templates(context: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Each layer's appearance from all context frames: every frame moved back by where
    the layer was tracked in it, then a low per-pixel quantile over frames
    (TEMPLATE_QUANTILE). The body is in every aligned frame, another body only in those
    in which it passes that pixel, so ink of the other body that the cut gave this layer
    is voted out; where bodies overlap by their maximum, as in Moving MNIST, the body's
    own ink is never hidden. A low quantile rather than the minimum, so that a frame or
    two in which the track slipped do not erase the body.
    context (B, T, 1, H, W); P (B, K, T, 2) whole pixels relative to the last frame ->
    (B, K, H, W) at the layer's place in the last frame."""
    B, T, _, H, W = context.shape
    K = P.shape[1]
    frames = context[:, :, 0].float()[:, None].expand(B, K, T, H, W).reshape(-1, H, W)
    aligned = shift(frames, -P.reshape(-1, 2))                              # (B*K*T, H, W)
    return aligned.view(B, K, T, H, W).quantile(TEMPLATE_QUANTILE, dim=2, interpolation="lower")


@torch.no_grad()
def observe_layers(context: torch.Tensor, objects: int):
    """context (B, T, 1, H, W), T >= 2 -> layers of the last frame L (B, K, H, W) and
    their velocities v (B, K, 2) px/frame (zeros for an empty layer). Always in float32,
    also under autocast: bf16 correlations moved some template matches by a pixel, so
    the cut at evaluation differed from the cut of the training clips."""
    context = context.float()
    with torch.autocast(context.device.type, enabled=False):
        T = context.shape[1]
        L = segment(context, objects)
        P, _ = track(context, L, T - 1, 0)
        present = (L.flatten(2).amax(-1) > INK).float()                     # (B, K)
        L = templates(context, P) * present[..., None, None]
        v = fit_velocity(P)
    return L, v * present[..., None]


@torch.no_grad()
def cut(clips: torch.Tensor, objects: int, context: int):
    """What training needs of each clip, computed once: the layers of frame context-1
    and their velocities (`observe_layers` on the context), and where each layer is in
    every later frame (`track`). clips (B, T, 1, H, W) -> L (B, K, H, W), v (B, K, 2),
    positions (B, K, T, 2), score (B, K, T)."""
    L, v = observe_layers(clips[:, :context], objects)
    with torch.autocast(clips.device.type, enabled=False):
        P, S = track(clips.float(), L, context - 1, clips.shape[1] - 1)
    return L, v, P, S


@torch.no_grad()
def ink_kept(L: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """The share of a frame's ink pixels that the layers cover: how much of the frame moves
    as at most K rigid bodies (ink of a turning rod, a bending wave or a body beyond the K-th
    follows no layer and is dropped). Layer ink where the frame has none does not count.
    L (B, K, H, W) from `observe_layers`, frame (B, H, W) its last context frame -> (B,)."""
    ink = frame > INK
    return ((L.amax(1) > INK) & ink).float().sum((1, 2)) / ink.float().sum((1, 2)).clamp_min(1)


@torch.no_grad()
def constant_velocity(L: torch.Tensor, v: torch.Tensor, horizon: int) -> torch.Tensor:
    """The layers with nothing learned: each moved on at its observed velocity, overlaid
    (no bounces, no re-tokenising); how far the rigid-layer assumption alone carries on a
    dataset (evaluation/benchmark.py --section layers). L (B, K, H, W), v (B, K, 2) from
    `observe_layers` -> (B, horizon, 1, H, W)."""
    return torch.stack([composite(L, v * k) for k in range(1, horizon + 1)], 1)


def move(L: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Each layer moved by its offset. L (B, K, H, W); D (B, K, 2) px (x, y), bilinear for
    sub-pixel moves -> (B, K, H, W)."""
    B, K, H, W = L.shape
    return motion.warp(L.flatten(0, 1)[:, None], D.flatten(0, 1)[:, :, None, None].float()).view(B, K, H, W)


def composite(L: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Layers moved by D and overlaid by their maximum (how Moving MNIST draws overlaps):
    (B, K, H, W), (B, K, 2) -> (B, 1, H, W)."""
    return move(L, D).amax(1, keepdim=True)


# ----------------------------------------------------------------------------------------
# The dynamics unit (predict="layers")
# ----------------------------------------------------------------------------------------
class RigidLayers:
    """predict="layers": the last context frame cut into `objects` rigid layers
    (`observe_layers`), each moved by the ConvGRU core and overlaid by their maximum, the
    overlay re-tokenised. Each batch row of the core is one layer: its input is the
    current frame's code embeddings plus the layer's coverage of each cell, its velocity
    and the centre of its ink (5 extra planes); the head's output, averaged over the
    layer's cells, corrects the constant-velocity guess with this frame's displacement
    and the velocity carried to the next (two outputs, because a bounce folds the
    overshoot back: the displacement on the bounce frame is neither the old nor the new
    velocity). The ConvGRU does not run over the context: the velocity comes from
    tracking the layers. Actions, as in every unit (training/world_model.py Dynamics): the
    action taken at frame t enters the head that moves the layers to frame t+1, and the
    core at frame t+1 as its previous action; every layer reads the same action. No reward
    head (ModelConfig refuses it). State: {'hidden' (per layer), 'layers' L (B, K, H, W),
    'offset' (B, K, 2), 'moved' (B, K, H, W), 'velocity' (B, K, 2), 'centre' (B, K, 2),
    'codes', 'feats' (the last step's ConvGRU features, None before the first),
    'prev_action' (B, A) the action that led to the current frame, or None}."""

    extra_in = 5   # coverage, velocity (2), centre (2)

    def __init__(self, config):
        self.config = config

    @staticmethod
    def out_channels(config) -> int:
        return 4   # displacement correction (2), velocity correction (2)

    def observe(self, model, context, actions=None, codes=None, L=None, velocity=None):
        """L (B, K, H, W) and velocity (B, K, 2) may be given (the training cache)."""
        if L is None:
            L, velocity = observe_layers(context, self.config.objects)
        last = model.encode(context[:, -1]) if codes is None else codes[:, -1]
        B, K, H, W = L.shape
        mass = L.sum((2, 3)).clamp_min(1e-6)
        ys, xs = torch.meshgrid(torch.arange(H, device=L.device, dtype=torch.float32),
                                torch.arange(W, device=L.device, dtype=torch.float32), indexing="ij")
        centre = torch.stack([(L * xs).sum((2, 3)) / mass, (L * ys).sum((2, 3)) / mass], -1)   # (B, K, 2)
        # 'moved': the layers at their current offset, kept so that each move is warped
        # once, for both the next step's coverage and the overlay.
        Tc = context.shape[1]
        prev = actions[:, Tc - 2] if actions is not None and Tc >= 2 else None   # led to the last context frame
        return {"hidden": model.dynamics.init_hidden(B * K, L.device, model.grid, model.grid),
                "layers": L.float(), "offset": L.new_zeros(B, K, 2, dtype=torch.float32),
                "moved": L.float(), "velocity": velocity.float(), "centre": centre, "codes": last,
                "feats": None, "prev_action": prev}

    def move_layers(self, model, state, action=None):
        """Move every layer one frame from the current tokens, `action` (B, A) the one taken
        at the current frame (required with action_dim); updates the state in place."""
        m = self.config.max_motion
        L, off, vel = state["layers"], state["offset"], state["velocity"]
        B, K, H, _ = L.shape
        per_layer = lambda a: None if a is None else a.repeat_interleave(K, 0)    # noqa: E731  (B*K, A)
        emb = model.embed(state["codes"]).repeat_interleave(K, 0)                 # (B*K, D, h, w)
        covered = (state["moved"].flatten(0, 1)[:, None] > INK).float()            # (B*K, 1, H, W)
        mask = F.adaptive_avg_pool2d(covered, model.grid)                          # (B*K, 1, h, w)
        v, centre = vel.flatten(0, 1), (state["centre"] + off).flatten(0, 1)       # (B*K, 2)
        planes = torch.cat([v / m, 2 * centre / H - 1], 1)[:, :, None, None].expand(-1, -1, *mask.shape[2:])
        feats, state["hidden"] = model.dynamics.step(emb, state["hidden"], per_layer(state["prev_action"]),
                                                     torch.cat([mask, planes], 1))
        raw = model.dynamics.predict(feats, per_layer(action))
        state["prev_action"] = action
        # Averaged over the layer's cells; bounded by 2 max_motion because reversing a
        # velocity changes it by twice its size.
        corr = 2 * m * torch.tanh(raw / (2 * m))
        corr = (corr * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1e-6)       # (B*K, 4)
        state["offset"] = off + (v + corr[:, :2]).view(B, K, 2)
        state["moved"] = move(L, state["offset"])
        state["velocity"] = (v + corr[:, 2:]).view(B, K, 2)
        state["feats"] = feats

    def imagine(self, model, state, horizon: int, actions=None):
        state = dict(state)
        frames, codes = [], []
        for t in range(horizon):
            self.move_layers(model, state, actions[:, t] if actions is not None else None)
            c = model.encode(state["moved"].amax(1, keepdim=True).clamp(0, 1))
            frames.append(model.decode(c))
            codes.append(c)
            state["codes"] = c
        return {"frames": torch.stack(frames, 1), "codes": torch.stack(codes, 1)}

    def latent(self, model, state):
        """(B, K*4): each layer's offset and velocity. Before the first step there are no
        ConvGRU features; what the layers know of the world is where they are and how fast
        they move."""
        return torch.cat([state["offset"], state["velocity"]], -1).flatten(1)

    def loss(self, model, batch, context: int, forced=None):
        """Roll the layers out from the last context frame exactly as `imagine` does (each
        step's input is the re-tokenised overlay of the model's own layers) and regress
        each layer's accumulated offset onto where template matching finds that layer in
        the true frames (self-supervised; no physical states), smooth L1 in pixels, over
        the layers found (match score > 0.5). Always free-running (`forced` is ignored).

        batch: 'frames' (B, T, 1, H, W), 'codes' (B, T, h, w), optional 'actions' (B, T, A),
        the cached cut (`cut`) 'L' (B, K, H, W), 'velocity' (B, K, 2), 'positions' (B, K, T, 2), 'score' (B, K, T).
        Returns (loss, logs) with logs['rollout_mse'] the per-step pixel error of the overlay (before re-tokenising) and logs['track_px']
        the mean position error per step in pixels."""
        frames, codes = batch["frames"], batch["codes"]
        L, positions, score = batch["L"], batch["positions"], batch["score"]
        T = frames.shape[1]
        actions = batch.get("actions")
        state = self.observe(model, frames[:, :context], actions, codes[:, :context], L, batch["velocity"])
        present = (L.flatten(2).amax(-1) > INK).float()                             # (B, K)
        total, step_mse, track_px = 0.0, [], []
        for t in range(context, T):
            self.move_layers(model, state, actions[:, t - 1] if actions is not None else None)
            w = present * (score[:, :, t] > 0.5).float()                             # (B, K)
            loss_t, px = weighted_smooth_l1(state["offset"] - positions[:, :, t].float(), w[..., None])
            total = total + loss_t
            track_px.append(px)
            with torch.no_grad():
                raw = state["moved"].amax(1, keepdim=True).clamp(0, 1)
                step_mse.append((raw - frames[:, t]).pow(2).flatten(1).sum(1).mean().item())
                state["codes"] = model.encode(raw)
        loss = total / (T - context)
        return loss, {"loss": loss.item(), "rollout_mse": step_mse, "track_px": track_px}


def weighted_smooth_l1(err: torch.Tensor, weight: torch.Tensor):
    """Smooth L1 of a displacement error (px), weighted and normalised by the weight's
    mass so its scale does not depend on how many layers were found. err (..., 2);
    weight broadcastable to err, >= 0 -> (loss, the weighted mean absolute error in px)."""
    weight = weight.expand_as(err)
    norm = weight.sum().clamp_min(1e-6)
    loss = (weight * F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none")).sum() / norm
    return loss, ((weight * err.detach().abs()).sum() / norm).item()
