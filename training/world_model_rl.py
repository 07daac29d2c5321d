"""Dreamer-style agent: learn PushBall's physics from pixels, then learn to act purely in
the world model's imagination, and be judged in the real environment.

    python training/world_model_rl.py                           # CPU-sized defaults
    python training/world_model_rl.py --resume                  # carry on after a kill
    python training/world_model_rl.py --eval_only --checkpoint=checkpoints/rl/latest.pt \\
        --seeds=2000000-2000199 --json_path=results/rl/eval_further.json
    python training/world_model_rl.py --help                    # list every setting

The loop (Hafner et al. 2020/2023): (0) collect seed episodes with random actions (from the
task's random starts, and `near_target_episodes` exploring starts at rest near the target:
see NEAR_TARGET_P_ZERO), train the VQ-VAE tokenizer on their frames (then frozen: the
scene's look does not change) and record held-out episodes; then every iteration (1) train
the action-conditioned SharpWorldModelV2 (its `predict` unit) on windows of the replay: its
frame predictions are what shapes the compact state; (2) the latent phase: the compact
states of real frames are computed once (no gradient) and cached, and the reward head and
the latent prior (the compact state's own transition, `LatentPrior`) learn on windows of
them, many steps for the price of a few frame predictions; (3) train the actor and critic
(training/agent.py) on `horizon`-step rollouts imagined by the latent prior from cached real
states: no frame is drawn while imagining, as in Dreamer; (4) collect new episodes in the
real environment (data_utils/envs.py) with the sampled policy; (5) after the last iteration,
with the world model frozen, the latent prior and then the actor and critic learn once more
on the states of the whole replay (`consolidate`). At the end the greedy policy is evaluated
on seeds never used in training, beside the random policy and the reference controller that
sees the true state.

Writes checkpoints/<run>/latest.pt (config, model, optimisers, agent, history) with the
replay beside it (replay_<k>.npz, one file per collection), and results/<run>/:
rl_training.png, rl_trajectory.png, imagined_vs_real.gif, eval.json, config.json,
test_episodes.npy (+ _actions.npy, _states.npz: held-out episodes for eval_sharp.py).
A run killed at any point and restarted with --resume ends exactly as an uninterrupted
one: every iteration draws from generators seeded by (seed, iteration).
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (first: CPU tuning before torch starts its thread pool)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_utils import envs  # noqa: E402
from training.agent import Agent, AgentConfig, imagine  # noqa: E402
from training.world_model import AGENT_UNITS, ModelConfig, SharpWorldModelV2, tokenizer_loss  # noqa: E402

CONFIG = dict(
    # --- run ---------------------------------------------------------------------------
    run="rl",                  # checkpoints/<run>/ and results/<run>/
    out_root="",               # '' = the repository (checkpoints/, results/ under it)
    device="auto",             # auto | cpu | cuda | mps
    seed=0,
    bf16=True,                 # bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA
    resume=False,              # continue from checkpoints/<run>/latest.pt
    # --- environment -------------------------------------------------------------------
    episode_steps=50,          # PushBall steps per episode (fixed length)
    seed_episodes=64,          # random-action episodes before the first iteration
    explore_hold=8.0,          # seed episodes hold each random action this many frames on average (envs.held_random_act_fn)
    near_target_episodes=32,   # more seed episodes, from exploring starts at rest near the target (see NEAR_TARGET_P_ZERO); 0 = none
    episodes_per_iter=8,       # episodes collected with the policy each iteration
    test_episodes=32,          # held-out episodes (half random, half reference) for the reward error
    # --- world model (training/world_model.py ModelConfig) -------------------------------
    predict="motion",          # the dynamics unit: particles | motion (training/world_model.py)
    channels=16, code_dim=32, num_codes=128, hidden=16, layers=2, max_motion=8.0,
    tok_steps=300,             # tokenizer steps on seed-episode frames (then frozen)
    tok_batch=64,
    tok_lr=2e-3,
    wm_pretrain=100,           # world-model steps on the seed episodes before the first iteration
    latent_pretrain=200,       # then latent steps (reward head, prior) on their cached states
    wm_steps=6,                # world-model steps per iteration
    wm_batch=16,               # windows per step
    wm_window=17,              # frames per window: `context` observed, the rest free-running
    context=2,                 # observed frames per window (two give the velocity)
    teacher_forcing=0.5,       # after the context, each step reads the true frame with this probability (Bengio et al. 2015)
    wm_lr=2e-3,
    reward_lr_scale=0.5,       # the reward head learns at wm_lr times this
    # --- latent phase: reward head and latent prior on the states of real frames, cached --
    cache_episodes=128,        # replay episodes whose states are computed each iteration (no gradient)
    latent_steps=40,           # reward-head + prior steps per iteration on windows of those states
    latent_batch=32,           # windows per latent step (horizon + 2 frames: the prior learns open-loop over a horizon)
    prior_lr=1e-3,
    # --- agent (training/agent.py AgentConfig) -------------------------------------------
    iterations=50,             # "dreaming" iterations
    ac_steps=25,               # actor-critic updates per iteration
    imag_batch=256,            # imagined trajectories per update (start states: cached states of real frames)
    horizon=15,                # imagination horizon (in the latent prior)
    actor_grad="dynamics",     # dynamics (pathwise, through the latent prior) | reinforce (training/agent.py actor_loss)
    gamma=0.99, lam=0.95, entropy=3e-4, units=256, critic_lr=1e-3,
    max_std=0.3,               # the actor's largest std before the tanh (agent.py Actor; the smallest is 0.1)
    actor_lr=1e-3,             # the actor's step size at iteration 1, annealed to final_actor_lr (`actor_step_size`)
    # --- consolidation: after the last iteration, the world model frozen (`consolidate`) ---
    final_prior_steps=400,     # latent-prior steps on the states of every replay episode, cached once
    final_batch=256,           # windows per step (horizon + 2 states)
    final_ac_steps=250,        # then actor-critic updates in that prior
    final_actor_lr=1e-4,       # the actor's step size at the end of the loop and in the consolidation
    # --- evaluation ----------------------------------------------------------------------
    eval_episodes=200,         # unseen seeds per policy (why not 30: docs/experiments.md, 2026-12-07)
    eval_only=False,           # evaluate --checkpoint on --seeds, no training
    checkpoint="",             # --eval_only: the agent to evaluate
    seeds="",                  # --eval_only: A-B (inclusive); default 1000000..+eval_episodes-1
    json_path="",              # default results/<run>/eval.json (--eval_only: eval.json beside the checkpoint)
)
# Seeds never overlap: training episodes count up from 0, the near-target seed episodes from
# NEAR_SEED, held-out episodes from TEST_SEED, the final evaluation from EVAL_SEED.
NEAR_SEED, TEST_SEED, EVAL_SEED = 300_000, 500_000, 1_000_000
# Exploring starts (Sutton & Barto 2018, sec. 5.3; starting near the goal as in Florensa et al.
# 2017, "Reverse curriculum generation"; why: envs.STARTS): without them the latent prior cannot
# imagine the ball stopping on the target and the actor never learns to brake (docs/experiments.md,
# 2026-12-07). The `near_target_episodes` start at rest within envs.NEAR_TARGET_RADIUS of the
# target and hold random actions of which this fraction are zero (the ball coasts or stays at
# rest). Only the training data start there: every evaluation uses the task's random starts.
NEAR_TARGET_P_ZERO = 0.5


# ----------------------------------------------------------------------------------------
# Replay: whole episodes, frames with their codes, the action taken at each frame and the
# reward of each frame (frame t's reward is -distance/diagonal after the step into it)
# ----------------------------------------------------------------------------------------
class Replay:
    """Episodes of T+1 frames: frames uint8 (N, T+1, H, W), codes int16 (N, T+1, h, w),
    actions float32 (N, T+1, A) (the last frame's is zero, never used), rewards float32
    (N, T+1). Stored as one .npz per collection (`chunks`), so a checkpoint names how
    many chunks belong to it."""

    KEYS = ("frames", "codes", "actions", "rewards")

    def __init__(self, folder: Path):
        self.folder, self.chunks, self.data = folder, 0, None

    def add(self, episodes: dict, write: bool = True):
        if write:
            with utils.atomic_path(self.folder / f"replay_{self.chunks}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: episodes[k] for k in self.KEYS})
        self.data = ({k: episodes[k] for k in self.KEYS} if self.data is None else
                     {k: np.concatenate([self.data[k], episodes[k]]) for k in self.KEYS})
        self.chunks += 1

    def load(self, chunks: int):
        for k in range(chunks):
            path = self.folder / f"replay_{k}.npz"
            try:
                with np.load(path) as z:
                    self.add({key: z[key] for key in self.KEYS}, write=False)
            except (OSError, KeyError, ValueError) as exc:
                raise SystemExit(f"error: {path} is missing or unreadable ({type(exc).__name__}); the run cannot "
                                 f"resume without its replay - start a new --run") from None

    def __len__(self):
        return 0 if self.data is None else len(self.data["frames"])

    def windows(self, rng: np.random.Generator, batch: int, length: int, device) -> dict:
        """`batch` windows of `length` frames at random episodes and offsets -> tensors
        frames (B, L, 1, H, W) float, codes (B, L, h, w), actions (B, L, A), rewards (B, L)."""
        T = self.data["frames"].shape[1]
        ep = rng.integers(0, len(self), batch)
        t0 = rng.integers(0, T - length + 1, batch)
        idx = t0[:, None] + np.arange(length)
        pick = {k: self.data[k][ep[:, None], idx] for k in self.KEYS}
        return {"frames": torch.from_numpy(pick["frames"]).to(device).float().div_(255).unsqueeze(2),
                "codes": torch.from_numpy(pick["codes"].astype(np.int64)).to(device),
                "actions": torch.from_numpy(pick["actions"]).to(device),
                "rewards": torch.from_numpy(pick["rewards"]).to(device)}


@torch.no_grad()
def encode_episodes(model, frames: np.ndarray, device, bf16: bool) -> np.ndarray:
    """uint8 (N, T, H, W) -> codes int16 (N, T, h, w) with the frozen tokenizer."""
    flat = frames.reshape(-1, *frames.shape[2:])
    out = []
    for i in range(0, len(flat), 512):
        x = torch.from_numpy(flat[i:i + 512]).to(device).float().div_(255).unsqueeze(1)
        with utils.autocast(device, bf16):
            out.append(model.encode(x).cpu().numpy().astype(np.int16))
    return np.concatenate(out).reshape(*frames.shape[:2], model.grid, model.grid)


# ----------------------------------------------------------------------------------------
# Acting in the real environment through the model's state
# ----------------------------------------------------------------------------------------
class ModelPolicy:
    """act_fn for envs.evaluate_policy: the model reads each real frame after the action
    that led to it (`observe_next`), the actor acts on its compact state and the change since
    the frame before (`agent_input`; zero change at frame 0, where there is no frame before).
    mode: 'sample' (the exploring policy), 'greedy' (the mean action)."""

    def __init__(self, model, agent, device, bf16: bool, mode: str = "greedy"):
        self.model, self.agent, self.device, self.bf16, self.mode = model, agent, device, bf16, mode
        self.state, self.last, self.prev = None, None, None

    @torch.no_grad()
    def __call__(self, obs, info):
        if info["step"] == 0:
            self.state, self.last, self.prev = None, None, None
        frame = torch.from_numpy(obs).to(self.device).float().div_(255).unsqueeze(1)
        with utils.autocast(self.device, self.bf16):
            self.state = self.model.observe_next(self.state, frame, self.last)
        latent = self.model.latent(self.state).float()
        prev = latent if self.prev is None else self.prev     # frame 0: no change seen yet
        self.last = self.agent.actor.act(agent_input(prev, latent), sample=self.mode == "sample")
        self.prev = latent
        return self.last.cpu().numpy()


def collect(env_kwargs: dict, act_fn, seeds: np.ndarray, model, device, bf16: bool, codes: bool = True,
            start: str = "random") -> dict:
    """Run one episode per seed from reset's `start` states; returns the replay's arrays plus
    'pos', 'target', 'return' (codes only with `codes`: the seed episodes come before the
    tokenizer)."""
    env = envs.PushBallBatch(len(seeds), **env_kwargs)
    rec = envs.evaluate_policy(env, act_fn, seed=seeds, record=True, start=start)
    actions = np.concatenate([rec["actions"], np.zeros_like(rec["actions"][:, :1])], 1).astype(np.float32)
    return {"frames": rec["frames"], "codes": encode_episodes(model, rec["frames"], device, bf16) if codes else None,
            "actions": actions, "rewards": rec["reward"].astype(np.float32), "pos": rec["pos"],
            "target": rec["target"], "return": rec["return"], "final_distance": rec["final_distance"],
            "success": rec["success"]}


# ----------------------------------------------------------------------------------------
# Training: world model and actor-critic
# ----------------------------------------------------------------------------------------
def train_tokenizer(cfg, model, episodes: np.ndarray, device, rng):
    """tok_steps updates on random frames of `episodes` uint8 (N, T, H, W); then frozen."""
    opt = torch.optim.AdamW(model.tokenizer.parameters(), lr=cfg["tok_lr"])
    frames = episodes.reshape(-1, *episodes.shape[2:])
    model.tokenizer.train()
    logs = {}
    for _ in tqdm(range(cfg["tok_steps"]), desc="tokenizer"):
        x = torch.from_numpy(frames[rng.integers(0, len(frames), cfg["tok_batch"])]).to(device)
        with utils.autocast(device, cfg["bf16"]):
            loss, logs = tokenizer_loss(model.tokenizer, x.float().div_(255).unsqueeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.tokenizer.eval().requires_grad_(False)
    return logs


def check_finite(value: float, what: str):
    """Stop on a NaN or infinite loss, before the weights take it."""
    if not np.isfinite(value):
        raise SystemExit(f"error: the {what} became non-finite; lower --wm_lr / --actor_lr / --critic_lr and rerun "
                         f"with --resume (it restarts from the last checkpoint, saved before the NaN), or with a new "
                         f"--run if the run stopped before its first checkpoint (iteration 0)")


def world_model_optimiser(cfg, model):
    """AdamW on the dynamics, in three groups: the core at wm_lr, the reward head (its
    keypoint maps and MLP) at reward_lr_scale times that, the latent prior at prior_lr. A
    step moves only the groups its loss reached (a frame-prediction step all but the prior,
    a latent step the reward head and the prior)."""
    groups = {"reward": [], "prior": [], "core": []}
    for name, p in model.dynamics.named_parameters():
        part = name.split(".")[0]
        groups["reward" if part in ("keypoint_maps", "reward") else "prior" if part == "prior" else "core"].append(p)
    return torch.optim.AdamW([{"params": groups["core"]},
                              {"params": groups["reward"], "lr": cfg["wm_lr"] * cfg["reward_lr_scale"]},
                              {"params": groups["prior"], "lr": cfg["prior_lr"]}], lr=cfg["wm_lr"], weight_decay=1e-4)


def train_world_model(cfg, model, opt, replay, device, rng, progress: bool = False) -> dict:
    """wm_steps updates of the dynamics and reward head on replay windows: after `context`
    frames each step reads either the true frame (probability `teacher_forcing`) or its own
    prediction (what imagination meets). Free-running alone, the predicted ball soon parts
    from the true one and the loss stops saying what a push does; the true frames give
    one-step errors it learns from (docs/experiments.md, 2026-12-02). Logs 'dyn' (the
    dynamics loss) and 'rollout_mse' (mean over the free-running steps)."""
    model.dynamics.train()
    logs = {}
    for _ in tqdm(range(cfg["wm_steps"]), desc="world model", disable=not progress):
        batch = replay.windows(rng, cfg["wm_batch"], cfg["wm_window"], device)
        forced = list(rng.random(cfg["wm_window"] - 1) < cfg["teacher_forcing"])
        with utils.autocast(device, cfg["bf16"]):
            loss, logs = model(batch, cfg["context"], forced)
        check_finite(logs["loss"], "world-model loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.dynamics.parameters(), 1.0)
        opt.step()
    model.dynamics.eval()
    return {"dyn": logs["loss"], "rollout_mse": float(np.mean(logs["rollout_mse"]))}


# ----------------------------------------------------------------------------------------
# The latent phase: reward head and latent prior on cached states of real frames
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def cache_states(cfg, model, replay, device, rng) -> dict:
    """The pooled ConvGRU features of every frame of `cache_episodes` replay episodes (random
    ones), the model reading each real frame after its action (`observe_next`, cached
    codes): (E, T, P) float32, with the episodes' codes, actions and rewards as tensors.
    The keypoints are recomputed from the codes where needed (`Dynamics.latent_from`), so
    the keypoint maps keep learning from the cache."""
    ep = np.sort(rng.choice(len(replay), min(cfg["cache_episodes"], len(replay)), replace=False))
    frames = torch.from_numpy(replay.data["frames"][ep]).to(device).float().div_(255).unsqueeze(2)
    codes = torch.from_numpy(replay.data["codes"][ep].astype(np.int64)).to(device)
    actions = torch.from_numpy(replay.data["actions"][ep]).to(device)
    pooled, state = [], None
    with utils.autocast(device, cfg["bf16"]):
        for t in range(frames.shape[1]):
            state = model.observe_next(state, frames[:, t], actions[:, t - 1] if t else None, codes[:, t])
            pooled.append(model.dynamics.pool(state["feats"]))
    return {"pooled": torch.stack(pooled, 1), "codes": codes, "actions": actions,
            "rewards": torch.from_numpy(replay.data["rewards"][ep]).to(device)}


def cached_latents(model, cache: dict, ep, t) -> torch.Tensor:
    """Compact states (..., F) of the cached frames at episode indices `ep` and times `t`
    (integer arrays of one shape), keypoints with their graph."""
    ep, t = torch.as_tensor(ep), torch.as_tensor(t)
    pooled = cache["pooled"][ep, t]
    emb = model.embed(cache["codes"][ep, t].flatten(0, ep.dim() - 1))
    z = model.dynamics.latent_from(pooled.flatten(0, ep.dim() - 1), emb)
    return z.view(*ep.shape, -1)


@torch.no_grad()
def all_cached_latents(model, cache: dict, chunk: int = 64) -> torch.Tensor:
    """The compact states of every cached frame, (E, T, F), without a graph: what the actor and
    critic start their imagination from while the keypoint maps stand still, computed once
    per phase so that no update recomputes the keypoint convolutions."""
    E, T = cache["rewards"].shape
    ep, t = np.meshgrid(np.arange(E), np.arange(T), indexing="ij")
    return torch.cat([cached_latents(model, cache, ep[i:i + chunk], t[i:i + chunk]) for i in range(0, E, chunk)])


def train_latent(cfg, model, opt, cache: dict, rng) -> dict:
    """latent_steps updates on windows of horizon + 2 cached frames: the reward head (its
    keypoint maps and MLP) on the real states' rewards, and the latent prior open-loop over
    the horizon (`SharpWorldModelV2.prior_loss`). Logs 'rew' (reward MSE on real states),
    'prior' (latent MSE), 'prior_rew' (reward MSE on the prior's states)."""
    E, T = cache["rewards"].shape
    L = min(cfg["horizon"] + 2, T)
    for _ in range(cfg["latent_steps"]):
        ep = rng.integers(0, E, cfg["latent_batch"])[:, None]
        t = rng.integers(0, T - L + 1, cfg["latent_batch"])[:, None] + np.arange(L)
        z = cached_latents(model, cache, np.broadcast_to(ep, t.shape).copy(), t)               # (B, L, F)
        r = cache["rewards"][torch.as_tensor(ep), torch.as_tensor(t)]                      # (B, L)
        rew = F.mse_loss(model.reward_of(z.flatten(0, 1)), r.flatten())
        prior, logs = model.prior_loss(z, cache["actions"][torch.as_tensor(ep), torch.as_tensor(t)], r)
        loss = rew + prior
        check_finite(loss.item(), "reward or prior loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.dynamics.parameters(), 1.0)
        opt.step()
    return {"rew": rew.item(), **logs}


def consolidate(cfg, model, agent, wm_opt, replay, device, rng) -> dict:
    """The last phase, with the world model frozen: the latent prior goes on learning on the
    compact states of every replay episode, computed once (`final_prior_steps` updates of
    `final_batch` windows, open-loop as in `train_latent`), then the actor and critic learn
    in it (`final_ac_steps` updates, the actor at `final_actor_lr`, where the loop's anneal
    ended). Why: during the loop the frame dynamics and the keypoint maps move every
    iteration, so a prior that gets `latent_steps` updates an iteration on `cache_episodes`
    episodes chases a moving target; once they stop it can fit them on all the data. The
    actor then adapts to the refit prior at the small step: at 1e-3 its real score swings by
    0.4 within 150 updates there, at 1e-4 it settles (docs/experiments.md, 2026-12-06).
    Logs 'final_prior', 'final_prior_rew' and the agent's last logs under 'final_pol',
    'final_val'."""
    cache = cache_states({**cfg, "cache_episodes": len(replay)}, model, replay, device, rng)
    E, T = cache["rewards"].shape
    L = min(cfg["horizon"] + 2, T)
    z = all_cached_latents(model, cache)    # the keypoint maps are frozen now: the states are constants, (E, T, F)
    logs = {}
    for _ in range(cfg["final_prior_steps"]):
        e = torch.as_tensor(rng.integers(0, E, cfg["final_batch"]))[:, None]
        w = torch.as_tensor(rng.integers(0, T - L + 1, cfg["final_batch"]))[:, None] + torch.arange(L)
        with utils.autocast(device, cfg["bf16"]):
            loss, logs = model.prior_loss(z[e, w], cache["actions"][e, w], cache["rewards"][e, w])
        check_finite(loss.item(), "latent prior loss")
        wm_opt.zero_grad(set_to_none=True)
        loss.backward()     # reaches only the prior: the states are constants, the reward head frozen in it
        torch.nn.utils.clip_grad_norm_(model.dynamics.parameters(), 1.0)
        wm_opt.step()
    agent.set_actor_lr(cfg["final_actor_lr"])   # where the loop's schedule ends (also after --iterations=1)
    ac = train_agent({**cfg, "ac_steps": cfg["final_ac_steps"]}, model, agent, z, rng) \
        if cfg["final_ac_steps"] else {}
    return {**{f"final_{k}": v for k, v in logs.items()}, **{f"final_{k}": ac[k] for k in ("pol", "val") if k in ac}}


def actor_step_size(cfg, it: int) -> float:
    """The actor's learning rate in iteration `it` (0-based): a cosine from actor_lr at the
    first iteration to final_actor_lr at the last (Loshchilov & Hutter 2017), which the
    consolidation keeps. Why anneal: at a constant large step the real score swings from one
    iteration to the next and can end on a dip, while at the small one it settles; early on,
    the large step is what gets the actor moving in 50 iterations (docs/experiments.md,
    2026-12-06 and 2026-12-06 night)."""
    frac = it / max(cfg["iterations"] - 1, 1)
    lo, hi = cfg["final_actor_lr"], cfg["actor_lr"]
    return float(lo + (hi - lo) * 0.5 * (1 + np.cos(np.pi * frac)))


def agent_input(prev, cur):
    """What the actor and critic read: the compact state of frame t and its change since
    frame t-1, (B, 2F). A frame's state places the bodies precisely and their speed only
    roughly (linear probes of the true velocity, docs/experiments.md), and braking needs
    the speed."""
    return torch.cat([cur, cur - prev], -1)


def prior_step(model):
    """The imagination step the agent rolls through: ((z_{t-1}, z_t), action) -> (state,
    agent input, reward, continue). PushBall never terminates, so continue is 1."""
    def step(state, action):
        prev, cur = state
        nxt = model.prior_step(prev, cur, action)
        return (cur, nxt), agent_input(cur, nxt), model.reward_of(nxt), torch.ones_like(nxt[:, 0])
    return step


def train_agent(cfg, model, agent, starts: torch.Tensor, rng) -> dict:
    """ac_steps actor-critic updates on rollouts imagined by the latent prior, each from
    imag_batch real states of `starts` (E, T, F) (`all_cached_latents`; frames t >= 1, with
    the state of frame t-1). With the pathwise gradient the imagination keeps its graph; the
    model's weights are frozen meanwhile (the actor's loss must not train it). Under bf16
    autocast where `bf16` allows; the states stay float32 (the prior adds its bf16 step to a
    float32 state) and the returns are computed from float32 rewards (`Agent.update`).
    Timings: docs/experiments.md, 2026-12-07 fifth session."""
    logs = {}
    step = prior_step(model)
    E, T = starts.shape[:2]
    model.dynamics.requires_grad_(False)
    try:
        for _ in range(cfg["ac_steps"]):
            ep = rng.integers(0, E, cfg["imag_batch"])
            t = rng.integers(1, T, cfg["imag_batch"])
            prev, cur = starts[ep, t - 1], starts[ep, t]
            with utils.autocast(prev.device, cfg["bf16"]):
                latents, actions, rewards, conts = imagine(agent.actor, step, (prev, cur), agent_input(prev, cur),
                                                           cfg["horizon"], grad=cfg["actor_grad"] == "dynamics")
                logs = agent.update(latents, actions, rewards, conts)
            check_finite(logs["pol"] + logs["val"], "actor or critic loss")
    finally:
        model.dynamics.requires_grad_(True)
    return logs


@torch.no_grad()
def reward_error(cfg, model, test: dict, device) -> dict:
    """Reward-prediction error on held-out real episodes, mean |r_pred - r|: 'rew_filter'
    when the model reads every real frame; after the first `context` frames, with the
    recorded actions for `horizon` steps, 'rew_prior' when the latent prior imagines them
    (what the agent learns in) and 'rew_open' when the frame-by-frame dynamics draws them."""
    n = len(test["frames"])
    frames = torch.from_numpy(test["frames"]).to(device).float().div_(255).unsqueeze(2)
    actions = torch.from_numpy(test["actions"]).to(device)
    rewards = torch.from_numpy(test["rewards"]).to(device)
    codes = torch.from_numpy(test["codes"].astype(np.int64)).to(device)
    ctx, H = cfg["context"], cfg["horizon"]
    with utils.autocast(device, cfg["bf16"]):
        state, filt, latents = None, [], []
        for t in range(frames.shape[1]):
            state = model.observe_next(state, frames[:, t], actions[:, t - 1] if t else None, codes[:, t])
            filt.append(state["reward"].float())
            latents.append(state["latent"].float())
        state = model.observe(frames[:, :ctx], actions, codes[:, :ctx])
        out = model.imagine(state, H, actions[:, ctx - 1:ctx - 1 + H])
    prev, cur, dreamt = latents[max(ctx - 2, 0)], latents[ctx - 1], []
    for k in range(H):
        prev, cur = cur, model.prior_step(prev, cur, actions[:, ctx - 1 + k])
        dreamt.append(model.reward_of(cur))
    filt = torch.stack(filt, 1)
    target = rewards[:, ctx:ctx + H]
    return {"rew_filter": (filt - rewards).abs().mean().item(),
            "rew_prior": (torch.stack(dreamt, 1) - target).abs().mean().item(),
            "rew_open": (out["rewards"].float() - target).abs().mean().item(),
            "episodes": n}


# ----------------------------------------------------------------------------------------
# Evaluation in the real environment
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def imagined_return(cfg, model, agent, first_frames: np.ndarray, device) -> np.ndarray:
    """The greedy policy acting in the latent prior alone from each episode's first real
    frame for the whole episode: the sum of predicted rewards (what the agent believes it
    earns), to set beside the real return."""
    frame = torch.from_numpy(first_frames).to(device).float().div_(255).unsqueeze(1)
    total = torch.zeros(len(first_frames), device=device)
    with utils.autocast(device, cfg["bf16"]):
        cur = model.latent(model.observe_next(None, frame)).float()
    prev, step = cur, prior_step(model)
    for _ in range(cfg["episode_steps"]):
        (prev, cur), _, reward, _ = step((prev, cur), agent.actor.act(agent_input(prev, cur), sample=False))
        total += reward
    return total.cpu().numpy()


def evaluate(cfg, model, agent, seeds: np.ndarray, device) -> dict:
    """Agent (greedy), random and reference on the same unseen seeds: mean return, final
    distance, success rate (final distance < envs.SUCCESS_RADIUS px), normalised score."""
    env_kwargs = {"episode_steps": cfg["episode_steps"]}
    runs = {"agent": ModelPolicy(model, agent, device, cfg["bf16"], "greedy"),
            "random": envs.random_act_fn(int(seeds[0])), "reference": envs.reference_act_fn}
    rec, table = {}, {}
    for name, act_fn in runs.items():
        rec[name] = envs.evaluate_policy(envs.PushBallBatch(len(seeds), **env_kwargs), act_fn, seed=seeds,
                                         record=True)
        table[name] = envs.summarise(rec[name])
    r_rand, r_ref = table["random"]["mean_return"], table["reference"]["mean_return"]
    for name in table:
        table[name]["normalised_score"] = envs.normalised_score(table[name]["mean_return"], r_rand, r_ref)
    imagined = imagined_return(cfg, model, agent, rec["agent"]["frames"][:, 0], device)
    table["agent"]["imagined_return"] = float(imagined.mean())
    return {"policies": table, "seeds": [int(seeds[0]), int(seeds[-1])], "success_radius_px": envs.SUCCESS_RADIUS,
            "records": rec}


def print_table(ev: dict):
    print(f"\nreal environment, seeds {ev['seeds'][0]}-{ev['seeds'][1]} (success: final distance < "
          f"{ev['success_radius_px']:.0f} px)")
    print(f"{'policy':<10} {'return':>8} {'final px':>9} {'success':>8} {'score':>6}")
    for name, row in ev["policies"].items():
        print(f"{name:<10} {row['mean_return']:8.2f} {row['mean_final_distance']:9.2f} {row['success_rate']:8.2f} "
              f"{row['normalised_score']:6.2f}")
    a = ev["policies"]["agent"]
    print(f"agent's imagined return {a['imagined_return']:.2f} vs real {a['mean_return']:.2f}")


# ----------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------
def plot_training(history: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), layout="constrained")
    axes[0].plot(it, [h["dyn"] for h in history], label="dynamics loss (dyn)")
    axes[0].set(title="world model", xlabel="iteration", yscale="log")
    held = [h for h in history if "rew_filter" in h]
    if held:
        axes[0].plot([h["iteration"] for h in held], [h["rew_filter"] for h in held], "o-",
                     label="|reward error|, held-out, reading frames")
        axes[0].plot([h["iteration"] for h in held], [h["rew_prior"] for h in held], "s-",
                     label="|reward error|, held-out, imagined (latent prior)")
        axes[0].plot([h["iteration"] for h in held], [h["rew_open"] for h in held], "^-",
                     label="|reward error|, held-out, drawn frames")
    axes[0].plot(it, [h["prior"] for h in history], label="latent prior MSE (prior)")
    axes[0].legend(fontsize=7)
    axes[1].plot(it, [h["pol"] for h in history])
    axes[1].set(title="actor loss (pol)", xlabel="iteration")
    axes[2].plot(it, [h["val"] for h in history])
    axes[2].set(title="critic loss (val)", xlabel="iteration", yscale="log")
    axes[3].plot(it, [h["imag_reward"] for h in history], label="imagined (sampled policy)")
    axes[3].plot(it, [h["real_reward"] for h in history], label="real (collected episodes)")
    axes[3].set(title="mean reward per step", xlabel="iteration", ylabel="-distance / diagonal")
    axes[3].legend(fontsize=7)
    utils.save_figure(fig, path)


def plot_trajectory(ev: dict, path: Path, episodes: int = 3):
    """The agent's path over the real frames (first frame faint, last frame solid), beside
    the reference controller's on the same seed; the target as a ring."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = min(episodes, len(ev["records"]["agent"]["return"]))
    fig, axes = plt.subplots(2, episodes, figsize=(3.2 * episodes, 6.6), layout="constrained", squeeze=False)
    for row, name in enumerate(("agent", "reference")):
        r = ev["records"][name]
        for e in range(episodes):
            ax = axes[row, e]
            img = np.maximum(0.35 * r["frames"][e, 0], r["frames"][e, -1]) / 255.0
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.plot(r["pos"][e, :, 0], r["pos"][e, :, 1], "-", color="tab:orange", lw=1.2)
            ax.scatter(r["pos"][e, :, 0], r["pos"][e, :, 1], c=np.arange(r["pos"].shape[1]), cmap="viridis", s=6)
            ax.add_patch(plt.Circle(r["target"][e], envs.SUCCESS_RADIUS, fill=False, color="tab:red", lw=1))
            ax.set_title(f"{name}, seed {int(r['seeds'][e])}: return {r['return'][e]:.2f}, "
                         f"final {r['final_distance'][e]:.1f} px", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("PushBall: path of the ball (orange, dots coloured by time), target ring = success radius",
                 fontsize=9)
    utils.save_figure(fig, path)


@torch.no_grad()
def imagined_vs_real(cfg, model, ev: dict, device, path: Path, episodes: int = 3):
    """GIF: the real episode | the world model drawing it from its first frame under the
    same actions (the frame-by-frame dynamics, open loop, no real frame after the first). The
    agent imagines with the latent prior, which draws no frames; this shows what the compact
    state it starts from was trained to predict."""
    from evaluation.eval_sharp import write_gif   # GIF writer shared with the rollout evaluation

    r = ev["records"]["agent"]
    frames = torch.from_numpy(r["frames"][:episodes]).to(device).float().div_(255)       # (E, T+1, H, W)
    actions = torch.from_numpy(np.clip(r["actions"][:episodes], -1, 1)).float().to(device)
    with utils.autocast(device, cfg["bf16"]):
        state = model.observe_next(None, frames[:, :1])
        pred = model.imagine(state, cfg["episode_steps"], actions)["frames"].float().clamp(0, 1)
    write_gif({"truth": frames.cpu(), "pred": pred[:, :, 0].cpu()}, 1, path, ms_per_frame=120)


# ----------------------------------------------------------------------------------------
def build(cfg, device):
    if cfg["predict"] not in AGENT_UNITS:
        raise SystemExit(f"error: --predict must be one of {', '.join(AGENT_UNITS)} (the units with "
                         f"a reward head), got '{cfg['predict']}'")
    model = SharpWorldModelV2(ModelConfig.from_dict({**cfg, "action_dim": 2, "reward_head": True,
                                                      "image_size": 64})).to(device)
    agent = Agent(AgentConfig(latent_dim=2 * model.dynamics.latent_dim, action_dim=2,
                              units=cfg["units"], horizon=cfg["horizon"], gamma=cfg["gamma"], lam=cfg["lam"],
                              entropy=cfg["entropy"], max_std=cfg["max_std"], actor_grad=cfg["actor_grad"],
                              actor_lr=cfg["actor_lr"], critic_lr=cfg["critic_lr"])).to(device)
    return model, agent


def parse_seeds(text: str, count: int) -> np.ndarray:
    if not text:
        return EVAL_SEED + np.arange(count)
    try:
        a, b = (int(x) for x in text.split("-"))
    except ValueError:
        raise SystemExit(f"error: --seeds expects A-B (two integers, A <= B), got '{text}'") from None
    if b < a:
        raise SystemExit(f"error: --seeds expects A-B with A <= B, got '{text}'")
    if a < EVAL_SEED:
        print(f"note: seeds below {EVAL_SEED} may have been used in training or as held-out episodes")
    return np.arange(a, b + 1)


def load_agent(path: Path, device):
    ckpt = utils.load_checkpoint(path)
    if "agent" not in ckpt or "model" not in ckpt:
        raise SystemExit(f"error: {path} is not a world_model_rl.py checkpoint (no 'agent'); pass the "
                         f"checkpoints/<run>/latest.pt it wrote")
    cfg = {**CONFIG, **ckpt["config"]}
    model, agent = build(cfg, device)
    try:
        model.load_state_dict(ckpt["model"])
        agent.load_state(ckpt["agent"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SystemExit(f"error: {path} does not match this version ({str(exc).splitlines()[0]}); "
                         f"pass another --checkpoint or retrain it") from None
    return cfg, model.eval(), agent, ckpt


def save_eval(ev: dict, path: Path, extra: dict):
    utils.save_json({**extra, **{k: v for k, v in ev.items() if k != "records"}}, path)


def eval_only(cfg, device):
    if not cfg["checkpoint"]:
        raise SystemExit("error: --eval_only needs --checkpoint=checkpoints/<run>/latest.pt")
    path = Path(cfg["checkpoint"])
    run_cfg, model, agent, _ = load_agent(path, device)
    seeds = parse_seeds(cfg["seeds"], cfg["eval_episodes"])
    ev = evaluate({**run_cfg, "bf16": cfg["bf16"]}, model, agent, seeds, device)
    print_table(ev)
    out = Path(cfg["json_path"]) if cfg["json_path"] else path.parent / "eval.json"
    save_eval(ev, out, {"checkpoint": str(path)})
    print(f"wrote {out}")


def main():
    cfg = utils.parse_overrides(CONFIG)
    for key in ("iterations", "episodes_per_iter", "seed_episodes", "test_episodes", "wm_batch", "imag_batch",
                "horizon", "eval_episodes", "episode_steps", "cache_episodes", "latent_batch", "latent_steps",
                "latent_pretrain", "final_batch"):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{key} must be at least 1 (got {cfg[key]})")
    if cfg["max_std"] <= AgentConfig.min_std:
        raise SystemExit(f"error: --max_std must be above the actor's smallest std {AgentConfig.min_std} "
                         f"(got {cfg['max_std']})")
    if cfg["final_actor_lr"] <= 0:
        raise SystemExit(f"error: --final_actor_lr must be positive (got {cfg['final_actor_lr']})")
    for key in ("final_prior_steps", "final_ac_steps", "near_target_episodes"):
        if cfg[key] < 0:
            raise SystemExit(f"error: --{key} must be at least 0 (got {cfg[key]})")
    if cfg["episode_steps"] < 2:
        raise SystemExit(f"error: --episode_steps must be at least 2 (the latent prior learns from windows of 3 "
                         f"frames; got {cfg['episode_steps']})")
    if not 1 <= cfg["context"] < cfg["wm_window"] <= cfg["episode_steps"] + 1:
        raise SystemExit(f"error: need 1 <= --context < --wm_window <= --episode_steps + 1 (got {cfg['context']}, "
                         f"{cfg['wm_window']}, {cfg['episode_steps']})")
    if cfg["actor_grad"] not in ("dynamics", "reinforce"):
        raise SystemExit(f"error: --actor_grad must be dynamics or reinforce (got '{cfg['actor_grad']}')")
    if not 0 <= cfg["teacher_forcing"] <= 1:
        raise SystemExit(f"error: --teacher_forcing is a probability in [0, 1] (got {cfg['teacher_forcing']})")
    if cfg["explore_hold"] < 1:
        raise SystemExit(f"error: --explore_hold must be at least 1 frame (got {cfg['explore_hold']})")
    device = utils.pick_device(cfg["device"])
    if cfg["eval_only"]:
        return eval_only(cfg, device)

    base = Path(cfg["out_root"]) if cfg["out_root"] else utils.REPO_ROOT
    ckpt_dir, out_dir = base / "checkpoints" / cfg["run"], base / "results" / cfg["run"]
    ckpt_path = ckpt_dir / "latest.pt"
    if ckpt_path.exists() and not cfg["resume"]:
        raise SystemExit(f"error: {ckpt_path} exists; pass --resume to continue it or --run=NAME for a new run")
    if cfg["resume"] and not ckpt_path.exists():
        raise SystemExit(f"error: --resume given but {ckpt_path} does not exist; drop --resume to start fresh")
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"error: cannot write {ckpt_dir} or {out_dir} ({exc.strerror}); pass a writable "
                         f"--out_root") from None
    env_kwargs = {"episode_steps": cfg["episode_steps"]}
    utils.seed_everything(cfg["seed"])
    model, agent = build(cfg, device)
    wm_opt = world_model_optimiser(cfg, model)
    replay = Replay(ckpt_dir)
    history, start, wall, final = [], 0, 0.0, None
    t0 = time.time()

    def save(iteration):
        utils.save_checkpoint({"config": cfg, "model_config": model.config.to_dict(), "model": model.state_dict(),
                               "wm_opt": wm_opt.state_dict(), "agent": agent.state(), "iteration": iteration,
                               "replay_chunks": replay.chunks, "history": history, "final": final,
                               "wall_s": wall + time.time() - t0}, ckpt_path)

    test_path = ckpt_dir / "test_episodes.npz"   # the held-out episodes with their codes (for --resume)
    if cfg["resume"]:
        ckpt = utils.load_checkpoint(ckpt_path)
        if "agent" not in ckpt:
            raise SystemExit(f"error: {ckpt_path} is not a world_model_rl.py checkpoint; use another --run")
        try:
            model.load_state_dict(ckpt["model"])
            wm_opt.load_state_dict(ckpt["wm_opt"])
            agent.load_state(ckpt["agent"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SystemExit(f"error: {ckpt_path} does not match these settings ({str(exc).splitlines()[0]}); "
                             f"resume with the settings it was trained with") from None
        replay.load(ckpt["replay_chunks"])
        utils.remove_stale_temps(ckpt_dir)
        history, start, wall, final = ckpt["history"], ckpt["iteration"], ckpt["wall_s"], ckpt.get("final")
        model.tokenizer.eval().requires_grad_(False)
        print(f"resuming {ckpt_path} at iteration {start}")
        with np.load(test_path) as z:
            test = {k: z[k] for k in z.files}
    else:
        # (0) seed episodes with random actions, the tokenizer on their frames, held-out episodes
        rng = np.random.default_rng([cfg["seed"], 0])
        seeds = np.arange(cfg["seed_episodes"])
        seed_eps = collect(env_kwargs, envs.held_random_act_fn(cfg["seed"], cfg["explore_hold"]), seeds, model,
                           device, cfg["bf16"], False)
        if cfg["near_target_episodes"]:
            near = collect(env_kwargs, envs.held_random_act_fn(NEAR_SEED + cfg["seed"], cfg["explore_hold"],
                                                               NEAR_TARGET_P_ZERO),
                           NEAR_SEED + np.arange(cfg["near_target_episodes"]), model, device, cfg["bf16"], False,
                           start="near_target")
            seed_eps = {k: v if v is None else np.concatenate([v, near[k]]) for k, v in seed_eps.items()}
        tok = train_tokenizer(cfg, model, seed_eps["frames"], device, rng)
        print(f"tokenizer: PSNR {tok['psnr']:.1f} dB, perplexity {tok['perplexity']:.0f}")
        seed_eps["codes"] = encode_episodes(model, seed_eps["frames"], device, cfg["bf16"])
        replay.add(seed_eps)
        half = cfg["test_episodes"] // 2
        test_seeds = TEST_SEED + np.arange(cfg["test_episodes"])
        parts = [collect(env_kwargs, envs.random_act_fn(TEST_SEED), test_seeds[:half], model, device, cfg["bf16"]),
                 collect(env_kwargs, envs.reference_act_fn, test_seeds[half:], model, device, cfg["bf16"])]
        test = {k: np.concatenate([p[k] for p in parts]) for k in (*Replay.KEYS, "pos", "target")}
        with utils.atomic_path(test_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **test)
        write_test_split(test, out_dir)
        wm = train_world_model({**cfg, "wm_steps": cfg["wm_pretrain"]}, model, wm_opt, replay, device, rng,
                               progress=True)
        lat = train_latent({**cfg, "latent_steps": cfg["latent_pretrain"]}, model, wm_opt,
                           cache_states(cfg, model, replay, device, rng), rng)
        err = reward_error(cfg, model, test, device)
        print(f"world model on the seed episodes: dyn {wm['dyn']:.4f}, prior {lat['prior']:.4f}, held-out "
              f"|reward error| {err['rew_filter']:.4f} reading frames, {err['rew_prior']:.4f} imagined")
        save(0)

    utils.save_json(cfg, out_dir / "config.json")   # after a resume's checks: a refused one changes nothing
    for it in range(start, cfg["iterations"]):
        rng = np.random.default_rng([cfg["seed"], it + 1])
        torch.manual_seed(cfg["seed"] * 1_000_003 + it + 1)
        wm = train_world_model(cfg, model, wm_opt, replay, device, rng)
        cache = cache_states(cfg, model, replay, device, rng)
        lat = train_latent(cfg, model, wm_opt, cache, rng)
        actor_lr = actor_step_size(cfg, it)
        agent.set_actor_lr(actor_lr)
        ac = train_agent(cfg, model, agent, all_cached_latents(model, cache), rng)
        seeds = cfg["seed_episodes"] + it * cfg["episodes_per_iter"] + np.arange(cfg["episodes_per_iter"])
        eps = collect(env_kwargs, ModelPolicy(model, agent, device, cfg["bf16"], "sample"), seeds, model, device,
                      cfg["bf16"])
        replay.add(eps)
        row = {"iteration": it + 1, **wm, **lat, **ac, "actor_lr": actor_lr,
               "imag_reward": ac["imag_return"] / cfg["horizon"],
               "real_reward": float(eps["rewards"][:, 1:].mean()), "real_return": float(eps["return"].mean()),
               "wall_s": wall + time.time() - t0}
        if (it + 1) % 5 == 0 or it + 1 == cfg["iterations"]:
            row.update(reward_error(cfg, model, test, device))
        history.append(row)
        print(f"iter {it + 1:3d}  dyn {row['dyn']:.4f}  rew {row['rew']:.5f}  prior {row['prior']:.4f}  "
              f"pol {row['pol']:+.3f}  val {row['val']:.4f}  "
              f"imagined/real reward per step {row['imag_reward']:+.3f}/{row['real_reward']:+.3f}"
              + (f"  |rew err| held-out {row['rew_filter']:.4f} frames / {row['rew_prior']:.4f} prior"
                 if "rew_filter" in row else "")
              + f"  [{row['wall_s']:.0f} s]", flush=True)
        save(it + 1)

    if final is None:   # (5) consolidation; a run killed in it redoes it from the last iteration's checkpoint
        rng = np.random.default_rng([cfg["seed"], cfg["iterations"] + 1])
        torch.manual_seed(cfg["seed"] * 1_000_003 + cfg["iterations"] + 1)
        final = consolidate(cfg, model, agent, wm_opt, replay, device, rng)
        final["wall_s"] = wall + time.time() - t0
        print("consolidation: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k != "wall_s")
              + f"  [{final['wall_s']:.0f} s]", flush=True)
        save(cfg["iterations"])

    ev = evaluate(cfg, model, agent, EVAL_SEED + np.arange(cfg["eval_episodes"]), device)
    print_table(ev)
    train_s = final["wall_s"]
    save_eval(ev, Path(cfg["json_path"]) if cfg["json_path"] else out_dir / "eval.json",
              {"checkpoint": str(ckpt_path), "train_wall_s": train_s, "held_out_reward_error":
               {k: history[-1][k] for k in ("rew_filter", "rew_prior", "rew_open") if history and k in history[-1]}})
    plot_training(history, out_dir / "rl_training.png")
    plot_trajectory(ev, out_dir / "rl_trajectory.png")
    imagined_vs_real(cfg, model, ev, device, out_dir / "imagined_vs_real.gif")
    print(f"wrote {out_dir}/{{rl_training.png, rl_trajectory.png, imagined_vs_real.gif, eval.json}}")


def write_test_split(test: dict, out_dir: Path):
    """The held-out episodes in the data format eval_sharp.py reads: test_episodes.npy
    (N, T, H, W) uint8, test_episodes_actions.npy (N, T, A), test_episodes_states.npz."""
    for name, arr in (("test_episodes.npy", test["frames"]), ("test_episodes_actions.npy", test["actions"])):
        with utils.atomic_path(out_dir / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    with utils.atomic_path(out_dir / "test_episodes_states.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, pos=test["pos"][:, :, None].astype(np.float32), reward=test["rewards"],
                     target=test["target"].astype(np.float32))


if __name__ == "__main__":
    main()
