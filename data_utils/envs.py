"""Interactive physics environment for the agent, on the Gymnasium API: "PushBall".

A ball with friction is pushed by a bounded 2-D force and must reach a target drawn on the
frame. The agent sees only the 64x64 grayscale frame; the true state is in `info`.

    python data_utils/envs.py      # reference and random policies on 30 seeds: mean return,
                                   # final distance, success rate; writes
                                   # results/envs/pushball_preview.png and pushball_eval.json

    import data_utils.envs, gymnasium
    env = gymnasium.make("VisualPhysics/PushBall-v0")     # one environment
    batch = data_utils.envs.PushBallBatch(256)              # 256 at once, vectorised numpy

Units and conventions (the same as data_utils/physics.py): pixels (px) and frames; positions
in pixel coordinates, x to the right, y downwards, the top-left pixel centred at (0, 0), so the
image spans [-0.5, size - 0.5]; velocities in px/frame, accelerations in px/frame^2.

Dynamics (float64 inside), per frame, `substeps` sub-steps of h = 1 / substeps frames of
semi-implicit (symplectic) Euler with the friction applied exactly:
    v <- (v + h * a) * exp(-friction * h);   x <- x + h * v;   reflect at the walls
a = max_accel * clip(action, -1, 1) per axis (force = mass * a), so with zero force the speed
decays by exactly exp(-friction) per frame, and the terminal speed under full force along an
axis is about max_accel / friction = 3.3 px/frame: a ball crosses the 56 px between the walls
in 17 frames at that speed, 24 frames from rest.
The walls are the frame's edges: the ball's centre stays in [radius - 0.5, size - 0.5 - radius];
a centre that overshoots is reflected back by the overshoot and its velocity component flipped
(restitution 1: no energy lost at a wall).

Episodes: `episode_steps` = 50 steps; frame 0 is the reset state, step k leads to frame k.
reward = -|ball - target| / (size * sqrt(2)) of the frame the step leads to (in [-1, 0]);
terminated is always False, truncated is True at step `episode_steps` (the environment
truncates itself, so the registered spec has no TimeLimit). Success: final distance
< SUCCESS_RADIUS = 4 px (the ball covers the target's centre).

Observations: uint8 (size, size) for the single environment (gymnasium's env checker accepts the
2-D image as it is; it matches the datasets' (T, H, W) frames), (n, size, size) for a batch.
Drawn with data_utils/render.py: the target as a dim cross (intensity 110), the ball as a disc of
radius 4 at 255 on top (overlaps composite by max, so the ball covers the target).

Start states: reset(seed, start="random") (Gymnasium: reset(seed=, options={"start": ...})) is
the task: anywhere, at least min_target_distance from the target; start="near_target" puts the
ball at rest within NEAR_TARGET_RADIUS of the target, exploring starts for collecting training
data only (see STARTS).

Seeds: PushBallBatch.reset(seed) gives environment i its own generator
np.random.default_rng(seed + i) (or seed[i] for a sequence of seeds), so environment i of a batch
reset with seed s is exactly PushBallEnv().reset(seed=s + i), whatever the batch size.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository importable, `utils` first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import utils  # noqa: F401  (sets OMP/malloc tuning before anything else loads)

import gymnasium
import numpy as np
from gymnasium import spaces

from data_utils.render import Canvas

ENV_ID = "VisualPhysics/PushBall-v0"
SUCCESS_RADIUS = 4.0      # px: final ball-target distance that counts as reaching the target

# Reference PD controller a = clip(KP (target - pos) - KD vel, -1, 1), per axis. Picked by a
# grid search maximising the mean return over seeds 1000..1029 (not the 0..29 that main()
# reports), default physics: KP in {0.05 .. 5}, KD / KP in {1.25 .. 3}, then a finer grid
# around the best. Any KP >= 0.5 with KD ~ 2.2 KP is within 0.5% (the saturated controller is
# bang-bang with the switching line e = (KD / KP) v); a bang-bang controller on the exact
# braking curve of this friction scored no better (-3.385 against -3.379).
REF_KP = 0.75             # 1/px     (action per px of error)
REF_KD = 1.7              # frame/px (action per px/frame of velocity)

# Candidate targets drawn per environment at reset; the first one far enough from the ball is
# taken (rejection sampling with a fixed number of draws, so everything stays vectorised).
_TARGET_TRIES = 16

# Start states (reset's `start`): "random" (the task: anywhere, moving, at least
# min_target_distance from the target; every evaluation uses it) or "near_target" (exploring
# starts for collecting training data: at rest, at a distance uniform in [0, NEAR_TARGET_RADIUS]
# px from the target in a uniform direction, clipped to the walls). Random actions from a
# random start almost never leave the ball resting on the target, so a model learnt from them
# has never seen the state the task ends in (docs/experiments.md, 2026-12-07).
STARTS = ("random", "near_target")
NEAR_TARGET_RADIUS = 6.0  # px


@dataclass
class PushBallPhysics:
    """Constants of the scene; any of them can be overridden as keyword arguments."""
    radius: float = 4.0               # px, ball radius (also sets the walls for its centre)
    mass: float = 1.0                 # arbitrary mass unit; force = mass * acceleration
    max_accel: float = 0.5            # px/frame^2, acceleration of a full action along one axis
    friction: float = 0.15            # 1/frame, linear damping: v decays by exp(-friction) a frame
    substeps: int = 4                 # integration sub-steps per frame
    init_speed: float = 1.0           # px/frame, initial velocity uniform in [-init_speed, init_speed]^2
    target_margin: float = 6.0        # px, target centre at least this far inside the frame's edges
    min_target_distance: float = 16.0 # px, initial ball-target distance at least this
    target_half_length: float = 4.0   # px, half length of the target cross's arms
    target_half_width: float = 1.0    # px, half thickness of the arms
    target_intensity: float = 110.0   # grey level of the target (dim)
    ball_intensity: float = 255.0     # grey level of the ball

    @property
    def max_force(self) -> float:     # mass * px/frame^2
        return self.mass * self.max_accel


class PushBallBatch:
    """n PushBall environments stepped together (no Python loop over environments in step)."""

    def __init__(self, n: int, size: int = 64, episode_steps: int = 50, **physics):
        self.n, self.size, self.episode_steps = int(n), int(size), int(episode_steps)
        self.p = PushBallPhysics(**physics)   # a misspelt constant is a TypeError here
        if self.n < 1 or self.episode_steps < 1 or self.p.substeps < 1:
            raise ValueError("need n >= 1, episode_steps >= 1, substeps >= 1")
        self.lo = self.p.radius - 0.5                 # wall bounds of the ball's centre, px
        self.hi = self.size - 0.5 - self.p.radius
        if self.hi - self.lo < 2 * self.p.min_target_distance:
            raise ValueError(f"size {size} is too small for radius {self.p.radius}")
        self.diagonal = self.size * np.sqrt(2.0)      # reward normaliser, px
        self.pos = self.vel = self.target = None      # (n, 2) float64 each, after reset
        self.seeds = None                             # (n,) the seed of each environment
        self.t = 0

    # --- API -------------------------------------------------------------------------------
    def reset(self, seed=None, start: str = "random"):
        """seed: int s (environment i uses s + i), a sequence of n ints, or None (fresh
        entropy; the drawn seeds are kept in self.seeds); start: one of STARTS (the target is
        the same for both). Returns (obs (n, H, W) uint8, info)."""
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS} (got {start!r})")
        if seed is None:
            seeds = np.random.default_rng().integers(0, 2**62, size=self.n)
        elif np.ndim(seed) == 0:
            seeds = int(seed) + np.arange(self.n)
        else:
            seeds = np.asarray(seed, dtype=np.int64).reshape(-1)
            if seeds.shape != (self.n,):
                raise ValueError(f"{len(seeds)} seeds for {self.n} environments")
        self.seeds = seeds
        # the only per-environment loop: one generator each, a fixed block of uniforms each:
        # u[:, 0:2] position, 2:4 velocity, 4:4+2k target candidates, then the near-target
        # start's direction and distance, drawn for every start so that a random start stays
        # the same episode it was before near-target starts existed
        k = _TARGET_TRIES
        u = np.stack([np.random.default_rng(int(s)).random(6 + 2 * k) for s in seeds])  # (n, 6+2k)
        p = self.p
        self.pos = self.lo + (self.hi - self.lo) * u[:, 0:2]
        self.vel = p.init_speed * (2.0 * u[:, 2:4] - 1.0)
        t_lo, t_hi = -0.5 + p.target_margin, self.size - 0.5 - p.target_margin
        cand = (t_lo + (t_hi - t_lo) * u[:, 4:4 + 2 * k]).reshape(self.n, k, 2)         # (n, k, 2)
        ok = np.linalg.norm(cand - self.pos[:, None], axis=-1) >= p.min_target_distance  # (n, k)
        first = cand[np.arange(self.n), np.argmax(ok, axis=1)]
        # all k candidates too close (probability < 1e-8): the target box's farthest corner
        corner = np.where(self.pos < 0.5 * (t_lo + t_hi), t_hi, t_lo)
        self.target = np.where(ok.any(axis=1)[:, None], first, corner)
        if start == "near_target":
            angle, dist = 2.0 * np.pi * u[:, -2], NEAR_TARGET_RADIUS * u[:, -1]                  # (n,) each
            offset = dist[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)           # (n, 2) px
            self.pos = np.clip(self.target + offset, self.lo, self.hi)
            self.vel = np.zeros_like(self.vel)
        self.t = 0
        return self._observe(), self._info()

    def step(self, actions):
        """actions (n, 2) in [-1, 1] (clipped). Returns obs (n, H, W) uint8, reward (n,) float32,
        terminated (n,) bool (always False), truncated (n,) bool, info."""
        if self.pos is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.episode_steps:
            raise RuntimeError(f"the episode ended after {self.episode_steps} steps; call reset()")
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.n, 2), -1.0, 1.0)
        a = a * (self.p.max_force / self.p.mass)                     # px/frame^2
        h = 1.0 / self.p.substeps
        decay = np.exp(-self.p.friction * h)
        x, v = self.pos, self.vel
        for _ in range(self.p.substeps):
            v = (v + h * a) * decay
            x = x + h * v
            x, v = self._reflect(x, v)
        self.pos, self.vel = x, v
        self.t += 1
        info = self._info()
        terminated = np.zeros(self.n, dtype=bool)
        truncated = np.full(self.n, self.t >= self.episode_steps)
        return self._observe(), info["reward"].copy(), terminated, truncated, info

    # --- internals -------------------------------------------------------------------------
    def _reflect(self, x, v):
        """Mirror a centre that overshot a wall back by its overshoot and flip that velocity
        component; repeated in case a (very fast) ball overshoots twice in one sub-step."""
        for _ in range(16):
            below, above = x < self.lo, x > self.hi
            out = below | above
            if not out.any():
                break
            x = np.where(below, 2.0 * self.lo - x, np.where(above, 2.0 * self.hi - x, x))
            v = np.where(out, -v, v)
        return np.clip(x, self.lo, self.hi), v

    def _distance(self):
        return np.linalg.norm(self.pos - self.target, axis=1)       # (n,) px

    def _info(self) -> dict:
        d = self._distance()
        return {"pos": self.pos.copy(), "vel": self.vel.copy(), "target": self.target.copy(),
                "distance": d, "reward": (-d / self.diagonal).astype(np.float32), "step": self.t}

    def _observe(self) -> np.ndarray:
        p = self.p
        cv = Canvas(self.n, 1, self.size)
        tgt = self.target[:, None]                                   # (n, 1, 2)
        cv.boxes(tgt, p.target_half_length, p.target_half_width, p.target_intensity)
        cv.boxes(tgt, p.target_half_width, p.target_half_length, p.target_intensity)
        cv.discs(self.pos[:, None], p.radius, p.ball_intensity)
        return cv.frames()[:, 0]                                     # (n, H, W) uint8


class PushBallEnv(gymnasium.Env):
    """One PushBall environment: a thin wrapper over PushBallBatch(n=1).

    reset(seed=s) starts the same episode as PushBallBatch(...).reset(s); reset() without a
    seed draws the episode's seed from self.np_random (so it is reproducible after a seeded
    reset). render() returns the current frame as RGB (H, W, 3) uint8 in any render mode."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 64, episode_steps: int = 50, **physics):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.batch = PushBallBatch(1, size, episode_steps, **physics)
        self.observation_space = spaces.Box(0, 255, (size, size), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._frame = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """options: {"start": one of STARTS} (default "random")."""
        options = dict(options or {})
        start = options.pop("start", "random")
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; the only one is 'start'")
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(0, 2**62))
        obs, info = self.batch.reset(episode_seed, start)
        self._frame = obs[0]
        return obs[0], _first(info)

    def step(self, action):
        obs, r, term, trunc, info = self.batch.step(np.asarray(action, dtype=np.float64).reshape(1, 2))
        self._frame = obs[0]
        return obs[0], float(r[0]), bool(term[0]), bool(trunc[0]), _first(info)

    def render(self):
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        return np.repeat(self._frame[:, :, None], 3, axis=2)


def _first(info: dict) -> dict:
    """The batch's info for its only environment: arrays lose their leading axis."""
    return {k: (v[0] if isinstance(v, np.ndarray) else v) for k, v in info.items()}


if ENV_ID not in gymnasium.registry:  # importing twice (or as __main__ and as a module) is fine
    gymnasium.register(id=ENV_ID, entry_point="data_utils.envs:PushBallEnv", max_episode_steps=None)


# --- policies and evaluation ------------------------------------------------------------------
def random_policy(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) actions uniform in [-1, 1]."""
    return rng.uniform(-1.0, 1.0, size=(n, 2))


def reference_policy(info: dict, kp: float = REF_KP, kd: float = REF_KD) -> np.ndarray:
    """The controller that sees the true state: a = clip(kp (target - pos) - kd vel, -1, 1),
    per axis, from a batch's info ((n, 2) arrays) -> (n, 2)."""
    return np.clip(kp * (info["target"] - info["pos"]) - kd * info["vel"], -1.0, 1.0)


def evaluate_policy(env: PushBallBatch, act_fn, seed: int = 0, record: bool = False, start: str = "random") -> dict:
    """Run one full episode in each of the batch's n environments (seeds seed .. seed + n - 1)
    from reset's `start` states.

    act_fn(obs (n, H, W) uint8, info) -> (n, 2) actions, so a learned agent plugs in the same
    way as the reference. Returns per-episode arrays: "return" (n,) (sum of the step rewards),
    "final_distance" (n,) px, "success" (n,) bool, "seeds" (n,); with record=True also
    "frames" (n, T+1, H, W) uint8, "pos" and "vel" (n, T+1, 2), "reward" (n, T+1) (frame 0's
    reward included; the return sums frames 1..T), "actions" (n, T, 2), "target" (n, 2)."""
    obs, info = env.reset(seed, start)
    ret = np.zeros(env.n)
    rec = {"frames": [obs], "pos": [info["pos"]], "vel": [info["vel"]], "reward": [info["reward"]], "actions": []}
    truncated = np.zeros(env.n, dtype=bool)
    while not truncated.all():
        actions = np.asarray(act_fn(obs, info), dtype=np.float64)
        obs, reward, terminated, truncated, info = env.step(actions)
        ret += reward
        if record:
            for key, val in (("frames", obs), ("pos", info["pos"]), ("vel", info["vel"]),
                             ("reward", info["reward"]), ("actions", np.clip(actions, -1, 1))):
                rec[key].append(val)
    out = {"return": ret, "final_distance": info["distance"],
           "success": info["distance"] < SUCCESS_RADIUS, "seeds": env.seeds.copy()}
    if record:
        out.update({k: np.stack(v, axis=1) for k, v in rec.items()})
        out["target"] = info["target"]
    return out


def summarise(result: dict) -> dict:
    """Means of evaluate_policy's per-episode arrays."""
    return {"episodes": int(len(result["return"])),
            "mean_return": float(np.mean(result["return"])),
            "std_return": float(np.std(result["return"])),
            "mean_final_distance": float(np.mean(result["final_distance"])),
            "success_rate": float(np.mean(result["success"]))}


def normalised_score(r_agent, r_random, r_reference):
    """0 = the random policy's mean return, 1 = the reference controller's."""
    return (r_agent - r_random) / (r_reference - r_random)


def random_act_fn(seed: int):
    """An act_fn for evaluate_policy drawing uniform actions from its own generator."""
    rng = np.random.default_rng(seed)
    return lambda obs, info: random_policy(rng, len(obs))


def held_random_act_fn(seed: int, mean_hold: float = 8.0, p_zero: float = 0.0):
    """An act_fn for exploration: uniform actions, each held for a geometric number of
    frames (mean `mean_hold`; each environment redraws with probability 1 / mean_hold
    per frame). Independent actions every frame average out: the ball's speed stays near
    0.6 px/frame, far below the 3.3 px/frame a purposeful push reaches, so a world model
    trained on them never sees a fast ball or a bounce. Temporally correlated noise
    covers the reachable speeds (Eberhard et al. 2023, "Pink noise is all you need").
    p_zero: each draw is the zero action (the ball coasts, or rests) with this probability."""
    if not 0.0 <= p_zero <= 1.0:
        raise ValueError(f"p_zero is a probability in [0, 1] (got {p_zero})")
    rng = np.random.default_rng(seed)
    held = None

    def draw(n):
        a = random_policy(rng, n)
        return np.where((rng.random(n) < p_zero)[:, None], 0.0, a) if p_zero > 0 else a

    def act(obs, info):
        nonlocal held
        if info["step"] == 0 or held is None:
            held = draw(len(obs))
        redraw = rng.random(len(obs)) < 1.0 / mean_hold
        held = np.where(redraw[:, None], draw(len(obs)), held)
        return held.copy()
    return act


def reference_act_fn(obs, info):
    return reference_policy(info)


# --- script -------------------------------------------------------------------------------------
CONFIG = {
    "episodes": 30,          # environments (seeds seed .. seed + episodes - 1)
    "seed": 0,
    "out": "",               # '' = <repo>/results/envs
}


def main(argv=None):
    import utils  # noqa: F811  (already imported first when run as a script)

    cfg = utils.parse_overrides(CONFIG, argv)
    env = PushBallBatch(cfg["episodes"])
    results = {"reference": evaluate_policy(env, reference_act_fn, cfg["seed"], record=True),
               "random": evaluate_policy(env, random_act_fn(cfg["seed"] + 10**6), cfg["seed"], record=True)}
    summary = {name: summarise(r) for name, r in results.items()}
    print(f"PushBall, {cfg['episodes']} episodes of {env.episode_steps} steps, seeds "
          f"{cfg['seed']}..{cfg['seed'] + cfg['episodes'] - 1}")
    print(f"{'policy':10s} {'mean return':>12s} {'final distance (px)':>20s} {'success':>8s}")
    for name, s in summary.items():
        print(f"{name:10s} {s['mean_return']:12.3f} {s['mean_final_distance']:20.2f} {s['success_rate']:8.2f}")
    out = Path(cfg["out"]) if cfg["out"] else utils.REPO_ROOT / "results" / "envs"
    utils.save_json({"env": ENV_ID, "size": env.size, "episode_steps": env.episode_steps,
                     "physics": asdict(env.p), "reference_kp_kd": [REF_KP, REF_KD],
                     "success_radius_px": SUCCESS_RADIUS, "summary": summary,
                     "command": "python data_utils/envs.py " + " ".join(sys.argv[1:] if argv is None else argv)},
                    out / "pushball_eval.json")
    _save_preview(results, summary, out / "pushball_preview.png")
    print(f"wrote {out / 'pushball_preview.png'} and {out / 'pushball_eval.json'}")


def _save_preview(results, summary, path):
    """One episode (the first seed) of each policy: rows = policies, columns = frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import utils
    from data_utils.preview import montage

    names = list(results)
    img, cols = montage(np.stack([results[n]["frames"][0] for n in names]), max_cols=11)
    fig, ax = plt.subplots(figsize=(img.shape[1] / 40, img.shape[0] / 40 + 0.8))
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    size = results[names[0]]["frames"].shape[-1]
    ax.set_xticks([c * (size + 2) + size / 2 for c in range(len(cols))], [f"t={t}" for t in cols], fontsize=7)
    ax.set_yticks([r * (size + 2) + size / 2 for r in range(len(names))],
                  [f"{n}\nreturn {results[n]['return'][0]:.2f}" for n in names], fontsize=7)
    ax.set_title("PushBall (seed %d): ball 255, target cross 110; mean return over %d seeds: %s"
                 % (results[names[0]]["seeds"][0], summary[names[0]]["episodes"],
                    ", ".join(f"{n} {summary[n]['mean_return']:.2f}" for n in names)), fontsize=7)
    utils.save_figure(fig, path)


if __name__ == "__main__":
    main()
