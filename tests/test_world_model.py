"""training/world_model.py: quantizer against a plain reference, EMA and restarts,
straight-through gradients, ConvGRU and rollout shapes, a tiny model that learns."""
import pytest
import torch

from training import layers
from training.motion import compose, correlation, read, warp
from training.world_model import (AGENT_UNITS, PREDICT_MODES, PRIOR_KEYPOINT_WEIGHT, ConvGRUCell, ModelConfig, SharpWorldModelV2,
                                  VectorQuantizer, tokenizer_loss)

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
    total = compose(compose(None, step, 32), step, 32)
    once = warp(img, total)
    twice = warp(warp(img, step), step)
    assert torch.allclose(once, twice, atol=1e-5)
    assert once[0, 0, 4:8, 8:12].min() > 0.99 and once[0, 0, 10:14, 22:26].min() > 0.49


def test_correlation_peaks_at_the_true_offset():
    # A textured patch moves by (dx, dy) = (+3, -2) between two frames: in the cells
    # it covers, the correlation peaks at channel (r - dy) * (2r + 1) + (r - dx),
    # the offset back to where the content was; empty cells carry no evidence.
    torch.manual_seed(0)
    r, k = 4, 9
    prev = torch.zeros(1, 1, 32, 32)
    prev[0, 0, 10:22, 10:22] = torch.rand(12, 12)
    cur = torch.roll(prev, shifts=(-2, 3), dims=(2, 3))
    ev = correlation(prev, cur, r, 8)
    assert ev.shape == (1, k * k, 8, 8)
    assert (ev[0, :, 3, 3].argmax() == (r + 2) * k + (r - 3)).item()
    assert ev[0, :, 3, 3].max() > 0.8 and ev[0, :, 7, 0].abs().max() < 1e-6
    _, v, conf = read(prev, cur, r, 8)          # the displacement it shows: (+3, -2) px
    assert torch.allclose(v[0, :, 3, 3], torch.tensor([3.0, -2.0]), atol=0.1) and conf[0, 0, 3, 3] > 0.8


def test_rollout_shapes_range_and_actions():
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY).eval()
    ctx = torch.rand(2, 4, 1, 64, 64)
    pred = model.rollout(ctx, horizon=5)
    assert pred.shape == (2, 5, 1, 64, 64) and pred.min() >= 0 and pred.max() <= 1
    for predict in AGENT_UNITS:
        act_model = SharpWorldModelV2(**TINY, predict=predict, action_dim=3, reward_head=True).eval()
        state = act_model.observe(ctx, actions=torch.zeros(2, 4, 3))
        out = act_model.imagine(state, 3, actions=torch.zeros(2, 3, 3))
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
        loss, logs = tokenizer_loss(model.tokenizer, frames.flatten(0, 1))
        first = first or logs["mse"]
        opt.zero_grad(); loss.backward(); opt.step()
    assert logs["mse"] < 0.3 * first
    model.tokenizer.eval().requires_grad_(False)
    batch = {"frames": frames, "codes": model.encode_clip(frames)}
    opt = torch.optim.Adam(model.dynamics.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss, logs = model(batch, context=3, forced=[True] * 5)   # teacher forcing throughout
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(logs["loss"])
    assert min(losses[-5:]) < 0.7 * losses[0]  # the rest is the tiny tokenizer's own error
    # The motion head has found the true velocity (+2 px in x, 0 in y) on the square.
    raw = model.dynamics.predict(model.observe(frames[:, :3])["feats"])
    motion = 8 * torch.tanh(raw[:, :, 5:7, 3:6] / 8)   # max_motion = 8
    assert torch.allclose(motion[:, 0], torch.full_like(motion[:, 0], 2.0), atol=0.3)
    assert motion[:, 1].abs().max() < 0.3


def _random_head(model, scale=0.05):
    """An untrained head starts at zero (constant velocity); give it random weights so
    that every input, the action included, shows in the prediction."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.dynamics.head[-1].parameters():
            p.normal_(0, scale)
    return model


def test_model_config_is_the_one_source_of_settings():
    cfg = ModelConfig(hidden=12, action_dim=2)
    model = SharpWorldModelV2(cfg)
    assert model.config.to_dict() == {**ModelConfig().to_dict(), "hidden": 12, "action_dim": 2}
    assert SharpWorldModelV2(**cfg.to_dict()).config == cfg
    assert ModelConfig.from_dict({"hidden": 12, "action_dim": 2, "run": "x", "tok_lr": 1.0}) == cfg
    try:
        ModelConfig.from_checkpoint({**cfg.to_dict(), "old_option": 3})
    except ValueError as exc:
        assert "old_option" in str(exc)
    else:
        raise AssertionError("an unknown checkpoint setting must be refused")


@pytest.mark.parametrize("predict", PREDICT_MODES)
def test_action_at_step_k_changes_frame_k_plus_1_and_not_earlier(predict):
    """The action taken at frame k leads to frame k+1: changing the action of absolute
    frame k (context Tc = 4, horizon 5) leaves predicted frames before k+1 alone."""
    torch.manual_seed(0)
    model = _random_head(SharpWorldModelV2(**TINY, action_dim=2, predict=predict)).eval()
    ctx = _moving_square_clips(n=2)[:, :4]
    actions = torch.zeros(2, 9, 2)
    base = model.rollout(ctx, 5, actions)
    for k in (3, 5, 7):   # the last context action and two of the predicted frames'
        changed = actions.clone()
        changed[:, k] = 3.0
        pred = model.rollout(ctx, 5, changed)
        first = k - 4 + 1   # index of frame k+1 among the predicted frames
        assert torch.equal(pred[:, :first], base[:, :first]), k
        assert (pred[:, first] - base[:, first]).abs().max() > 1e-3, k
    if predict in AGENT_UNITS:
        state = model.observe(ctx, actions[:, :4])
        assert model.latent(state).shape == (2, TINY["hidden"] * TINY["layers"] * 16) == (2, model.dynamics.latent_dim)


@pytest.mark.parametrize("predict", PREDICT_MODES)
def test_tiny_model_learns_an_action_driven_push(predict):
    """A square pushed by a force (v += a_t px/frame, x += v; a_t = +-1 drawn at random, as
    PushBall's force changes the ball's velocity): trained free-running, the model follows
    the actions it is given; with the actions negated or zero its prediction is far worse."""
    torch.manual_seed(0)
    n, T = 8, 7
    acts = torch.randint(0, 2, (n, T, 1)).float() * 2 - 1
    frames = torch.zeros(n, T, 1, 64, 64)
    x, v = torch.full((n,), 28.0), torch.zeros(n)
    for t in range(T):
        for b in range(n):
            frames[b, t, 0, 24:32, int(x[b]):int(x[b]) + 8] = torch.linspace(0.4, 1.0, 8)
        v = v + acts[:, t, 0]
        x = x + v
    model = SharpWorldModelV2(**TINY, action_dim=1, predict=predict)
    model.tokenizer.requires_grad_(False)
    batch = {"frames": frames, "codes": model.encode_clip(frames), "actions": acts}
    if predict == "layers":   # the cut the training loop caches (training/loop.py)
        batch.update(zip(("L", "velocity", "positions", "score"), layers.cut(frames, 1, 2)))
    opt = torch.optim.Adam(model.dynamics.parameters(), 1e-2)
    for _ in range(40):
        loss, logs = model(batch, context=2)
        opt.zero_grad(); loss.backward(); opt.step()

    def error(a):   # the moved frames' error (the untrained tokenizer's decoding aside)
        with torch.no_grad():
            return sum(model({**batch, "actions": a}, context=2)[1]["rollout_mse"])
    assert error(acts) < 0.1 * min(error(-acts), error(torch.zeros_like(acts)))


@pytest.mark.parametrize("predict", AGENT_UNITS)
def test_imagined_step_is_differentiable_in_the_action(predict):
    """With gradients on, an imagined step passes d/d(action) through the move (warp or splat) and a
    straight-through re-tokenisation; with them off it gives the same codes."""
    torch.manual_seed(0)
    model = _random_head(SharpWorldModelV2(**TINY, action_dim=2, reward_head=True, predict=predict)).eval()
    model.requires_grad_(False)
    ctx = _moving_square_clips(n=2)[:, :2]
    state = model.observe(ctx, torch.zeros(2, 2, 2))
    a = torch.zeros(2, 2, requires_grad=True)
    s1 = model.step(model.step(state, a), a)
    s1["reward"].sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    with torch.no_grad():
        s2 = model.step(model.step(state, a), a)
    assert torch.equal(s1["codes"], s2["codes"])


def agent_model(**extra):
    return SharpWorldModelV2(ModelConfig(**TINY, action_dim=2, reward_head=True, **extra))


def test_latent_prior_starts_as_nothing_moves_and_only_reward_models_have_one():
    torch.manual_seed(0)
    model = agent_model()
    F_ = model.dynamics.latent_dim
    prev, cur = torch.randn(3, F_), torch.randn(3, F_)
    assert torch.equal(model.prior_step(prev, cur, torch.ones(3, 2)), cur)
    assert SharpWorldModelV2(ModelConfig(**TINY)).dynamics.prior is None
    # the compact state read frame by frame is what the prior steps on: latent_from(pool(feats)) == compact
    state = model.observe(torch.rand(2, 3, 1, 64, 64), torch.zeros(2, 3, 2))
    dyn = model.dynamics
    assert torch.allclose(dyn.latent_from(dyn.pool(state["feats"]), state["emb_in"]), model.latent(state), atol=1e-6)


def test_latent_prior_learns_inertia_and_a_push_open_loop_and_not_the_reward_head():
    """Latents whose first two features are a body's position and velocity under a push
    (x' = x + v, v' = 0.9 v + 0.3 a) and whose reward is -|x|: trained on 400 steps of
    prior_loss, the open-loop latent error falls far below the untrained prior's, the
    prior's push moves the body the right way; the reward term of the loss reaches the prior
    and never the reward head."""
    torch.manual_seed(0)
    model = agent_model()
    F_ = model.dynamics.latent_dim

    def sequences(n, L=8):
        x, v = torch.rand(n, 2) - 0.5, 0.1 * torch.randn(n, 2)
        a = torch.rand(n, L, 2) * 2 - 1
        zs = []
        for t in range(L):
            z = torch.zeros(n, F_)
            z[:, :2], z[:, 2:4] = x, v
            zs.append(z)
            x, v = x + v, 0.9 * v + 0.3 * a[:, t]
        z = torch.stack(zs, 1)
        return z, a, -z[..., :2].norm(dim=-1)

    z, a, r = sequences(64)
    loss, logs = model.prior_loss(z, a, r)          # with the reward term (default weight)
    loss.backward()
    assert logs["prior_rew"] > 0 and all(p.grad is None for p in model.dynamics.reward.parameters())
    assert all(p.grad is not None for p in model.dynamics.prior.parameters())
    # the latent dynamics alone (this reward head is untrained, so its term would only pull the
    # latents toward whatever it happens to read)
    opt = torch.optim.Adam(model.dynamics.prior.parameters(), lr=1e-3)   # the default prior_lr
    start = logs["prior"]
    for _ in range(400):
        z, a, r = sequences(64)
        loss, _ = model.prior_loss(z, a, r, reward_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, a, r = sequences(256)
    assert model.prior_loss(z, a, r)[1]["prior"] < 0.05 * start   # its margin on 1 and 2 threads: docs/experiments.md, 2026-12-07
    with torch.no_grad():   # from rest at the origin, push +x for three steps: the body moves +x
        prev = cur = torch.zeros(1, F_)
        for _ in range(3):
            prev, cur = cur, model.prior_step(prev, cur, torch.tensor([[1.0, 0.0]]))
    assert cur[0, 0] > 0.2 and abs(cur[0, 1]) < 0.1


def test_prior_loss_counts_keypoint_errors_in_token_widths():
    """The same error costs PRIOR_KEYPOINT_WEIGHT times more on a keypoint coordinate (the
    last 2 * KEYPOINTS features) than on a pooled feature: the untrained prior predicts no
    motion, so a latent that moves by d in one feature costs d^2 * weight / F per step."""
    torch.manual_seed(0)
    model = agent_model()
    F_ = model.dynamics.latent_dim
    a, r = torch.zeros(4, 5, 2), torch.zeros(4, 5)

    def moved(feature):
        z = torch.zeros(4, 5, F_)
        z[:, 2:, feature] = 0.1          # states 0, 1 at rest, then a jump the prior does not foresee
        return model.prior_loss(z, a, r, reward_weight=0.0)[0].item()

    pooled, keypoint = moved(0), moved(F_ - 1)
    assert pooled == pytest.approx(0.01 / F_, rel=1e-5)
    assert keypoint / pooled == pytest.approx(PRIOR_KEYPOINT_WEIGHT, rel=1e-5)
