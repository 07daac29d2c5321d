"""The SimVP baseline (training/baseline.py, training/train_baseline.py): it trains on a tiny
set with its loss falling well below its start, eval_sharp.py evaluates its checkpoint like any
other, a wall-time budget stops it, and a run stopped by a NaN resumes to the uninterrupted
run's weights. The training runs in this process (main() with sys.argv patched: fast), the
evaluation script as a user runs it."""
import json
import sys

import utils  # noqa: F401  (first: OMP_WAIT_POLICY before torch starts its threads)

import numpy as np
import pytest
import torch

from data_utils import generate
from tests.scripts import run
from training import train_baseline
from training.baseline import SimVP, SimVPConfig, count_parameters

TINY = ["--hid_s=4", "--hid_t=16", "--n_s=2", "--n_t=1", "--mlp_ratio=2", "--context=4", "--batch=4",
        "--log_every=1", "--ckpt_every=10", "--device=cpu", "--bf16=false"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this process, as the script subprocesses get (tests/scripts.py): two
    threads on a CPU that another process keeps busy can slow tiny steps a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate.generate_datasets(["bouncing_balls"], workers=1, verbose=False, num=20, frames=8, size=64,
                               out=root, preview=False, progress=False)
    return root


def train(monkeypatch, data_root, out, name, *extra):
    monkeypatch.setattr(sys, "argv", ["train_baseline.py", f"--run={name}", "--dataset=bouncing_balls",
                                      f"--data_root={data_root}", f"--out_root={out}", *TINY, *extra])
    train_baseline.main()
    return torch.load(out / "checkpoints" / name / "latest.pt", weights_only=True)


def test_model_predicts_all_frames_at_once_and_rolls_out_longer():
    torch.manual_seed(0)
    model = SimVP(SimVPConfig(hid_s=4, hid_t=16, n_s=2, n_t=1, mlp_ratio=2, context=3, horizon=2)).eval()
    context = torch.rand(2, 5, 1, 64, 64)
    assert model(context[:, -3:]).shape == (2, 2, 1, 64, 64)
    pred = model.rollout(context, 5)                  # three passes, the last two frames fed back in
    assert pred.shape == (2, 5, 1, 64, 64) and 0 <= pred.min() and pred.max() <= 1
    assert torch.allclose(pred[:, :2], model(context[:, -3:]).clamp(0, 1))
    assert torch.allclose(pred[:, 2:4], model(torch.cat([context[:, -1:], pred[:, :2]], 1)).clamp(0, 1))
    with pytest.raises(ValueError, match="reads 3 context frames"):
        model.rollout(context[:, :2], 2)
    from evaluation import eval_sharp   # the baseline has no compact state for eval_physics to read
    with pytest.raises(ValueError, match="has none: call evaluate without keep_rollouts"):
        eval_sharp.evaluate(model, np.zeros((2, 5, 64, 64), np.uint8), torch.device("cpu"), 3, 2, keep_rollouts=True)
    # The default (CPU-sized) model, and its config as a checkpoint holds it.
    default = SimVP()
    assert 3_000_000 < count_parameters(default) < 5_000_000
    cfg = SimVPConfig.from_checkpoint(default.config.to_dict())
    assert cfg == default.config and cfg.kind == "simvp"
    with pytest.raises(ValueError, match="does not know: old"):
        SimVPConfig.from_checkpoint({**cfg.to_dict(), "old": 1})


def test_trains_loss_falls_and_eval_sharp_evaluates_it(monkeypatch, data_root, tmp_path):
    ckpt = train(monkeypatch, data_root, tmp_path, "b", "--minutes=0", "--steps=30", "--eval_sequences=2")
    assert ckpt["phase"] == "done" and ckpt["step"] == 30 and ckpt["model_config"]["kind"] == "simvp"
    assert ckpt["model_config"]["horizon"] == 4 and ckpt["config"]["hid_t"] == 16
    losses = [h["loss"] for h in ckpt["history"]["train"]]
    assert len(losses) == 30 and losses[-1] < 0.25 * losses[0], losses
    res = tmp_path / "results" / "b"
    for name in ("baseline_result.png", "training_curves.png", "metrics.json", "config.json"):
        assert (res / name).stat().st_size > 0, name
    trained = json.loads((res / "metrics.json").read_text())
    # The evaluation script, as a user runs it, on the same first two test clips.
    run(["evaluation/eval_sharp.py", f"--checkpoint={tmp_path / 'checkpoints' / 'b' / 'latest.pt'}",
         f"--data={data_root / 'bouncing_balls' / 'test.npy'}", "--context=4", "--horizon=4",
         "--num_sequences=2", "--batch_size=2", f"--out_dir={tmp_path / 'eval'}"])
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["model_config"]["kind"] == "simvp" and ev["run"] == "b"
    for name in ("model", "copy_last", "blank"):
        assert len(ev[name]["mse"]) == 4 and len(ev[name]["sharpness"]) == 4
        np.testing.assert_allclose(ev[name]["mse"], trained[name]["mse"], rtol=1e-4)
    assert (tmp_path / "eval" / "autoregressive_rollout.png").exists()


def test_wall_time_budget_stops_training(monkeypatch, data_root, tmp_path):
    ckpt = train(monkeypatch, data_root, tmp_path, "t", "--minutes=0.02", "--steps=1", "--eval_sequences=0")
    steps = ckpt["step"]
    assert ckpt["phase"] == "done" and steps > 1                 # --steps is ignored under a budget
    assert 1.2 <= ckpt["elapsed_s"] < 30
    assert ckpt["history"]["train"][-1]["step"] == steps - 1      # the last step is logged


def test_nan_stop_then_resume_ends_as_the_uninterrupted_run(monkeypatch, data_root, tmp_path):
    args = ("--minutes=0", "--steps=20", "--eval_sequences=0")
    whole = train(monkeypatch, data_root, tmp_path, "whole", *args)
    real = train_baseline.prediction_loss

    def nan_from_step_15(net, frames, calls=[0]):
        loss, logs = real(net, frames)
        calls[0] += 1
        return (loss * float("nan"), {**logs, "loss": float("nan")}) if calls[0] > 15 else (loss, logs)
    monkeypatch.setattr(train_baseline, "prediction_loss", nan_from_step_15)
    with pytest.raises(SystemExit, match="non-finite at step 15.*--lr.*--resume"):
        train(monkeypatch, data_root, tmp_path, "cut", *args)
    monkeypatch.setattr(train_baseline, "prediction_loss", real)
    stopped = torch.load(tmp_path / "checkpoints" / "cut" / "latest.pt", weights_only=True)
    assert stopped["phase"] == "train" and stopped["step"] == 10
    resumed = train(monkeypatch, data_root, tmp_path, "cut", *args, "--resume")
    assert resumed["phase"] == "done" and resumed["step"] == 20
    for k in whole["model"]:
        assert torch.equal(whole["model"][k], resumed["model"][k]), k
    assert [h["loss"] for h in whole["history"]["train"]] == [h["loss"] for h in resumed["history"]["train"]]


def test_benchmark_budget_trains_both_models_once_and_plots(data_root, tmp_path):
    """`benchmark.py --section budget` trains the world model and the baseline for a budget as
    subprocesses, tabulates their metrics.json, and on a second call reads them instead of
    training again."""
    from evaluation import benchmark

    argv = ["--section", "budget", "--minutes", "0.01", "--root", str(tmp_path), "--out", str(tmp_path / "bench"),
            "--model-dataset", "bouncing_balls",
            "--train-args", f"--data_root={data_root} --context=4 --eval_sequences=2 --device=cpu --bf16=false"]
    res = benchmark.main(argv)["budget"]
    assert [(r["model"], r["run"]) for r in res["rows"]] == [("world model", "sharp_v2_0.01min"),
                                                             ("baseline", "baseline_0.01min")]
    for r in res["rows"]:
        m = json.loads((tmp_path / "results" / r["run"] / "metrics.json").read_text())
        assert r["mse"] == round(m["means"]["model"]["mse"], 1) and m["horizon"] == 4
        assert r["sharpness_last"] >= 0 and -1 <= r["ssim"] <= 1   # untrained: 0 steps in 0.6 s
    assert set(res["references_mse"]) == {"copy_last", "blank"}
    assert (tmp_path / "bench" / "budget.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*/metrics.json")}
    again = benchmark.main(argv)["budget"]
    assert again["rows"] == res["rows"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*/metrics.json")}
    with pytest.raises(SystemExit, match="was trained on bouncing_balls"):   # another dataset's runs
        benchmark.main([a if a != "bouncing_balls" else "moving_mnist" for a in argv])
    assert "budget" in benchmark.LONG   # hours of training: not part of --section all
