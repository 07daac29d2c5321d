"""training/agent.py: lambda-returns on a hand-computed example, the percentile return
normaliser, the bounded actor, the slow critic, checkpointing, and both actor gradients
(REINFORCE, pathwise) learning a contextual bandit in a fake imagination."""
import io
import math

import pytest
import torch

from training.agent import (Actor, Agent, AgentConfig, Critic, ReturnNorm, discount_weights,
                            imagine, lambda_returns)

# H = 3, B = 2, gamma = 0.5. Row 0 never terminates; in row 1 s_2 is terminal (continues[:, 1] = 0).
REWARDS = torch.tensor([[1., 2., 3.], [1., 2., 3.]])            # r_1, r_2, r_3
VALUES = torch.tensor([[10., 20., 30., 40.], [10., 20., 30., 40.]])   # v(s_0) .. v(s_3)
CONTINUES = torch.tensor([[1., 1., 1.], [1., 0., 1.]])          # c_1, c_2, c_3


@pytest.mark.parametrize("lam, expected", [
    # lam = 1: discounted reward sum + gamma^(H-k) v(s_3), e.g. R_0 = 1 + .5*2 + .25*3 + .125*40.
    # Row 1: R_1 = r_2 only (s_2 terminal), R_0 = 1 + .5*2; r_3 and v(s_3) never reach them.
    (1.0, [[7.75, 13.5, 23.0], [2.0, 2.0, 23.0]]),
    # lam = 0: one-step TD targets r_{k+1} + gamma c_{k+1} v(s_{k+1}), e.g. 1 + .5*20 = 11.
    (0.0, [[11.0, 17.0, 23.0], [11.0, 2.0, 23.0]]),
    # lam = .5: R_1 = 2 + .5(.5*30 + .5*23) = 15.25, R_0 = 1 + .5(.5*20 + .5*15.25) = 9.8125;
    # row 1: R_0 = 1 + .5(.5*20 + .5*2) = 6.5.
    (0.5, [[9.8125, 15.25, 23.0], [6.5, 2.0, 23.0]]),
])
def test_lambda_returns_hand_computed(lam, expected):
    ret = lambda_returns(REWARDS, VALUES, CONTINUES, gamma=0.5, lam=lam)
    assert ret.shape == (2, 3)
    torch.testing.assert_close(ret, torch.tensor(expected))


def test_discount_weights_are_cumulative_discount_from_one():
    w = discount_weights(CONTINUES, gamma=0.5)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.5, 0.0]]))


def test_return_norm_percentiles_ema_and_floor():
    norm = ReturnNorm()
    assert norm.scale().item() == 1.0                              # before any update
    norm.update(torch.arange(101.0))                               # P5 = 5, P95 = 95
    assert norm.scale().item() == pytest.approx(90.0)
    norm.update(2 * torch.arange(101.0))                           # P5 = 10, P95 = 190
    assert norm.lo.item() == pytest.approx(0.99 * 5 + 0.01 * 10)
    assert norm.hi.item() == pytest.approx(0.99 * 95 + 0.01 * 190)
    assert norm.scale().item() == pytest.approx(90.9)
    for _ in range(2000):                                          # the EMA converges to the new batch
        norm.update(2 * torch.arange(101.0))
    assert norm.scale().item() == pytest.approx(180.0, rel=1e-3)

    restored = ReturnNorm()                                        # buffers checkpoint
    restored.load_state_dict(norm.state_dict())
    assert restored.scale().item() == norm.scale().item()

    small = ReturnNorm()
    small.update(0.1 * torch.rand(4, 15))                          # range < 1: scale floors at 1
    assert small.scale().item() == 1.0


def test_actor_bounds_std_and_log_prob():
    torch.manual_seed(0)
    actor = Actor(8, 3, units=32)
    z = 30 * torch.randn(512, 8)                                   # large inputs saturate the heads
    d = actor.dist(z)
    assert d.mean.shape == (512, 3) and d.batch_shape == (512,)
    std = d.base_dist.scale
    assert std.min() >= 0.1 - 1e-6 and std.max() <= 1.0 + 1e-6
    u = d.sample()
    assert (u.abs() > 1).any()                                     # pre-squash samples leave [-1, 1] ...
    assert torch.isfinite(d.log_prob(u)).all()                     # ... and have a log-prob
    for sample in (True, False):
        a = actor.act(z, sample=sample)
        assert a.shape == (512, 3) and a.abs().max() <= 1.0        # ... while every action is in bounds
    torch.testing.assert_close(actor.act(z, sample=False), torch.tanh(d.mean))
    # the initial std is near max_std: (1 - .1) * sigmoid(2) + .1 for a fresh head on small inputs
    std0 = actor.dist(torch.zeros(1, 8)).base_dist.scale
    assert std0.min() > 0.5
    # a narrower range (world_model_rl.py's max_std) bounds the std on both sides
    narrow = Actor(8, 3, units=32, max_std=0.3)
    std = narrow.dist(z).base_dist.scale
    assert std.min() >= 0.1 - 1e-6 and std.max() <= 0.3 + 1e-6 and std.max() > 0.25


def test_critic_slow_copy_follows_online_by_the_decay():
    torch.manual_seed(0)
    critic = Critic(6, units=16)
    assert all(not p.requires_grad for p in critic.slow.parameters())
    assert {id(p) for p in critic.online_parameters()}.isdisjoint(id(p) for p in critic.slow.parameters())
    with torch.no_grad():
        for p in critic.net.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in critic.slow.parameters()]
    critic.update_slow(0.98)
    for ps, po, p in zip(critic.slow.parameters(), old, critic.net.parameters()):
        torch.testing.assert_close(ps, 0.98 * po + 0.02 * p)
    z, ret = torch.randn(10, 6), torch.randn(10)
    loss = critic.loss(z, ret)
    loss.backward()
    v, vs = critic(z).detach(), critic.slow_value(z)
    assert loss.item() == pytest.approx((((v - ret) ** 2) + (v - vs) ** 2).mean().item(), rel=1e-5)
    assert all(p.grad is None for p in critic.slow.parameters())


def test_agent_update_logs_and_checkpoint_roundtrip():
    torch.manual_seed(0)
    cfg = AgentConfig(latent_dim=8, action_dim=2, units=32)
    agent = Agent(cfg)
    B, H = 4, cfg.horizon
    batch = (torch.randn(B, H + 1, 8), torch.randn(B, H, 2), torch.randn(B, H),
             (torch.rand(B, H) > 0.05).float())
    logs = agent.update(*batch)
    assert set(logs) >= {"pol", "val", "ent", "ret", "imag_return", "scale", "adv_mean"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())

    buf = io.BytesIO()
    torch.save(agent.state(), buf)
    buf.seek(0)
    twin = Agent.from_state(torch.load(buf))
    assert twin.config == cfg
    z = torch.randn(5, 8)
    torch.testing.assert_close(twin.actor.dist(z).mean, agent.actor.dist(z).mean)
    torch.testing.assert_close(twin.critic.slow_value(z), agent.critic.slow_value(z))
    assert twin.norm.scale().item() == agent.norm.scale().item()
    # identical optimiser state: one more identical step keeps them identical
    torch.manual_seed(1)
    agent.update(*batch)
    torch.manual_seed(1)
    twin.update(*batch)
    torch.testing.assert_close(twin.actor.dist(z).mean, agent.actor.dist(z).mean)
    torch.testing.assert_close(twin.critic(z), agent.critic(z))


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics"])
def test_actor_learns_a_contextual_bandit_in_imagination(actor_grad):
    """Each imagined step shows a fresh random latent z; the reward is -|a - W z|^2 (a
    differentiable model, so both actor gradients apply). The policy's greedy action must
    move from its random start to near the target W z."""
    torch.manual_seed(0)
    F_, A, B, H = 6, 2, 128, 3
    W = 0.25 * torch.randn(A, F_)                                  # targets mostly inside [-1, 1]

    def step(z, a):   # the state is the latent itself here
        r = -((a - z @ W.T) ** 2).sum(-1)
        z = torch.randn_like(z)
        return z, z, r, torch.ones(z.shape[0])

    cfg = AgentConfig(latent_dim=F_, action_dim=A, units=64, horizon=H, actor_lr=1e-3, actor_grad=actor_grad)
    agent = Agent(cfg)
    z_test = torch.randn(1024, F_)
    target = (z_test @ W.T).clamp(-1, 1)

    def greedy_err():
        return ((agent.act(z_test, sample=False) - target) ** 2).sum(-1).mean().item()

    err0 = greedy_err()
    for i in range(300):
        z = torch.randn(B, F_)
        logs = agent.update(*imagine(agent.actor, step, z, z, H, grad=actor_grad == "dynamics"))
    err1 = greedy_err()
    print(f"bandit: greedy squared error {err0:.3f} -> {err1:.3f}; last logs {logs}")
    assert err1 < 0.2 * err0 and err1 < 0.1
