"""Tests of the interactive environment (data_utils/envs.py): the Gymnasium contract, the physics
(elastic walls, friction), the reward and episode length, batch = single environments, the
reference controller, and the drawn frame against the state.

    .venv/bin/python -m pytest tests/test_envs.py -q
"""
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from data_utils import envs

S, STEPS = 64, 50


def _messages(record):
    # gymnasium < 1.0 warned about any 2-D Box as an "unconventional shape" (Gymnasium issue
    # #269); 1.x accepts a 2-D image. That one warning is not the environment's fault.
    return [str(w.message) for w in record if "unconventional shape" not in str(w.message)]


# --- Gymnasium contract ------------------------------------------------------------------------
def test_check_env_passes_without_warnings():
    env = gymnasium.make(envs.ENV_ID)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert _messages(rec) == []
    # through the wrappers of make(): the only warning is the checker's advice to unwrap
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_env(env)
    assert all("different from the unwrapped" in m for m in _messages(rec)), _messages(rec)
    env.close()


def test_spaces_shapes_and_render():
    env = gymnasium.make(envs.ENV_ID, render_mode="rgb_array")
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (S, S), np.uint8)
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    obs, info = env.reset(seed=0)
    assert obs.shape == (S, S) and obs.dtype == np.uint8 and obs in env.observation_space
    assert set(info) >= {"pos", "vel", "target", "distance", "reward", "step"} and info["step"] == 0
    obs, r, term, trunc, info = env.step(np.array([1.0, -1.0], np.float32))
    assert isinstance(r, float) and term is False and trunc is False and info["step"] == 1
    rgb = env.render()
    assert rgb.shape == (S, S, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], obs) for c in range(3))


def _episode(env, seed, actions):
    obs, info = env.reset(seed=seed)
    frames, rewards = [obs.tobytes()], [info["reward"]]
    for a in actions:
        obs, r, _, _, info = env.step(a)
        frames.append(obs.tobytes())
        rewards.append(r)
    return frames, rewards


def test_determinism_same_seed_same_bytes():
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, 2))
    env = envs.PushBallEnv()
    f1, r1 = _episode(env, 7, actions)
    f2, r2 = _episode(envs.PushBallEnv(), 7, actions)
    assert f1 == f2 and r1 == r2
    f3, r3 = _episode(env, 8, actions)
    assert f3[0] != f1[0] and r3 != r1
    # an unseeded reset after a seeded one is reproducible too (it draws from env.np_random)
    env.reset(seed=5)
    a = env.reset()[0]
    env.reset(seed=5)
    assert np.array_equal(a, env.reset()[0])


def test_batch_equals_single_envs():
    n, seed = 4, 10
    actions = np.random.default_rng(1).uniform(-1.3, 1.3, (STEPS, n, 2))   # some are clipped
    batch = envs.PushBallBatch(n)
    obs_b, info_b = batch.reset(seed)                    # environment i gets seed + i
    frames_b, pos_b, rew_b = [obs_b], [info_b["pos"]], [info_b["reward"]]
    for a in actions:
        obs_b, r, _, _, info_b = batch.step(a)
        frames_b.append(obs_b)
        pos_b.append(info_b["pos"])
        rew_b.append(r)
    frames_b, pos_b, rew_b = np.stack(frames_b, 1), np.stack(pos_b, 1), np.stack(rew_b, 1)
    for i in range(n):
        env = envs.PushBallEnv()
        obs, info = env.reset(seed=seed + i)
        frames, pos, rew = [obs], [info["pos"]], [info["reward"]]
        for a in actions[:, i]:
            obs, r, _, _, info = env.step(a)
            frames.append(obs)
            pos.append(info["pos"])
            rew.append(r)
        assert np.array_equal(np.stack(frames), frames_b[i])
        assert np.array_equal(np.stack(pos), pos_b[i])
        assert np.array_equal(np.array(rew, np.float32), rew_b[i])


def test_reset_distribution():
    b = envs.PushBallBatch(2000)
    _, info = b.reset(123)
    pos, vel, tgt = info["pos"], info["vel"], info["target"]
    assert np.all((pos >= b.lo) & (pos <= b.hi))
    assert np.all(np.abs(vel) <= b.p.init_speed)
    assert np.all((tgt >= -0.5 + 6.0) & (tgt <= S - 0.5 - 6.0))
    assert np.all(info["distance"] >= 16.0)
    assert b.lo == 3.5 and b.hi == 59.5
    # uniform-looking: the positions spread over the whole box
    assert pos.min() < b.lo + 1 and pos.max() > b.hi - 1


def test_random_start_reads_the_first_uniforms_of_the_seed():
    # the layout of reset's draws (position, velocity, target candidates) is fixed, so a seed
    # names the same episode across versions: adding draws for other starts must not move these
    b = envs.PushBallBatch(5)
    _, info = b.reset(77)
    for i in range(5):
        u = np.random.default_rng(77 + i).random(6)
        assert np.array_equal(info["pos"][i], b.lo + (b.hi - b.lo) * u[0:2])
        assert np.array_equal(info["vel"][i], b.p.init_speed * (2.0 * u[2:4] - 1.0))
    t_lo, t_hi = -0.5 + b.p.target_margin, S - 0.5 - b.p.target_margin
    first = t_lo + (t_hi - t_lo) * np.random.default_rng(77).random(6)[4:6]
    if np.linalg.norm(first - info["pos"][0]) >= b.p.min_target_distance:   # the first candidate is taken
        assert np.array_equal(info["target"][0], first)


def test_near_target_start_is_at_rest_near_the_same_target():
    b = envs.PushBallBatch(2000)
    _, far = b.reset(123)
    _, near = b.reset(123, start="near_target")
    assert np.array_equal(near["target"], far["target"])          # the same task, another start
    assert np.all(near["vel"] == 0.0)
    assert np.all(near["distance"] <= envs.NEAR_TARGET_RADIUS + 1e-9)
    assert np.all((near["pos"] >= b.lo) & (near["pos"] <= b.hi))
    # spread over the disc, not one point: distances fill [0, radius], directions all round
    assert near["distance"].min() < 0.5 and near["distance"].max() > envs.NEAR_TARGET_RADIUS - 0.5
    d = near["pos"] - near["target"]
    angle = np.arctan2(d[:, 1], d[:, 0])
    assert np.all(np.histogram(angle, bins=8)[0] > 150)
    # drawn independently of the target (not from its candidates' uniforms)
    for x in (near["target"][:, 0], near["target"][:, 1], far["pos"][:, 0]):
        assert abs(np.corrcoef(np.cos(angle), x)[0, 1]) < 0.1 and abs(np.corrcoef(near["distance"], x)[0, 1]) < 0.1
    # a near-target episode of a single environment is the batch's, through Gymnasium's options
    env = gymnasium.make(envs.ENV_ID).unwrapped
    _, info = env.reset(seed=130, options={"start": "near_target"})
    assert np.array_equal(info["pos"], near["pos"][7])
    with pytest.raises(ValueError, match="start must be one of"):
        b.reset(0, start="close")
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(seed=0, options={"begin": "near_target"})


# --- physics -----------------------------------------------------------------------------------
def _coast(batch, pos, vel, frames):
    """Set the state, step with zero force; returns pos, vel of every frame (n, frames+1, 2)."""
    batch.pos, batch.vel, batch.t = np.array(pos, float), np.array(vel, float), 0
    P, V = [batch.pos], [batch.vel]
    for _ in range(frames):
        _, _, _, _, info = batch.step(np.zeros((batch.n, 2)))
        P.append(info["pos"])
        V.append(info["vel"])
    return np.stack(P, 1), np.stack(V, 1)


def test_elastic_walls_keep_speed():
    b = envs.PushBallBatch(3, friction=0.0, episode_steps=200)
    b.reset(0)
    # straight at the left wall, diagonal into a corner, fast and oblique (several bounces)
    P, V = _coast(b, [[10.0, 30.0], [50.0, 50.0], [32.0, 5.0]],
                  [[-2.0, 0.0], [1.5, 1.5], [3.7, -2.9]], 200)
    speed = np.linalg.norm(V, axis=-1)
    assert np.abs(speed - speed[:, :1]).max() < 1e-9
    assert np.all((P >= b.lo) & (P <= b.hi))
    assert all((np.sign(V[i, :, 0]) != np.sign(V[i, 0, 0])).any() for i in range(3))  # each bounced
    # a bounce mirrors the free path in the wall: x = 10 - 2 t = -10 at t = 10 becomes 2 lo + 10
    assert abs(P[0, 10, 0] - (2 * b.lo + 10.0)) < 1e-9 and np.all(P[0, :, 1] == 30.0)


def test_friction_decay():
    b = envs.PushBallBatch(2)
    b.reset(0)
    _, V = _coast(b, [[20.0, 20.0], [40.0, 40.0]], [[3.0, -1.0], [-0.5, 2.5]], 30)
    speed = np.linalg.norm(V, axis=-1)
    expect = speed[:, :1] * np.exp(-b.p.friction * np.arange(31))
    assert np.allclose(speed, expect, rtol=1e-12, atol=0)
    # terminal speed under a full push along x: about max_accel / friction
    b.pos, b.vel, b.t = np.array([[b.lo, 20.0]] * 2), np.zeros((2, 2)), 0
    for _ in range(12):
        b.step(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert 2.5 < b.vel[0, 0] < b.p.max_accel / b.p.friction + 1e-9


# --- reward and episode ------------------------------------------------------------------------
def test_reward_definition_and_truncation():
    b = envs.PushBallBatch(5)
    obs, info = b.reset(3)
    diag = S * np.sqrt(2.0)
    assert np.array_equal(info["reward"], (-info["distance"] / diag).astype(np.float32))
    rng = np.random.default_rng(0)
    for t in range(1, STEPS + 1):
        _, r, term, trunc, info = b.step(rng.uniform(-1, 1, (5, 2)))
        d = np.linalg.norm(info["pos"] - info["target"], axis=1)
        assert r.dtype == np.float32 and np.array_equal(r, (-d / diag).astype(np.float32))
        assert np.array_equal(r, info["reward"]) and info["step"] == t
        assert not term.any()
        assert trunc.all() == (t == STEPS) and trunc.any() == (t == STEPS)
    with pytest.raises(RuntimeError):
        b.step(np.zeros((5, 2)))


# --- policies ----------------------------------------------------------------------------------
def test_reference_beats_random():
    b = envs.PushBallBatch(30)
    ref = envs.summarise(envs.evaluate_policy(b, envs.reference_act_fn, seed=0))
    rnd = envs.summarise(envs.evaluate_policy(b, envs.random_act_fn(1), seed=0))
    assert ref["success_rate"] >= 0.9 and rnd["success_rate"] <= 0.2
    assert ref["mean_final_distance"] < envs.SUCCESS_RADIUS < rnd["mean_final_distance"]
    assert ref["mean_return"] > 0.5 * rnd["mean_return"]   # returns are negative: half the cost or less
    assert envs.normalised_score(ref["mean_return"], rnd["mean_return"], ref["mean_return"]) == 1.0
    assert envs.normalised_score(rnd["mean_return"], rnd["mean_return"], ref["mean_return"]) == 0.0


def test_evaluate_policy_records():
    b = envs.PushBallBatch(3, episode_steps=10)
    out = envs.evaluate_policy(b, envs.reference_act_fn, seed=4, record=True)
    assert out["frames"].shape == (3, 11, S, S) and out["frames"].dtype == np.uint8
    assert out["pos"].shape == (3, 11, 2) and out["actions"].shape == (3, 10, 2)
    assert np.allclose(out["return"], out["reward"][:, 1:].sum(1, dtype=np.float64))
    assert list(out["seeds"]) == [4, 5, 6]


def test_held_random_actions_coast_with_p_zero():
    b = envs.PushBallBatch(400)
    plain = envs.evaluate_policy(b, envs.held_random_act_fn(3), seed=0, record=True)["actions"]
    coast = envs.evaluate_policy(b, envs.held_random_act_fn(3, p_zero=0.5), seed=0, record=True)["actions"]
    zero = lambda a: np.mean(np.all(a == 0.0, axis=-1))   # noqa: E731
    assert zero(plain) == 0.0 and 0.4 < zero(coast) < 0.6
    # held, zeros too: an action is repeated for about mean_hold = 8 frames (redrawn with
    # probability 1/8, which keeps the held action 1/8 of those times when it draws zero again)
    repeats = lambda a: np.mean(np.all(a[:, 1:] == a[:, :-1], axis=-1))   # noqa: E731
    assert 0.8 < repeats(plain) < 0.95 and 0.8 < repeats(coast) < 0.95
    with pytest.raises(ValueError, match="p_zero"):
        envs.held_random_act_fn(0, p_zero=1.5)


# --- rendering ---------------------------------------------------------------------------------
def test_ball_drawn_at_its_state():
    b = envs.PushBallBatch(64)
    obs, info = b.reset(50)
    rng = np.random.default_rng(2)
    checked = 0
    yy, xx = np.mgrid[0:S, 0:S].astype(float)
    for _ in range(5):
        for i in np.flatnonzero(info["distance"] > 14.0):   # the target cross is outside the window
            p = info["pos"][i]
            win = (np.abs(xx - p[0]) <= 6) & (np.abs(yy - p[1]) <= 6)
            w = obs[i] * win
            c = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
            assert np.abs(c - p).max() < 0.1, (i, c, p)   # measured: at most 0.022 px
            assert obs[i].max() == 255
            checked += 1
        obs, _, _, _, info = b.step(rng.uniform(-1, 1, (64, 2)))
    assert checked > 200


# --- the script -------------------------------------------------------------------------------
def test_script_compares_the_two_reference_policies(tmp_path):
    """`python data_utils/envs.py` as a user runs it: the table, the JSON and the preview."""
    import json

    from tests.scripts import run
    proc = run(["data_utils/envs.py", "--episodes=4", f"--out={tmp_path}"])
    assert "reference" in proc.stdout and "random" in proc.stdout
    summary = json.loads((tmp_path / "pushball_eval.json").read_text())["summary"]
    assert summary["reference"]["mean_return"] > summary["random"]["mean_return"]
    assert (tmp_path / "pushball_preview.png").stat().st_size > 0
