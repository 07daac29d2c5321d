"""training/world_model_rl.py end to end as a subprocess with tiny settings: outputs, a
run killed with SIGKILL resumed to the same final state, --eval_only on the saved agent,
eval_sharp.py on the action-conditioned model, and clear errors."""
import json
import shutil

import numpy as np
import pytest
import torch

from tests.scripts import checkpoint_where, kill_when, run
from data_utils import envs
from training import world_model_rl
from training.world_model import KEYPOINTS

TINY = ["--channels=16", "--code_dim=8", "--num_codes=16", "--hidden=8", "--layers=1", "--units=32",
        "--episode_steps=10", "--seed_episodes=4", "--test_episodes=2", "--episodes_per_iter=2",
        "--tok_steps=4", "--tok_batch=8", "--wm_pretrain=2", "--wm_steps=2", "--wm_batch=2", "--wm_window=6",
        "--ac_steps=2", "--imag_batch=4", "--horizon=3", "--iterations=3", "--eval_episodes=2",
        "--latent_pretrain=2", "--latent_steps=2", "--latent_batch=2", "--cache_episodes=3",
        "--final_prior_steps=2", "--final_batch=2", "--final_ac_steps=2", "--near_target_episodes=2"]


def rl(out_root, name, *extra, check=True):
    return run(["training/world_model_rl.py", f"--run={name}", f"--out_root={out_root}", *TINY, *extra],
               check=check)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    rl(root, "full")
    return root


def test_loop_writes_its_outputs(full):
    res = full / "results" / "full"
    for name in ("rl_training.png", "rl_trajectory.png", "imagined_vs_real.gif", "eval.json", "config.json",
                 "test_episodes.npy", "test_episodes_actions.npy", "test_episodes_states.npz"):
        assert (res / name).stat().st_size > 0, name
    ev = json.loads((res / "eval.json").read_text())
    assert set(ev["policies"]) == {"agent", "random", "reference"}
    assert ev["policies"]["reference"]["normalised_score"] == pytest.approx(1.0)
    assert ev["policies"]["random"]["normalised_score"] == pytest.approx(0.0)
    assert np.isfinite(ev["policies"]["agent"]["imagined_return"])
    ckpt = torch.load(full / "checkpoints" / "full" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 3 and ckpt["replay_chunks"] == 4 and len(ckpt["history"]) == 3
    last = ckpt["history"][-1]
    for key in ("dyn", "rew", "prior", "prior_rew", "pol", "val", "ent", "imag_reward", "real_reward", "rew_filter",
                "rew_prior", "rew_open"):
        assert np.isfinite(last[key]), key
    # the consolidation ran once, after the last iteration, on all 4 chunks of the replay
    assert {"final_prior", "final_prior_rew", "final_pol", "final_val"} <= set(ckpt["final"])
    assert all(np.isfinite(v) for v in ckpt["final"].values())
    # the actor's step size annealed over the iterations from actor_lr to final_actor_lr, which
    # the consolidation kept
    cfg = world_model_rl.CONFIG
    assert [h["actor_lr"] for h in ckpt["history"]] == pytest.approx(
        [cfg["actor_lr"], (cfg["actor_lr"] + cfg["final_actor_lr"]) / 2, cfg["final_actor_lr"]])
    assert ckpt["agent"]["actor_opt"]["param_groups"][0]["lr"] == pytest.approx(cfg["final_actor_lr"])
    assert cfg["final_actor_lr"] < cfg["actor_lr"]
    assert ckpt["agent"]["config"]["max_std"] == pytest.approx(cfg["max_std"])
    assert ev["train_wall_s"] == pytest.approx(ckpt["final"]["wall_s"])
    # the seed episodes: 4 from random starts (at least 16 px from the target), then 2 exploring
    # starts within NEAR_TARGET_RADIUS of it (frame 0's reward is -distance / diagonal)
    with np.load(full / "checkpoints" / "full" / "replay_0.npz") as z:
        r0 = z["rewards"][:, 0] * 64 * np.sqrt(2)                    # -distance at frame 0, px
    assert len(r0) == 6 and np.all(r0[:4] <= -16) and np.all(r0[4:] >= -envs.NEAR_TARGET_RADIUS - 1e-3)
    assert np.load(res / "test_episodes.npy").shape == (2, 11, 64, 64)
    assert np.load(res / "test_episodes_actions.npy").shape == (2, 11, 2)


def test_actor_step_size_is_a_cosine_from_actor_lr_to_final_actor_lr():
    cfg = {"iterations": 50, "actor_lr": 1e-3, "final_actor_lr": 1e-4}
    lrs = [world_model_rl.actor_step_size(cfg, it) for it in range(50)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[49 // 2] == pytest.approx(5.5e-4, rel=0.05)          # half-way: the mean of the two
    assert world_model_rl.actor_step_size({**cfg, "iterations": 1}, 0) == pytest.approx(1e-3)


def test_loop_runs_on_the_particle_dynamics(tmp_path):
    """--predict=particles, the other unit that takes an action at every step, end to end."""
    rl(tmp_path, "particles", "--predict=particles", "--iterations=1")
    ckpt = torch.load(tmp_path / "checkpoints" / "particles" / "latest.pt", weights_only=True)
    assert ckpt["config"]["predict"] == "particles" and ckpt["iteration"] == 1
    assert np.isfinite(ckpt["history"][-1]["dyn"])
    assert (tmp_path / "results" / "particles" / "eval.json").stat().st_size > 0


def test_killed_run_resumes_to_the_same_state(full, tmp_path):
    """SIGKILL (no clean-up runs) just after the first checkpoint of an iteration >= 1 that the
    watcher reads (usually in iteration 2; under load the tiny run can be further on, in the
    consolidation or the evaluation), then --resume: the final state is the uninterrupted run's."""
    folder = tmp_path / "checkpoints" / "killed"
    kill_when(["training/world_model_rl.py", "--run=killed", f"--out_root={tmp_path}", *TINY],
              checkpoint_where(folder / "latest.pt", lambda c: c["iteration"] >= 1))
    partial = torch.load(folder / "latest.pt", weights_only=True)
    assert partial["iteration"] >= 1
    # a replay file written after the last checkpoint (a kill later in the iteration) is rewritten
    stale = folder / f"replay_{partial['replay_chunks']}.npz"
    if not stale.exists():
        shutil.copy(folder / "replay_0.npz", stale)
    rl(tmp_path, "killed", "--resume")
    a = torch.load(full / "checkpoints" / "full" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoints" / "killed" / "latest.pt", weights_only=True)
    for part in ("model",):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6), k
    for k in a["agent"]["model"]:
        assert torch.allclose(a["agent"]["model"][k].float(), b["agent"]["model"][k].float(), atol=1e-6), k
    assert [h["real_return"] for h in a["history"]] == pytest.approx([h["real_return"] for h in b["history"]])


def test_eval_only_on_a_saved_agent(full, tmp_path):
    out = tmp_path / "ev.json"
    proc = run(["training/world_model_rl.py", "--eval_only", f"--checkpoint={full / 'checkpoints/full/latest.pt'}",
                "--seeds=1000010-1000012", f"--json_path={out}"])
    assert "agent" in proc.stdout and "reference" in proc.stdout
    ev = json.loads(out.read_text())
    assert ev["seeds"] == [1000010, 1000012] and ev["policies"]["agent"]["episodes"] == 3
    for row in ev["policies"].values():
        assert {"mean_return", "mean_final_distance", "success_rate", "normalised_score"} <= set(row)


def test_eval_sharp_evaluates_the_action_conditioned_model(full, tmp_path):
    ckpt = full / "checkpoints" / "full" / "latest.pt"
    episodes = full / "results" / "full" / "test_episodes.npy"
    run(["evaluation/eval_sharp.py", f"--checkpoint={ckpt}", f"--data={episodes}", "--context=2", "--horizon=4",
         "--long_horizon=0", "--num_sequences=2", "--batch_size=2", f"--out_dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(metrics["model"]["mse"]) == 4 and "copy_last" in metrics
    # without the actions beside the episodes: one line naming the fix
    lone = tmp_path / "lone.npy"
    shutil.copy(episodes, lone)
    proc = run(["evaluation/eval_sharp.py", f"--checkpoint={ckpt}", f"--data={lone}", "--context=2", "--horizon=4",
                f"--out_dir={tmp_path / 'eval2'}"], check=False)
    assert proc.returncode != 0 and "_actions.npy" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_clear_errors_in_process(tmp_path, monkeypatch):
    import sys

    cases = [(["--eval_only"], "needs --checkpoint"),
             (["--eval_only", f"--checkpoint={tmp_path / 'none.pt'}"], "not found"),
             (["--resume"], "drop --resume"),
             (["--horizn=3"], "did you mean --horizon"),
             (["--context=8", "--wm_window=6"], "--context < --wm_window"),
             (["--latent_steps=0"], "--latent_steps must be at least 1"),
             (["--episode_steps=1"], "--episode_steps must be at least 2"),
             (["--final_actor_lr=0"], "--final_actor_lr must be positive"),
             (["--max_std=0.1"], "--max_std must be above")]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["world_model_rl.py", f"--out_root={tmp_path}", *args])
        with pytest.raises(SystemExit, match=message):
            world_model_rl.main()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*.pt"))


def test_start_states_computed_once_equal_those_read_one_by_one():
    """train_agent's start states (`all_cached_latents`, the whole cache at once, in chunks) are
    the states `cached_latents` gives for the same episodes and frames."""
    torch.manual_seed(0)
    cfg = {**world_model_rl.CONFIG, "channels": 16, "code_dim": 8, "num_codes": 16, "hidden": 8, "layers": 1,
           "units": 32}
    model, _ = world_model_rl.build(cfg, torch.device("cpu"))
    E, T, g = 5, 7, model.grid
    cache = {"pooled": torch.randn(E, T, model.dynamics.latent_dim - 2 * KEYPOINTS), "rewards": torch.zeros(E, T),
             "codes": torch.randint(0, 16, (E, T, g, g))}
    z = world_model_rl.all_cached_latents(model, cache, chunk=2)          # chunks that do not divide E
    assert z.shape == (E, T, model.dynamics.latent_dim)
    ep, t = np.array([4, 0, 2, 4]), np.array([6, 0, 3, 1])
    with torch.no_grad():
        one_by_one = world_model_rl.cached_latents(model, cache, ep, t)
    torch.testing.assert_close(z[ep, t], one_by_one)
    assert not torch.equal(z[4, 6], z[4, 1])                             # and they are not all one state
