"""Dreamer-style actor and critic that act on a world model's latent state.

Follows DreamerV3 (Hafner et al. 2023, "Mastering Diverse Domains through World Models") in
spirit: lambda-returns (eq. 7), a critic regressed onto them with a slow (EMA) critic as a
regulariser (eq. 8 and "Critic learning"), returns normalised by the 5th-95th percentile range
(eq. 11-12, "Robust predictions"/"Actor learning"), and an entropy bonus (eq. 11). Differences,
on purpose: the actor's gradient is by default the pathwise one of Dreamer V1 (backpropagation
through the imagined dynamics; REINFORCE, DreamerV3's, is the other choice: see `actor_loss`),
the critic is a plain MSE regression (no symlog two-hot), the actions are continuous and
bounded (the tanh of a Normal sample, as in Dreamer V1), and the optimiser is Adam.

Pure torch: nothing else from the project is imported, so the world model, the environment
loop and this file never import each other.

Imagination layout (B batch, H horizon, F latent features, A action dimensions)::

    s_0 --a_0--> s_1 --a_1--> ... --a_{H-1}--> s_H
    latents   (B, H+1, F)   s_0..s_H; s_0 is a real (posterior) state, the rest imagined
    actions   (B, H, A)     u_k, the PRE-SQUASH sample of actor.dist(s_k); a_k = tanh(u_k) is taken in s_k
    rewards   (B, H)        rewards[:, k]   = reward received on arriving at s_{k+1}
    continues (B, H)        continues[:, k] = 1 - terminal(s_{k+1})

Usage sketch::

    cfg = AgentConfig(latent_dim=F, action_dim=A)
    agent = Agent(cfg)

    # acting in the real environment (actions in [-1, 1])
    a = agent.actor.act(latent)                       # (B, A), sample=False for the mean

    # training in imagination; `step(state, action) -> (next_state, latent, reward, cont)`
    # wraps the world model (action in [-1, 1]; latent (B, F), reward and cont (B,))
    latents, actions, rewards, continues = imagine(agent.actor, step, state, latent, cfg.horizon,
                                                   grad=cfg.actor_grad == "dynamics")
    logs = agent.update(latents, actions, rewards, continues)
    # logs: {'pol', 'val', 'ent', 'ret', 'imag_return', 'scale', 'adv_mean'} as floats

    torch.save(agent.state(), path)                   # networks, optimisers, config
    agent = Agent.from_state(torch.load(path))
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Independent, Normal


# --------------------------------------------------------------------------------------------
# returns
# --------------------------------------------------------------------------------------------

def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, continues: torch.Tensor,
                   gamma: float = 0.99, lam: float = 0.95) -> torch.Tensor:
    """Bootstrapped lambda-returns, DreamerV3 eq. 7; returns[:, k] is the return from s_k.

    rewards (B, H), values (B, H+1) = v(s_0..s_H), continues (B, H) -> (B, H).

        R_H = v(s_H)
        R_k = r_{k+1} + gamma c_{k+1} ((1 - lam) v(s_{k+1}) + lam R_{k+1})

    where r_{k+1} = rewards[:, k] and c_{k+1} = continues[:, k] belong to s_{k+1}. lam = 1 gives
    the discounted reward sum bootstrapped with gamma^H v(s_H); lam = 0 the one-step TD target.
    A zero continue at s_{k+1} keeps r_{k+1} and drops everything after it.
    """
    B, H = rewards.shape
    assert values.shape == (B, H + 1), (values.shape, rewards.shape)
    assert continues.shape == (B, H), (continues.shape, rewards.shape)
    out = []
    nxt = values[:, H]                                              # R_H = v(s_H)
    for k in range(H - 1, -1, -1):
        nxt = rewards[:, k] + gamma * continues[:, k] * ((1 - lam) * values[:, k + 1] + lam * nxt)
        out.append(nxt)
    return torch.stack(out[::-1], 1)


def discount_weights(continues: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-state loss weights for s_0..s_{H-1}: w_0 = 1, w_k = prod_{j<k} gamma c_{j+1}.

    DreamerV3 weights the actor and critic losses by the cumulative discount, so that imagined
    states after a predicted termination (and, softly, far-future states) count less.
    continues (B, H) -> (B, H).
    """
    gc = gamma * continues
    return torch.cat([torch.ones_like(gc[:, :1]), torch.cumprod(gc[:, :-1], 1)], 1)


class ReturnNorm(nn.Module):
    """Return normalisation of DreamerV3 (eq. 11-12): S = max(1, EMA(P95) - EMA(P5)).

    Dividing advantages by S makes the entropy coefficient mean the same across reward scales;
    max(1, .) keeps small returns (sparse rewards) from being blown up into noise. The EMA
    (decay 0.99) of the percentiles lives in buffers, so it is saved with the state_dict. The
    first update sets the EMA to the batch's percentiles (no bias towards a zero start).
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95,
                 max_samples: int = 1 << 20):
        super().__init__()
        self.decay, self.low, self.high, self.max_samples = decay, low, high, max_samples
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        x = returns.detach().float().flatten()
        if x.numel() > self.max_samples:                            # torch.quantile has a size limit
            x = x[torch.randint(x.numel(), (self.max_samples,), device=x.device)]
        q = torch.quantile(x, torch.tensor([self.low, self.high], device=x.device))
        q = q.to(self.lo.device)
        if not bool(self.initialised):
            self.lo.copy_(q[0])
            self.hi.copy_(q[1])
            self.initialised.fill_(True)
        else:
            self.lo.mul_(self.decay).add_((1 - self.decay) * q[0])
            self.hi.mul_(self.decay).add_((1 - self.decay) * q[1])

    def scale(self) -> torch.Tensor:
        """max(1, P95 - P5) as a 0-d tensor (1 before the first update)."""
        return torch.clamp(self.hi - self.lo, min=1.0)


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------

def mlp(inp: int, units: int, out: int, layers: int = 2) -> nn.Sequential:
    """inp -> units (-> units ...) -> out, each hidden layer Linear + LayerNorm + SiLU."""
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, units), nn.LayerNorm(units), nn.SiLU()]
        d = units
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """Bounded continuous policy: a = tanh(u), u ~ Independent(Normal(mu(s), std(s))) over A
    dims (Dreamer V1's squashed Normal, as in SAC).

    std = (max_std - min_std) * sigmoid(x + 2) + min_std, as in DreamerV3's continuous actor,
    so the std starts near max_std (exploration) and can never collapse below min_std.
    Why squash the sample rather than clip it: the pathwise gradient reaches an action only
    through the world model, and a clipped sample outside [-1, 1] passes none (a quarter of
    the first samples at std 0.9; most of them once the mean nears a bound), while tanh passes
    some to every sample. `dist` is the distribution of the pre-squash u: its log-probability
    of the u drawn is what REINFORCE needs (the tanh Jacobian does not depend on the actor's
    weights), and its entropy is the bonus's (a proxy for that of a).
    """

    def __init__(self, latent_dim: int, action_dim: int, units: int = 256,
                 min_std: float = 0.1, max_std: float = 1.0):
        super().__init__()
        self.action_dim, self.min_std, self.max_std = action_dim, min_std, max_std
        self.net = mlp(latent_dim, units, 2 * action_dim)

    def dist(self, latent: torch.Tensor) -> Independent:
        """latent (..., F) -> distribution of u, batch shape (...) and event shape (A,)."""
        mu, x = self.net(latent).chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(x + 2.0) + self.min_std
        return Independent(Normal(mu, std), 1)

    @torch.no_grad()
    def act(self, latent: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """(..., F) -> (..., A) in [-1, 1]: tanh of a sample of u, or tanh of its mean (the
        greedy action)."""
        d = self.dist(latent)
        return torch.tanh(d.sample() if sample else d.mean)


class Critic(nn.Module):
    """State value v(s) (an MLP to a scalar) and its slow EMA copy `self.slow`.

    The output layer starts at zero (DreamerV3 zero-initialises its value head) so the first
    advantages are the returns themselves rather than noise from a random head.
    """

    def __init__(self, latent_dim: int, units: int = 256):
        super().__init__()
        self.net = mlp(latent_dim, units, 1)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.slow = copy.deepcopy(self.net)
        self.slow.requires_grad_(False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (...)"""
        return self.net(latent).squeeze(-1)

    @torch.no_grad()
    def slow_value(self, latent: torch.Tensor) -> torch.Tensor:
        return self.slow(latent).squeeze(-1)

    def online_parameters(self):
        """The trainable parameters (the slow copy is excluded)."""
        return self.net.parameters()

    @torch.no_grad()
    def update_slow(self, decay: float = 0.98) -> None:
        """slow <- decay * slow + (1 - decay) * online (DreamerV3 mixes 2% per update)."""
        for ps, p in zip(self.slow.parameters(), self.net.parameters()):
            ps.lerp_(p, 1.0 - decay)
        for bs, b in zip(self.slow.buffers(), self.net.buffers()):
            bs.copy_(b)

    def loss(self, latent: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor | None = None,
             slow_reg: float = 1.0) -> torch.Tensor:
        """DreamerV3 "Critic learning" (eq. 8 plus the slow regulariser), as an MSE:

            L = E_w[(v(s) - sg(R))^2] + slow_reg * E_w[(v(s) - sg(v_slow(s)))^2]

        latent (..., F), returns (...), weights (...) or None -> scalar. Regressing towards the
        slow critic's prediction too keeps the value from chasing its own noisy targets.
        """
        v = self(latent)
        err = (v - returns.detach()) ** 2 + slow_reg * (v - self.slow_value(latent)) ** 2
        return _weighted_mean(err, weights)


def _weighted_mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if weights is None else (x * weights.detach()).mean()


def actor_loss(actor: Actor, latents: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
               values: torch.Tensor, norm: ReturnNorm, entropy_coef: float = 3e-4,
               weights: torch.Tensor | None = None, grad: str = "dynamics") -> tuple[torch.Tensor, dict]:
    """The actor's loss on one imagined batch, normalised by the return scale S and with an
    entropy bonus (DreamerV3 eq. 11), by one of two gradients (`grad`):

      "dynamics"   L = -E_w[ R / S ] - eta E_w[ H[pi(.|s)] ]
                   the pathwise gradient of Dreamer V1 (Hafner et al. 2020, eq. 9): `returns`
                   carry the graph through the world model back to the reparameterised
                   actions, so each action is pushed along d(return)/d(action). Unlike
                   Dreamer V1 the gradient flows through the imagined rewards only, the
                   critic's values being constants in R: at gamma 0.99 the bootstrap
                   gamma^H v(s_H) outweighs the H imagined rewards, and the gradient of a
                   critic fitted by a few hundred updates with respect to the state is not
                   one to steer by (measured in docs/experiments.md).
      "reinforce"  L = -E_w[ log pi(a|s) sg((R - v(s)) / S) ] - eta E_w[ H[pi(.|s)] ]
                   (DreamerV3), needing only the log-probabilities of the actions taken.

    latents (B, H, F), actions (B, H, A) the pre-squash samples u, returns and values (B, H),
    weights (B, H) or None. `norm` must already have seen these returns.

    Why "dynamics" is the default here: a REINFORCE update's signal is the covariance of one
    action with the return, and in PushBall one push moves the ball by a fraction of a pixel
    while the other 14 random pushes and the critic's error move the return by far more; the
    few hundred updates a CPU run affords leave it at noise (measured in docs/experiments.md).
    The pathwise gradient reads the effect of every action directly, through the world
    model's latent prior (training/world_model.py LatentPrior), a smooth MLP, so the gradient
    is exact for the model and costs about one more forward pass.
    """
    scale = norm.scale().detach()
    dist = actor.dist(latents.detach())
    ent = dist.entropy()                                            # (B, H)
    if grad == "dynamics":
        objective = returns / scale
        adv = (returns - values).detach() / scale
    elif grad == "reinforce":
        adv = ((returns - values) / scale).detach()
        objective = dist.log_prob(actions.detach()) * adv           # (B, H)
    else:
        raise ValueError(f"actor gradient must be 'dynamics' or 'reinforce', got {grad!r}")
    loss = -_weighted_mean(objective + entropy_coef * ent, weights)
    logs = {"pol": loss.item(), "ent": ent.mean().item(), "adv_mean": adv.mean().item(),
            "scale": scale.item()}
    return loss, logs


# --------------------------------------------------------------------------------------------
# imagination and the agent
# --------------------------------------------------------------------------------------------

def imagine(actor: Actor, step: Callable, state, latent: torch.Tensor, horizon: int, grad: bool = False):
    """Roll the policy through a model for `horizon` steps from a start state and its
    latent (B, F).

    step(state, action (B, A) in [-1, 1]) -> (next state, its latent (B, F), reward (B,),
    cont (B,)); the state is whatever the model keeps (for the agent of
    training/world_model_rl.py, the compact states of the last two frames). Returns latents (B, H+1, F), actions (B, H, A) before the tanh, rewards
    (B, H), continues (B, H), the layout that `Agent.update` and `lambda_returns` take.
    grad=False: no graph (REINFORCE). grad=True: reparameterised samples and the graph
    through `step` kept, for the pathwise actor gradient (the start state is detached).
    """
    latent = latent.detach()
    zs, acts, rews, conts = [latent], [], [], []
    with torch.set_grad_enabled(grad):
        for _ in range(horizon):
            dist = actor.dist(latent)
            a = dist.rsample() if grad else dist.sample()
            state, latent, r, c = step(state, torch.tanh(a))
            zs.append(latent)
            acts.append(a)
            rews.append(r)
            conts.append(c)
    return torch.stack(zs, 1), torch.stack(acts, 1), torch.stack(rews, 1), torch.stack(conts, 1)


@dataclass
class AgentConfig:
    latent_dim: int
    action_dim: int
    units: int = 256
    horizon: int = 15            # imagination length (DreamerV3: 15)
    gamma: float = 0.99          # a discount near 0.99 (DreamerV3: 1 - 1/333)
    lam: float = 0.95            # lambda of the returns (DreamerV3: 0.95)
    entropy: float = 3e-4        # eta (DreamerV3: 3e-4, meaningful because advantages are normalised)
    actor_grad: str = "dynamics"  # "dynamics" (pathwise, Dreamer V1) or "reinforce" (DreamerV3); actor_loss
    actor_lr: float = 3e-4       # Adam; DreamerV3: 3e-5 for both, with far larger nets and batches
    critic_lr: float = 1e-3      # the critic tracks moving returns and is the actor's baseline
    slow_decay: float = 0.98     # slow critic EMA (DreamerV3: 0.98 per update)
    slow_reg: float = 1.0        # weight of the regulariser towards the slow critic
    min_std: float = 0.1
    max_std: float = 1.0
    grad_clip: float = 100.0     # global grad-norm clip for actor and critic (DreamerV3: 100)
    adam_eps: float = 1e-5


class Agent(nn.Module):
    """Actor, critic, return normaliser and their two Adam optimisers.

    `update` does one actor-critic step on an imagined batch. `state()` / `load_state(d)` (and
    `Agent.from_state(d)`) carry the networks, the slow critic, the percentile EMA, both
    optimisers and the config, so a checkpoint resumes training exactly.
    """

    def __init__(self, config: AgentConfig):
        super().__init__()
        self.config = c = config
        self.actor = Actor(c.latent_dim, c.action_dim, c.units, c.min_std, c.max_std)
        self.critic = Critic(c.latent_dim, c.units)
        self.norm = ReturnNorm()
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.adam_eps)
        self.critic_opt = torch.optim.Adam(self.critic.online_parameters(), lr=c.critic_lr,
                                           eps=c.adam_eps)

    def act(self, latent: torch.Tensor, sample: bool = True) -> torch.Tensor:
        return self.actor.act(latent, sample)

    def set_actor_lr(self, lr: float) -> None:
        """The actor's learning rate from now on (a schedule's value; saved with actor_opt)."""
        for group in self.actor_opt.param_groups:
            group["lr"] = lr

    def update(self, latents: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
               continues: torch.Tensor) -> dict:
        """One actor and one critic step on imagination; layout in the module docstring.

        latents (B, H+1, F), actions (B, H, A) before the tanh, rewards (B, H), continues (B, H);
        with actor_grad="dynamics" they carry the graph of `imagine(..., grad=True)`. The
        returns bootstrap from the ONLINE critic (as DreamerV3 does; the slow critic only
        regularises the critic's loss), whose values are constants in them; the critic
        learns from them detached.
        """
        c = self.config
        pathwise = c.actor_grad == "dynamics"
        if not pathwise:
            latents, actions, rewards, continues = latents.detach(), actions.detach(), rewards.detach(), continues.detach()
        rewards, continues = rewards.float(), continues.float()
        with torch.no_grad():   # the values enter the returns as constants (see actor_loss)
            values = self.critic(latents)                           # (B, H+1)
        returns = lambda_returns(rewards, values, continues, c.gamma, c.lam)  # (B, H), graph via rewards if pathwise
        weights = discount_weights(continues.detach(), c.gamma)     # (B, H)
        self.norm.update(returns)

        pol, logs = actor_loss(self.actor, latents[:, :-1], actions, returns, values[:, :-1],
                               self.norm, c.entropy, weights, c.actor_grad)
        self.actor_opt.zero_grad(set_to_none=True)
        pol.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_opt.step()

        val = self.critic.loss(latents[:, :-1].detach(), returns.detach(), weights, c.slow_reg)
        self.critic_opt.zero_grad(set_to_none=True)
        val.backward()
        nn.utils.clip_grad_norm_(self.critic.online_parameters(), c.grad_clip)
        self.critic_opt.step()
        self.critic.update_slow(c.slow_decay)

        logs.update(val=val.item(), ret=returns.mean().item(),
                    imag_return=rewards.sum(1).mean().item())
        return logs

    def state(self) -> dict:
        return {"config": asdict(self.config), "model": self.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict()}

    def load_state(self, d: dict) -> None:
        self.load_state_dict(d["model"])
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])

    @classmethod
    def from_state(cls, d: dict) -> "Agent":
        agent = cls(AgentConfig(**d["config"]))
        agent.load_state(d)
        return agent
