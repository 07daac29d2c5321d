"""Per-step video-prediction metrics and baselines (body positions: evaluation/positions.py).

Conventions: frames are float in [0, 1] with shape
(B, T, 1, H, W); every metric is reported *per predicted step* (arrays of length T,
averaged over the sequences), not only as a mean.

    mse, mae    summed over a frame's pixels, then averaged over frames (the OpenSTL
                convention, so figures compare with published tables)
    psnr        10 log10(1 / MSE_pixel) per frame (data range 1, MSE clamped at 1e-10),
                averaged over frames, in dB
    ssim        torchmetrics' SSIM per frame (Gaussian window, data range 1), averaged
    sharpness   sum_frames G(pred) / sum_frames G(truth) at each step, G = mean gradient
                magnitude sqrt(dx^2 + dy^2). Summing over the frames before dividing keeps
                blank truth frames from dividing by zero; 1.0 is as sharp as the truth.
    sharpness_energy
                the same ratio for the mean *squared* gradient (a Tenengrad-style focus
                measure). Why both: G is a total variation, and blurring a single step
                edge or averaging non-overlapping copies of a body (the MSE-optimal
                prediction of an uncertain position) leaves it unchanged -- an average
                of 4 shifted balls scores G-ratio 1.0 but energy ratio 0.25. G falls
                only where blur merges thin structures (digit strokes); the energy
                ratio falls for any blur (an edge blurred over w pixels: ~1/w).

`StepMetrics` accumulates these over batches (so that a whole test set gives exact
per-step means and a sharpness ratio of sums); `per_step_metrics` is the one-batch
shortcut. Everything is computed in float32 on the tensors' own device (CPU, CUDA or
MPS; no float64 there) and only the per-step sums go to NumPy.
"""
from __future__ import annotations


import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

METRICS = ("mse", "mae", "psnr", "ssim", "sharpness", "sharpness_energy")
# Sharpness of a step where the truth *and* the prediction are blank is 0/0; this tiny
# per-frame slack makes it 1.0 (equally sharp) instead of NaN, and is negligible otherwise.
_SHARP_EPS = 1e-8


def _check_pair(pred: torch.Tensor, truth: torch.Tensor) -> None:
    if pred.shape != truth.shape or pred.dim() != 5 or pred.shape[2] != 1:
        raise ValueError(f"pred and truth must both be (B, T, 1, H, W); got {tuple(pred.shape)} "
                         f"and {tuple(truth.shape)}")


def _gradient_sq(frames: torch.Tensor) -> torch.Tensor:
    """Squared gradient dx^2 + dy^2 per pixel (..., H-1, W-1), forward differences
    cropped to the common grid."""
    x = frames.float()
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return dx * dx + dy * dy


def _ssim_per_frame(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """pred, truth (N, 1, H, W) float32 -> SSIM (N,). The Gaussian window shrinks
    (odd, <= 11) for frames smaller than 11 pixels."""
    side = min(pred.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    return structural_similarity_index_measure(pred, truth, data_range=1.0, reduction="none",
                                               kernel_size=kernel, sigma=sigma)


class StepMetrics:
    """Accumulate per-step metric sums over batches.

        acc = StepMetrics()
        for pred, truth in batches:          # (B, T, 1, H, W) in [0, 1]
            acc.update(pred, truth)
        per_step = acc.compute()             # {'mse': (T,), 'mae', 'psnr', 'ssim', 'sharpness'}
    """

    def __init__(self):
        self.sums: dict[str, np.ndarray] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> "StepMetrics":
        _check_pair(pred, truth)
        B, T = pred.shape[:2]
        with torch.autocast(pred.device.type, enabled=False):
            p = pred.float().clamp(0, 1)
            t = truth.float().to(p.device)
            err = p - t
            mse = err.pow(2).sum(dim=(2, 3, 4))                     # (B, T) summed over pixels
            mae = err.abs().sum(dim=(2, 3, 4))
            pixels = p.shape[-1] * p.shape[-2]
            psnr = 10.0 * torch.log10(1.0 / (mse / pixels).clamp_min(1e-10))
            ssim = _ssim_per_frame(p.flatten(0, 1), t.flatten(0, 1)).view(B, T)
            sq_pred, sq_truth = _gradient_sq(p[:, :, 0]), _gradient_sq(t[:, :, 0])   # (B, T, H-1, W-1)
        batch = {"mse": mse, "mae": mae, "psnr": psnr, "ssim": ssim,
                 "grad_pred": sq_pred.sqrt().mean((-2, -1)), "grad_truth": sq_truth.sqrt().mean((-2, -1)),
                 "energy_pred": sq_pred.mean((-2, -1)), "energy_truth": sq_truth.mean((-2, -1))}
        # Sum over the batch on the device, then move only T numbers per metric.
        batch = {k: v.sum(0).detach().cpu().numpy().astype(np.float64) for k, v in batch.items()}
        if self.sums is None:
            self.sums = batch
        else:
            if len(batch["mse"]) != len(self.sums["mse"]):
                raise ValueError("all batches given to one StepMetrics must have the same number of steps")
            for k, v in batch.items():
                self.sums[k] += v
        self.count += B
        return self

    def compute(self) -> dict[str, np.ndarray]:
        if self.sums is None:
            raise ValueError("StepMetrics.compute() called before any update()")
        out = {k: self.sums[k] / self.count for k in ("mse", "mae", "psnr", "ssim")}
        eps = _SHARP_EPS * self.count
        out["sharpness"] = (self.sums["grad_pred"] + eps) / (self.sums["grad_truth"] + eps)
        out["sharpness_energy"] = (self.sums["energy_pred"] + eps) / (self.sums["energy_truth"] + eps)
        return {k: out[k].astype(np.float64) for k in METRICS}


def per_step_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
    """pred, truth (B, T, 1, H, W) in [0, 1] -> {metric: (T,) array averaged over B}.
    Metrics: mse, mae (summed over pixels), psnr (dB), ssim, sharpness and
    sharpness_energy (pred/truth; see the module docstring)."""
    return StepMetrics().update(pred, truth).compute()


def summarize(per_step: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over steps of each per-step array ({'mse': (T,), ...} -> {'mse': float, ...});
    NaN steps (e.g. position error where no body was found) are skipped."""
    out = {}
    for k, v in per_step.items():
        v = np.asarray(v, dtype=np.float64)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def baselines(context: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two reference predictions for `truth` (B, T, 1, H, W) given `context` (B, Tc, 1, H, W):
    'copy_last' repeats the last context frame, 'blank' predicts zeros."""
    last = context[:, -1:].float()
    return {"copy_last": last.expand_as(truth).contiguous(),
            "blank": torch.zeros_like(truth, dtype=torch.float32)}
