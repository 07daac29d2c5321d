"""The particle dynamics unit (predict="particles" of training/world_model.py): every
pixel of the last observed frame is a particle; each step the ConvGRU core says how fast
the content of each cell moves, as a correction to the motion measured between the last
two frames; the particles move by that velocity and are splatted into the next frame,
which is re-tokenised.

    V_t = pool(m_t + c_t)                 m_t: measured motion of the content in each cell
                                          (`motion.read` of the last two frames), c_t: the
                                          head's correction, pool: one velocity per body
                                          (`motion.pool_by_motion`)
    x_p(t+1) = x_p(t) + V_t(x_p(t))       read at each particle, weighted by the cells' content
    frame(q) = sum_p a_p c_p k(q - x_p) / max(1, sum_p a_p k(q - x_p)),   k bilinear

The particle-in-cell split of fluid solvers (Harlow 1964): particles carry the content, a
grid carries the velocities. Why it suits these scenes better than one displacement
field warping the last frame (MotionField): that field lives in the space of the frame to
come, where the content is not yet, so the core must guess which body will be at a cell;
here the velocity belongs to the content the core sees now, in the cell it is in. An
untrained unit keeps every body at its measured velocity (Newton's first law for free);
what is learned is what changes it: walls, gravity, springs, contacts, the agent's push.
The particles are always the observed frame's own pixels, splatted once from where they
started, so resampling does not blur them step after step. Nothing is specific to one
scene: no object count, no shapes, no bounce rule.

Particles with intensity at or below INK (the black of empty space) are left out
(a_p = 0), so a body moving over empty space is not averaged with it; where more than
one particle's worth lands on a pixel (bodies overlapping, content compressing) the
pixel takes their mean, elsewhere their sum, which keeps anti-aliased edges. The core
reads, beside each frame's code embeddings, the motion measured between the last two
frames it read, real or imagined (3 planes: displacement and confidence per cell), since
velocities are not visible in one frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training import motion
from training.dynamics import PIXEL_WEIGHT, FrameUnit, mass_loss, retokenise

INK = 0.05         # pixels at or below this are empty space, not particles
READ_RADIUS = 6    # px: the measured motion's search range; it covers 95 % of the per-frame
                   # displacements of every dataset (faster bodies saturate the reading, not the
                   # particles, whose velocities are not bounded by it)


def particles_of(frame: torch.Tensor):
    """(B, 1, H, W) frame -> positions (B, N, 2) px (x, y), intensities (B, N), weights
    a_p (B, N) (1 on content, 0 on empty space); N = H * W, one per pixel."""
    B, _, H, W = frame.shape
    pos = motion.pixel_grid(H, W, frame.device)[None].expand(B, -1, -1)
    c = frame.float().flatten(1)
    return pos, c, (c > INK).float()


def render(pos: torch.Tensor, c: torch.Tensor, a: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Splat particles into a frame: (B, N, 2), (B, N), (B, N) -> (B, 1, H, W) in [0, 1]
    (module docstring: the sum where at most one particle's worth lands, the mean where more)."""
    sums = motion.splat(pos, torch.stack([a * c, a], -1), H, W)                     # (B, 2, H, W)
    return (sums[:, :1] / sums[:, 1:].clamp_min(1.0)).clamp(0, 1)


class Particles(FrameUnit):
    """predict="particles" (module docstring). Head output (2 channels on the code grid): the
    correction to the measured motion of the content in each cell, V = measured + correction
    (px/frame), read at each particle by a normalised convolution weighted by the cells'
    content (`motion.sample_at`), so the empty cells beside a body do not slow its edge.
    State, beside FrameUnit's: 'pos' (B, N, 2), 'vel' (B, N, 2) (the last step's, None for
    a freshly observed frame), 'ink' (B, N), 'alpha' (B, N), 'frame' (the latest frame,
    observed or predicted), 'last_read' (the frame the core read last) and 'measured' (the
    motion measured between the two, (B, 2, h, w) px/frame)."""

    extra_in = 3   # measured displacement (x, y) / max_motion, confidence

    @staticmethod
    def out_channels(config) -> int:
        return 2

    def anchor(self, state, frame):
        """A real frame (B, 1, H, W) becomes the particles: state 'pos' (B, N, 2), 'ink' and
        'alpha' (B, N) (particles_of) and 'frame', the last frame rendered or observed."""
        frame = frame.float()
        if frame.shape[-1] != frame.shape[-2]:
            raise ValueError(f"predict=particles needs square frames, got {tuple(frame.shape[-2:])}")
        state["pos"], state["ink"], state["alpha"] = particles_of(frame)
        state["frame"] = frame

    def planes(self, model, state):
        """The motion measured between the frame the core read last and the one it reads now
        (state['frame']: observed, or the last prediction); records the latter as read
        (state 'last_read') and the reading as state 'measured' (B, 2, h, w) px/frame, which
        `advance` starts from. So planes must run before advance on each step, as
        FrameUnit._read does; after a free-running prediction, a real frame read next
        (teacher forcing) is measured against that prediction."""
        cur, prev = state["frame"], state.get("last_read")
        state["last_read"] = cur
        B = cur.shape[0]
        if prev is None:   # the first frame: nothing moved yet
            state["measured"] = cur.new_zeros(B, 2, model.grid, model.grid)
            return cur.new_zeros(B, 3, model.grid, model.grid)
        with torch.autocast(cur.device.type, enabled=False):
            _, d, conf = motion.read(prev.detach().float(), cur.detach().float(), READ_RADIUS, model.grid)
        state["measured"] = d
        return torch.cat([d / self.config.max_motion, conf], 1)

    def advance(self, model, state, raw, sample: bool):
        m = self.config.max_motion
        frame = state["frame"]
        B, _, H, W = frame.shape
        weight = F.avg_pool2d((frame > INK).float(), H // model.grid) + 1e-3   # (B, 1, h, w): content per cell
        # A bounce reverses a velocity: the correction reaches twice the largest speed.
        V = state["measured"] + 2 * m * torch.tanh(raw / (2 * m))                # (B, 2, h, w) px/frame
        # One velocity per body: the cells that move alike are averaged together, so a
        # body is not torn by cells that disagree (a rigid digit's cells at a bounce).
        V = motion.pool_by_motion(V, state["measured"], weight)
        vel = motion.sample_at(V, state["pos"], H, weight)                        # (B, N, 2)
        state["pos"] = state["pos"] + vel
        pred = render(state["pos"], state["ink"], state["alpha"], H, W)
        state["frame"] = pred.detach()
        return (pred, *retokenise(model, pred, sample))

    def step_loss(self, model, state, raw, pred, target, target_codes):
        """MotionField's loss on the splatted frame: PIXEL_WEIGHT x pixel MSE, the MSE of both
        blurred at two widths (a blurred splat is a splat of Gaussians: smooth in the positions,
        so a body that missed its place by more than its width still gets a gradient), and the
        relative brightness error."""
        wide = sum(F.mse_loss(motion.gaussian_blur(pred, sg), motion.gaussian_blur(target, sg)) for sg in (2.0, 4.0))
        return PIXEL_WEIGHT * F.mse_loss(pred, target) + wide + mass_loss(pred, target)
