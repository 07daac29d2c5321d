"""training/train_comprehensive.py end to end (tiny settings, three datasets): its tables
and pictures, a run killed with SIGKILL and resumed equal to an uninterrupted one, and
torchrun with two CPU processes (gloo) equal to one process on the same global batch."""
import json
import sys

import pytest
import torch

from tests.scripts import checkpoint_where, kill_when, run
from training.loop import StepBatches, check_batches

NAMES = "bouncing_balls,pendulum,wave_motion"
TINY = ["--minutes=0", "--channels=16", "--code_dim=8", "--num_codes=16", "--hidden=8", "--layers=1", "--tok_steps=4",
        "--tok_batch=8", "--dyn_steps=4", "--dyn_batch=4", "--dyn_sequences=6", "--context=4",
        "--eval_sequences=3", "--ckpt_every=2", "--log_every=1", "--examples=2", "--bf16=false",
        f"--datasets={NAMES}"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    common = ["--num", "20", "--frames", "8", "--out", str(root), "--no-preview", "--workers", "1"]
    run(["data_utils/generate_physics_data.py", "--dataset", "bouncing_balls,pendulum", *common])
    run(["data_utils/generate_diverse_datasets.py", "--dataset", "wave_motion", *common])
    return root


def train(data_root, out_root, name, *extra, launcher=(sys.executable,), check=True):
    return run(["training/train_comprehensive.py", f"--run={name}", f"--data_root={data_root}",
                f"--out_root={out_root}", *TINY, *extra], check=check, launcher=launcher)


def weights(out_root, name):
    return torch.load(out_root / "checkpoints" / name / "latest.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(data_root, out, "one")
    return out


def test_writes_tables_and_pictures_per_dataset(single):
    res = single / "results" / "one"
    names = NAMES.split(",")
    for f in ["per_dataset.md", "per_dataset.json", "mse_per_step.png", "training_curves.png",
              *[f"physics_{n}_result.png" for n in names], *[f"physics_{n}.gif" for n in names]]:
        assert (res / f).stat().st_size > 0, f
    table = (res / "per_dataset.md").read_text()
    assert all(f"| {n} |" in table for n in names)
    per = json.loads((res / "per_dataset.json").read_text())
    assert set(per["datasets"]) == set(names)
    for n in names:
        d = per["datasets"][n]
        assert len(d["model"]["mse"]) == 4 and {"copy_last", "blank"} <= set(d)
    assert "position_error" in per["datasets"]["pendulum"]["model"]      # a body scene
    assert "position_error" not in per["datasets"]["wave_motion"]["model"]
    # evaluation/eval_physics.py ran at the end: laws, positions and probes per dataset
    physics = json.loads((res / "physics" / "physics.json").read_text())["datasets"]
    assert set(physics) == set(names)
    assert set(physics["pendulum"]["laws"]) == {"rod", "eom"} and "position_error" in physics["pendulum"]
    assert set(physics["wave_motion"]["laws"]) == {"wavelength", "speed"}
    assert {"model", "untrained", "pixels"} <= set(physics["pendulum"]["probe"]["r2"]["pos"])
    assert "## Laws" in (res / "physics" / "physics.md").read_text()
    assert (res / "physics" / "laws_bouncing_balls.png").stat().st_size > 0
    ckpt = torch.load(single / "checkpoints" / "one" / "latest.pt", weights_only=True)
    assert ckpt["phase"] == "done" and ckpt["model_config"]["predict"] == "motion"
    # the sampler balances the datasets: every one has its codes cached
    assert all((single / "checkpoints" / "one" / f"codes_{n}.npy").exists() for n in names)


def test_killed_and_resumed_ends_as_the_uninterrupted_run(data_root, single, tmp_path):
    """SIGKILL in the dynamics phase (just after its first checkpoint), then --resume: the
    weights equal those of the uninterrupted run."""
    ckpt = tmp_path / "checkpoints" / "killed" / "latest.pt"
    kill_when(["training/train_comprehensive.py", "--run=killed", f"--data_root={data_root}",
               f"--out_root={tmp_path}", *TINY], checkpoint_where(ckpt, lambda c: c["phase"] == "dynamics"))
    assert torch.load(ckpt, weights_only=True)["step"] < 4
    train(data_root, tmp_path, "killed", "--resume", "--physics=false")
    a, b = weights(single, "one"), weights(tmp_path, "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torchrun_two_processes_match_one(data_root, single, tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--")
    proc = train(data_root, tmp_path, "two", "--physics=false", launcher=launcher)
    assert "weights identical on all 2 processes" in proc.stdout
    a, b = weights(single, "one"), weights(tmp_path, "two")
    for k in a:   # the same global batches, split in two: equal up to float summation order
        assert torch.allclose(a[k].float(), b[k].float(), atol=2e-4, rtol=1e-3), k
    assert (tmp_path / "results" / "two" / "per_dataset.md").exists()


def test_another_dynamics_on_a_reused_tokenizer(data_root, single, tmp_path):
    """--init_tokenizer skips the tokenizer phase: candidates for the dynamics are
    compared on one tokenizer."""
    ckpt = single / "checkpoints" / "one" / "latest.pt"
    train(data_root, tmp_path, "part", "--predict=particles", f"--init_tokenizer={ckpt}", "--dyn_steps=2",
          "--physics=false")
    a, b = weights(single, "one"), weights(tmp_path, "part")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("tokenizer."))
    hist = torch.load(tmp_path / "checkpoints" / "part" / "latest.pt", weights_only=True)["history"]
    assert hist["tokenizer"] == [] and len(hist["dynamics"]) == 2


def test_batch_not_divisible_by_the_processes():
    """Checked for every batch setting when the run starts, naming the flag."""
    with pytest.raises(SystemExit, match="--dyn_batch=3 .* multiple of 2"):
        check_batches({"tok_batch": 4, "dyn_batch": 3}, world=2)
    check_batches({"tok_batch": 4, "dyn_batch": 6}, world=2)
    with pytest.raises(ValueError):
        StepBatches(torch.ones(4), global_batch=3, steps=1, seed=0, rank=0, world=2)


def test_step_batches_split_one_global_batch_and_resume_mid_run():
    weights = torch.ones(10)
    one = list(StepBatches(weights, 4, steps=3, seed=7))
    halves = [list(StepBatches(weights, 4, steps=3, seed=7, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one          # the two ranks' shares make the global batch
    assert list(StepBatches(weights, 4, steps=3, seed=7, start=1)) == one[1:]   # a resume draws the same


def test_eval_physics_script_on_a_checkpoint(data_root, single, tmp_path):
    """evaluation/eval_physics.py as a user runs it: one dataset of a comprehensive
    checkpoint, its table, JSON and picture."""
    ckpt = single / "checkpoints" / "one" / "latest.pt"
    common = [f"--checkpoint={ckpt}", f"--data_root={data_root}", "--num_sequences=3", "--probe_train=4",
              "--context=4", "--horizon=4", "--bf16=false"]
    run(["evaluation/eval_physics.py", "--dataset=bouncing_balls", f"--out_dir={tmp_path}", *common])
    table = (tmp_path / "physics.md").read_text()
    assert "| bouncing_balls | free-fall g |" in table and "## Linear probes" in table
    data = json.loads((tmp_path / "physics.json").read_text())["datasets"]["bouncing_balls"]
    assert len(data["laws"]["g"]["model"]) == 4 and len(data["position_error"]["copy_last"]) == 4
    assert (tmp_path / "laws_bouncing_balls.png").stat().st_size > 0


def test_eval_physics_names_an_unknown_dataset(monkeypatch):
    from evaluation import eval_physics
    monkeypatch.setattr(sys, "argv", ["eval_physics.py", "--dataset=pendulm"])
    with pytest.raises(SystemExit, match=r"^error: unknown dataset pendulm; use all or a comma-separated list"):
        eval_physics.main()


def test_physics_on_the_tables_rollouts_equals_its_own(data_root, single):
    """train_comprehensive.py hands eval_sharp's rollouts to eval_physics instead of rolling
    the same clips out twice: the laws, positions and probes come out the same."""
    import numpy as np
    from data_utils.datasets import load_split
    from evaluation import eval_physics, eval_sharp

    model, _ = eval_sharp.load_model(single / "checkpoints" / "one" / "latest.pt", torch.device("cpu"))
    cfg = dict(eval_physics.CONFIG, data_root=str(data_root), num_sequences=2, probe_train=4, context=4,
               horizon=3, bf16=False)
    test = load_split("pendulum", "test", str(data_root))
    ev = eval_sharp.evaluate(model, test[:2], torch.device("cpu"), 4, 4, bf16=False, progress=False,
                             keep_rollouts=True)
    assert ev["rollouts"]["pred"].shape == (2, 4, 64, 64)     # horizon 4 kept; physics reads its first 3
    untrained = eval_physics.untrained_like(model, 0)
    own = eval_physics.evaluate_dataset(model, untrained, "pendulum", cfg, torch.device("cpu"))
    shared = eval_physics.evaluate_dataset(model, untrained, "pendulum", cfg, torch.device("cpu"), ev["rollouts"])
    for src in ("model", "copy_last", "truth"):
        np.testing.assert_allclose(shared["position_error"][src], own["position_error"][src])
    for law in own["laws"]:
        np.testing.assert_allclose(shared["laws"][law]["model"], own["laws"][law]["model"])
    assert shared["probe"]["r2"] == own["probe"]["r2"]
    # and it does read them: blank predictions lose every body
    blank = eval_physics.evaluate_dataset(model, untrained, "pendulum", cfg, torch.device("cpu"),
                                          {**ev["rollouts"], "pred": np.zeros_like(ev["rollouts"]["pred"])})
    assert not np.allclose(blank["position_error"]["model"], own["position_error"]["model"], equal_nan=True)
