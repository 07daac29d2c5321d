"""evaluation/: metric values, baselines, body positions, and the eval / diagram scripts
end to end on a tiny untrained model."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import utils
from evaluation import metrics as M
from training.world_model import SharpWorldModelV2

REPO = utils.REPO_ROOT
TINY = dict(channels=16, code_dim=8, num_codes=16, hidden=16)


# ----------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------
def _frames(B=2, T=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 1, H, W, generator=g)


def test_identical_prediction_is_perfect():
    x = _frames()
    m = M.per_step_metrics(x, x)
    assert set(m) == set(M.METRICS)
    for v in m.values():
        assert isinstance(v, np.ndarray) and v.shape == (3,)
    np.testing.assert_allclose(m["mse"], 0, atol=1e-6)
    np.testing.assert_allclose(m["mae"], 0, atol=1e-6)
    np.testing.assert_allclose(m["ssim"], 1, atol=1e-5)
    np.testing.assert_allclose(m["sharpness"], 1, atol=1e-6)
    np.testing.assert_allclose(m["sharpness_energy"], 1, atol=1e-6)
    np.testing.assert_allclose(m["psnr"], 100.0, atol=1e-3)   # MSE clamped at 1e-10


def test_blank_prediction_scores_sum_of_squares():
    x = _frames(B=3, T=4, H=64, W=64)
    m = M.per_step_metrics(torch.zeros_like(x), x)
    expected = (x ** 2).sum(dim=(2, 3, 4)).mean(0).numpy()     # summed over pixels, mean over batch
    np.testing.assert_allclose(m["mse"], expected, rtol=1e-5)
    np.testing.assert_allclose(m["mae"], x.sum(dim=(2, 3, 4)).mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(m["sharpness"], 0, atol=1e-6)
    np.testing.assert_allclose(m["sharpness_energy"], 0, atol=1e-6)


def test_hand_computed_example():
    # One 4x4 frame: truth has a single pixel of 1, the prediction 0.5 there and 0.5 on
    # one other pixel -> squared errors 0.25 + 0.25, absolute 0.5 + 0.5.
    truth = torch.zeros(1, 1, 1, 4, 4)
    truth[..., 1, 1] = 1.0
    pred = torch.zeros_like(truth)
    pred[..., 1, 1] = 0.5
    pred[..., 2, 3] = 0.5
    m = M.per_step_metrics(pred, truth)
    assert m["mse"][0] == pytest.approx(0.5)
    assert m["mae"][0] == pytest.approx(1.0)
    assert m["psnr"][0] == pytest.approx(10 * math.log10(1 / (0.5 / 16)), rel=1e-5)
    # Gradient magnitudes on the 3x3 forward-difference grid, by hand:
    # truth: at (1,1) dx = dy = -1 -> sqrt 2; at (0,1) dy = 1; at (1,0) dx = 1
    g_truth = (math.sqrt(2) + 2) / 9
    # pred: at (1,1) dx=dy=-0.5 -> 0.5 sqrt 2; (0,1) dy=.5; (1,0) dx=.5; (2,2) dx=.5
    g_pred = (0.5 * math.sqrt(2) + 1.5) / 9
    assert m["sharpness"][0] == pytest.approx(g_pred / g_truth, rel=1e-5)
    assert m["sharpness_energy"][0] == pytest.approx((0.5 + 0.25 + 0.25 + 0.25) / (2 + 1 + 1), rel=1e-5)


def test_psnr_and_ssim_average_per_frame():
    truth = _frames(B=2, T=1, H=32, W=32)
    pred = truth.clone()
    pred[1] = (pred[1] + 0.1).clamp(0, 1)         # only the second sequence is off
    m = M.per_step_metrics(pred, truth)
    mse1 = ((pred[1] - truth[1]) ** 2).mean().item()
    assert m["psnr"][0] == pytest.approx((100.0 + 10 * math.log10(1 / mse1)) / 2, rel=1e-4)
    assert 0.5 < m["ssim"][0] < 1.0


def test_sharpness_falls_for_blur_and_blank_truth_is_safe():
    # Thin strokes (2 px) blurred: both ratios fall well below 1.
    truth = torch.zeros(2, 2, 1, 32, 32)
    truth[..., 6:26, 15:17] = 1.0
    blurred = torch.nn.functional.avg_pool2d(truth.flatten(0, 1), 5, stride=1, padding=2).view_as(truth)
    m = M.per_step_metrics(blurred, truth)
    assert m["sharpness"].max() < 0.6 and m["sharpness_energy"].max() < 0.2
    # An average of 4 non-overlapping copies of a body (an uncertain position): the
    # gradient-magnitude ratio is blind to it (total variation is kept), the energy is not.
    box = torch.zeros(1, 1, 1, 32, 32)
    box[..., 10:14, 2:6] = 1.0
    mix = sum(torch.roll(box, 7 * i, dims=-1) for i in range(4)) / 4
    m = M.per_step_metrics(mix, box)
    assert m["sharpness"][0] == pytest.approx(1.0, rel=1e-5)
    assert m["sharpness_energy"][0] == pytest.approx(0.25, rel=1e-5)
    blank = torch.zeros(1, 2, 1, 32, 32)
    for key in ("sharpness", "sharpness_energy"):
        s = M.per_step_metrics(blank, blank)[key]
        assert np.all(np.isfinite(s)) and np.allclose(s, 1.0)


def test_accumulator_matches_one_batch():
    pred, truth = _frames(B=4, seed=1), _frames(B=4, seed=2)
    whole = M.per_step_metrics(pred, truth)
    acc = M.StepMetrics().update(pred[:1], truth[:1]).update(pred[1:], truth[1:]).compute()
    for k in M.METRICS:
        np.testing.assert_allclose(acc[k], whole[k], rtol=1e-5)
    assert M.summarize(whole)["mse"] == pytest.approx(float(whole["mse"].mean()))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="B, T, 1, H, W"):
        M.per_step_metrics(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16))


def test_baselines():
    context, truth = _frames(B=2, T=5), _frames(B=2, T=4, seed=3)
    b = M.baselines(context, truth)
    assert set(b) == {"copy_last", "blank"}
    assert b["copy_last"].shape == truth.shape and b["blank"].shape == truth.shape
    for t in range(4):
        assert torch.equal(b["copy_last"][:, t], context[:, -1])
    assert b["blank"].abs().sum() == 0


# ----------------------------------------------------------------------------------------
# scripts, end to end
# ----------------------------------------------------------------------------------------
def _run(script, *args, timeout=120):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "VPWM_DEVICE": "cpu"})


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY)
    ckpt = d / "ckpt.pt"
    utils.save_checkpoint({"config": {"run": "t", "dataset": "x"}, "model_config": model.config.to_dict(),
                           "model": model.state_dict()}, ckpt)
    frames = np.zeros((4, 20, 64, 64), np.uint8)
    for i in range(4):
        for t in range(20):                       # a square moving right 2 px/frame
            frames[i, t, 20 + 4 * i:28 + 4 * i, 5 + 2 * t:13 + 2 * t] = 255
    data = d / "test.npy"
    np.save(data, frames)
    pos = np.zeros((4, 20, 1, 2), np.float32)
    pos[..., 0, 0] = 8.5 + 2 * np.arange(20)[None]
    pos[..., 0, 1] = 23.5 + 4 * np.arange(4)[:, None]
    np.savez(d / "test_states.npz", pos=pos)
    return d, ckpt, data


def test_eval_sharp_end_to_end(tiny_setup):
    d, ckpt, data = tiny_setup
    out = d / "out"
    proc = _run("evaluation/eval_sharp.py", f"--checkpoint={ckpt}", f"--data={data}", f"--out_dir={out}",
                "--num_sequences=4", "--batch_size=2")
    assert proc.returncode == 0, proc.stderr
    assert "long rollout skipped" in proc.stdout            # T=20 < 10 + 30
    for name in ("autoregressive_rollout.png", "rollout.gif", "per_step_metrics.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "metrics.json").read_text())
    assert res["num_sequences"] == 4 and res["horizon"] == 10 and res["run"] == "t"
    for name in ("model", "copy_last", "blank"):
        for metric in (*M.METRICS, "position_error"):
            assert len(res[name][metric]) == 10, (name, metric)
        assert set(res[name]["mean"]) >= {"mse", "ssim", "sharpness"}
    # Copy-last of an 8x8 square moving 2 px/frame: at step k, 8 rows x 2k columns differ
    # on each side until the two squares stop overlapping -> MSE = min(32k, 128).
    np.testing.assert_allclose(res["copy_last"]["mse"], [min(32.0 * k, 128.0) for k in range(1, 11)], rtol=1e-5)
    np.testing.assert_allclose(res["blank"]["mse"], 64.0, rtol=1e-5)
    assert "long" not in res


def test_eval_sharp_long_rollout(tiny_setup, tmp_path):
    _, ckpt, _ = tiny_setup
    data = tmp_path / "long.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (2, 16, 64, 64), dtype=np.uint8))
    proc = _run("evaluation/eval_sharp.py", f"--checkpoint={ckpt}", f"--data={data}", f"--out_dir={tmp_path}",
                "--context=4", "--horizon=3", "--long_horizon=12", "--batch_size=2", "--examples=1")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert len(res["model"]["mse"]) == 3 and res["long"]["horizon"] == 12
    assert len(res["long"]["copy_last"]["ssim"]) == 12
    # The first steps of the long rollout are the short evaluation.
    np.testing.assert_allclose(res["long"]["model"]["mse"][:3], res["model"]["mse"], rtol=1e-5)


def test_draw_architecture(tiny_setup, tmp_path):
    _, ckpt, _ = tiny_setup
    proc = _run("evaluation/draw_architecture.py", f"--checkpoint={ckpt}", f"--out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "architecture_diagram.png").stat().st_size > 10_000
    assert f"{sum(p.numel() for p in SharpWorldModelV2(**TINY).parameters()):,}" in proc.stdout


def test_benchmark_model_section(tmp_path):
    from evaluation import benchmark

    res = benchmark.main(["--section", "model", "--device", "cpu", "--steps", "1", "--tok-batch", "4",
                          "--dyn-batch", "2", "--run", "no_such_run", "--out", str(tmp_path)])["model"]
    saved = json.loads((tmp_path / "model.json").read_text())
    phases = [(r["phase"], r["precision"]) for r in saved["rows"]]
    assert ("tokenizer", "fp32") in phases and ("dynamics", "fp32") in phases
    assert all(r["frames_per_s"] > 0 and r["s_per_step"] > 0 for r in res["rows"])
    assert "quality_for_budget" not in saved  # no such run: nothing invented
