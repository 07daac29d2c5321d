"""training/world_model.py: quantizer against a plain reference, EMA and restarts,
straight-through gradients, ConvGRU and rollout shapes, a tiny model that learns."""
import torch
import torch.nn.functional as F

from training.world_model import (ConvGRUCell, SharpWorldModelV2, VectorQuantizer, dynamics_loss,
                                  compose_motion, flow_targets, motion_evidence, tokenizer_loss, warp)

TINY = dict(channels=16, code_dim=8, num_codes=32, hidden=16, layers=1)


def reference_quantize(z, codebook, beta):
    """The textbook version: cdist + argmin per vector, float64."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    idx = torch.cdist(flat, codebook.double()).argmin(1)
    zq = codebook[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    return idx.view(z.shape[0], z.shape[2], z.shape[3]), zq, beta * ((z - zq) ** 2).mean()


def test_quantizer_matches_reference_in_eval():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=64, dim=8).eval()
    z = torch.randn(3, 8, 5, 5)
    zq, codes, stats = vq(z)
    ref_codes, ref_zq, ref_commit = reference_quantize(z, vq.codebook, vq.beta)
    assert torch.equal(codes, ref_codes)
    assert torch.allclose(zq, ref_zq.float(), atol=1e-6)
    assert torch.allclose(stats["commit"], ref_commit.float(), atol=1e-6)
    assert 1.0 <= stats["perplexity"] <= 64 and 0 < stats["usage"] <= 1


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizer(num_codes=16, dim=4).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, _, _ = vq(z)
    (zq * 3.0).sum().backward()
    assert torch.allclose(z.grad, torch.full_like(z, 3.0))


def test_ema_moves_codes_to_their_data_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, dim=2, decay=0.5, restart_every=1, dead_usage=0.5).train()
    # Two tight clusters far from the initial codebook: EMA pulls the used codes onto them.
    centres = torch.tensor([[5.0, 5.0], [-5.0, 3.0]])
    for _ in range(30):
        pts = centres[torch.randint(0, 2, (64,))] + 0.01 * torch.randn(64, 2)
        vq(pts.view(8, 8, 2).permute(2, 0, 1)[None].contiguous())
    d = torch.cdist(centres, vq.codebook).min(1).values
    assert (d < 0.1).all(), d
    # A restart happened at some point, and restarted codes sit on data, not at the origin.
    assert vq.codebook.abs().max() > 2


def test_restart_uses_worst_quantised_vectors():
    vq = VectorQuantizer(num_codes=4, dim=2, restart_every=1, dead_usage=0.5).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
        vq.ema_sum.copy_(vq.codebook)
        vq.usage.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        vq.steps.zero_()
    z = torch.zeros(1, 2, 2, 2)
    z[0, :, 1, 1] = torch.tensor([9.0, 9.0])  # the one vector far from every code
    _, _, stats = vq(z)
    assert stats["restarted"] >= 1
    assert any(torch.allclose(c, torch.tensor([9.0, 9.0])) for c in vq.codebook)


def test_convgru_shapes_and_state_dtype():
    cell = ConvGRUCell(4, 6)
    h = cell(torch.randn(2, 4, 8, 8), torch.zeros(2, 6, 8, 8))
    assert h.shape == (2, 6, 8, 8) and h.dtype == torch.float32 and h.abs().max() <= 1


def test_warp_moves_content_by_whole_pixels():
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 5, 4] = 1.0
    motion = torch.zeros(1, 2, 4, 4)
    motion[:, 0] = 3.0   # x + 3
    motion[:, 1] = -2.0  # y - 2
    out = warp(img, motion)
    assert out[0, 0, 3, 7] > 0.99 and out.sum() > 0.99


def test_composed_motion_equals_successive_warps():
    # Two steps of a field that is (+2, 0) on the left half and (0, +3) on the right:
    # warping once by the composition must equal warping twice.
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 4:8, 4:8] = 1.0      # a square on the left
    img[0, 0, 4:8, 22:26] = 0.5    # a dimmer square on the right
    step = torch.zeros(1, 2, 8, 8)
    step[:, 0, :, :4] = 2.0
    step[:, 1, :, 4:] = 3.0
    total = compose_motion(compose_motion(None, step, 32), step, 32)
    once = warp(img, total)
    twice = warp(warp(img, step), step)
    assert torch.allclose(once, twice, atol=1e-5)
    assert once[0, 0, 4:8, 8:12].min() > 0.99 and once[0, 0, 10:14, 22:26].min() > 0.49


def test_motion_evidence_peaks_at_the_true_offset():
    # A textured patch moves by (dx, dy) = (+3, -2) between two frames: in the cells
    # it covers, the correlation peaks at channel (r - dy) * (2r + 1) + (r - dx),
    # the offset back to where the content was; empty cells carry no evidence.
    torch.manual_seed(0)
    r, k = 4, 9
    prev = torch.zeros(1, 1, 32, 32)
    prev[0, 0, 10:22, 10:22] = torch.rand(12, 12)
    cur = torch.roll(prev, shifts=(-2, 3), dims=(2, 3))
    ev = motion_evidence(prev, cur, r, 8)
    assert ev.shape == (1, k * k, 8, 8)
    assert (ev[0, :, 3, 3].argmax() == (r + 2) * k + (r - 3)).item()
    assert ev[0, :, 3, 3].max() > 0.8 and ev[0, :, 7, 0].abs().max() < 1e-6
    # The rollout feeds the same evidence from its own frames: a model without it
    # (motion_radius=0) still runs.
    pred = SharpWorldModelV2(**TINY, motion_radius=0).eval().rollout(torch.rand(1, 3, 1, 64, 64), 2)
    assert pred.shape == (1, 2, 1, 64, 64)


def test_velocity_prior_averages_rounded_displacements_and_resets_on_a_bounce():
    # A textured patch drawn at whole-pixel positions round(10 + 2.4 t): single frame
    # pairs show 2 or 3 px, the running mean recovers 2.4; a reversal starts afresh.
    torch.manual_seed(0)
    tex = torch.rand(12, 12)
    xs = [10, 12, 15, 17, 20, 22, 20]          # +2, +3, +2, +3, +2, then back by 2
    frames = torch.zeros(len(xs), 1, 1, 64, 64)
    for t, x0 in enumerate(xs):
        frames[t, 0, 0, 26:38, x0:x0 + 12] = tex
    dyn = SharpWorldModelV2(**TINY, motion_radius=4).dynamics
    vsum, weight = torch.zeros(1, 2, 16, 16), torch.zeros(1, 1, 16, 16)
    priors = []
    with torch.no_grad():
        for t in range(1, len(xs)):
            ev = motion_evidence(frames[t - 1], frames[t], 4, 16)
            prior, vsum, weight = dyn.velocity_prior(ev, vsum, weight, 4.0)
            cell = (xs[t] + 6) // 4                # the patch's centre cell
            priors.append(prior[0, :, 8, cell])
    assert abs(priors[4][0] - 2.4) < 0.15 and abs(priors[4][1]) < 0.1   # after 5 pairs
    assert abs(priors[5][0] + 2.0) < 0.15       # the reversal is not averaged with +2.4


def test_untrained_model_with_motion_radius_moves_content_at_the_observed_velocity():
    model = SharpWorldModelV2(**TINY, motion_radius=3).eval()
    motion = model.observe(_moving_square_clips()[:, :4])["out"]["motion"][:, :, 5:7, 4:7]
    assert torch.allclose(motion[:, 0], torch.full_like(motion[:, 0], 2.0), atol=0.2)
    assert motion[:, 1].abs().max() < 0.2


def test_rollout_shapes_range_and_actions():
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY).eval()
    ctx = torch.rand(2, 4, 1, 64, 64)
    pred = model.rollout(ctx, horizon=5)
    assert pred.shape == (2, 5, 1, 64, 64) and pred.min() >= 0 and pred.max() <= 1
    emb_model = SharpWorldModelV2(**TINY, predict="embedding", action_dim=3, reward_head=True).eval()
    state = emb_model.observe(ctx, actions=torch.zeros(2, 4, 3))
    out = emb_model.imagine(state, 3, actions=torch.zeros(2, 3, 3))
    assert out["frames"].shape == (2, 3, 1, 64, 64) and out["codes"].shape == (2, 3, 16, 16)
    assert out["rewards"].shape == (2, 3)


def _moving_square_clips(n=4, T=6):
    """A bright 8x8 square moving 2 px/frame to the right."""
    x = torch.zeros(n, T, 1, 64, 64)
    for t in range(T):
        x[:, t, 0, 20:28, 10 + 2 * t:18 + 2 * t] = 1.0
    return x


def test_tiny_model_learns():
    """Tokenizer and dynamics losses both fall well below their start on a tiny batch."""
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY)
    frames = _moving_square_clips()
    opt = torch.optim.Adam(model.tokenizer.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss, logs = tokenizer_loss(model, frames.flatten(0, 1))
        first = first or logs["mse"]
        opt.zero_grad(); loss.backward(); opt.step()
    assert logs["mse"] < 0.3 * first
    model.tokenizer.eval().requires_grad_(False)
    codes = model.encode(frames.flatten(0, 1)).view(4, 6, 16, 16)
    opt = torch.optim.Adam(model.dynamics.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss, logs = dynamics_loss(model, frames, codes, context=3, teacher_prob=1.0)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(logs["loss"])
    assert min(losses[-5:]) < 0.7 * losses[0]  # the rest is the tiny tokenizer's own error
    # The motion head has found the true velocity (+2 px in x, 0 in y) on the square.
    motion = model.observe(frames[:, :3])["out"]["motion"][:, :, 5:7, 3:6]
    assert torch.allclose(motion[:, 0], torch.full_like(motion[:, 0], 2.0), atol=0.3)
    assert motion[:, 1].abs().max() < 0.3


def test_flow_target_reads_the_motion_and_trains_a_bounce():
    """motion_radius > 0: the loss regresses the motion onto the displacement the
    correlation reads between true frames, which teaches what the running prior
    cannot foresee: a square moving +3 px/frame turns back at a wall (x = 40)."""
    torch.manual_seed(0)
    xs = [16, 19, 22, 25, 28, 31, 34, 37, 40, 37, 34, 31]
    frames = torch.zeros(1, len(xs), 1, 64, 64)
    for t, x0 in enumerate(xs):
        frames[:, t, 0, 20:28, x0:x0 + 8] = torch.linspace(0.3, 1.0, 8)   # textured, not flat
    _, target, conf = flow_targets(frames, 4, 16)
    cell = (xs[1] + 4) // 4
    assert abs(target[0, 0, 0, 5, cell] - 3.0) < 0.1 and conf[0, 0, 0, 5, cell] > 0.9
    assert conf[0, 0, 0, 14, 1] < 1e-6                       # empty cell: no target
    model = SharpWorldModelV2(**TINY, motion_radius=4)
    model.tokenizer.requires_grad_(False)
    codes = model.encode(frames.flatten(0, 1)).view(1, len(xs), 16, 16)
    opt = torch.optim.Adam(model.dynamics.parameters(), 1e-2)

    def reversal_error():   # motion error (px) on the frame pair 8 -> 9, the turn at the wall
        return dynamics_loss(model, frames, codes, context=len(xs), teacher_prob=1.0)[1]["flow_px"][8]
    before = reversal_error()
    for _ in range(100):   # the turn is 1 of 11 steps: it is learnt last
        loss, logs = dynamics_loss(model, frames, codes, context=len(xs), teacher_prob=1.0)
        opt.zero_grad(); loss.backward(); opt.step()
    assert before > 2.0 and reversal_error() < 0.5 * before
