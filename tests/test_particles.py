"""training/particles.py and the splatting helpers of training/motion.py: a frame splatted
from its own particles is the frame, particles moved by whole pixels are the shifted frame,
two bodies that overlap and move apart come apart whole, an untrained model keeps the
velocity measured between the last two frames. (The action tests of tests/test_world_model.py
run on every unit that takes actions.)"""
import torch

from training import motion
from training.particles import INK, Particles, particles_of, render
from training.world_model import SharpWorldModelV2

TINY = dict(channels=16, code_dim=8, num_codes=32, hidden=16, layers=1, predict="particles")


def _frame(boxes, size=64):
    """(1, 1, size, size) frame with bright boxes (y0, y1, x0, x1, value)."""
    x = torch.zeros(1, 1, size, size)
    for y0, y1, x0, x1, v in boxes:
        x[..., y0:y1, x0:x1] = v
    return x


def test_splat_of_whole_pixel_moves_is_the_backward_warp():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    pos = motion.pixel_grid(16, 16, "cpu")[None].expand(2, -1, -1) + torch.tensor([2.0, -1.0])
    out = motion.splat(pos, x.flatten(2).transpose(1, 2), 16, 16)
    assert torch.allclose(out, motion.warp(x, torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(2, -1, -1, -1)))
    half = motion.splat(pos[:, :, :] - torch.tensor([2.5, -1.0]), x.flatten(2).transpose(1, 2), 16, 16)
    assert torch.isclose(half.sum(), x[..., 1:].sum() + 0.5 * x[..., 0].sum())   # half a pixel left: mass kept


def test_render_of_a_frames_own_particles_is_the_frame_without_its_empty_space():
    torch.manual_seed(0)
    frame = torch.rand(3, 1, 64, 64)
    pos, c, a = particles_of(frame)
    assert torch.allclose(render(pos, c, a, 64, 64), frame * (frame > INK))


def test_overlapping_bodies_keep_their_velocities_and_separate_whole():
    """Two boxes overlapping in the observed frame, one moving right and one down: moved by
    their own velocities for 6 frames, each arrives whole where it should be."""
    frame = torch.maximum(_frame([(20, 30, 20, 30, 1.0)]), _frame([(24, 34, 24, 34, 0.6)]))
    pos, c, a = particles_of(frame)
    right = ((pos[..., 0] >= 20) & (pos[..., 0] < 30) & (pos[..., 1] >= 20) & (pos[..., 1] < 30) & (c > 0.9))
    vel = torch.where(right[..., None], torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]))
    out = render(pos + 6 * vel, c, a, 64, 64)
    want = torch.maximum(_frame([(20, 30, 32, 42, 1.0)]), _frame([(36, 46, 24, 34, 0.6)]))
    # the dim box's corner hidden under the bright one (rows 24-30, cols 24-30) went with the
    # bright box, so the dim box arrives without it; every other pixel is right
    hidden = _frame([(36, 42, 24, 30, 1.0)]) > 0
    assert torch.allclose(out[~hidden], want[~hidden]) and (out[hidden] == 0).all()
    assert out.max() <= 1.0


def test_sample_at_ignores_empty_cells_beside_a_body():
    field = torch.zeros(1, 2, 4, 4)
    field[..., 1, 1] = 3.0                                  # the body's cell moves at 3 px/frame
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., 1, 1] = 1.0
    edge = torch.tensor([[[7.0, 7.0]]])                     # a pixel at the cell's lower-right corner (size 16)
    assert torch.allclose(motion.sample_at(field, edge, 16, weight + 1e-6), torch.full((1, 1, 2), 3.0), atol=1e-3)
    assert motion.sample_at(field, edge, 16)[0, 0, 0] < 3.0   # plain bilinear waters it down


def test_untrained_model_keeps_the_measured_velocity():
    """The head starts at zero: an untrained model moves each body on by the motion measured
    between the last two frames it read (constant velocity), here a box at +3 px/frame."""
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY).eval()
    frames = torch.zeros(1, 4, 1, 64, 64)
    for t in range(4):
        frames[0, t, 0, 20:30, 10 + 3 * t:20 + 3 * t] = 1.0
    unit = model.unit
    state = {"hidden": model.dynamics.init_hidden(1, "cpu", 16, 16)}
    for t in range(3):
        unit.anchor(state, frames[:, t])
        planes = unit.planes(model, state)
    assert planes.shape == (1, Particles.extra_in, 16, 16)
    assert torch.allclose(planes[0, 0, 6, 5] * model.config.max_motion, torch.tensor(3.0), atol=0.2)
    pred, _, _ = unit.advance(model, state, torch.zeros(1, 2, 16, 16), sample=False)
    assert (pred - frames[:, 3]).abs().sum() < 0.05 * frames[:, 3].sum()   # within a fraction of a pixel


def test_pool_by_motion_averages_each_body_and_keeps_bodies_apart():
    """Two halves of the grid measured moving 3 px/frame apart, each with a noisy field: the
    pooled field is each half's own mean (the noise averaged out), not a blend of the two."""
    torch.manual_seed(0)
    guide = torch.zeros(1, 2, 16, 16)
    guide[:, 0, :, 8:] = 3.0
    field = torch.where(guide[:, :1] > 0, -1.0, 1.0).expand(1, 2, 16, 16) + 0.3 * torch.randn(1, 2, 16, 16)
    out = motion.pool_by_motion(field, guide, torch.ones(1, 1, 16, 16))
    assert (out[..., :8] - 1).abs().max() < 0.25 and (out[..., 8:] + 1).abs().max() < 0.25
    assert (out[..., :8] - 1).abs().mean() < 0.5 * (field[..., :8] - 1).abs().mean()
