"""training/train_sharp_v2.py end to end as a subprocess with tiny settings: outputs, and a
run killed with SIGKILL and resumed reproducing an uninterrupted one. (Its bad inputs are in
tests/test_bad_inputs.py.)"""
import json

import numpy as np
import pytest
import torch

from tests.scripts import checkpoint_where, kill_when, run
from training import layers, loop

TINY = ["--minutes=0", "--channels=16", "--code_dim=8", "--num_codes=16", "--hidden=8", "--layers=1",
        "--tok_steps=6", "--tok_batch=8", "--dyn_steps=4", "--dyn_batch=2", "--dyn_sequences=6",
        "--context=4", "--eval_sequences=4", "--ckpt_every=2", "--log_every=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    run(["data_utils/generate_physics_data.py", "--dataset", "bouncing_balls", "--num", "20", "--frames", "8",
         "--out", str(root), "--no-preview", "--workers", "1"])
    return root


def train(data_root, out_root, run_name, *extra, check=True):
    return run(["training/train_sharp_v2.py", f"--run={run_name}", "--dataset=bouncing_balls",
                f"--data_root={data_root}", f"--out_root={out_root}", *TINY, *extra], check=check)


@pytest.fixture(scope="module")
def full(data_root, tmp_path_factory):
    """One uninterrupted run, shared by the tests of its outputs and of kill-and-resume."""
    out = tmp_path_factory.mktemp("full")
    train(data_root, out, "full")
    return out


def test_train_writes_outputs(data_root, full, tmp_path):
    res = full / "results" / "full"
    for name in ("sharp_model_v2_result.png", "training_curves.png", "metrics.json", "config.json"):
        assert (res / name).stat().st_size > 0, name
    metrics = json.loads((res / "metrics.json").read_text())
    assert len(metrics["model"]["mse"]) == 4 and set(metrics["means"]) == {"model", "copy_last", "blank"}
    ckpt = torch.load(full / "checkpoints" / "full" / "latest.pt", weights_only=True)
    assert ckpt["phase"] == "done" and ckpt["config"]["hidden"] == 8 and ckpt["model_config"]["hidden"] == 8
    assert ckpt["model_config"]["predict"] == "motion"   # predict=auto: balls are not kept whole by 2 layers
    # The checkpoint is usable by the evaluation script, which finds the run's data from it
    # (its dataset under its data_root: no --data, and no data/bouncing_balls in the repo needed).
    run(["evaluation/eval_sharp.py", f"--checkpoint={full / 'checkpoints' / 'full' / 'latest.pt'}",
         "--context=4", "--horizon=4",
         "--num_sequences=2", "--batch_size=2", f"--out_dir={tmp_path / 'eval'}"])
    assert (tmp_path / "eval" / "autoregressive_rollout.png").exists()
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["source"] == str(data_root / "bouncing_balls" / "test.npy") and ev["frames_per_sequence"] == 8


def test_zero_dyn_steps_keeps_the_untrained_dynamics(data_root, tmp_path):
    train(data_root, tmp_path, "prior", "--dyn_steps=0")
    ckpt = torch.load(tmp_path / "checkpoints" / "prior" / "latest.pt", weights_only=True)
    assert ckpt["phase"] == "done" and ckpt["history"]["dynamics"] == []
    assert (tmp_path / "results" / "prior" / "metrics.json").exists()


def test_layers_mode_caches_the_cut_and_logs_position_error(data_root, tmp_path):
    train(data_root, tmp_path, "lay", "--predict=layers", "--objects=3")
    ckpt = torch.load(tmp_path / "checkpoints" / "lay" / "latest.pt", weights_only=False)
    assert ckpt["model_config"]["predict"] == "layers" and ckpt["model_config"]["objects"] == 3
    hist = ckpt["history"]["dynamics"]
    assert len(hist) == 4 and all(len(h["track_px"]) == len(h["rollout_mse"]) == 4 for h in hist)
    with np.load(tmp_path / "checkpoints" / "lay" / "layers_bouncing_balls.npz") as cut:
        assert cut["L"].shape == (6, 3, 64, 64) and cut["positions"].shape == (6, 3, 8, 2)
        fields = dict(cut)
    assert (tmp_path / "results" / "lay" / "metrics.json").exists()
    # A cache is reused only if it was made by the cut of this code.
    cfg = {"objects": 3, "context": int(fields["context"])}
    path = tmp_path / "cut.npz"
    np.savez(path, **fields)
    assert loop._cut_cached(path, 6, 8, cfg)
    np.savez(path, **{**fields, "version": np.array(layers.CUT_VERSION - 1)})
    assert not loop._cut_cached(path, 6, 8, cfg)
    np.savez(path, **{k: v for k, v in fields.items() if k != "version"})
    assert not loop._cut_cached(path, 6, 8, cfg)


def test_killed_twice_and_resumed_ends_as_the_uninterrupted_run(data_root, full, tmp_path):
    """SIGKILL (no clean-up runs) just after a checkpoint of the tokenizer phase, resume,
    SIGKILL again in the dynamics phase, resume to the end: the weights are those of the
    uninterrupted run with the same seed."""
    ckpt = tmp_path / "checkpoints" / "killed" / "latest.pt"

    def args(*extra):
        return ["training/train_sharp_v2.py", "--run=killed", "--dataset=bouncing_balls", f"--data_root={data_root}",
                f"--out_root={tmp_path}", *TINY, *extra]
    kill_when(args(), checkpoint_where(ckpt, lambda c: True))
    assert torch.load(ckpt, weights_only=True)["phase"] == "tokenizer"
    kill_when(args("--resume"), checkpoint_where(ckpt, lambda c: c["phase"] == "dynamics"))
    assert torch.load(ckpt, weights_only=True)["phase"] == "dynamics"
    run(args("--resume"))
    a = torch.load(full / "checkpoints" / "full" / "latest.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["phase"] == "done"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]["dynamics"]] == [h["loss"] for h in b["history"]["dynamics"]]


def test_caching_stops_at_its_deadline_and_the_dynamics_draws_from_what_was_cached(tmp_path):
    """Under a budget, cache_clips stops each dataset at its share of the time left (after at
    least one batch), writes only the clips done, reuses them on a resume, and the sampler
    weighs only those. The clock is faked: one second per look."""
    from types import SimpleNamespace

    from data_utils.datasets import SequenceWindows
    from training import loop
    from training.world_model import SharpWorldModelV2

    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (20, 64, 32, 32), dtype=np.uint8) for _ in range(2)]
    windows = SequenceWindows(["a", "b"], arrays=clips, context=32, target=32)   # 64 frames: 4 clips a batch
    looks = iter(range(100))
    run = SimpleNamespace(main=True, ckpt_dir=tmp_path, device=torch.device("cpu"), barrier=lambda: None,
                          elapsed=lambda: float(next(looks)))
    model = SharpWorldModelV2(channels=8, code_dim=4, num_codes=8, hidden=4, layers=1, image_size=32)
    cfg = {"predict": "motion", "bf16": False}
    # start at 0; dataset a until 1.25 (looks 1, 2: two batches), b until 2.5 (look 3: one batch)
    cached = loop.cache_clips(cfg, run, model, windows, per_dataset=20, until_s=2.5)
    assert [len(c) for c in cached["codes"]] == [8, 4]
    frames = torch.from_numpy(clips[0][:8]).float().div(255).unsqueeze(2)
    assert np.array_equal(cached["codes"][0], torch.cat([model.encode_clip(x) for x in frames.split(4)]).numpy())
    data, w = loop.dynamics_data(windows, cached)
    assert torch.allclose(w[:20].sum(), w[20:].sum()) and (w[:8] > 0).all() and (w[8:20] == 0).all()
    assert (w[20:24] > 0).all() and (w[24:] == 0).all()
    drawn = torch.multinomial(w, 64, replacement=True)
    assert all(data[int(i)]["codes"].shape == (64, 8, 8) for i in drawn)   # only cached clips are drawn
    # resumed under the budget: the partial caches are reused as they are
    stamp = (tmp_path / "codes_a.npy").stat().st_mtime_ns
    again = loop.cache_clips(cfg, run, model, windows, per_dataset=20, until_s=2.5)
    assert [len(c) for c in again["codes"]] == [8, 4] and (tmp_path / "codes_a.npy").stat().st_mtime_ns == stamp
    # without a budget a partial cache is not enough: every clip is cached
    full = loop.cache_clips(cfg, run, model, windows, per_dataset=20)
    assert [len(c) for c in full["codes"]] == [20, 20]
