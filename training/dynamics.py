"""The shared frame-by-frame loop of the dynamics units, and the displacement field: how
SharpWorldModelV2 turns the ConvGRU core's output into the next latent
(training/world_model.py picks a unit by `predict`; training/particles.py and
training/layers.py hold the other two).

    FrameUnit            the loop every frame-by-frame unit shares: the core reads each
                         observed frame, then each of its own predictions; one real frame
                         at a time (`observe_next`), one imagined frame at a time (`step`)
    MotionField          predict="motion": the head gives a displacement field d_t (px per
                         frame); the last observed frame (the anchor) is backward-warped by
                         the displacements composed since it and re-tokenised:
                             x_{t+1}(p) = anchor(p - D_t(p)),  D_t = d_t o D_{t-1}
                             z_{t+1} = VQ(E(x_{t+1})),  shown as D(z_{t+1})

Each unit has the same four methods, used by the model: observe(model, context, actions,
codes) -> state; imagine(model, state, horizon, actions) -> {'frames', 'codes',
['rewards']}; latent(model, state) -> (B, F); loss(model, batch, context, forced) ->
(loss, logs). A FrameUnit subclass defines `advance` (one step's prediction from the
head's output), `step_loss`, and, where it needs them, `anchor` (what an observed frame
resets) and `planes` (extra inputs of the core).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training import motion

PIXEL_WEIGHT = 0.25   # sharp-pixel MSE weight: the wide terms carry most of the signal
MASS_WEIGHT = 0.1     # motion, particles: relative brightness error of each predicted frame


def retokenise(model, frame, sample: bool):
    """A predicted frame (B, 1, H, W) -> (embedding fed to the next step (B, D, h, w), codes
    (B, h, w)). The loss sees the frame itself (re-tokenising is near-identity and needs no
    gradient); the next input is its codes, exactly what a rollout feeds back. In an imagined
    step with gradients on the snap is straight-through, so the next input carries
    d(embedding)/d(frame) and so d/d(action) (the agent imagines with the latent prior
    instead, training/world_model.py LatentPrior)."""
    if sample and torch.is_grad_enabled():
        z = model.tokenizer.encode_latent(frame).float()
        codes = model.snap(z)
        return z + (model.embed(codes) - z).detach(), codes
    with torch.no_grad():
        codes = model.encode(frame)
    return model.embed(codes), codes


def mass_loss(pred, target):
    """MASS_WEIGHT x the squared relative brightness error of each predicted frame (B, 1, H, W):
    shrinking or fading content, the MSE-optimal hedge, costs as much as it hides."""
    mass_t = target.sum((1, 2, 3))
    return MASS_WEIGHT * ((pred.sum((1, 2, 3)) - mass_t) / mass_t.clamp_min(1.0)).pow(2).mean()


def reward_targets(model, batch):
    """batch['rewards'] (B, T) when the model has a reward head (then they are required:
    an untrained head would get no gradient, which DDP refuses), else None."""
    if model.dynamics.reward is None:
        return None
    if batch.get("rewards") is None:
        raise ValueError("this model has a reward head (reward_head=True): the batch needs 'rewards' (B, T)")
    return batch["rewards"]


class FrameUnit:
    """The shared part: the ConvGRU runs over every context frame, then over its own
    predictions. A state is that of one frame t, before its action: {'hidden' (the
    ConvGRU states), 'feats' (B, hidden*layers, h, w), 'codes' (B, h, w) and 'emb_in' (the
    frame's tokens and their embedding, what the core read), 'anchor' (the last observed
    frame), 'motion' (the displacement since it, or None), 'reward' (B,) of frame t or
    None}; a unit adds its own keys (Particles: the particles and the motion measured last).
    One real frame updates it with `observe_next`, one imagined frame with `step`;
    `observe` and `imagine` are loops over those. Each step calls `planes` (the core's extra
    inputs, which a unit may also record in the state) before `advance`."""

    extra_in = 0

    def __init__(self, config):
        self.config = config

    # one step's prediction from the head's output: (frame in [0,1] for the loss, the
    # embedding fed to the next step, the codes shown) -- see the subclasses
    def advance(self, model, state, raw, sample: bool):
        raise NotImplementedError

    def anchor(self, state, frame):
        """A real frame (B, 1, H, W) becomes what the next prediction starts from."""
        state["anchor"], state["motion"] = frame.float(), None

    def planes(self, model, state):
        """Extra input planes of the core for the frame it reads now (B, extra_in, h, w), or None."""
        return None

    def _read(self, model, state, emb, codes, prev_action):
        """The core reads frame t (its embedding) after the action that led to it."""
        feats, hidden = model.dynamics.step(emb, state["hidden"], prev_action, self.planes(model, state))
        latent = model.dynamics.compact(feats, emb)
        return {**state, "hidden": hidden, "feats": feats, "codes": codes, "emb_in": emb, "latent": latent,
                "reward": model.dynamics.predict_reward(latent)}

    def observe_next(self, model, state, frame, action=None, codes=None):
        if codes is None:
            codes = model.encode(frame)
        if state is None:   # the first frame: no action has led to it
            B = frame.shape[0]
            state = {"hidden": model.dynamics.init_hidden(B, frame.device, model.grid, model.grid)}
            action = None
        state = dict(state)
        self.anchor(state, frame)
        return self._read(model, state, model.embed(codes), codes, action)

    def observe(self, model, context, actions=None, codes=None):
        if codes is None:
            codes = model.encode_clip(context)
        state = None
        for t in range(context.shape[1]):
            a = actions[:, t - 1] if actions is not None and t > 0 else None
            state = self.observe_next(model, state, context[:, t], a, codes[:, t])
        return state

    def step(self, model, state, action=None):
        raw = model.dynamics.predict(state["feats"], action)
        state = dict(state)
        _, emb, codes = self.advance(model, state, raw, sample=True)
        return self._read(model, state, emb, codes, action)

    def imagine(self, model, state, horizon: int, actions=None):
        codes, rewards = [], []
        for t in range(horizon):
            state = self.step(model, state, actions[:, t] if actions is not None else None)
            codes.append(state["codes"])
            if state["reward"] is not None:
                rewards.append(state["reward"])
        codes = torch.stack(codes, 1)
        B, N = codes.shape[:2]
        frames = model.decode(codes.flatten(0, 1))
        result = {"frames": frames.view(B, N, *frames.shape[1:]),
                  "codes": codes}
        if rewards:
            result["rewards"] = torch.stack(rewards, 1)
        return result

    def latent(self, model, state):
        """(B, latent_dim): the frame's compact state (Dynamics.compact), what the reward
        head reads too."""
        return state["latent"]

    def loss(self, model, batch, context: int, forced=None):
        """One unrolled pass over a clip. The first `context` inputs are the true frames;
        after that each step's input is the model's own sharp prediction (free-running,
        what a rollout meets at test time), or the true frame where forced[t] (scheduled
        sampling, Bengio et al. 2015). The gradient flows through the whole chain.
        Returns (loss, logs): logs['step_mse'] the per-step error summed over pixels and
        logs['rollout_mse'] its part after the context."""
        frames, codes = batch["frames"], batch["codes"]
        actions, rewards = batch.get("actions"), reward_targets(model, batch)
        dyn = model.dynamics
        B, T = frames.shape[:2]
        state = {"hidden": dyn.init_hidden(B, frames.device, model.grid, model.grid)}
        self.anchor(state, frames[:, 0])
        emb = model.embed(codes[:, 0])
        total, step_mse = 0.0, []
        for t in range(T - 1):
            state["emb_in"] = emb
            feats, state["hidden"] = dyn.step(emb, state["hidden"], actions[:, t - 1] if actions is not None and t else None,
                                              self.planes(model, state))
            raw = dyn.predict(feats, actions[:, t] if actions is not None else None)
            target = frames[:, t + 1]
            pred, fed, _ = self.advance(model, state, raw, sample=False)
            loss_t = self.step_loss(model, state, raw, pred, target, codes[:, t + 1])
            if rewards is not None:   # the reward of frame t (as the core saw it)
                loss_t = loss_t + F.mse_loss(dyn.predict_reward(dyn.compact(feats, emb)), rewards[:, t])
            total = total + loss_t
            step_mse.append((pred.detach() - target).pow(2).flatten(1).sum(1).mean().item())
            teacher = t + 1 < context or (forced is not None and forced[t])
            if teacher:   # the true frame becomes the new anchor
                self.anchor(state, target)
                emb = model.embed(codes[:, t + 1])
            else:
                emb = fed
        loss = total / (T - 1)
        return loss, {"loss": loss.item(), "step_mse": step_mse, "rollout_mse": step_mse[context - 1:]}


class MotionField(FrameUnit):
    """predict="motion": a per-cell displacement field warps the anchor (module docstring).
    Loss per predicted frame: PIXEL_WEIGHT x pixel MSE, plus warps of the anchor blurred at
    two widths against the blurred target (bilinear warping of a sharp frame has one-sided,
    mostly zero gradients at whole-pixel offsets; blurring makes the error smooth in the
    displacement, and a misplaced stroke cheaper than a deleted one), plus a brightness
    term (MASS_WEIGHT) so that shrinking or fading content, the MSE-optimal hedge, costs
    as much as it hides."""

    @staticmethod
    def out_channels(config) -> int:
        return 2

    def advance(self, model, state, raw, sample: bool):
        m = self.config.max_motion
        d = m * torch.tanh(raw / m)                                      # (B, 2, h, w) px/frame
        size = state["anchor"].shape[-1]
        state["motion"] = motion.compose(state["motion"], d, size)       # (B, 2, H, W)
        warped = motion.warp(state["anchor"], state["motion"]).clamp(0, 1)
        return (warped, *retokenise(model, warped, sample))

    def step_loss(self, model, state, raw, pred, target, target_codes):
        anchor, D = state["anchor"], state["motion"]
        wide = sum(F.mse_loss(motion.warp(motion.gaussian_blur(anchor, sg), D), motion.gaussian_blur(target, sg))
                   for sg in (2.0, 4.0))
        return PIXEL_WEIGHT * F.mse_loss(pred, target) + wide + mass_loss(pred, target)
